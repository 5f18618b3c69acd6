"""Operands of decoded instructions: effective addresses, register and memory
reads and writes (iced-x86 decodes but has no effective-address helper).

Intel SDM Vol. 1 "Memory Organization" / "Specifying an Offset": offset = base
+ index * scale + displacement, truncated to the address size (16, 32 or 64
bits); RIP-relative operands are already absolute in iced's memory_displacement;
the linear address adds the segment base (only FS and GS bases in 64-bit mode,
"Segmentation in IA-32e Mode").  Register writes follow "General-Purpose
Registers in 64-Bit Mode" (32-bit results zero-extend, 8/16-bit results merge).

Functions take the machine and work on its current state; a client (the VMX
layer) uses them to execute VMX instructions with memory and register operands:

    addr = operand_address(machine, insn)          # linear address of the memory operand
    value = read_operand(machine, insn, 1, 8)      # operand 1, 8 bytes
    write_operand(machine, insn, 0, value, 8)
"""
from __future__ import annotations

import iced_x86 as I

from . import context_blob as CB
from . import registers as REG

_R = I.Register
_OK = I.OpKind
_NO_SEG_BASE_64 = {_R.ES, _R.CS, _R.SS, _R.DS}


def _bitness(machine) -> int:
    hf = machine.blob.load().hflags
    return 64 if hf & CB.HF_CS64 else (32 if hf & CB.HF_CS32 else 16)


def address_size(insn: I.Instruction, bitness: int) -> int:
    """Address size in bytes of the memory operand (from its registers, else the
    displacement size, else the mode with the 0x67 prefix taken into account)."""
    for reg in (insn.memory_base, insn.memory_index):
        if reg not in (_R.NONE, _R.RIP, _R.EIP):
            return I.RegisterExt.size(reg)
    if insn.memory_base == _R.RIP:
        return 8
    if insn.memory_base == _R.EIP:
        return 4
    size = insn.memory_displ_size
    if size in (2, 4, 8):
        return size
    return bitness // 8


def gpr_value(machine, reg: int, values=None) -> int:
    """Value of an iced general register (any width) from the machine."""
    g = values if values is not None else machine.gprs.read()
    index, width, shift = REG.ICED_GPR[reg]
    return REG.extract_gpr(g[index], width, shift)


def set_gpr(machine, reg: int, value: int) -> None:
    g = machine.gprs.read()
    index, width, shift = REG.ICED_GPR[reg]
    g[index] = REG.merge_gpr(g[index], value, width, shift)
    machine.gprs.write()


def segment_base(machine, seg: int, bitness: int) -> int:
    if bitness == 64 and seg in _NO_SEG_BASE_64:
        return 0
    return machine.blob.load().cache(REG.ICED_SEGMENT[seg])[1]


def operand_address(machine, insn: I.Instruction, operand: int | None = None) -> int:
    """Linear address of the (first, or `operand`-th) memory operand."""
    if operand is not None and insn.op_kind(operand) != _OK.MEMORY:
        raise ValueError(f"operand {operand} of {insn} is not a memory operand")
    if not any(insn.op_kind(i) == _OK.MEMORY for i in range(insn.op_count)):
        raise ValueError(f"{insn} has no memory operand")
    bitness = _bitness(machine)
    g = machine.gprs.read()
    asize = address_size(insn, bitness)
    mask = (1 << (8 * asize)) - 1
    if insn.memory_base in (_R.RIP, _R.EIP):
        offset = insn.memory_displacement & mask
    else:
        offset = insn.memory_displacement
        if insn.memory_base != _R.NONE:
            offset += gpr_value(machine, insn.memory_base, g)
        if insn.memory_index != _R.NONE:
            offset += gpr_value(machine, insn.memory_index, g) * insn.memory_index_scale
        offset &= mask
    linear = segment_base(machine, insn.memory_segment, bitness) + offset
    return linear & ((1 << 64) - 1 if bitness == 64 else 0xFFFFFFFF)


def read_operand(machine, insn: I.Instruction, operand: int, size: int) -> int:
    """Read operand `operand` as a `size`-byte value (register, memory or immediate)."""
    kind = insn.op_kind(operand)
    if kind == _OK.REGISTER:
        return gpr_value(machine, insn.op_register(operand)) & ((1 << (8 * size)) - 1)
    if kind == _OK.MEMORY:
        return int.from_bytes(machine.read_linear(operand_address(machine, insn, operand), size), "little")
    if kind in (_OK.IMMEDIATE8, _OK.IMMEDIATE16, _OK.IMMEDIATE32, _OK.IMMEDIATE64, _OK.IMMEDIATE8TO16,
                _OK.IMMEDIATE8TO32, _OK.IMMEDIATE8TO64, _OK.IMMEDIATE32TO64, _OK.IMMEDIATE8_2ND):
        return insn.immediate(operand) & ((1 << (8 * size)) - 1)
    raise ValueError(f"operand {operand} of {insn} has unsupported kind {kind}")


def write_operand(machine, insn: I.Instruction, operand: int, value: int, size: int) -> None:
    """Write a register or memory operand (register writes follow the 64-bit-mode
    rules for the register's width, whatever `size`)."""
    kind = insn.op_kind(operand)
    if kind == _OK.REGISTER:
        set_gpr(machine, insn.op_register(operand), value)
    elif kind == _OK.MEMORY:
        machine.write_linear(operand_address(machine, insn, operand),
                             (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))
    else:
        raise ValueError(f"operand {operand} of {insn} is not writable")

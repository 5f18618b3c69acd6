"""VM-exit instruction information and exit qualifications from a decoded instruction.

Sources: Intel SDM Vol. 3C "Exit Qualification for VM Exits Due to Instructions
That Use Memory Operands" (the qualification is the displacement of the memory
operand), "VM-Exit Instruction-Information Field" tables (arch.exits layouts),
"Exit Qualification for Control-Register Accesses", "Exit Qualification for
MOV DR", "Exit Qualification for I/O Instructions".
"""
from __future__ import annotations

import iced_x86 as I

from ..arch import exits as X

_R = I.Register
_RX = I.RegisterExt
_OK = I.OpKind


def gpr(reg: int) -> int:
    """GPR number (RAX = 0 .. R15 = 15) of an iced register of any width."""
    return _RX.number(reg)


def _address_size(insn: I.Instruction, bitness: int) -> int:
    """0 16-bit, 1 32-bit, 2 64-bit: the address size of the memory operand."""
    for reg in (insn.memory_base, insn.memory_index):
        if reg != _R.NONE and reg not in (_R.RIP, _R.EIP):
            return {2: 0, 4: 1, 8: 2}[_RX.size(reg)]
    if insn.memory_base == _R.EIP:
        return 1
    if insn.memory_base == _R.RIP:
        return 2
    size = insn.memory_displ_size
    if size in (2, 4, 8):
        return {2: 0, 4: 1, 8: 2}[size]
    return {16: 0, 32: 1, 64: 2}[bitness]


def memory_parts(insn: I.Instruction, bitness: int) -> dict[str, int]:
    """Parts shared by every instruction-information layout with a memory operand."""
    base, index = insn.memory_base, insn.memory_index
    base_ok = base != _R.NONE and base not in (_R.RIP, _R.EIP)
    index_ok = index != _R.NONE
    return {
        "scaling": {1: 0, 2: 1, 4: 2, 8: 3}[insn.memory_index_scale] if index_ok else 0,
        "address_size": _address_size(insn, bitness),
        "segment": _RX.number(insn.memory_segment),
        "index": gpr(index) if index_ok else 0,
        "index_invalid": 0 if index_ok else 1,
        "base": gpr(base) if base_ok else 0,
        "base_invalid": 0 if base_ok else 1,
    }


def has_memory_operand(insn: I.Instruction) -> bool:
    return any(insn.op_kind(i) == _OK.MEMORY for i in range(insn.op_count))


def displacement(insn: I.Instruction) -> int:
    """Exit qualification for instructions with a memory operand: the displacement,
    sign-extended to 64 bits (RIP-relative operands: the displacement field)."""
    if insn.is_ip_rel_memory_operand:
        return (insn.ip_rel_memory_address - insn.next_ip) & ((1 << 64) - 1)
    return insn.memory_displacement & ((1 << 64) - 1)


def instruction_information(reason: int, insn: I.Instruction, bitness: int) -> int:
    """The VM-exit instruction-information field for an exit due to `insn`."""
    layout = X.INSTRUCTION_INFO.get(reason)
    if layout is None:
        return 0
    parts: dict[str, int] = {}
    mem = has_memory_operand(insn)
    if layout in (X.INFO_INS_OUTS,):
        parts["address_size"] = {16: 0, 32: 1, 64: 2}[bitness] if not insn.memory_displ_size else \
            _address_size(insn, bitness)
        if insn.mnemonic == I.Mnemonic.OUTSB or insn.mnemonic in (I.Mnemonic.OUTSW, I.Mnemonic.OUTSD):
            parts["segment"] = _RX.number(insn.memory_segment)
        return layout.encode(**parts)
    if layout is X.INFO_RDRAND:
        reg = insn.op_register(0)
        return layout.encode(reg1=gpr(reg), operand_size={2: 0, 4: 1, 8: 2}[_RX.size(reg)])
    if mem:
        parts.update(memory_parts(insn, bitness))
    if layout is X.INFO_VMREAD_VMWRITE:
        # VMREAD r/m64, r64: reg1 = r/m (destination) when a register, reg2 = encoding register.
        # VMWRITE r64, r/m64: reg1 = r/m (source) when a register, reg2 = encoding register.
        if insn.mnemonic == I.Mnemonic.VMREAD:
            rm, reg2 = 0, insn.op_register(1)
        else:
            rm, reg2 = 1, insn.op_register(0)
        parts["reg2"] = gpr(reg2)
        if not mem:
            parts["register_operand"] = 1
            parts["reg1"] = gpr(insn.op_register(rm))
    elif layout is X.INFO_INVEPT:
        parts["reg2"] = gpr(insn.op_register(0))
    elif layout is X.INFO_DESC_TABLE:
        parts["identity"] = {I.Mnemonic.SGDT: 0, I.Mnemonic.SIDT: 1, I.Mnemonic.LGDT: 2,
                             I.Mnemonic.LIDT: 3}[insn.mnemonic]
        parts["operand_size"] = 1 if bitness != 16 else 0
    elif layout is X.INFO_LDT_TR:
        parts["identity"] = {I.Mnemonic.SLDT: 0, I.Mnemonic.STR: 1, I.Mnemonic.LLDT: 2,
                             I.Mnemonic.LTR: 3}[insn.mnemonic]
        if not mem:
            parts["register_operand"] = 1
            parts["reg1"] = gpr(insn.op_register(0))
    return layout.encode(**parts)


def cr_access_qualification(insn: I.Instruction) -> int:
    """Exit qualification for MOV CR, CLTS and LMSW."""
    m = insn.mnemonic
    if m == I.Mnemonic.CLTS:
        return X.QUAL_CR_ACCESS.encode(cr=0, access=2)
    if m == I.Mnemonic.LMSW:
        if has_memory_operand(insn):
            return X.QUAL_CR_ACCESS.encode(cr=0, access=3, lmsw_memory=1)
        return X.QUAL_CR_ACCESS.encode(cr=0, access=3)      # source data filled by the caller
    r0, r1 = insn.op_register(0), insn.op_register(1)
    if _RX.is_cr(r0):        # MOV CRn, r
        return X.QUAL_CR_ACCESS.encode(cr=_RX.number(r0), access=0, gpr=gpr(r1))
    return X.QUAL_CR_ACCESS.encode(cr=_RX.number(r1), access=1, gpr=gpr(r0))


def dr_access_qualification(insn: I.Instruction) -> int:
    r0, r1 = insn.op_register(0), insn.op_register(1)
    if _RX.is_dr(r0):        # MOV DRn, r
        return X.QUAL_DR_ACCESS.encode(dr=_RX.number(r0), direction=0, gpr=gpr(r1))
    return X.QUAL_DR_ACCESS.encode(dr=_RX.number(r1), direction=1, gpr=gpr(r0))


def io_qualification(port: int, size: int, is_in: bool, string: bool, rep: bool, immediate: bool) -> int:
    return X.QUAL_IO.encode(size=size - 1, direction=int(is_in), string=int(string), rep=int(rep),
                            operand=int(immediate), port=port)

"""Small guests for the KVM backend tests: assembly (keystone, checked with iced-x86)
and an identity-mapped long-mode environment, with its processor state written in
VMCS terms (the machine/state.py shape).

Guest-physical layout (2 MiB of RAM at 0):
  0x1000 GDT   0x2000 PML4   0x3000 PDPT   0x4000 PD (2-MiB pages, 0..1 GiB, user)
  0x5000 TSS (RSP0 = 0x7F000)   0x6000 IDT (256 interrupt gates)   0x8000 handler stubs
  0x10000 code   0x20000 data   0x70000 user stack top   0x80000 ring-0 stack top
Every vector's handler reports its vector with `out 0xE0, eax` and halts, so a test
sees exceptions and interrupts as an OUT to port 0xE0 and then reads the frame.
"""
from __future__ import annotations

import re
import struct

from iced_x86 import Decoder, Formatter, FormatterSyntax, OpKind, Register
from keystone import KS_ARCH_X86, KS_MODE_16, KS_MODE_32, KS_MODE_64, Ks

import pytest

from vmxlab.arch.segments import encode_descriptor
from vmxlab.kvm import unavailable_reason

KVM_REASON = unavailable_reason()
needs_kvm = pytest.mark.skipif(KVM_REASON is not None, reason=f"/dev/kvm unusable here: {KVM_REASON}")

GDT, PML4, PDPT, PD, TSS, IDT, STUBS = 0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 0x6000, 0x8000
CODE, DATA, USER_STACK, STACK, RSP0 = 0x10000, 0x20000, 0x70000, 0x80000, 0x7F000
MMIO = 0x10000000            # mapped by the page tables, no memslot
REPORT_PORT = 0xE0

SEL_CODE0, SEL_DATA0, SEL_CODE3, SEL_DATA3, SEL_TSS = 0x08, 0x10, 0x1B, 0x23, 0x28
AR_CODE64_0, AR_DATA_0 = 0xA09B, 0xC093       # P, S, type 11 / 3, L or D/B, G
AR_CODE64_3, AR_DATA_3 = 0xA0FB, 0xC0F3       # the same with DPL 3
AR_TSS_BUSY, AR_UNUSABLE = 0x008B, 0x10000
FLAT = 0xFFFFFFFF

_MODES = {16: KS_MODE_16, 32: KS_MODE_32, 64: KS_MODE_64}
_ABS = re.compile(r"\[\s*(0x[0-9a-fA-F]+)\s*\]")


def asm(source: str, address: int = CODE, bits: int = 64) -> bytes:
    """Assemble with keystone at `address`, then decode with iced-x86 and check that
    keystone emitted one instruction per statement (statements are lines or parts
    separated by ';'; no comments) and that every absolute memory
    operand `[0x...]` of the source addresses what it says (keystone mis-encodes
    some of them in 64-bit code)."""
    encoding, _ = Ks(KS_ARCH_X86, _MODES[bits]).asm(source, address)
    code = bytes(encoding)
    count = 0      # statements: lines and ';'-separated parts, labels removed
    for part in re.split(r"[;\n]", source):
        part = re.sub(r"^\s*[A-Za-z_.][\w.]*:", "", part).strip()
        count += bool(part)
    decoded = list(Decoder(bits, code, ip=address))
    fmt = Formatter(FormatterSyntax.INTEL)
    assert not any(i.is_invalid for i in decoded), [fmt.format(i) for i in decoded]
    assert len(decoded) == count, (count, [fmt.format(i) for i in decoded])
    absolute = sorted(i.memory_displacement for i in decoded
                      if any(i.op_kind(k) == OpKind.MEMORY for k in range(i.op_count))
                      and i.memory_base in (Register.NONE, Register.RIP, Register.EIP)
                      and i.memory_index == Register.NONE)
    wanted = sorted(int(m, 16) for m in _ABS.findall(source))
    assert absolute == wanted, (f"absolute memory operands {[hex(a) for a in absolute]} "
                                f"but the source says {[hex(a) for a in wanted]}")
    return code


def _gate(offset: int, selector: int = SEL_CODE0, dpl: int = 0) -> bytes:
    """A 64-bit interrupt gate (SDM Vol. 3A "64-Bit IDT Gate Descriptors")."""
    lo = (offset & 0xFFFF) | (selector << 16) | ((0x8E | (dpl << 5)) << 40) | (((offset >> 16) & 0xFFFF) << 48)
    return struct.pack("<QQ", lo, offset >> 32)


def build_long_mode(m, *, user: bool = False) -> None:
    """Write GDT, page tables, TSS, IDT and handler stubs into guest memory."""
    gdt = (b"\0" * 8
           + encode_descriptor(0, FLAT, AR_CODE64_0) + encode_descriptor(0, FLAT, AR_DATA_0)
           + encode_descriptor(0, FLAT, AR_CODE64_3) + encode_descriptor(0, FLAT, AR_DATA_3)
           + encode_descriptor(TSS, 0x67, AR_TSS_BUSY))
    m.phys_write(GDT, gdt)
    m.phys_write(PML4, struct.pack("<Q", PDPT | 7))
    m.phys_write(PDPT, struct.pack("<Q", PD | 7))
    m.phys_write(PD, b"".join(struct.pack("<Q", (i << 21) | 0x87) for i in range(512)))
    m.phys_write(TSS + 4, struct.pack("<Q", RSP0))
    m.phys_write(IDT, b"".join(_gate(STUBS + 16 * v) for v in range(256)))
    for v in range(256):   # mov eax, v ; out 0xE0, eax ; hlt
        m.phys_write(STUBS + 16 * v, bytes([0xB8]) + struct.pack("<I", v) + bytes([0xE7, REPORT_PORT, 0xF4]))


def long_mode_state(*, cpl: int = 0, rip: int = CODE, rsp: int | None = None, rflags: int = 0x2) -> dict:
    """The processor state (VMCS guest-state names) of 64-bit mode at CPL 0 or 3."""
    code_sel, code_ar = (SEL_CODE3, AR_CODE64_3) if cpl == 3 else (SEL_CODE0, AR_CODE64_0)
    data_sel, data_ar = (SEL_DATA3, AR_DATA_3) if cpl == 3 else (SEL_DATA0, AR_DATA_0)
    st = {"GUEST_CR0": 0x80050033, "GUEST_CR3": PML4, "GUEST_CR4": 0x620, "GUEST_IA32_EFER": 0xD01,
          "GUEST_RIP": rip, "GUEST_RSP": rsp if rsp is not None else (USER_STACK if cpl == 3 else STACK),
          "GUEST_RFLAGS": rflags,
          "GUEST_GDTR_BASE": GDT, "GUEST_GDTR_LIMIT": 0x37, "GUEST_IDTR_BASE": IDT, "GUEST_IDTR_LIMIT": 0xFFF,
          "GUEST_CS_SELECTOR": code_sel, "GUEST_CS_BASE": 0, "GUEST_CS_LIMIT": FLAT, "GUEST_CS_AR_BYTES": code_ar,
          "GUEST_TR_SELECTOR": SEL_TSS, "GUEST_TR_BASE": TSS, "GUEST_TR_LIMIT": 0x67,
          "GUEST_TR_AR_BYTES": AR_TSS_BUSY,
          "GUEST_LDTR_SELECTOR": 0, "GUEST_LDTR_BASE": 0, "GUEST_LDTR_LIMIT": 0,
          "GUEST_LDTR_AR_BYTES": AR_UNUSABLE}
    for seg in ("SS", "DS", "ES", "FS", "GS"):
        st.update({f"GUEST_{seg}_SELECTOR": data_sel, f"GUEST_{seg}_BASE": 0, f"GUEST_{seg}_LIMIT": FLAT,
                   f"GUEST_{seg}_AR_BYTES": data_ar})
    return st


def long_mode_machine(source: str | bytes, *, cpl: int = 0, memory: int = 2 << 20, **state):
    """A KvmMachine in 64-bit mode with `source` at CODE; extra state keys as keywords."""
    from vmxlab.kvm import KvmMachine
    m = KvmMachine(memory)
    build_long_mode(m, user=cpl == 3)
    m.phys_write(CODE, asm(source) if isinstance(source, str) else source)
    st = long_mode_state(cpl=cpl, rflags=0x3002 if cpl == 3 else 0x2)
    st.update(state)
    m.set_state(st)
    return m


def addresses(code: bytes, address: int = CODE) -> list[int]:
    """The address of each instruction of `code` (decoded with iced-x86)."""
    return [i.ip for i in Decoder(64, code, ip=address)]


def frame(m, rsp: int, n: int = 5) -> list[int]:
    """n quadwords of the stack at rsp."""
    return list(struct.unpack(f"<{n}Q", m.phys_read(rsp, 8 * n)))

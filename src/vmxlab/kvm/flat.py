"""A flat 64-bit environment for small guests: GDT, identity-mapped page tables,
TSS, IDT with reporting handlers, and the processor state that enters it, in VMCS
terms (machine/state.py).  It only needs `phys_write`, so it serves KvmMachine and
the simulated machine alike (tests, benchmarks, differential runs).

Guest-physical layout (the first 2 MiB must be RAM):
  0x1000 GDT   0x2000 PML4   0x3000 PDPT   0x4000 PD (2-MiB pages, 0..1 GiB, user, writable)
  0x5000 TSS (RSP0 = 0x7F000)   0x6000 IDT (256 interrupt gates, DPL 0)   0x8000 handlers
  0x10000 code   0x20000 data   0x70000 user stack top   0x80000 ring-0 stack top
GDT: 0x08 64-bit code DPL 0, 0x10 data DPL 0, 0x1B 64-bit code DPL 3, 0x23 data DPL 3,
0x28 64-bit TSS (busy).  The handler of vector v is `mov eax, v; out 0xE0, eax; hlt`,
so an exception or interrupt shows as an OUT of v to port 0xE0, with the frame on
the stack.  Descriptors come from arch/segments.encode_descriptor, from the same
access rights the state uses.
"""
from __future__ import annotations

import struct

from ..arch.segments import encode_descriptor

GDT, PML4, PDPT, PD, TSS, IDT, HANDLERS = 0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 0x6000, 0x8000
CODE, DATA, USER_STACK, STACK, RSP0 = 0x10000, 0x20000, 0x70000, 0x80000, 0x7F000
REPORT_PORT = 0xE0
RAM = 2 << 20

SEL_CODE0, SEL_DATA0, SEL_CODE3, SEL_DATA3, SEL_TSS = 0x08, 0x10, 0x1B, 0x23, 0x28
AR_CODE64_0, AR_DATA_0 = 0xA09B, 0xC093       # P, S, type 11 / 3, L or D/B, G
AR_CODE64_3, AR_DATA_3 = 0xA0FB, 0xC0F3       # the same with DPL 3
AR_TSS_BUSY, AR_UNUSABLE = 0x008B, 0x10000
FLAT = 0xFFFFFFFF
CR0 = 0x80050033          # PG AM WP NE ET MP PE
CR4 = 0x620               # OSXMMEXCPT OSFXSR PAE
EFER = 0xD01              # NXE LMA LME SCE


def _gate(offset: int, selector: int = SEL_CODE0) -> bytes:
    """A 64-bit interrupt gate, DPL 0 (SDM Vol. 3A "64-Bit IDT Gate Descriptors")."""
    lo = ((offset & 0xFFFF) | (selector << 16) | (0x8E << 40) | (((offset >> 16) & 0xFFFF) << 48))
    return struct.pack("<QQ", lo, offset >> 32)


def build(machine) -> None:
    """Write GDT, page tables, TSS, IDT and handlers into the machine's memory."""
    gdt = (b"\0" * 8
           + encode_descriptor(0, FLAT, AR_CODE64_0) + encode_descriptor(0, FLAT, AR_DATA_0)
           + encode_descriptor(0, FLAT, AR_CODE64_3) + encode_descriptor(0, FLAT, AR_DATA_3)
           + encode_descriptor(TSS, 0x67, AR_TSS_BUSY))
    machine.phys_write(GDT, gdt)
    machine.phys_write(PML4, struct.pack("<Q", PDPT | 7))
    machine.phys_write(PDPT, struct.pack("<Q", PD | 7))
    machine.phys_write(PD, b"".join(struct.pack("<Q", (i << 21) | 0x87) for i in range(512)))
    machine.phys_write(TSS + 4, struct.pack("<Q", RSP0))
    machine.phys_write(IDT, b"".join(_gate(HANDLERS + 16 * v) for v in range(256)))
    for v in range(256):
        machine.phys_write(HANDLERS + 16 * v, b"\xb8" + struct.pack("<I", v) + bytes((0xE7, REPORT_PORT, 0xF4)))


def state(*, cpl: int = 0, rip: int = CODE, rsp: int | None = None, rflags: int | None = None) -> dict:
    """The processor state of 64-bit mode at CPL 0 or 3 in this environment (at CPL 3
    with IOPL 3 unless rflags says otherwise)."""
    if cpl not in (0, 3):
        raise ValueError(f"cpl {cpl} is not 0 or 3")
    code_sel, code_ar = (SEL_CODE3, AR_CODE64_3) if cpl == 3 else (SEL_CODE0, AR_CODE64_0)
    data_sel, data_ar = (SEL_DATA3, AR_DATA_3) if cpl == 3 else (SEL_DATA0, AR_DATA_0)
    st = {"GUEST_CR0": CR0, "GUEST_CR3": PML4, "GUEST_CR4": CR4, "GUEST_IA32_EFER": EFER,
          "GUEST_RIP": rip, "GUEST_RSP": rsp if rsp is not None else (USER_STACK if cpl == 3 else STACK),
          "GUEST_RFLAGS": rflags if rflags is not None else (0x3002 if cpl == 3 else 0x2),
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


def machine(code: bytes, *, cpl: int = 0, memory: int = RAM, **regs):
    """A KvmMachine in this environment with `code` at CODE; more state as keywords."""
    from .machine import KvmMachine
    m = KvmMachine(memory)
    try:
        build(m)
        m.phys_write(CODE, code)
        st = state(cpl=cpl)
        st.update(regs)
        m.set_state(st)
    except BaseException:
        m.close()
        raise
    return m

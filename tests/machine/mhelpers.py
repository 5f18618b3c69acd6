"""A flat 64-bit test environment built from the SDM's table formats.

Physical = linear (identity map), memory layout:
  0x1000 GDT   0x00 null, 0x08 code64 DPL0, 0x10 data DPL0, 0x18 code32 DPL0,
               0x20 data DPL3 (selector 0x23), 0x28 code64 DPL3 (0x2B), 0x30 TSS (16 bytes)
  0x2000 IDT   256 x 16-byte 64-bit interrupt gates, selector 0x08, all not present
               until set_gate()
  0x3000 TSS   RSP0 = KSTACK, IST1 = ISTSTACK
  0x10000 PML4, 0x11000 PDPT, 0x12000 PD, 0x13000 PT (4 KiB pages for 0-2 MiB,
               2 MiB pages above), user-accessible and writable
  CODE = 0x40000, HANDLERS = 0x50000, KSTACK top 0x80000, ISTSTACK top 0x90000,
  USTACK top 0xA0000, DATA = 0x60000
"""
from __future__ import annotations

import struct

from vmxlab.arch import segments as S
from vmxlab.guests.asm import asm
from vmxlab.machine import Machine

GDT, IDT, TSS = 0x1000, 0x2000, 0x3000
PML4, PDPT, PD, PT = 0x10000, 0x11000, 0x12000, 0x13000
CODE, HANDLERS, DATA = 0x40000, 0x50000, 0x60000
KSTACK, ISTSTACK, USTACK = 0x80000, 0x90000, 0xA0000
P, RW, US, PS = 1, 2, 4, 0x80
KCODE, KDATA, UDATA, UCODE, TSSSEL = 0x08, 0x10, 0x23, 0x2B, 0x30


def q(x: int) -> bytes:
    return struct.pack("<Q", x)


def pte(i: int) -> int:
    return PT + 8 * i


class Env:
    def __init__(self, memory_size: int = 16 << 20, profile=None):
        self.m = m = Machine(profile, memory_size)
        gdt = [0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF, 0x00CF9B000000FFFF,
               0x00CFF3000000FFFF, 0x00AFFB000000FFFF]
        tss = S.encode_descriptor(TSS, 0x67, 0x89)          # available 64-bit TSS, P
        m.load(GDT, b"".join(q(d) for d in gdt) + tss)
        m.load(TSS + 4, q(KSTACK))
        m.load(TSS + 0x24, q(ISTSTACK))
        m.load(TSS + 0x66, struct.pack("<H", 0x68))          # I/O map base beyond the limit
        m.load(PML4, q(PDPT | P | RW | US))
        m.load(PDPT, q(PD | P | RW | US))
        m.load(PD, q(PT | P | RW | US) + b"".join(q((i << 21) | P | RW | US | PS) for i in range(1, 512)))
        m.load(PT, b"".join(q((i << 12) | P | RW | US) for i in range(512)))
        s = m.get_state()
        s.update({
            "GUEST_CR0": 0x80050033, "GUEST_CR3": PML4, "GUEST_CR4": 0x620, "GUEST_IA32_EFER": 0xD01,
            "GUEST_RIP": CODE, "GUEST_RSP": KSTACK, "GUEST_RFLAGS": 2,
            "GUEST_GDTR_BASE": GDT, "GUEST_GDTR_LIMIT": 8 * 8 - 1,
            "GUEST_IDTR_BASE": IDT, "GUEST_IDTR_LIMIT": 256 * 16 - 1,
            "GUEST_TR_SELECTOR": TSSSEL, "GUEST_TR_BASE": TSS, "GUEST_TR_LIMIT": 0x67, "GUEST_TR_AR_BYTES": 0x8B,
            "GUEST_LDTR_SELECTOR": 0, "GUEST_LDTR_BASE": 0, "GUEST_LDTR_LIMIT": 0,
            "GUEST_LDTR_AR_BYTES": 0x10000,
        })
        self.set_segments(s, ring=0)
        m.set_state(s)

    @staticmethod
    def set_segments(s: dict, ring: int) -> None:
        cs, ds, car, dar = (KCODE, KDATA, 0xA09B, 0xC093) if ring == 0 else (UCODE, UDATA, 0xA0FB, 0xC0F3)
        for seg in ("ES", "CS", "SS", "DS", "FS", "GS"):
            sel, ar = (cs, car) if seg == "CS" else (ds, dar)
            s[f"GUEST_{seg}_SELECTOR"] = sel
            s[f"GUEST_{seg}_BASE"] = 0
            s[f"GUEST_{seg}_LIMIT"] = 0xFFFFFFFF
            s[f"GUEST_{seg}_AR_BYTES"] = ar

    def user_mode(self, rsp: int = USTACK) -> None:
        s = self.m.get_state()
        self.set_segments(s, ring=3)
        s["GUEST_RSP"] = rsp
        self.m.set_state(s)

    def set_gate(self, vector: int, target: int, ist: int = 0, dpl: int = 0, trap: bool = False) -> None:
        gtype = 0xF if trap else 0xE
        lo = (target & 0xFFFF) | (KCODE << 16) | (ist << 32) | ((0x80 | (dpl << 5) | gtype) << 40) \
            | (((target >> 16) & 0xFFFF) << 48)
        self.m.load(IDT + 16 * vector, q(lo) + q(target >> 32))

    def code(self, source: str, at: int = CODE):
        a = asm(source, at)
        self.m.load(at, a.code)
        return a

    def handler(self, vector: int, source: str, ist: int = 0, dpl: int = 0, trap: bool = False):
        at = HANDLERS + 0x100 * vector
        a = self.code(source, at)
        self.set_gate(vector, at, ist, dpl, trap)
        return a

    def state(self, key: str) -> int:
        return self.m.get_state()[key]

    def reg(self, name: str) -> int:
        return self.m.get_state()[name]

    def q(self, address: int) -> int:
        return self.m.mem.read64(address)

    def set_pte(self, index: int, value: int) -> None:
        self.m.mem.write64(pte(index), value)
        self.m.flush_tlb()

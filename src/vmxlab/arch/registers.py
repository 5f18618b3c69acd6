"""Control registers, RFLAGS and debug registers: bit layouts and masks.

Source: Intel SDM Vol. 3A "Control Registers", "EFLAGS Register" (Vol. 1),
"Debug Registers"; Vol. 3A "Memory Types" (PAT / MTRR type encodings).
"""
from __future__ import annotations

from .layout import Bits, Layout

CR0 = Layout("CR0", (
    Bits("PE", 0), Bits("MP", 1), Bits("EM", 2), Bits("TS", 3), Bits("ET", 4),
    Bits("NE", 5), Bits("WP", 16), Bits("AM", 18), Bits("NW", 29), Bits("CD", 30),
    Bits("PG", 31),
), section="Control Registers")
CR0_PE, CR0_MP, CR0_EM, CR0_TS, CR0_ET, CR0_NE = 1, 2, 4, 8, 0x10, 0x20
CR0_WP, CR0_AM, CR0_NW, CR0_CD, CR0_PG = 1 << 16, 1 << 18, 1 << 29, 1 << 30, 1 << 31

CR4 = Layout("CR4", (
    Bits("VME", 0), Bits("PVI", 1), Bits("TSD", 2), Bits("DE", 3), Bits("PSE", 4),
    Bits("PAE", 5), Bits("MCE", 6), Bits("PGE", 7), Bits("PCE", 8), Bits("OSFXSR", 9),
    Bits("OSXMMEXCPT", 10), Bits("UMIP", 11), Bits("LA57", 12), Bits("VMXE", 13),
    Bits("SMXE", 14), Bits("FSGSBASE", 16), Bits("PCIDE", 17), Bits("OSXSAVE", 18),
    Bits("KL", 19), Bits("SMEP", 20), Bits("SMAP", 21), Bits("PKE", 22), Bits("CET", 23),
    Bits("PKS", 24), Bits("UINTR", 25), Bits("LASS", 27), Bits("LAM_SUP", 28),
    Bits("FRED", 32),
), section="Control Registers")
CR4_VME, CR4_PVI, CR4_DE, CR4_PSE, CR4_PAE, CR4_PGE = 1, 2, 8, 0x10, 0x20, 0x80
CR4_LA57, CR4_VMXE, CR4_SMXE = 1 << 12, 1 << 13, 1 << 14
CR4_FSGSBASE, CR4_PCIDE, CR4_OSXSAVE, CR4_SMEP, CR4_SMAP = 1 << 16, 1 << 17, 1 << 18, 1 << 20, 1 << 21
CR4_PKE, CR4_CET, CR4_PKS, CR4_FRED = 1 << 22, 1 << 23, 1 << 24, 1 << 32

RFLAGS = Layout("RFLAGS", (
    Bits("CF", 0), Bits("reserved1", 1), Bits("PF", 2), Bits("AF", 4), Bits("ZF", 6),
    Bits("SF", 7), Bits("TF", 8), Bits("IF", 9), Bits("DF", 10), Bits("OF", 11),
    Bits("IOPL", 12, 13), Bits("NT", 14), Bits("RF", 16), Bits("VM", 17), Bits("AC", 18),
    Bits("VIF", 19), Bits("VIP", 20), Bits("ID", 21),
), section="EFLAGS Register")
RFLAGS_CF, RFLAGS_FIXED1, RFLAGS_PF, RFLAGS_AF, RFLAGS_ZF, RFLAGS_SF = 1, 2, 4, 0x10, 0x40, 0x80
RFLAGS_TF, RFLAGS_IF, RFLAGS_DF, RFLAGS_OF = 0x100, 0x200, 0x400, 0x800
RFLAGS_IOPL, RFLAGS_NT, RFLAGS_RF, RFLAGS_VM, RFLAGS_AC = 0x3000, 0x4000, 1 << 16, 1 << 17, 1 << 18
RFLAGS_VIF, RFLAGS_VIP, RFLAGS_ID = 1 << 19, 1 << 20, 1 << 21
# Bits 63:22, 15, 5 and 3 are reserved and must be 0; bit 1 must be 1.
RFLAGS_RESERVED = ~0x3F7FD7 & 0xFFFFFFFFFFFFFFFF

DR7 = Layout("DR7", (
    Bits("L0", 0), Bits("G0", 1), Bits("L1", 2), Bits("G1", 3), Bits("L2", 4),
    Bits("G2", 5), Bits("L3", 6), Bits("G3", 7), Bits("LE", 8), Bits("GE", 9),
    Bits("reserved1", 10), Bits("RTM", 11), Bits("GD", 13),
    Bits("RW0", 16, 17), Bits("LEN0", 18, 19), Bits("RW1", 20, 21), Bits("LEN1", 22, 23),
    Bits("RW2", 24, 25), Bits("LEN2", 26, 27), Bits("RW3", 28, 29), Bits("LEN3", 30, 31),
), section="Debug Registers")
DR7_INIT = 0x400
DR6_INIT = 0xFFFF0FF0
DR7_GD = 1 << 13
DR6_BD = 1 << 13                # debug-register access detected (DR7.GD)
DR6_B0_B3 = 0xF

MEMORY_TYPES = {0: "UC", 1: "WC", 4: "WT", 5: "WP", 6: "WB", 7: "UC-"}
MT_UC, MT_WC, MT_WT, MT_WP, MT_WB, MT_UC_MINUS = 0, 1, 4, 5, 6, 7

GPRS64 = ("RAX", "RCX", "RDX", "RBX", "RSP", "RBP", "RSI", "RDI",
          "R8", "R9", "R10", "R11", "R12", "R13", "R14", "R15")
SEGMENT_REGISTERS = ("ES", "CS", "SS", "DS", "FS", "GS")


def canonical(address: int, linear_bits: int = 48) -> bool:
    """True if bits 63:linear_bits-1 of address are all equal (Vol. 1 'Canonical Addressing')."""
    top = address >> (linear_bits - 1)
    return top == 0 or top == (1 << (65 - linear_bits)) - 1


def xcr0_problem(value: int, supported: int) -> str | None:
    """Why XSETBV would refuse `value` for XCR0 with #GP(0), or None (SDM Vol. 3A
    "Extended Control Registers (Including XCR0)"; "XSETBV", Protected Mode
    Exceptions).  `supported` is CPUID.(EAX=0DH,ECX=0):EDX:EAX."""
    if value & ~supported:
        return f"bits {value & ~supported:#x} are not supported"
    if not value & 1:
        return "bit 0 (x87) must be 1"
    if value & 4 and not value & 2:
        return "AVX (bit 2) needs SSE (bit 1)"
    if bool(value & 8) != bool(value & 0x10):
        return "BNDREGS and BNDCSR (bits 4:3) must be equal"
    if value & 0xE0 and (value & 0xE0 != 0xE0 or value & 6 != 6):
        return "AVX-512 state (bits 7:5) must be 000b, or 111b with bits 2:1 = 11b"
    if bool(value & (1 << 17)) != bool(value & (1 << 18)):
        return "AMX TILECFG and TILEDATA (bits 18:17) must be equal"
    return None

"""Register identities: vmxlab names, unicorn register ids, iced-x86 registers.

The fast paths use `RegBatch` groups defined here: GPRS (the 16 general
registers in arch.registers.GPRS64 order, then RIP and RFLAGS) and CONTROL
(CR0, CR2, CR3, CR4, DR0-DR3, DR6, DR7).  `GPR_INDEX[name]` is the position of a
register in the GPRS batch; `ICED_GPR[iced register]` gives (batch index, width
in bytes, shift) for any 8/16/32/64-bit general register operand, following
"General-Purpose Registers in 64-Bit Mode" (32-bit writes zero the upper half,
8/16-bit writes merge; AH..BH are bits 15:8).
"""
from __future__ import annotations

import iced_x86 as I

from ..arch.registers import GPRS64
from .unicorn_ffi import X

UC_GPR = {
    "RAX": X.UC_X86_REG_RAX, "RCX": X.UC_X86_REG_RCX, "RDX": X.UC_X86_REG_RDX, "RBX": X.UC_X86_REG_RBX,
    "RSP": X.UC_X86_REG_RSP, "RBP": X.UC_X86_REG_RBP, "RSI": X.UC_X86_REG_RSI, "RDI": X.UC_X86_REG_RDI,
    **{f"R{n}": getattr(X, f"UC_X86_REG_R{n}") for n in range(8, 16)},
}
GPRS_NAMES = (*GPRS64, "RIP", "RFLAGS")
GPRS_IDS = tuple(UC_GPR[n] for n in GPRS64) + (X.UC_X86_REG_RIP, X.UC_X86_REG_RFLAGS)
GPR_INDEX = {n: i for i, n in enumerate(GPRS_NAMES)}
RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI = range(8)
RIP, RFLAGS = 16, 17

CONTROL_NAMES = ("CR0", "CR2", "CR3", "CR4", "DR0", "DR1", "DR2", "DR3", "DR6", "DR7")
CONTROL_IDS = (X.UC_X86_REG_CR0, X.UC_X86_REG_CR2, X.UC_X86_REG_CR3, X.UC_X86_REG_CR4,
               X.UC_X86_REG_DR0, X.UC_X86_REG_DR1, X.UC_X86_REG_DR2, X.UC_X86_REG_DR3,
               X.UC_X86_REG_DR6, X.UC_X86_REG_DR7)
CR0, CR2, CR3, CR4, DR0, DR1, DR2, DR3, DR6, DR7 = range(10)
# CONTROL registers that the CONTROL batch reads but never writes (each has its own
# write path with QEMU's side effects: TLB flushes, mode changes)
PAGING_IDS = (X.UC_X86_REG_CR0, X.UC_X86_REG_CR3, X.UC_X86_REG_CR4)

# What the TLB fill needs, in one batch.
FILL_IDS = (X.UC_X86_REG_CR0, X.UC_X86_REG_CR3, X.UC_X86_REG_CR4, X.UC_X86_REG_RFLAGS, X.UC_X86_REG_CS,
            X.UC_X86_REG_RIP)
F_CR0, F_CR3, F_CR4, F_RFLAGS, F_CS, F_RIP = range(6)


def _iced_gprs() -> dict[int, tuple[int, int, int]]:
    R = I.Register
    out: dict[int, tuple[int, int, int]] = {}
    names64 = ["RAX", "RCX", "RDX", "RBX", "RSP", "RBP", "RSI", "RDI"] + [f"R{n}" for n in range(8, 16)]
    names32 = ["EAX", "ECX", "EDX", "EBX", "ESP", "EBP", "ESI", "EDI"] + [f"R{n}D" for n in range(8, 16)]
    names16 = ["AX", "CX", "DX", "BX", "SP", "BP", "SI", "DI"] + [f"R{n}W" for n in range(8, 16)]
    names8 = ["AL", "CL", "DL", "BL", "SPL", "BPL", "SIL", "DIL"] + [f"R{n}L" for n in range(8, 16)]
    for i in range(16):
        out[getattr(R, names64[i])] = (i, 8, 0)
        out[getattr(R, names32[i])] = (i, 4, 0)
        out[getattr(R, names16[i])] = (i, 2, 0)
        out[getattr(R, names8[i])] = (i, 1, 0)
    for i, n in enumerate(("AH", "CH", "DH", "BH")):
        out[getattr(R, n)] = (i, 1, 8)
    return out


ICED_GPR = _iced_gprs()

# iced segment registers -> context-blob cache slot (ES, CS, SS, DS, FS, GS = 0..5)
ICED_SEGMENT = {I.Register.ES: 0, I.Register.CS: 1, I.Register.SS: 2, I.Register.DS: 3,
                I.Register.FS: 4, I.Register.GS: 5}

# iced control / debug registers -> number
ICED_CR = {getattr(I.Register, f"CR{n}"): n for n in range(16)}
ICED_DR = {getattr(I.Register, f"DR{n}"): n for n in range(16)}


def merge_gpr(old: int, value: int, width: int, shift: int) -> int:
    """The 64-bit register after writing `value` to a `width`-byte part at `shift`."""
    if width == 8:
        return value & 0xFFFFFFFFFFFFFFFF
    if width == 4:
        return value & 0xFFFFFFFF
    mask = ((1 << (8 * width)) - 1) << shift
    return (old & ~mask) | ((value << shift) & mask)


def extract_gpr(full: int, width: int, shift: int) -> int:
    return (full >> shift) & ((1 << (8 * width)) - 1)

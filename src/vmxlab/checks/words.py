"""Wording of violation messages: bit names, hex values, ranges.

Messages name the field, its value and what is required; fixed and reserved bits
are named (CR0/CR4 bits by their register names, control bits by their Linux names).
Only failing rules build messages, so nothing here is on the hot path.
"""
from __future__ import annotations

from ..arch import controls as C
from ..arch import registers as R

_CR_NAMES = {
    "CR0": {b.lo: b.name for b in R.CR0.parts},
    "CR4": {b.lo: b.name for b in R.CR4.parts},
    "RFLAGS": {b.lo: b.name for b in R.RFLAGS.parts if b.width == 1},
}


def bit_list(mask: int, names: dict[int, str] | None = None) -> str:
    """'VMXE (bit 13), bit 40' for the set bits of mask; runs of unnamed bits as 'bits 63:32'."""
    names = names or {}
    out: list[str] = []
    bit = 0
    while mask >> bit:
        if not mask >> bit & 1:
            bit += 1
            continue
        if bit in names:
            out.append(f"{names[bit]} (bit {bit})")
            bit += 1
            continue
        top = bit
        while mask >> (top + 1) & 1 and (top + 1) not in names:
            top += 1
        out.append(f"bit {bit}" if top == bit else f"bits {top}:{bit}")
        bit = top + 1
    return ", ".join(out)


def reg_bits(register: str, mask: int) -> str:
    return bit_list(mask, _CR_NAMES.get(register))


def control_bits(field: str, mask: int) -> str:
    """Control bits by Linux name and number: 'PIN_BASED_NMI_EXITING (bit 3)';
    bits the SDM does not name as 'bits 1, 2, 4'."""
    named = {c.bit: c.name for c in C.bits_of(field)}
    parts, unnamed = [], []
    for b in range(64):
        if mask >> b & 1:
            if b in named:
                parts.append(f"{named[b]} (bit {b})")
            else:
                unnamed.append(str(b))
    if unnamed:
        parts.append(("bit " if len(unnamed) == 1 else "bits ") + ", ".join(unnamed))
    return ", ".join(parts)


def hexv(value: int) -> str:
    return f"{value:#x}"

"""Segment selectors, descriptors and VMCS access rights.

Sources: Intel SDM Vol. 3A "Segment Selectors", "Segment Descriptors", "System
Descriptor Types", "Segment Descriptor Tables" (16-byte system descriptors in
IA-32e mode); Vol. 3C "Guest Register State" (format of the access-rights field:
bits 3:0 type, 4 S, 6:5 DPL, 7 P, 11:8 reserved, 12 AVL, 13 L, 14 D/B, 15 G,
16 segment unusable, 31:17 reserved).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from .layout import Bits, Layout

AR = Layout("Access rights", (
    Bits("type", 0, 3),
    Bits("S", 4, doc="descriptor type: 0 system, 1 code or data"),
    Bits("DPL", 5, 6),
    Bits("P", 7),
    Bits("reserved_11_8", 8, 11),
    Bits("AVL", 12),
    Bits("L", 13, doc="64-bit mode active (CS only)"),
    Bits("DB", 14, doc="default operation size"),
    Bits("G", 15, doc="granularity"),
    Bits("unusable", 16),
    Bits("reserved_31_17", 17, 31),
), section="Guest Register State")

AR_TYPE, AR_S, AR_DPL, AR_P = 0xF, 1 << 4, 3 << 5, 1 << 7
AR_AVL, AR_L, AR_DB, AR_G, AR_UNUSABLE = 1 << 12, 1 << 13, 1 << 14, 1 << 15, 1 << 16
AR_RESERVED = 0xF00 | 0xFFFE0000

# Code/data type bits (S = 1): bit 0 accessed, bit 1 readable (code) / writable
# (data), bit 2 conforming (code) / expand-down (data), bit 3 code.
TYPE_ACCESSED, TYPE_RW, TYPE_CE, TYPE_CODE = 1, 2, 4, 8

# System types (S = 0), IA-32e mode meaning.
SYSTEM_TYPES = {
    1: "16-bit TSS (available)", 2: "LDT", 3: "16-bit TSS (busy)", 4: "16-bit call gate",
    5: "task gate", 6: "16-bit interrupt gate", 7: "16-bit trap gate",
    9: "32/64-bit TSS (available)", 11: "32/64-bit TSS (busy)", 12: "32/64-bit call gate",
    14: "32/64-bit interrupt gate", 15: "32/64-bit trap gate",
}
TYPE_LDT, TYPE_TSS16_BUSY, TYPE_TSS_AVAILABLE, TYPE_TSS_BUSY = 2, 3, 9, 11
TYPE_INTERRUPT_GATE, TYPE_TRAP_GATE = 14, 15
CODE_DATA_TYPES = {
    0: "data RO", 1: "data RO accessed", 2: "data RW", 3: "data RW accessed",
    4: "data RO expand-down", 5: "data RO expand-down accessed",
    6: "data RW expand-down", 7: "data RW expand-down accessed",
    8: "code XO", 9: "code XO accessed", 10: "code XR", 11: "code XR accessed",
    12: "code XO conforming", 13: "code XO conforming accessed",
    14: "code XR conforming", 15: "code XR conforming accessed",
}


def selector_index(selector: int) -> int:
    return (selector >> 3) & 0x1FFF


def selector_ti(selector: int) -> int:
    return (selector >> 2) & 1


def selector_rpl(selector: int) -> int:
    return selector & 3


def host_selector(selector: int) -> int:
    """A selector with RPL and TI cleared, as the host-state area requires.

    The mask is `& ~7` over 16 bits; the seed's `and eax, 0f8h` also clears bits
    15:8 and truncates selectors 0x100 and above.
    """
    return selector & 0xFFF8


def is_null(selector: int) -> bool:
    """Null selector: index 0 in the GDT (TI = 0); RPL does not matter."""
    return selector & 0xFFFC == 0


@dataclass(frozen=True)
class Segment:
    """A segment register with its hidden part, in VMCS terms."""
    selector: int
    base: int
    limit: int      # byte-granular limit (scaled by G)
    ar: int         # VMCS access rights (bit 16 = unusable)

    @property
    def unusable(self) -> bool:
        return bool(self.ar & AR_UNUSABLE)


UNUSABLE = AR_UNUSABLE


def is_system_16byte(type_: int, s: int, long_mode: bool) -> bool:
    """In IA-32e mode LDT, TSS, call-gate, interrupt- and trap-gate descriptors are 16 bytes."""
    return long_mode and s == 0 and type_ in (2, 9, 11, 12, 14, 15)


def decode_descriptor(raw: bytes, long_mode: bool = True) -> tuple[int, int, int]:
    """(base, scaled limit, access rights) of an 8- or 16-byte segment descriptor.

    `raw` holds at least 8 bytes; 16 for system descriptors in IA-32e mode (the
    upper 4 bytes of the base come from bytes 8-11).  Access rights are in VMCS
    format with bits 11:8 zero; a descriptor with P = 0 is still decoded (its
    usability is the loader's decision, not the descriptor's).
    """
    if len(raw) < 8:
        raise ValueError("a segment descriptor has at least 8 bytes")
    lo, hi = struct.unpack_from("<II", raw)
    limit = (lo & 0xFFFF) | (hi & 0xF0000)
    base = (lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF000000)
    ar = ((hi >> 8) & 0xFF) | ((hi >> 8) & 0xF000)
    if ar & AR_G:
        limit = (limit << 12) | 0xFFF
    if is_system_16byte(ar & 0xF, (ar >> 4) & 1, long_mode):
        if len(raw) < 16:
            raise ValueError("a 64-bit system descriptor has 16 bytes")
        base |= struct.unpack_from("<I", raw, 8)[0] << 32
    return base, limit, ar


def encode_descriptor(base: int, limit: int, ar: int, long_mode: bool = True) -> bytes:
    """Inverse of decode_descriptor: 8 bytes, or 16 for IA-32e system descriptors.

    A limit above 0xFFFFF must be given with G = 1 in `ar` and have its low 12 bits
    all ones.
    """
    if ar & (AR_RESERVED | AR_UNUSABLE):
        raise ValueError(f"access rights {ar:#x} have reserved or unusable bits set")
    raw_limit = limit
    if ar & AR_G:
        if limit & 0xFFF != 0xFFF:
            raise ValueError(f"limit {limit:#x} with G=1 must end in 0xfff")
        raw_limit = limit >> 12
    if raw_limit > 0xFFFFF:
        raise ValueError(f"limit {limit:#x} does not fit a descriptor")
    lo = (raw_limit & 0xFFFF) | ((base & 0xFFFF) << 16)
    hi = ((base >> 16) & 0xFF) | ((ar & 0xFF) << 8) | (raw_limit & 0xF0000) \
        | ((ar & 0xF000) << 8) | (base & 0xFF000000)
    out = struct.pack("<II", lo, hi)
    if is_system_16byte(ar & 0xF, (ar >> 4) & 1, long_mode):
        out += struct.pack("<II", (base >> 32) & 0xFFFFFFFF, 0)
    elif base >> 32:
        raise ValueError(f"base {base:#x} needs a 16-byte system descriptor")
    return out


def segment_from_table(table: bytes, selector: int, long_mode: bool = True) -> Segment:
    """The segment a selector designates in a descriptor table given as bytes.

    Null selectors give an unusable segment (access rights 0x10000), as VMX
    records them.  A selector beyond the table raises ValueError.
    """
    if is_null(selector) and not selector_ti(selector):
        return Segment(selector, 0, 0, AR_UNUSABLE)
    offset = selector_index(selector) * 8
    if offset + 8 > len(table):
        raise ValueError(f"selector {selector:#06x} is beyond the table ({len(table)} bytes)")
    base, limit, ar = decode_descriptor(table[offset:offset + 16], long_mode)
    return Segment(selector, base, limit, ar)


def describe_ar(ar: int) -> str:
    """One line: 'code XR accessed, DPL 0, P, L, G' or 'unusable'."""
    parts = []
    if ar & AR_UNUSABLE:
        parts.append("unusable")
    s = (ar >> 4) & 1
    t = ar & 0xF
    parts.append(CODE_DATA_TYPES[t] if s else SYSTEM_TYPES.get(t, f"reserved system type {t}"))
    parts.append(f"DPL {(ar >> 5) & 3}")
    for bit, name in ((AR_P, "P"), (AR_AVL, "AVL"), (AR_L, "L"), (AR_DB, "D/B"), (AR_G, "G")):
        if ar & bit:
            parts.append(name)
    if ar & AR_RESERVED:
        parts.append(f"reserved bits {ar & AR_RESERVED:#x}")
    return ", ".join(parts)

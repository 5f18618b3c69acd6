"""Checks on guest segment registers (Intel SDM Vol. 3C "Checks on Guest Segment
Registers"), in the SDM's order: selectors, bases, limits, access rights.  Any
failure: VM-entry failure, exit reason 33, qualification 0.

The guest will be in virtual-8086 mode when RFLAGS.VM (bit 17) is 1 in the guest
RFLAGS field; a segment is unusable when bit 16 of its access rights is 1.  The
checks are those for a processor that supports Intel 64 architecture.
"""
from __future__ import annotations

from ..arch import fields as F
from ..arch.registers import RFLAGS_VM
from ..arch.segments import AR_UNUSABLE, describe_ar
from .registry import GUEST, S_GUEST_SEG, add

RFLAGS, ENTRY, SEC, CPU, CR0 = ("GUEST_RFLAGS", "VM_ENTRY_CONTROLS", "SECONDARY_VM_EXEC_CONTROL",
                                "CPU_BASED_VM_EXEC_CONTROL", "GUEST_CR0")
_RFLAGS, _CR0 = F.GUEST_RFLAGS, F.GUEST_CR0
_VM = RFLAGS_VM
_UNUSABLE = AR_UNUSABLE


def _g(id, fields, fn, **kw):
    add(id, S_GUEST_SEG, GUEST, fields, fn, **kw)


def _v86(v, e):
    """Guard of the virtual-8086 rules."""
    return v[_RFLAGS] & _VM


def _names(seg: str) -> dict[str, str]:
    return {p: f"GUEST_{seg}_{p}" for p in ("SELECTOR", "BASE", "LIMIT", "AR_BYTES")}


def _encs(seg: str) -> tuple[int, int, int, int]:
    n = _names(seg)
    return tuple(F.by_name(n[p]).encoding for p in ("SELECTOR", "BASE", "LIMIT", "AR_BYTES"))  # type: ignore[return-value]


_ES, _CS, _SS, _DS, _FS, _GS, _LDTR, _TR = (_encs(s) for s in ("ES", "CS", "SS", "DS", "FS", "GS", "LDTR", "TR"))
SEGS6 = ("CS", "SS", "DS", "ES", "FS", "GS")
ENC = {"ES": _ES, "CS": _CS, "SS": _SS, "DS": _DS, "FS": _FS, "GS": _GS, "LDTR": _LDTR, "TR": _TR}


# ---- selectors ------------------------------------------------------------------------------
def _tr_ti(v, k, e):
    return "the TI flag (bit 2) of the TR selector must be 0" if v[_TR[0]] & 4 else None


def _ldtr_ti(v, k, e):
    if not v[_LDTR[3]] & _UNUSABLE and v[_LDTR[0]] & 4:
        return "the TI flag (bit 2) of the LDTR selector must be 0 (LDTR is usable)"
    return None


def _ss_rpl(v, k, e):
    if not v[_RFLAGS] & _VM and not e.ug and (v[_SS[0]] ^ v[_CS[0]]) & 3:
        return (f"the RPL of SS ({v[_SS[0]] & 3}) must equal the RPL of CS ({v[_CS[0]] & 3}) "
                "(not virtual-8086, unrestricted guest 0)")
    return None


_g("guest.tr.selector_ti", ("GUEST_TR_SELECTOR",), _tr_ti)
_g("guest.ldtr.selector_ti", ("GUEST_LDTR_SELECTOR", "GUEST_LDTR_AR_BYTES"), _ldtr_ti)
_g("guest.ss.selector_rpl", ("GUEST_SS_SELECTOR", "GUEST_CS_SELECTOR", RFLAGS, SEC, CPU), _ss_rpl)


# ---- bases ------------------------------------------------------------------------------------
def _base_v86(seg: str):
    sel, base, _, _ = ENC[seg]

    def fn(v, k, e):
        if v[_RFLAGS] & _VM and v[base] != v[sel] << 4:
            return f"in virtual-8086 mode the base must be the selector times 16 ({v[sel] << 4:#x})"
        return None
    _g(f"guest.{seg.lower()}.base_v86", (f"GUEST_{seg}_BASE", f"GUEST_{seg}_SELECTOR", RFLAGS), fn, guard=_v86)


for _s in SEGS6:
    _base_v86(_s)


def _base_canonical(seg: str, if_usable: bool):
    _, base, _, ar = ENC[seg]

    def fn(v, k, e):
        if if_usable and v[ar] & _UNUSABLE:
            return None
        top = v[base] >> k.canon_shift
        if top and top != k.canon_ones:
            return f"the base must be canonical ({k.linear_bits}-bit linear addresses)"
        return None
    fields = (f"GUEST_{seg}_BASE",) + ((f"GUEST_{seg}_AR_BYTES",) if if_usable else ())
    _g(f"guest.{seg.lower()}.base_canonical", fields, fn)


for _s in ("TR", "FS", "GS"):
    _base_canonical(_s, False)
_base_canonical("LDTR", True)


def _base_upper(seg: str, if_usable: bool):
    _, base, _, ar = ENC[seg]

    def fn(v, k, e):
        if if_usable and v[ar] & _UNUSABLE:
            return None
        if v[base] >> 32:
            return "bits 63:32 of the base must be 0" + (" (the segment is usable)" if if_usable else "")
        return None
    fields = (f"GUEST_{seg}_BASE",) + ((f"GUEST_{seg}_AR_BYTES",) if if_usable else ())
    _g(f"guest.{seg.lower()}.base_upper", fields, fn)


_base_upper("CS", False)
for _s in ("SS", "DS", "ES"):
    _base_upper(_s, True)


# ---- limits -------------------------------------------------------------------------------------
def _limit_v86(seg: str):
    _, _, limit, _ = ENC[seg]

    def fn(v, k, e):
        if v[_RFLAGS] & _VM and v[limit] != 0xFFFF:
            return "in virtual-8086 mode the limit must be 0000FFFFH"
        return None
    _g(f"guest.{seg.lower()}.limit_v86", (f"GUEST_{seg}_LIMIT", RFLAGS), fn, guard=_v86)


for _s in SEGS6:
    _limit_v86(_s)


# ---- access rights ---------------------------------------------------------------------------------
def _ar_v86(seg: str):
    ar = ENC[seg][3]

    def fn(v, k, e):
        if v[_RFLAGS] & _VM and v[ar] != 0xF3:
            return "in virtual-8086 mode the access rights must be 000000F3H"
        return None
    _g(f"guest.{seg.lower()}.ar_v86", (f"GUEST_{seg}_AR_BYTES", RFLAGS), fn, guard=_v86)


for _s in SEGS6:
    _ar_v86(_s)


ALWAYS, USABLE, NOT_V86, USABLE_NOT_V86 = 0, 1, 2, 3


def _common_ar_rules(seg: str, when: int) -> dict:
    """S, P, reserved 11:8, G, reserved 31:17 of a segment, checked when `when`
    holds: ALWAYS, USABLE (bit 16 clear), NOT_V86 (RFLAGS.VM clear) or both.
    (The condition is written into each rule rather than called: these rules run
    on every VM entry.)"""
    _, _, limit, ar = ENC[seg]
    ar_name, limit_name = f"GUEST_{seg}_AR_BYTES", f"GUEST_{seg}_LIMIT"
    system = seg in ("TR", "LDTR")
    skip_unusable = when & USABLE
    skip_v86 = when & NOT_V86

    def s_bit(v, k, e):
        a = v[ar]
        if (skip_unusable and a & _UNUSABLE) or (skip_v86 and v[_RFLAGS] & _VM):
            return None
        if bool(a & 0x10) == system:
            return f"S (bit 4) must be {0 if system else 1} ({describe_ar(a)})"
        return None

    def p_bit(v, k, e):
        a = v[ar]
        if (skip_unusable and a & _UNUSABLE) or (skip_v86 and v[_RFLAGS] & _VM):
            return None
        return None if a & 0x80 else "P (bit 7) must be 1 (present)"

    def rsvd_lo(v, k, e):
        a = v[ar]
        if (skip_unusable and a & _UNUSABLE) or (skip_v86 and v[_RFLAGS] & _VM):
            return None
        return "reserved bits 11:8 must be 0" if a & 0xF00 else None

    def g_bit(v, k, e):
        a = v[ar]
        if (skip_unusable and a & _UNUSABLE) or (skip_v86 and v[_RFLAGS] & _VM):
            return None
        lim = v[limit]
        if a & 0x8000:
            if lim & 0xFFF != 0xFFF:
                return f"G (bit 15) must be 0: limit {lim:#x} has a 0 in bits 11:0"
        elif lim >> 20:
            return f"G (bit 15) must be 1: limit {lim:#x} has a 1 in bits 31:20"
        return None

    def rsvd_hi(v, k, e):
        a = v[ar]
        if (skip_unusable and a & _UNUSABLE) or (skip_v86 and v[_RFLAGS] & _VM):
            return None
        return "reserved bits 31:17 must be 0" if a & 0xFFFE0000 else None

    # The SDM lists S, DPL, P, reserved 11:8, (D/B,) G, reserved 31:17 per register;
    # type and DPL rules are registered by the caller around these.
    return {"s": (s_bit, (ar_name,)), "p": (p_bit, (ar_name,)), "rsvd_lo": (rsvd_lo, (ar_name,)),
            "g": (g_bit, (ar_name, limit_name)), "rsvd_hi": (rsvd_hi, (ar_name,))}


def _reg(seg: str, name: str, entry: tuple, extra: tuple[str, ...] = (), guard=None) -> None:
    fn, fields = entry
    _g(f"guest.{seg.lower()}.ar_{name}", (*fields, *extra), fn, field=f"GUEST_{seg}_AR_BYTES", guard=guard)


# CS (not virtual-8086)
_CS_AR = _CS[3]
_SS_AR = _SS[3]


def _cs_type(v, k, e):
    if not v[_RFLAGS] & _VM:
        a = v[_CS_AR]
        t = a & 0xF
        if t not in (9, 11, 13, 15) and not (e.ug and t == 3):
            allowed = "3, 9, 11, 13 or 15" if e.ug else "9, 11, 13 or 15 (accessed code)"
            return f"type {t} ({describe_ar(a)}) must be {allowed}"
    return None


def _cs_dpl(v, k, e):
    if not v[_RFLAGS] & _VM:
        a, ss = v[_CS_AR], v[_SS_AR]
        t, dpl, ss_dpl = a & 0xF, a >> 5 & 3, ss >> 5 & 3
        if t == 3 and e.ug and dpl != 0:
            return "DPL must be 0 for a type-3 (data) CS with unrestricted guest"
        if t in (9, 11) and dpl != ss_dpl:
            return f"DPL ({dpl}) of a non-conforming code segment must equal the DPL of SS ({ss_dpl})"
        if t in (13, 15) and dpl > ss_dpl:
            return f"DPL ({dpl}) of a conforming code segment cannot be greater than the DPL of SS ({ss_dpl})"
    return None


def _cs_db(v, k, e):
    if not v[_RFLAGS] & _VM and e.ia32e:
        a = v[_CS_AR]
        if a & 0x2000 and a & 0x4000:
            return "D/B (bit 14) must be 0 when L (bit 13) is 1 and IA-32e mode guest is 1"
    return None


# SS (not virtual-8086)
def _usable_not_v86(v, a):
    return not a & _UNUSABLE and not v[_RFLAGS] & _VM


def _ss_type(v, k, e):
    a = v[_SS_AR]
    if _usable_not_v86(v, a) and a & 0xF not in (3, 7):
        return f"type {a & 0xF} ({describe_ar(a)}) must be 3 or 7 (read/write accessed data)"
    return None


def _ss_dpl_rpl(v, k, e):
    if not v[_RFLAGS] & _VM and not e.ug:
        a = v[_SS_AR]
        if a >> 5 & 3 != v[_SS[0]] & 3:
            return f"DPL ({a >> 5 & 3}) must equal the RPL of the SS selector ({v[_SS[0]] & 3}) (unrestricted guest 0)"
    return None


def _ss_dpl_zero(v, k, e):
    if not v[_RFLAGS] & _VM:
        a = v[_SS_AR]
        if a & 0x60 and (v[_CS_AR] & 0xF == 3 or not v[_CR0] & 1):
            why = "the CS type is 3" if v[_CS_AR] & 0xF == 3 else "CR0.PE is 0"
            return f"DPL must be 0: {why}"
    return None


# DS, ES, FS, GS (usable, not virtual-8086)
def _data_type(seg: str):
    ar = ENC[seg][3]

    def type_(v, k, e):
        a = v[ar]
        if _usable_not_v86(v, a):
            t = a & 0xF
            if not t & 1:
                return f"type {t} ({describe_ar(a)}): the accessed bit (bit 0) must be 1"
            if t & 8 and not t & 2:
                return f"type {t} ({describe_ar(a)}): a code segment must be readable (bit 1)"
        return None
    return type_


def _data_dpl(seg: str):
    sel, _, _, ar = ENC[seg]

    def dpl(v, k, e):
        a = v[ar]
        if _usable_not_v86(v, a) and not e.ug and a & 0xF <= 11 and a >> 5 & 3 < v[sel] & 3:
            return (f"DPL ({a >> 5 & 3}) cannot be less than the selector's RPL ({v[sel] & 3}) "
                    "(unrestricted guest 0, type 0-11)")
        return None
    return dpl


def _not_v86(v, e):
    """Guard of the access-rights rules for a guest not in virtual-8086 mode."""
    return not v[_RFLAGS] & _VM


# The SDM orders these checks by sub-field (Type, S, DPL, P, reserved 11:8, D/B, G,
# reserved 31:17), each for CS, SS, then DS, ES, FS, GS.
_DATA = ("DS", "ES", "FS", "GS")
_COMMON = {"CS": _common_ar_rules("CS", NOT_V86), "SS": _common_ar_rules("SS", USABLE_NOT_V86),
           **{seg: _common_ar_rules(seg, USABLE_NOT_V86) for seg in _DATA}}
_RF = (RFLAGS,)
_NV = {"guard": _not_v86}


def _ar_of(seg: str) -> str:
    return f"GUEST_{seg}_AR_BYTES"


# Type
_g("guest.cs.ar_type", ("GUEST_CS_AR_BYTES", RFLAGS, SEC, CPU), _cs_type, **_NV)
_g("guest.ss.ar_type", ("GUEST_SS_AR_BYTES", RFLAGS), _ss_type, **_NV)
for _s in _DATA:
    _g(f"guest.{_s.lower()}.ar_type", (_ar_of(_s), RFLAGS), _data_type(_s), **_NV)
# S
for _s in ("CS", "SS", *_DATA):
    _reg(_s, "s", _COMMON[_s]["s"], _RF, _not_v86)
# DPL
_g("guest.cs.ar_dpl", ("GUEST_CS_AR_BYTES", "GUEST_SS_AR_BYTES", RFLAGS, SEC, CPU), _cs_dpl, **_NV)
_g("guest.ss.ar_dpl_rpl", ("GUEST_SS_AR_BYTES", "GUEST_SS_SELECTOR", RFLAGS, SEC, CPU), _ss_dpl_rpl, **_NV)
_g("guest.ss.ar_dpl_zero", ("GUEST_SS_AR_BYTES", "GUEST_CS_AR_BYTES", CR0, RFLAGS), _ss_dpl_zero, **_NV)
for _s in _DATA:
    _g(f"guest.{_s.lower()}.ar_dpl", (_ar_of(_s), f"GUEST_{_s}_SELECTOR", RFLAGS, SEC, CPU), _data_dpl(_s), **_NV)
# P, reserved 11:8
for _part, _name in (("p", "p"), ("rsvd_lo", "reserved_11_8")):
    for _s in ("CS", "SS", *_DATA):
        _reg(_s, _name, _COMMON[_s][_part], _RF, _not_v86)
# D/B (CS only)
_g("guest.cs.ar_db", ("GUEST_CS_AR_BYTES", RFLAGS, ENTRY), _cs_db, **_NV)
# G, reserved 31:17
for _part, _name in (("g", "g"), ("rsvd_hi", "reserved_31_17")):
    for _s in ("CS", "SS", *_DATA):
        _reg(_s, _name, _COMMON[_s][_part], _RF, _not_v86)


# TR (always checked)
_TR_AR = _TR[3]


def _tr_type(v, k, e):
    a = v[_TR_AR]
    t = a & 0xF
    if e.ia32e:
        if t != 11:
            return f"type {t} ({describe_ar(a)}) must be 11 (busy 64-bit TSS) in IA-32e mode"
    elif t not in (3, 11):
        return f"type {t} ({describe_ar(a)}) must be 3 (busy 16-bit TSS) or 11 (busy 32-bit TSS)"
    return None


def _tr_unusable(v, k, e):
    return "TR cannot be unusable (bit 16 must be 0)" if v[_TR_AR] & _UNUSABLE else None


_tr = _common_ar_rules("TR", ALWAYS)
_g("guest.tr.ar_type", ("GUEST_TR_AR_BYTES", ENTRY), _tr_type)
_reg("TR", "s", _tr["s"])
_reg("TR", "p", _tr["p"])
_reg("TR", "reserved_11_8", _tr["rsvd_lo"])
_reg("TR", "g", _tr["g"])
_g("guest.tr.ar_unusable", ("GUEST_TR_AR_BYTES",), _tr_unusable)
_reg("TR", "reserved_31_17", _tr["rsvd_hi"])

# LDTR (if usable)
_LDTR_AR = _LDTR[3]


def _ldtr_type(v, k, e):
    a = v[_LDTR_AR]
    if not a & _UNUSABLE and a & 0xF != 2:
        return f"type {a & 0xF} ({describe_ar(a)}) must be 2 (LDT)"
    return None


_ldtr = _common_ar_rules("LDTR", USABLE)


def _ldtr_usable(v, e):
    return not v[_LDTR_AR] & _UNUSABLE


_g("guest.ldtr.ar_type", ("GUEST_LDTR_AR_BYTES",), _ldtr_type, guard=_ldtr_usable)
_reg("LDTR", "s", _ldtr["s"], guard=_ldtr_usable)
_reg("LDTR", "p", _ldtr["p"], guard=_ldtr_usable)
_reg("LDTR", "reserved_11_8", _ldtr["rsvd_lo"], guard=_ldtr_usable)
_reg("LDTR", "g", _ldtr["g"], guard=_ldtr_usable)
_reg("LDTR", "reserved_31_17", _ldtr["rsvd_hi"], guard=_ldtr_usable)

"""Adjusting control values and CR0/CR4 through the capability MSRs.

Source: Intel SDM Vol. 3D Appendix A "VMX Capability Reporting Facility",
A.2 "Reserved Controls and Default Settings" (the algorithm for determining a
control's setting, in older editions a section of its own) and A.3-A.5 (a control whose allowed-0 setting is 1 must be 1; one
whose allowed-1 setting is 0 must be 0), A.7 / A.8 "VMX-Fixed Bits in CR0/CR4"
(a bit set in FIXED0 must be 1, a bit clear in FIXED1 must be 0; with the
"unrestricted guest" control, PE and PG of the guest's CR0 may be 0 -- "Checks on
Guest Control Registers, Debug Registers, and MSRs").
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..arch import controls as C
from ..arch import registers as R
from .profile import Profile


def _bit_names(field_name: str, mask: int) -> list[str]:
    return C.names_of(field_name, mask)


@dataclass
class Adjustment:
    field: str
    wanted: int
    value: int
    must_be_1: int          # allowed-0 settings that are 1
    may_be_1: int           # allowed-1 settings
    msr: str
    forced: list[str] = field(default_factory=list)   # bits not wanted but forced to 1
    dropped: list[str] = field(default_factory=list)  # bits wanted but not allowed

    @property
    def changed(self) -> bool:
        return self.value != self.wanted


def adjust(profile: Profile, field_name: str, wanted: int) -> Adjustment:
    """value = (wanted | allowed-0) & allowed-1, with the report of every bit moved."""
    cf = C.CONTROL_FIELDS[field_name]
    wanted &= (1 << cf.bits) - 1
    must1, may1, msr = profile.allowed(field_name)
    value = (wanted | must1) & may1
    forced = must1 & ~wanted
    dropped = wanted & ~may1
    return Adjustment(field_name, wanted, value, must1, may1, msr,
                      _bit_names(field_name, forced), _bit_names(field_name, dropped))


@dataclass
class CrAdjustment:
    register: str
    wanted: int
    value: int
    fixed0: int
    fixed1: int
    forced: list[str]
    dropped: list[str]


def _cr_names(layout, mask: int) -> list[str]:
    named = {b.lo: b.name for b in layout.parts}
    return [named.get(i, f"bit {i}") for i in range(64) if mask >> i & 1]


def cr_fixed(profile: Profile, register: str, unrestricted_guest: bool = False) -> tuple[int, int]:
    """(bits that must be 1, bits that may be 1) for CR0 or CR4."""
    if register == "CR0":
        fixed0, fixed1 = profile.cr0_fixed0, profile.cr0_fixed1
        if unrestricted_guest:
            fixed0 &= ~(R.CR0_PE | R.CR0_PG)
    elif register == "CR4":
        fixed0, fixed1 = profile.cr4_fixed0, profile.cr4_fixed1
    else:
        raise ValueError(register)
    return fixed0, fixed1


def adjust_cr(profile: Profile, register: str, wanted: int, unrestricted_guest: bool = False) -> CrAdjustment:
    """value = (wanted | FIXED0) & FIXED1 -- the seed's adjustment of CR0 and CR4."""
    fixed0, fixed1 = cr_fixed(profile, register, unrestricted_guest)
    value = (wanted | fixed0) & fixed1
    layout = R.CR0 if register == "CR0" else R.CR4
    return CrAdjustment(register, wanted, value, fixed0, fixed1,
                        _cr_names(layout, fixed0 & ~wanted), _cr_names(layout, wanted & ~fixed1))

"""Human-readable views of a profile and of adjustments (used by `vmxlab caps`, `demo`)."""
from __future__ import annotations

from ..arch import capabilities as CAP
from ..arch import controls as C
from ..arch import msrs as M
from ..arch import registers as R
from .adjust import Adjustment, CrAdjustment, cr_fixed
from .profile import Profile

_ORDER = ("PIN_BASED_VM_EXEC_CONTROL", "CPU_BASED_VM_EXEC_CONTROL", "SECONDARY_VM_EXEC_CONTROL",
          "TERTIARY_VM_EXEC_CONTROL", "VM_EXIT_CONTROLS", "SECONDARY_VM_EXIT_CONTROLS",
          "VM_ENTRY_CONTROLS", "VM_FUNCTION_CONTROL")
_TITLES = {
    "PIN_BASED_VM_EXEC_CONTROL": "Pin-based VM-execution controls",
    "CPU_BASED_VM_EXEC_CONTROL": "Primary processor-based VM-execution controls",
    "SECONDARY_VM_EXEC_CONTROL": "Secondary processor-based VM-execution controls",
    "TERTIARY_VM_EXEC_CONTROL": "Tertiary processor-based VM-execution controls",
    "VM_EXIT_CONTROLS": "Primary VM-exit controls",
    "SECONDARY_VM_EXIT_CONTROLS": "Secondary VM-exit controls",
    "VM_ENTRY_CONTROLS": "VM-entry controls",
    "VM_FUNCTION_CONTROL": "VM-function controls",
}


def setting(must1: int, may1: int, mask: int) -> str:
    if must1 & mask:
        return "1 only" if may1 & mask else "1 only (inconsistent: allowed-1 is 0)"
    return "0 or 1" if may1 & mask else "0 only"


def _layout_lines(layout, value: int) -> list[str]:
    return [f"  {name:<28} {meaning}" for name, meaning in layout.describe(value)]


def describe_profile(p: Profile) -> list[str]:
    out = [f"Profile {p.name}: {p.description}".rstrip(": ")]
    if p.path and p.path != p.name:
        out.append(f"  file {p.path}")
    out.append(f"  MAXPHYADDR {p.maxphyaddr}, linear addresses {p.linear_address_bits} bits")
    out.append("")
    out.append(f"Basic VMX information (IA32_VMX_BASIC = {p.basic:#018x})")
    out += _layout_lines(CAP.BASIC, p.basic)
    for field in _ORDER:
        cf = C.CONTROL_FIELDS[field]
        must1, may1, msr = p.allowed(field)
        raw = p.msrs.get(M.lookup(msr).index)
        out.append("")
        if raw is None or (cf.enabled_by and not p.can_set(cf.enabled_by)):
            why = f"{msr} absent" if raw is None else f"{cf.enabled_by} cannot be 1"
            out.append(f"{_TITLES[field]}: not supported ({why})")
            continue
        out.append(f"{_TITLES[field]} ({msr} = {raw:#018x})")
        named = {c.bit: c for c in C.bits_of(field)}
        for bit in range(cf.bits):
            mask = 1 << bit
            c = named.get(bit)
            if c is None:
                if must1 & mask:
                    out.append(f"  {'bit %d' % bit:<44} {'reserved (default1)':<38} {setting(must1, may1, mask)}")
                elif may1 & mask:
                    out.append(f"  {'bit %d' % bit:<44} {'not named in the SDM tables':<38} {setting(must1, may1, mask)}")
                continue
            out.append(f"  {c.name:<44} {c.sdm:<38} {setting(must1, may1, mask)}")
    out.append("")
    out.append(f"Miscellaneous data (IA32_VMX_MISC = {p.misc:#018x})")
    out += _layout_lines(CAP.MISC, p.misc)
    out.append("")
    if p.ept_vpid_cap:
        out.append(f"EPT and VPID capabilities (IA32_VMX_EPT_VPID_CAP = {p.ept_vpid_cap:#018x})")
        out += [f"  {name:<28} {meaning}" for name, meaning in CAP.EPT_VPID_CAP.describe(p.ept_vpid_cap)]
    else:
        out.append("EPT and VPID capabilities: not supported")
    out.append("")
    for reg in ("CR0", "CR4"):
        fixed0, fixed1 = cr_fixed(p, reg)
        layout = R.CR0 if reg == "CR0" else R.CR4
        names = {b.lo: b.name for b in layout.parts}
        ones = [names.get(i, f"bit {i}") for i in range(64) if fixed0 >> i & 1]
        zeros = [names.get(i, f"bit {i}") for i in range(32) if not fixed1 >> i & 1]
        if not fixed1 >> 32:
            zeros.append("bits 63:32")
        out.append(f"{reg} fixed bits (FIXED0 = {fixed0:#x}, FIXED1 = {fixed1:#x})")
        out.append(f"  must be 1: {', '.join(ones) or 'none'}")
        out.append(f"  must be 0: {', '.join(zeros) or 'none'}")
    if p.can_set("SECONDARY_EXEC_UNRESTRICTED_GUEST"):
        out.append("  (unrestricted guest: guest CR0.PE and CR0.PG may be 0)")
    out.append("")
    out.append(f"VMCS enumeration: highest field index {p.max_vmcs_index}")
    return out


def format_adjustment(a: Adjustment) -> list[str]:
    width = C.CONTROL_FIELDS[a.field].bits // 4
    out = [f"{a.field}: wanted {a.wanted:#0{width + 2}x} -> {a.value:#0{width + 2}x} (through {a.msr})"]
    if a.forced:
        out.append(f"  forced to 1 (allowed-0 setting is 1): {', '.join(a.forced)}")
    if a.dropped:
        out.append(f"  dropped (allowed-1 setting is 0): {', '.join(a.dropped)}")
    if not a.forced and not a.dropped:
        out.append("  unchanged")
    return out


def format_cr_adjustment(a: CrAdjustment) -> list[str]:
    out = [f"{a.register}: wanted {a.wanted:#x} -> {a.value:#x} (FIXED0 {a.fixed0:#x}, FIXED1 {a.fixed1:#x})"]
    if a.forced:
        out.append(f"  forced to 1: {', '.join(a.forced)}")
    if a.dropped:
        out.append(f"  cleared (not allowed): {', '.join(a.dropped)}")
    if not a.forced and not a.dropped:
        out.append("  unchanged")
    return out

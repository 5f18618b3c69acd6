"""Which MSRs a processor has, and which RDMSR/WRMSR operations fault.

The one place that knows MSR existence, reserved bits and value rules.  Used by
the simulated processor's MSR file (RDMSR/WRMSR emulation), by the VM-entry
checks (reserved bits of guest/host IA32_DEBUGCTL, IA32_PAT, IA32_EFER,
IA32_PERF_GLOBAL_CTRL ..., and "would WRMSR cause #GP" for the VM-entry MSR-load
area) and by VM entry/exit when they load MSRs.

Sources: Intel SDM Vol. 4 "Model-Specific Registers" (Table 2-2 IA-32
Architectural MSRs: existence conditions and bit fields); Vol. 2B "RDMSR" and
"WRMSR" (#GP(0) if the MSR is reserved or unimplemented, or if a reserved bit
or a non-canonical address is written); Vol. 3A "PAT" ("Programming the PAT":
#GP for reserved memory-type encodings), "IA32_EFER".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..arch import msrs as M
from ..arch.registers import MEMORY_TYPES, canonical
from .profile import Profile

ALL = (1 << 64) - 1


@dataclass(frozen=True)
class MsrSpec:
    index: int
    exists: Callable[[Profile], bool] = lambda p: True
    readable: bool = True
    writable: bool = True
    valid: Callable[[Profile], int] = lambda p: ALL          # bits that may be 1
    canonical: bool = False                                 # value is a linear address
    check: Callable[[Profile, int], str | None] | None = None  # extra value rule
    reset: Callable[[Profile], int] = lambda p: 0


def _has(*features: str) -> Callable[[Profile], bool]:
    return lambda p: all(p.has(f) for f in features)


_MTRR_TYPES = (0, 1, 4, 5, 6)          # UC, WC, WT, WP, WB ("MTRR Types and Properties")


def _bad_type_byte(value: int, types, name: str, what: str) -> str | None:
    """The first of the eight bytes of `value` that is not in `types`, named `name`{i}."""
    for i in range(8):
        t = value >> (8 * i) & 0xFF
        if t not in types:
            return f"{name}{i} = {t:#x} is not {what}"
    return None


def _pat_check(p: Profile, value: int) -> str | None:
    return _bad_type_byte(value, MEMORY_TYPES, "PA", "a memory type (0, 1, 4, 5, 6, 7)")


def _efer_valid(p: Profile) -> int:
    v = 0
    if p.has("SYSCALL"):
        v |= M.EFER_SCE
    if p.has("LM"):
        v |= M.EFER_LME | M.EFER_LMA
    if p.has("NX"):
        v |= M.EFER_NXE
    return v


def _perf_global_valid(p: Profile) -> int:
    """IA32_PERF_GLOBAL_CTRL: one enable per general-purpose counter (bits N-1:0)
    and per fixed counter (bits 32+); counts from CPUID leaf 0AH, 4 + 3 if absent."""
    regs = p.cpuid_leaf(0xA)
    gp, fixed = (4, 3) if regs is None else ((regs[0] >> 8) & 0xFF, regs[3] & 0x1F)
    return ((1 << gp) - 1) | (((1 << fixed) - 1) << 32)


def _mtrr_def_type_check(p: Profile, value: int) -> str | None:
    t = value & 0xFF
    return None if t in _MTRR_TYPES else f"default type {t:#x} is not a memory type"


MTRRCAP = 0xD0A                       # VCNT 10, FIX, WC, SMRR (what Skylake reports)


def _address_bits(p: Profile) -> int:
    return ((1 << p.maxphyaddr) - 1) & ~0xFFF


def _mtrr_base_check(p: Profile, value: int) -> str | None:
    t = value & 0xFF
    return None if t in _MTRR_TYPES else f"type {t:#x} is not an MTRR memory type (0, 1, 4, 5, 6)"


def _mtrr_fixed_check(p: Profile, value: int) -> str | None:
    return _bad_type_byte(value, _MTRR_TYPES, "byte ", "an MTRR memory type (0, 1, 4, 5, 6)")


def _pkrs_exists(p: Profile) -> bool:
    return p.has("PKS")


# IA32_FEATURE_CONTROL defined bits (Vol. 4 Table 2-2): 0 lock, 1 VMX in SMX,
# 2 VMX outside SMX, 14:8 SENTER local, 15 SENTER global, 17 SGX launch control,
# 18 SGX global, 20 LMCE.
_FEATURE_CONTROL_VALID = 0x1 | 0x2 | 0x4 | 0x7F00 | 0x8000 | (1 << 17) | (1 << 18) | (1 << 20)
# IA32_DEBUGCTL (Vol. 3B "IA32_DEBUGCTL MSR"): 0 LBR, 1 BTF, 6 TR, 7 BTS, 8 BTINT,
# 9 BTS_OFF_OS, 10 BTS_OFF_USR, 11 FREEZE_LBRS_ON_PMI, 12 FREEZE_PERFMON_ON_PMI,
# 13 ENABLE_UNCORE_PMI, 14 FREEZE_WHILE_SMM, 15 RTM_DEBUG.
DEBUGCTL_VALID = 0x3 | 0xFFC0
# IA32_S_CET / IA32_U_CET (Vol. 1 "CET"): bits 9:6 reserved.
CET_VALID = ALL & ~0x3C0

_SPECS: list[MsrSpec] = [
    MsrSpec(M.IA32_TIME_STAMP_COUNTER),
    MsrSpec(M.IA32_APIC_BASE, valid=lambda p: ((1 << p.maxphyaddr) - 1) & ~0xFFF | 0x900 | 0x400,
            reset=lambda p: 0xFEE00900),
    MsrSpec(M.IA32_FEATURE_CONTROL, valid=lambda p: _FEATURE_CONTROL_VALID),
    MsrSpec(M.IA32_TSC_ADJUST, exists=_has("TSC_ADJUST")),
    MsrSpec(M.IA32_SPEC_CTRL, exists=_has("IBRS"), valid=lambda p: 0x7),
    MsrSpec(M.IA32_PRED_CMD, exists=_has("IBRS"), readable=False, valid=lambda p: 0x1),
    MsrSpec(M.IA32_BIOS_SIGN_ID),
    MsrSpec(M.IA32_SMM_MONITOR_CTL, valid=lambda p: 0x5 | (((1 << 32) - 1) & ~0xFFF)),
    MsrSpec(M.IA32_MPERF), MsrSpec(M.IA32_APERF),
    MsrSpec(M.IA32_MTRRCAP, writable=False, reset=lambda p: MTRRCAP),
    # "Variable Range MTRRs": PHYSBASE type 7:0, base MAXPHYADDR-1:12; PHYSMASK valid
    # bit 11, mask MAXPHYADDR-1:12; the rest reserved
    *(MsrSpec(m.index, exists=_has("MTRR"), check=_mtrr_base_check if m.index % 2 == 0 else None,
              valid=(lambda p: 0xFF | _address_bits(p)) if m.index % 2 == 0 else (lambda p: 0x800 | _address_bits(p)))
      for m in M.MTRR_VARIABLE if m.index < 0x200 + 2 * (MTRRCAP & 0xFF)),
    *(MsrSpec(m.index, exists=_has("MTRR"), check=_mtrr_fixed_check) for m in M.MTRR_FIXED),
    MsrSpec(M.IA32_ARCH_CAPABILITIES, exists=_has("ARCH_CAPABILITIES"), writable=False),
    MsrSpec(M.IA32_SYSENTER_CS, valid=lambda p: 0xFFFFFFFF),
    MsrSpec(M.IA32_SYSENTER_ESP, canonical=True),
    MsrSpec(M.IA32_SYSENTER_EIP, canonical=True),
    MsrSpec(M.IA32_MCG_CAP, writable=False),
    MsrSpec(M.IA32_MCG_STATUS, valid=lambda p: 0x7),
    MsrSpec(M.IA32_MISC_ENABLE, reset=lambda p: 0x1),
    MsrSpec(M.IA32_DEBUGCTL, valid=lambda p: DEBUGCTL_VALID),
    MsrSpec(M.IA32_PAT, check=_pat_check, reset=lambda p: 0x0007040600070406),
    MsrSpec(M.IA32_MTRR_DEF_TYPE, valid=lambda p: 0xCFF, check=_mtrr_def_type_check),
    MsrSpec(M.IA32_PERF_GLOBAL_CTRL, valid=_perf_global_valid),
    MsrSpec(M.IA32_RTIT_CTL, exists=_has("PT")),
    MsrSpec(M.IA32_U_CET, exists=lambda p: p.has("CET_SS") or p.has("CET_IBT"), valid=lambda p: CET_VALID),
    MsrSpec(M.IA32_S_CET, exists=lambda p: p.has("CET_SS") or p.has("CET_IBT"), valid=lambda p: CET_VALID),
    *(MsrSpec(i, exists=_has("CET_SS"), canonical=True)
      for i in (M.IA32_PL0_SSP, M.IA32_PL1_SSP, M.IA32_PL2_SSP, M.IA32_PL3_SSP,
                M.IA32_INTERRUPT_SSP_TABLE_ADDR)),
    MsrSpec(M.IA32_TSC_DEADLINE, exists=_has("TSC_DEADLINE")),
    MsrSpec(M.IA32_PKRS, exists=_pkrs_exists, valid=lambda p: 0xFFFFFFFF),
    MsrSpec(M.IA32_BNDCFGS, exists=_has("MPX"), valid=lambda p: ALL & ~0xFFC),
    MsrSpec(M.IA32_XSS, exists=_has("XSAVE")),
    MsrSpec(M.IA32_LBR_CTL, exists=_has("ARCH_LBR")),
    MsrSpec(M.IA32_EFER, valid=_efer_valid, reset=lambda p: 0),
    MsrSpec(M.IA32_STAR, exists=_has("SYSCALL")),
    MsrSpec(M.IA32_LSTAR, exists=_has("LM"), canonical=True),
    MsrSpec(M.IA32_CSTAR, exists=_has("LM"), canonical=True),
    MsrSpec(M.IA32_FMASK, exists=_has("SYSCALL"), valid=lambda p: 0xFFFFFFFF),
    MsrSpec(M.IA32_FS_BASE, exists=_has("LM"), canonical=True),
    MsrSpec(M.IA32_GS_BASE, exists=_has("LM"), canonical=True),
    MsrSpec(M.IA32_KERNEL_GS_BASE, exists=_has("LM"), canonical=True),
    MsrSpec(M.IA32_TSC_AUX, exists=lambda p: p.has("RDTSCP") or p.has("RDPID"), valid=lambda p: 0xFFFFFFFF),
    *(MsrSpec(m.index, writable=False, exists=(lambda idx: lambda p: idx in p.msrs)(m.index),
              reset=(lambda idx: lambda p: p.msrs.get(idx, 0))(m.index))
      for m in M.VMX_CAPABILITY_MSRS),
]
_BY_INDEX: dict[int, MsrSpec] = {s.index: s for s in _SPECS}


def spec(profile: Profile, index: int) -> MsrSpec | None:
    """The MSR's description if this processor has it, else None."""
    s = _BY_INDEX.get(index)
    return s if s is not None and s.exists(profile) else None


def exists(profile: Profile, index: int) -> bool:
    return spec(profile, index) is not None


def implemented(profile: Profile) -> list[int]:
    return [s.index for s in _SPECS if s.exists(profile)]


def reserved_mask(profile: Profile, index: int) -> int:
    """Bits that must be 0 in the MSR (0 for an MSR this model does not know)."""
    s = _BY_INDEX.get(index)
    return ALL & ~s.valid(profile) if s is not None else 0


def reset_value(profile: Profile, index: int) -> int:
    s = _BY_INDEX.get(index)
    return s.reset(profile) if s is not None else 0


def rdmsr_fault(profile: Profile, index: int) -> str | None:
    """Why RDMSR of `index` raises #GP(0) on this processor, or None."""
    s = spec(profile, index)
    if s is None:
        return f"{M.name_of(index)} is not implemented"
    if not s.readable:
        return f"{M.name_of(index)} is write-only"
    return None


def wrmsr_fault(profile: Profile, index: int, value: int, current: int | None = None) -> str | None:
    """Why WRMSR of `value` to `index` raises #GP(0) on this processor, or None.

    `current` is the MSR's present value where the rule depends on it
    (IA32_FEATURE_CONTROL cannot be written once its lock bit is set).
    """
    name = M.name_of(index)
    s = spec(profile, index)
    if s is None:
        return f"{name} is not implemented"
    if not s.writable:
        return f"{name} is read-only"
    if not 0 <= value <= ALL:
        return f"{name}: {value:#x} is not a 64-bit value"
    bad = value & ~s.valid(profile) & ALL
    if bad:
        return f"{name}: reserved bits {bad:#x} set in {value:#x}"
    if s.canonical and not canonical(value, profile.linear_address_bits):
        return f"{name}: {value:#x} is not a canonical address"
    if index == M.IA32_FEATURE_CONTROL and current is not None and current & M.FEATURE_CONTROL_LOCK:
        return f"{name} is locked"
    if s.check is not None:
        why = s.check(profile, value)
        if why:
            return f"{name}: {why}"
    return None

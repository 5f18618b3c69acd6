"""Model-specific register indices and the bit layouts VMX cares about.

Source: Intel SDM Vol. 4 "Model-Specific Registers" (Table 2-2, IA-32 Architectural
MSRs), Vol. 3D Appendix A (IA32_VMX_* capability MSRs 480H-493H), Vol. 3C
"Enabling and Entering VMX Operation" (IA32_FEATURE_CONTROL).
"""
from __future__ import annotations

from dataclasses import dataclass

from .fields import normalize
from .layout import Bits, Layout


@dataclass(frozen=True)
class Msr:
    index: int
    name: str
    aliases: tuple[str, ...] = ()


_TABLE = [
    (0x00000010, "IA32_TIME_STAMP_COUNTER", ("IA32_TSC", "MSR_IA32_TSC")),
    (0x0000001B, "IA32_APIC_BASE", ()),
    (0x0000003A, "IA32_FEATURE_CONTROL", ("MSR_IA32_FEATURE_CONTROL",)),
    (0x0000003B, "IA32_TSC_ADJUST", ()),
    (0x00000048, "IA32_SPEC_CTRL", ()),
    (0x00000049, "IA32_PRED_CMD", ()),
    (0x0000008B, "IA32_BIOS_SIGN_ID", ()),
    (0x0000009B, "IA32_SMM_MONITOR_CTL", ()),
    (0x0000009E, "IA32_SMBASE", ()),
    (0x000000C1, "IA32_PMC0", ()),
    (0x000000E7, "IA32_MPERF", ()),
    (0x000000E8, "IA32_APERF", ()),
    (0x000000FE, "IA32_MTRRCAP", ()),
    (0x0000010A, "IA32_ARCH_CAPABILITIES", ()),
    (0x00000174, "IA32_SYSENTER_CS", ("MSR_IA32_SYSENTER_CS",)),
    (0x00000175, "IA32_SYSENTER_ESP", ("MSR_IA32_SYSENTER_ESP",)),
    (0x00000176, "IA32_SYSENTER_EIP", ("MSR_IA32_SYSENTER_EIP",)),
    (0x00000179, "IA32_MCG_CAP", ()),
    (0x0000017A, "IA32_MCG_STATUS", ()),
    (0x000001A0, "IA32_MISC_ENABLE", ()),
    (0x000001CC, "IA32_FRED_RSP0", ()),
    (0x000001CD, "IA32_FRED_RSP1", ()),
    (0x000001CE, "IA32_FRED_RSP2", ()),
    (0x000001CF, "IA32_FRED_RSP3", ()),
    (0x000001D0, "IA32_FRED_STKLVLS", ()),
    (0x000001D1, "IA32_FRED_SSP1", ()),
    (0x000001D2, "IA32_FRED_SSP2", ()),
    (0x000001D3, "IA32_FRED_SSP3", ()),
    (0x000001D4, "IA32_FRED_CONFIG", ()),
    (0x000001D9, "IA32_DEBUGCTL", ("MSR_IA32_DEBUGCTLMSR",)),
    *((0x200 + 2 * n, f"IA32_MTRR_PHYSBASE{n}", ()) for n in range(10)),
    *((0x201 + 2 * n, f"IA32_MTRR_PHYSMASK{n}", ()) for n in range(10)),
    (0x00000250, "IA32_MTRR_FIX64K_00000", ()),
    (0x00000258, "IA32_MTRR_FIX16K_80000", ()),
    (0x00000259, "IA32_MTRR_FIX16K_A0000", ()),
    *((0x268 + i, f"IA32_MTRR_FIX4K_{0xC0000 + 0x8000 * i:05X}", ()) for i in range(8)),
    (0x00000277, "IA32_PAT", ("MSR_IA32_CR_PAT",)),
    (0x000002FF, "IA32_MTRR_DEF_TYPE", ()),
    (0x0000038F, "IA32_PERF_GLOBAL_CTRL", ()),
    (0x00000480, "IA32_VMX_BASIC", ("MSR_IA32_VMX_BASIC",)),
    (0x00000481, "IA32_VMX_PINBASED_CTLS", ("MSR_IA32_VMX_PINBASED_CTLS",)),
    (0x00000482, "IA32_VMX_PROCBASED_CTLS", ("MSR_IA32_VMX_PROCBASED_CTLS",)),
    (0x00000483, "IA32_VMX_EXIT_CTLS", ("MSR_IA32_VMX_EXIT_CTLS",)),
    (0x00000484, "IA32_VMX_ENTRY_CTLS", ("MSR_IA32_VMX_ENTRY_CTLS",)),
    (0x00000485, "IA32_VMX_MISC", ("MSR_IA32_VMX_MISC",)),
    (0x00000486, "IA32_VMX_CR0_FIXED0", ("MSR_IA32_VMX_CR0_FIXED0",)),
    (0x00000487, "IA32_VMX_CR0_FIXED1", ("MSR_IA32_VMX_CR0_FIXED1",)),
    (0x00000488, "IA32_VMX_CR4_FIXED0", ("MSR_IA32_VMX_CR4_FIXED0",)),
    (0x00000489, "IA32_VMX_CR4_FIXED1", ("MSR_IA32_VMX_CR4_FIXED1",)),
    (0x0000048A, "IA32_VMX_VMCS_ENUM", ("MSR_IA32_VMX_VMCS_ENUM",)),
    (0x0000048B, "IA32_VMX_PROCBASED_CTLS2", ("MSR_IA32_VMX_PROCBASED_CTLS2",)),
    (0x0000048C, "IA32_VMX_EPT_VPID_CAP", ("MSR_IA32_VMX_EPT_VPID_CAP",)),
    (0x0000048D, "IA32_VMX_TRUE_PINBASED_CTLS", ("MSR_IA32_VMX_TRUE_PINBASED_CTLS",)),
    (0x0000048E, "IA32_VMX_TRUE_PROCBASED_CTLS", ("MSR_IA32_VMX_TRUE_PROCBASED_CTLS",)),
    (0x0000048F, "IA32_VMX_TRUE_EXIT_CTLS", ("MSR_IA32_VMX_TRUE_EXIT_CTLS",)),
    (0x00000490, "IA32_VMX_TRUE_ENTRY_CTLS", ("MSR_IA32_VMX_TRUE_ENTRY_CTLS",)),
    (0x00000491, "IA32_VMX_VMFUNC", ("MSR_IA32_VMX_VMFUNC",)),
    (0x00000492, "IA32_VMX_PROCBASED_CTLS3", ("MSR_IA32_VMX_PROCBASED_CTLS3",)),
    (0x00000493, "IA32_VMX_EXIT_CTLS2", ("MSR_IA32_VMX_EXIT_CTLS2",)),
    (0x00000570, "IA32_RTIT_CTL", ()),
    (0x000006A0, "IA32_U_CET", ()),
    (0x000006A2, "IA32_S_CET", ()),
    (0x000006A4, "IA32_PL0_SSP", ()),
    (0x000006A5, "IA32_PL1_SSP", ()),
    (0x000006A6, "IA32_PL2_SSP", ()),
    (0x000006A7, "IA32_PL3_SSP", ()),
    (0x000006A8, "IA32_INTERRUPT_SSP_TABLE_ADDR", ()),
    (0x000006E0, "IA32_TSC_DEADLINE", ()),
    (0x000006E1, "IA32_PKRS", ()),
    (0x00000D90, "IA32_BNDCFGS", ()),
    (0x00000DA0, "IA32_XSS", ()),
    (0x000014CE, "IA32_LBR_CTL", ()),
    (0xC0000080, "IA32_EFER", ("MSR_IA32_EFER", "EFER", "MSR_EFER")),
    (0xC0000081, "IA32_STAR", ("MSR_STAR", "STAR")),
    (0xC0000082, "IA32_LSTAR", ("MSR_LSTAR", "LSTAR")),
    (0xC0000083, "IA32_CSTAR", ("MSR_CSTAR", "CSTAR")),
    (0xC0000084, "IA32_FMASK", ("MSR_SYSCALL_MASK", "FMASK")),
    (0xC0000100, "IA32_FS_BASE", ("MSR_FS_BASE",)),
    (0xC0000101, "IA32_GS_BASE", ("MSR_GS_BASE",)),
    (0xC0000102, "IA32_KERNEL_GS_BASE", ("MSR_KERNEL_GS_BASE",)),
    (0xC0000103, "IA32_TSC_AUX", ("MSR_TSC_AUX",)),
]

MSRS: tuple[Msr, ...] = tuple(Msr(i, n, a) for i, n, a in _TABLE)
BY_INDEX: dict[int, Msr] = {m.index: m for m in MSRS}
_BY_NAME: dict[str, Msr] = {}
for _m in MSRS:
    for _k in (_m.name, *_m.aliases):
        assert normalize(_k) not in _BY_NAME, _k
        _BY_NAME[normalize(_k)] = _m

# Every MSR name is also a module constant holding its index: `msrs.IA32_EFER == 0xC0000080`.
globals().update({m.name: m.index for m in MSRS})

X2APIC_FIRST, X2APIC_LAST = 0x800, 0x8FF   # x2APIC MSR range (Vol. 3A "x2APIC Register Address Space")
VMX_CAPABILITY_MSRS = tuple(m for m in MSRS if 0x480 <= m.index <= 0x493)
# Memory type range registers (Vol. 3A "MTRRs"): IA32_MTRRCAP.VCNT variable-range
# pairs (PHYSBASEn, PHYSMASKn) from 200H, the fixed-range registers when MTRRCAP.FIX.
MTRR_VARIABLE = tuple(m for m in MSRS if 0x200 <= m.index <= 0x213)
MTRR_FIXED = tuple(m for m in MSRS if m.name.startswith(("IA32_MTRR_FIX64K", "IA32_MTRR_FIX16K", "IA32_MTRR_FIX4K")))


def lookup(name_or_index: str | int) -> Msr | None:
    """MSR by name, alias or index (int or '0x..' text)."""
    if isinstance(name_or_index, int):
        return BY_INDEX.get(name_or_index)
    try:
        return BY_INDEX.get(int(name_or_index.strip(), 0))
    except ValueError:
        return _BY_NAME.get(normalize(name_or_index))


def name_of(index: int) -> str:
    m = BY_INDEX.get(index)
    if m is not None:
        return m.name
    if X2APIC_FIRST <= index <= X2APIC_LAST:
        return f"x2APIC[{index - X2APIC_FIRST:#x}]"
    return f"MSR {index:#x}"


EFER = Layout("IA32_EFER", (
    Bits("SCE", 0, doc="SYSCALL enable"),
    Bits("LME", 8, doc="IA-32e mode enable"),
    Bits("LMA", 10, doc="IA-32e mode active"),
    Bits("NXE", 11, doc="execute-disable bit enable"),
), section="IA32_EFER MSR (Vol. 3A, System Registers)")
EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE = 1 << 0, 1 << 8, 1 << 10, 1 << 11

FEATURE_CONTROL = Layout("IA32_FEATURE_CONTROL", (
    Bits("lock", 0),
    Bits("vmx_inside_smx", 1),
    Bits("vmx_outside_smx", 2),
    Bits("senter_local", 8, 14),
    Bits("senter_global", 15),
    Bits("sgx_launch_control", 17),
    Bits("sgx_global", 18),
    Bits("lmce", 20),
), section="Enabling and Entering VMX Operation")
FEATURE_CONTROL_LOCK, FEATURE_CONTROL_VMX_IN_SMX, FEATURE_CONTROL_VMX_OUTSIDE_SMX = 1, 2, 4

"""VMX control bits and the capability MSRs that report them.

Sources: Intel SDM Vol. 3C "VM-Execution Control Fields" (Pin-Based VM-Execution
Controls; Processor-Based VM-Execution Controls, Tables of primary, secondary and
tertiary controls), "VM-Exit Control Fields" (primary and secondary VM-exit
controls), "VM-Entry Control Fields", "VM-Function Controls"; Vol. 3D Appendix A
"VMX Capability Reporting Facility" (A.3-A.5: allowed settings, default1 classes).

Names follow Linux (arch/x86/include/asm/vmx.h); the seed's names are aliases.
"""
from __future__ import annotations

from dataclasses import dataclass

from .fields import normalize


@dataclass(frozen=True)
class ControlBit:
    name: str
    field: str               # Linux name of the VMCS control field
    bit: int
    sdm: str
    aliases: tuple[str, ...] = ()

    @property
    def mask(self) -> int:
        return 1 << self.bit


@dataclass(frozen=True)
class ControlField:
    """A control field and how the processor reports its allowed settings.

    kind "ctls": a 64-bit MSR whose bits 31:0 are the allowed-0 settings (a 1 bit
    means the control must be 1) and bits 63:32 the allowed-1 settings (a 0 bit
    means the control must be 0) (Appendix A.3.1).
    kind "allowed1": a 64-bit MSR of allowed-1 settings only; every control may be 0
    (tertiary controls A.3.4, secondary VM-exit controls A.4.2, VM functions A.11).
    """
    field: str
    msr: str
    true_msr: str | None = None
    default1: int = 0        # bits of the default1 class (A.2)
    kind: str = "ctls"
    bits: int = 32           # width of the control field
    enabled_by: str | None = None  # control bit that activates this field


CONTROL_FIELDS: dict[str, ControlField] = {c.field: c for c in (
    ControlField("PIN_BASED_VM_EXEC_CONTROL", "IA32_VMX_PINBASED_CTLS",
                 "IA32_VMX_TRUE_PINBASED_CTLS", default1=0x00000016),
    ControlField("CPU_BASED_VM_EXEC_CONTROL", "IA32_VMX_PROCBASED_CTLS",
                 "IA32_VMX_TRUE_PROCBASED_CTLS", default1=0x0401E172),
    ControlField("SECONDARY_VM_EXEC_CONTROL", "IA32_VMX_PROCBASED_CTLS2",
                 enabled_by="CPU_BASED_ACTIVATE_SECONDARY_CONTROLS"),
    ControlField("TERTIARY_VM_EXEC_CONTROL", "IA32_VMX_PROCBASED_CTLS3", kind="allowed1",
                 bits=64, enabled_by="CPU_BASED_ACTIVATE_TERTIARY_CONTROLS"),
    ControlField("VM_EXIT_CONTROLS", "IA32_VMX_EXIT_CTLS",
                 "IA32_VMX_TRUE_EXIT_CTLS", default1=0x00036DFF),
    ControlField("SECONDARY_VM_EXIT_CONTROLS", "IA32_VMX_EXIT_CTLS2", kind="allowed1",
                 bits=64, enabled_by="VM_EXIT_ACTIVATE_SECONDARY_CONTROLS"),
    ControlField("VM_ENTRY_CONTROLS", "IA32_VMX_ENTRY_CTLS",
                 "IA32_VMX_TRUE_ENTRY_CTLS", default1=0x000011FF),
    ControlField("VM_FUNCTION_CONTROL", "IA32_VMX_VMFUNC", kind="allowed1",
                 bits=64, enabled_by="SECONDARY_EXEC_ENABLE_VMFUNC"),
)}

_P, _C, _S, _T = ("PIN_BASED_VM_EXEC_CONTROL", "CPU_BASED_VM_EXEC_CONTROL",
                  "SECONDARY_VM_EXEC_CONTROL", "TERTIARY_VM_EXEC_CONTROL")
_X, _X2, _N, _F = ("VM_EXIT_CONTROLS", "SECONDARY_VM_EXIT_CONTROLS",
                   "VM_ENTRY_CONTROLS", "VM_FUNCTION_CONTROL")

_BITS: list[tuple[str, int, str, str, tuple[str, ...]]] = [
    # Pin-based VM-execution controls
    (_P, 0, "PIN_BASED_EXT_INTR_MASK", "External-interrupt exiting", ("PIN_BASED_EXTERNAL_INTERRUPT_EXITING",)),
    (_P, 3, "PIN_BASED_NMI_EXITING", "NMI exiting", ()),
    (_P, 5, "PIN_BASED_VIRTUAL_NMIS", "Virtual NMIs", ()),
    (_P, 6, "PIN_BASED_VMX_PREEMPTION_TIMER", "Activate VMX-preemption timer", ()),
    (_P, 7, "PIN_BASED_POSTED_INTR", "Process posted interrupts", ()),
    # Primary processor-based VM-execution controls
    (_C, 2, "CPU_BASED_INTR_WINDOW_EXITING", "Interrupt-window exiting", ("CPU_BASED_VIRTUAL_INTR_PENDING",)),
    (_C, 3, "CPU_BASED_USE_TSC_OFFSETTING", "Use TSC offsetting", ()),
    (_C, 7, "CPU_BASED_HLT_EXITING", "HLT exiting", ()),
    (_C, 9, "CPU_BASED_INVLPG_EXITING", "INVLPG exiting", ()),
    (_C, 10, "CPU_BASED_MWAIT_EXITING", "MWAIT exiting", ()),
    (_C, 11, "CPU_BASED_RDPMC_EXITING", "RDPMC exiting", ()),
    (_C, 12, "CPU_BASED_RDTSC_EXITING", "RDTSC exiting", ()),
    (_C, 15, "CPU_BASED_CR3_LOAD_EXITING", "CR3-load exiting", ()),
    (_C, 16, "CPU_BASED_CR3_STORE_EXITING", "CR3-store exiting", ()),
    (_C, 17, "CPU_BASED_ACTIVATE_TERTIARY_CONTROLS", "Activate tertiary controls", ()),
    (_C, 19, "CPU_BASED_CR8_LOAD_EXITING", "CR8-load exiting", ()),
    (_C, 20, "CPU_BASED_CR8_STORE_EXITING", "CR8-store exiting", ()),
    (_C, 21, "CPU_BASED_TPR_SHADOW", "Use TPR shadow", ("CPU_BASED_USE_TPR_SHADOW",)),
    (_C, 22, "CPU_BASED_NMI_WINDOW_EXITING", "NMI-window exiting", ("CPU_BASED_VIRTUAL_NMI_PENDING",)),
    (_C, 23, "CPU_BASED_MOV_DR_EXITING", "MOV-DR exiting", ()),
    (_C, 24, "CPU_BASED_UNCOND_IO_EXITING", "Unconditional I/O exiting", ()),
    (_C, 25, "CPU_BASED_USE_IO_BITMAPS", "Use I/O bitmaps", ()),
    (_C, 27, "CPU_BASED_MONITOR_TRAP_FLAG", "Monitor trap flag", ()),
    (_C, 28, "CPU_BASED_USE_MSR_BITMAPS", "Use MSR bitmaps", ("CPU_BASED_ACTIVATE_MSR_BITMAP",)),
    (_C, 29, "CPU_BASED_MONITOR_EXITING", "MONITOR exiting", ()),
    (_C, 30, "CPU_BASED_PAUSE_EXITING", "PAUSE exiting", ()),
    (_C, 31, "CPU_BASED_ACTIVATE_SECONDARY_CONTROLS", "Activate secondary controls", ()),
    # Secondary processor-based VM-execution controls
    (_S, 0, "SECONDARY_EXEC_VIRTUALIZE_APIC_ACCESSES", "Virtualize APIC accesses", ()),
    (_S, 1, "SECONDARY_EXEC_ENABLE_EPT", "Enable EPT", ("CPU_BASED_CTL2_ENABLE_EPT",)),
    (_S, 2, "SECONDARY_EXEC_DESC", "Descriptor-table exiting", ("SECONDARY_EXEC_DESC_TABLE_EXITING",)),
    (_S, 3, "SECONDARY_EXEC_ENABLE_RDTSCP", "Enable RDTSCP", ("CPU_BASED_CTL2_RDTSCP", "SECONDARY_EXEC_RDTSCP")),
    (_S, 4, "SECONDARY_EXEC_VIRTUALIZE_X2APIC_MODE", "Virtualize x2APIC mode", ()),
    (_S, 5, "SECONDARY_EXEC_ENABLE_VPID", "Enable VPID", ("CPU_BASED_CTL2_ENABLE_VPID",)),
    (_S, 6, "SECONDARY_EXEC_WBINVD_EXITING", "WBINVD exiting", ()),
    (_S, 7, "SECONDARY_EXEC_UNRESTRICTED_GUEST", "Unrestricted guest", ()),
    (_S, 8, "SECONDARY_EXEC_APIC_REGISTER_VIRT", "APIC-register virtualization", ()),
    (_S, 9, "SECONDARY_EXEC_VIRTUAL_INTR_DELIVERY", "Virtual-interrupt delivery", ()),
    (_S, 10, "SECONDARY_EXEC_PAUSE_LOOP_EXITING", "PAUSE-loop exiting", ()),
    (_S, 11, "SECONDARY_EXEC_RDRAND_EXITING", "RDRAND exiting", ()),
    (_S, 12, "SECONDARY_EXEC_ENABLE_INVPCID", "Enable INVPCID", ("CPU_BASED_CTL2_ENABLE_INVPCID",)),
    (_S, 13, "SECONDARY_EXEC_ENABLE_VMFUNC", "Enable VM functions", ()),
    (_S, 14, "SECONDARY_EXEC_SHADOW_VMCS", "VMCS shadowing", ()),
    (_S, 15, "SECONDARY_EXEC_ENCLS_EXITING", "Enable ENCLS exiting", ()),
    (_S, 16, "SECONDARY_EXEC_RDSEED_EXITING", "RDSEED exiting", ()),
    (_S, 17, "SECONDARY_EXEC_ENABLE_PML", "Enable PML", ()),
    (_S, 18, "SECONDARY_EXEC_EPT_VIOLATION_VE", "EPT-violation #VE", ()),
    (_S, 19, "SECONDARY_EXEC_PT_CONCEAL_VMX", "Conceal VMX from PT", ()),
    (_S, 20, "SECONDARY_EXEC_ENABLE_XSAVES", "Enable XSAVES/XRSTORS", ("CPU_BASED_CTL2_ENABLE_XSAVE_XRSTORS", "SECONDARY_EXEC_XSAVES")),
    (_S, 21, "SECONDARY_EXEC_PASID_TRANSLATION", "PASID translation", ()),
    (_S, 22, "SECONDARY_EXEC_MODE_BASED_EPT_EXEC", "Mode-based execute control for EPT", ()),
    (_S, 23, "SECONDARY_EXEC_ENABLE_SPP", "Sub-page write permissions for EPT", ()),
    (_S, 24, "SECONDARY_EXEC_PT_USE_GPA", "Intel PT uses guest physical addresses", ()),
    (_S, 25, "SECONDARY_EXEC_TSC_SCALING", "Use TSC scaling", ()),
    (_S, 26, "SECONDARY_EXEC_ENABLE_USR_WAIT_PAUSE", "Enable user wait and pause", ()),
    (_S, 27, "SECONDARY_EXEC_ENABLE_PCONFIG", "Enable PCONFIG", ()),
    (_S, 28, "SECONDARY_EXEC_ENCLV_EXITING", "Enable ENCLV exiting", ()),
    (_S, 29, "SECONDARY_EXEC_EPC_VIRT_EXTENSIONS", "EPC-virtualization extensions", ()),
    (_S, 30, "SECONDARY_EXEC_BUS_LOCK_DETECTION", "VMM bus-lock detection", ()),
    (_S, 31, "SECONDARY_EXEC_NOTIFY_VM_EXITING", "Instruction timeout", ()),
    # Tertiary processor-based VM-execution controls
    (_T, 0, "TERTIARY_EXEC_LOADIWKEY_EXITING", "LOADIWKEY exiting", ()),
    (_T, 1, "TERTIARY_EXEC_ENABLE_HLAT", "Enable HLAT", ()),
    (_T, 2, "TERTIARY_EXEC_EPT_PAGING_WRITE", "EPT paging-write control", ()),
    (_T, 3, "TERTIARY_EXEC_GUEST_PAGING_VERIFY", "Guest-paging verification", ()),
    (_T, 4, "TERTIARY_EXEC_IPI_VIRT", "IPI virtualization", ()),
    (_T, 5, "TERTIARY_EXEC_GPAW", "Enable guest-physical-address width", ()),
    (_T, 7, "TERTIARY_EXEC_SPEC_CTRL_VIRT", "Virtualize IA32_SPEC_CTRL", ()),
    # Primary VM-exit controls
    (_X, 2, "VM_EXIT_SAVE_DEBUG_CONTROLS", "Save debug controls", ()),
    (_X, 9, "VM_EXIT_HOST_ADDR_SPACE_SIZE", "Host address-space size", ("VM_EXIT_IA32E_MODE",)),
    (_X, 12, "VM_EXIT_LOAD_IA32_PERF_GLOBAL_CTRL", "Load IA32_PERF_GLOBAL_CTRL", ()),
    (_X, 15, "VM_EXIT_ACK_INTR_ON_EXIT", "Acknowledge interrupt on exit", ()),
    (_X, 18, "VM_EXIT_SAVE_IA32_PAT", "Save IA32_PAT", ()),
    (_X, 19, "VM_EXIT_LOAD_IA32_PAT", "Load IA32_PAT", ()),
    (_X, 20, "VM_EXIT_SAVE_IA32_EFER", "Save IA32_EFER", ()),
    (_X, 21, "VM_EXIT_LOAD_IA32_EFER", "Load IA32_EFER", ()),
    (_X, 22, "VM_EXIT_SAVE_VMX_PREEMPTION_TIMER", "Save VMX-preemption timer value", ()),
    (_X, 23, "VM_EXIT_CLEAR_BNDCFGS", "Clear IA32_BNDCFGS", ()),
    (_X, 24, "VM_EXIT_PT_CONCEAL_PIP", "Conceal VMX from PT", ()),
    (_X, 25, "VM_EXIT_CLEAR_IA32_RTIT_CTL", "Clear IA32_RTIT_CTL", ()),
    (_X, 26, "VM_EXIT_CLEAR_IA32_LBR_CTL", "Clear IA32_LBR_CTL", ()),
    (_X, 27, "VM_EXIT_CLEAR_UINV", "Clear UINV", ()),
    (_X, 28, "VM_EXIT_LOAD_CET_STATE", "Load CET state", ()),
    (_X, 29, "VM_EXIT_LOAD_IA32_PKRS", "Load PKRS", ()),
    (_X, 30, "VM_EXIT_SAVE_IA32_PERF_GLOBAL_CTRL", "Save IA32_PERF_GLOBAL_CTRL", ()),
    (_X, 31, "VM_EXIT_ACTIVATE_SECONDARY_CONTROLS", "Activate secondary controls", ()),
    # Secondary VM-exit controls
    (_X2, 0, "SECONDARY_VM_EXIT_SAVE_IA32_FRED", "Save FRED", ()),
    (_X2, 1, "SECONDARY_VM_EXIT_LOAD_IA32_FRED", "Load FRED", ()),
    # VM-entry controls
    (_N, 2, "VM_ENTRY_LOAD_DEBUG_CONTROLS", "Load debug controls", ()),
    (_N, 9, "VM_ENTRY_IA32E_MODE", "IA-32e mode guest", ()),
    (_N, 10, "VM_ENTRY_SMM", "Entry to SMM", ()),
    (_N, 11, "VM_ENTRY_DEACT_DUAL_MONITOR", "Deactivate dual-monitor treatment", ()),
    (_N, 13, "VM_ENTRY_LOAD_IA32_PERF_GLOBAL_CTRL", "Load IA32_PERF_GLOBAL_CTRL", ()),
    (_N, 14, "VM_ENTRY_LOAD_IA32_PAT", "Load IA32_PAT", ()),
    (_N, 15, "VM_ENTRY_LOAD_IA32_EFER", "Load IA32_EFER", ()),
    (_N, 16, "VM_ENTRY_LOAD_BNDCFGS", "Load IA32_BNDCFGS", ()),
    (_N, 17, "VM_ENTRY_PT_CONCEAL_PIP", "Conceal VMX from PT", ()),
    (_N, 18, "VM_ENTRY_LOAD_IA32_RTIT_CTL", "Load IA32_RTIT_CTL", ()),
    (_N, 19, "VM_ENTRY_LOAD_UINV", "Load UINV", ()),
    (_N, 20, "VM_ENTRY_LOAD_CET_STATE", "Load CET state", ()),
    (_N, 21, "VM_ENTRY_LOAD_IA32_LBR_CTL", "Load guest IA32_LBR_CTL", ()),
    (_N, 22, "VM_ENTRY_LOAD_IA32_PKRS", "Load PKRS", ()),
    (_N, 23, "VM_ENTRY_LOAD_IA32_FRED", "Load FRED", ()),
    # VM-function controls
    (_F, 0, "VMX_VMFUNC_EPTP_SWITCHING", "EPTP switching", ()),
]

CONTROLS: tuple[ControlBit, ...] = tuple(ControlBit(name, field, bit, sdm, aliases)
                                         for field, bit, name, sdm, aliases in _BITS)

_BY_NAME: dict[str, ControlBit] = {}
for _c in CONTROLS:
    for _key in (_c.name, *_c.aliases):
        assert normalize(_key) not in _BY_NAME, _key
        _BY_NAME[normalize(_key)] = _c

# Every control name is also a module constant holding its bit mask:
# `controls.SECONDARY_EXEC_ENABLE_EPT == 0x2`.
globals().update({c.name: c.mask for c in CONTROLS})


def lookup(name: str) -> ControlBit | None:
    return _BY_NAME.get(normalize(name))


def by_name(name: str) -> ControlBit:
    c = lookup(name)
    if c is None:
        raise KeyError(name)
    return c


def bits_of(field: str) -> tuple[ControlBit, ...]:
    return tuple(c for c in CONTROLS if c.field == field)


def names_of(field: str, value: int) -> list[str]:
    """Names of the set bits of a control value; unnamed bits as 'bit N'."""
    known = {c.bit: c.name for c in bits_of(field)}
    width = CONTROL_FIELDS[field].bits if field in CONTROL_FIELDS else 64
    return [known.get(b, f"bit {b}") for b in range(width) if value >> b & 1]


def mask_of(*names: str) -> int:
    """OR of the masks of the named controls (all of one field)."""
    value = 0
    for n in names:
        value |= by_name(n).mask
    return value

"""Every rule with a failing and a passing case.

Each case starts from the template (which passes every rule) and changes a few
fields.  The expected outcome of each failing case is worked out from the SDM's
text for that check (the outcome class of its section, the exit qualification);
the failing case must be reported with that rule, and -- where no earlier check
must fire too -- as the first violation.  The passing case must not violate the
rule and (unless stated) must pass every check.
"""
import struct
from dataclasses import dataclass, field

import pytest

from vmxlab.arch import controls as C
from vmxlab.checks import RULES
from checks_support import run

SKL, ICL, PEN, MAX, MIN = "skylake-client", "icelake-server", "penryn", "synthetic-max", "synthetic-min"
NONCANON = 1 << 60                   # not canonical for 48- or 57-bit linear addresses
ALL64 = (1 << 64) - 1


def orr(bits):
    return lambda x: x | bits


def andn(bits):
    return lambda x: x & ~bits


def vm_entry_info(vector, itype, code=False):
    return 1 << 31 | itype << 8 | vector | (1 << 11 if code else 0)


def msr_entries(*entries):
    return b"".join(struct.pack("<IIQ", i, hi, data) for i, hi, data in entries)


@dataclass
class Case:
    rule: str
    expect: str                      # "7", "8", "4", "5", "26", "33/Q", "34/N"
    fail: dict
    ok: dict | None = None
    p: str = SKL
    mode: str = "long"
    mem: dict | None = None
    kw: dict = field(default_factory=dict)
    ok_p: str | None = None
    ok_mode: str | None = None
    ok_mem: dict | None = None
    ok_kw: dict | None = None
    first: bool = True               # the failing case's first violation is this rule
    ok_full: bool = True             # the passing case passes every check


CASES: list[Case] = []


def case(*a, **kw):
    CASES.append(Case(*a, **kw))


# ---- basic -----------------------------------------------------------------------------------
case("basic.mov_ss_blocking", "26", {}, kw={"mov_ss_blocking": True}, ok_kw={})
case("basic.vmlaunch.launch_state", "4", {}, kw={"launch_state": "launched"}, ok_kw={})
case("basic.vmresume.launch_state", "5", {}, kw={"instruction": "vmresume"},
     ok_kw={"instruction": "vmresume", "launch_state": "launched"})

# ---- VM-execution controls ------------------------------------------------------------------
case("ctrl.pin.allowed0", "7", {"PIN_BASED_VM_EXEC_CONTROL": 0}, {"PIN_BASED_VM_EXEC_CONTROL": 0x17})
case("ctrl.pin.allowed1", "7", {"PIN_BASED_VM_EXEC_CONTROL": orr(C.PIN_BASED_POSTED_INTR)})
case("ctrl.primary.allowed0", "7", {"CPU_BASED_VM_EXEC_CONTROL": andn(0x2)},
     {"CPU_BASED_VM_EXEC_CONTROL": orr(C.CPU_BASED_HLT_EXITING)})
case("ctrl.primary.allowed1", "7", {"CPU_BASED_VM_EXEC_CONTROL": orr(0x1)})
case("ctrl.secondary.allowed0", "7", {"SECONDARY_VM_EXEC_CONTROL": andn(C.SECONDARY_EXEC_ENABLE_RDTSCP)}, p=MIN,
     ok={"SECONDARY_VM_EXEC_CONTROL": andn(C.SECONDARY_EXEC_ENABLE_RDTSCP),
         "CPU_BASED_VM_EXEC_CONTROL": andn(C.CPU_BASED_ACTIVATE_SECONDARY_CONTROLS)})
case("ctrl.secondary.allowed1", "7", {"SECONDARY_VM_EXEC_CONTROL": orr(C.SECONDARY_EXEC_TSC_SCALING)},
     # with "activate secondary controls" 0 the secondary controls are not checked
     {"SECONDARY_VM_EXEC_CONTROL": orr(C.SECONDARY_EXEC_TSC_SCALING | 1 << 30),
      "CPU_BASED_VM_EXEC_CONTROL": andn(C.CPU_BASED_ACTIVATE_SECONDARY_CONTROLS)})
_TER_ON = {"CPU_BASED_VM_EXEC_CONTROL": orr(C.CPU_BASED_ACTIVATE_TERTIARY_CONTROLS)}
case("ctrl.tertiary.reserved", "7", {**_TER_ON, "TERTIARY_VM_EXEC_CONTROL": 1 << 6}, p=MAX,
     ok={**_TER_ON, "TERTIARY_VM_EXEC_CONTROL": C.TERTIARY_EXEC_LOADIWKEY_EXITING})
case("ctrl.cr3_target_count", "7", {"CR3_TARGET_COUNT": 5}, {"CR3_TARGET_COUNT": 4})
_IO = {"CPU_BASED_VM_EXEC_CONTROL": orr(C.CPU_BASED_USE_IO_BITMAPS), "IO_BITMAP_A": 0x5000, "IO_BITMAP_B": 0x6000}
for _n in ("A", "B"):
    case(f"ctrl.io_bitmap_{_n.lower()}.aligned", "7", {**_IO, f"IO_BITMAP_{_n}": 0x5800}, _IO)
    case(f"ctrl.io_bitmap_{_n.lower()}.width", "7", {**_IO, f"IO_BITMAP_{_n}": 1 << 39}, _IO)
case("ctrl.msr_bitmap.aligned", "7", {"MSR_BITMAP": 0x20010})
case("ctrl.msr_bitmap.width", "7", {"MSR_BITMAP": 1 << 40},
     {"MSR_BITMAP": 1 << 40, "CPU_BASED_VM_EXEC_CONTROL": andn(C.CPU_BASED_USE_MSR_BITMAPS)})
_TPR = {"CPU_BASED_VM_EXEC_CONTROL": orr(C.CPU_BASED_TPR_SHADOW), "VIRTUAL_APIC_PAGE_ADDR": 0x6000}
_VTPR = {0x6000: bytes(0x80) + b"\x50" + bytes(0xF7F)}     # VTPR = 50H
case("ctrl.virtual_apic.aligned", "7", {**_TPR, "VIRTUAL_APIC_PAGE_ADDR": 0x6004}, _TPR, ok_mem=_VTPR)
case("ctrl.virtual_apic.width", "7", {**_TPR, "VIRTUAL_APIC_PAGE_ADDR": 1 << 39}, _TPR, ok_mem=_VTPR)
case("ctrl.tpr_threshold.reserved", "7", {**_TPR, "TPR_THRESHOLD": 0x10}, {**_TPR, "TPR_THRESHOLD": 0xF},
     mem=_VTPR, ok_mem=_VTPR, ok_full=False)
case("ctrl.tpr_threshold.vtpr", "7", {**_TPR, "TPR_THRESHOLD": 6}, {**_TPR, "TPR_THRESHOLD": 5}, mem=_VTPR,
     ok_mem=_VTPR)
case("ctrl.pin.virtual_nmis", "7", {"PIN_BASED_VM_EXEC_CONTROL": orr(C.PIN_BASED_VIRTUAL_NMIS)},
     {"PIN_BASED_VM_EXEC_CONTROL": orr(C.PIN_BASED_VIRTUAL_NMIS | C.PIN_BASED_NMI_EXITING)})
case("ctrl.primary.nmi_window", "7", {"CPU_BASED_VM_EXEC_CONTROL": orr(C.CPU_BASED_NMI_WINDOW_EXITING)},
     {"CPU_BASED_VM_EXEC_CONTROL": orr(C.CPU_BASED_NMI_WINDOW_EXITING),
      "PIN_BASED_VM_EXEC_CONTROL": orr(C.PIN_BASED_VIRTUAL_NMIS | C.PIN_BASED_NMI_EXITING)})
_VAPIC = {"SECONDARY_VM_EXEC_CONTROL": orr(C.SECONDARY_EXEC_VIRTUALIZE_APIC_ACCESSES), "APIC_ACCESS_ADDR": 0x7000}
case("ctrl.apic_access.aligned", "7", {**_VAPIC, "APIC_ACCESS_ADDR": 0x7100}, _VAPIC)
case("ctrl.apic_access.width", "7", {**_VAPIC, "APIC_ACCESS_ADDR": 1 << 45}, _VAPIC)
_X2 = {"SECONDARY_VM_EXEC_CONTROL": orr(C.SECONDARY_EXEC_VIRTUALIZE_X2APIC_MODE)}
case("ctrl.secondary.apic_virt_needs_tpr_shadow", "7", _X2, {**_X2, **_TPR}, ok_mem=_VTPR)
case("ctrl.secondary.x2apic_and_apic_accesses", "7",
     {**_TPR, "SECONDARY_VM_EXEC_CONTROL": orr(C.SECONDARY_EXEC_VIRTUALIZE_X2APIC_MODE
                                               | C.SECONDARY_EXEC_VIRTUALIZE_APIC_ACCESSES), "APIC_ACCESS_ADDR": 0x7000},
     {**_TPR, **_X2}, mem=_VTPR, ok_mem=_VTPR)
_VID = {"CPU_BASED_VM_EXEC_CONTROL": orr(C.CPU_BASED_TPR_SHADOW), "VIRTUAL_APIC_PAGE_ADDR": 0x6000,
        "SECONDARY_VM_EXEC_CONTROL": orr(C.SECONDARY_EXEC_VIRTUAL_INTR_DELIVERY)}
_EXT = {"PIN_BASED_VM_EXEC_CONTROL": orr(C.PIN_BASED_EXT_INTR_MASK)}
case("ctrl.pin.vid_needs_ext_intr_exiting", "7", _VID, {**_VID, **_EXT}, p=ICL)
_PI = {**_VID, "PIN_BASED_VM_EXEC_CONTROL": orr(C.PIN_BASED_EXT_INTR_MASK | C.PIN_BASED_POSTED_INTR),
       "POSTED_INTR_NV": 0xF2, "POSTED_INTR_DESC_ADDR": 0x8040}
case("ctrl.posted_intr.vid", "7", {**_PI, "SECONDARY_VM_EXEC_CONTROL": lambda x: x}, _PI, p=ICL)
case("ctrl.posted_intr.ack_intr_on_exit", "7", {**_PI, "VM_EXIT_CONTROLS": andn(C.VM_EXIT_ACK_INTR_ON_EXIT)}, _PI, p=ICL)
case("ctrl.posted_intr.vector", "7", {**_PI, "POSTED_INTR_NV": 0x100}, {**_PI, "POSTED_INTR_NV": 0xFF}, p=ICL)
case("ctrl.posted_intr_desc.aligned", "7", {**_PI, "POSTED_INTR_DESC_ADDR": 0x8020}, _PI, p=ICL)
case("ctrl.posted_intr_desc.width", "7", {**_PI, "POSTED_INTR_DESC_ADDR": 1 << 46}, _PI, p=ICL)
case("ctrl.vpid.nonzero", "7", {"VIRTUAL_PROCESSOR_ID": 0}, {"VIRTUAL_PROCESSOR_ID": 0xFFFF})
case("ctrl.eptp.memory_type", "7", {"EPT_POINTER": lambda x: x & ~7 | 1}, {"EPT_POINTER": lambda x: x & ~7})
case("ctrl.eptp.walk_length", "7", {"EPT_POINTER": lambda x: x & ~0x38 | 4 << 3},
     {"EPT_POINTER": lambda x: x & ~0x38 | 4 << 3}, ok_p=ICL)
case("ctrl.eptp.accessed_dirty", "7", {"EPT_POINTER": orr(0x40)}, {"EPT_POINTER": orr(0x40)}, p=MIN, ok_p=SKL)
case("ctrl.eptp.supervisor_shadow_stack", "7", {"EPT_POINTER": orr(0x80)}, {"EPT_POINTER": orr(0x80)}, ok_p=MAX)
case("ctrl.eptp.reserved", "7", {"EPT_POINTER": orr(0x100)})
_PML = {"SECONDARY_VM_EXEC_CONTROL": orr(C.SECONDARY_EXEC_ENABLE_PML), "PML_ADDRESS": 0x9000}
case("ctrl.pml.needs_ept", "7", {**_PML, "SECONDARY_VM_EXEC_CONTROL": lambda x: (x | C.SECONDARY_EXEC_ENABLE_PML)
                                 & ~C.SECONDARY_EXEC_ENABLE_EPT}, _PML)
case("ctrl.pml.aligned", "7", {**_PML, "PML_ADDRESS": 0x9008}, _PML)
case("ctrl.pml.width", "7", {**_PML, "PML_ADDRESS": 1 << 39}, _PML)
case("ctrl.unrestricted_guest.needs_ept", "7", {"SECONDARY_VM_EXEC_CONTROL": lambda x: (
    x | C.SECONDARY_EXEC_UNRESTRICTED_GUEST) & ~C.SECONDARY_EXEC_ENABLE_EPT},
    {"SECONDARY_VM_EXEC_CONTROL": orr(C.SECONDARY_EXEC_UNRESTRICTED_GUEST)})


def _without_ept(bit):
    return {"SECONDARY_VM_EXEC_CONTROL": lambda x: (x | bit) & ~C.SECONDARY_EXEC_ENABLE_EPT}


case("ctrl.mode_based_ept.needs_ept", "7", _without_ept(C.SECONDARY_EXEC_MODE_BASED_EPT_EXEC),
     {"SECONDARY_VM_EXEC_CONTROL": orr(C.SECONDARY_EXEC_MODE_BASED_EPT_EXEC)}, p=ICL)
_SPP = {"SECONDARY_VM_EXEC_CONTROL": orr(C.SECONDARY_EXEC_ENABLE_SPP), "SPP_TABLE_POINTER": 0xA000}
case("ctrl.spp.needs_ept", "7", {**_SPP, **_without_ept(C.SECONDARY_EXEC_ENABLE_SPP)}, _SPP, p=MAX)
case("ctrl.spptp.aligned", "7", {**_SPP, "SPP_TABLE_POINTER": 0xA001}, _SPP, p=MAX)
case("ctrl.spptp.width", "7", {**_SPP, "SPP_TABLE_POINTER": 1 << 46}, _SPP, p=MAX)
_HLAT = {**_TER_ON, "TERTIARY_VM_EXEC_CONTROL": C.TERTIARY_EXEC_ENABLE_HLAT, "HLAT_POINTER": 0xB018}
case("ctrl.hlat.needs_ept", "7", {**_HLAT, "SECONDARY_VM_EXEC_CONTROL": andn(C.SECONDARY_EXEC_ENABLE_EPT)}, _HLAT, p=MAX)
case("ctrl.hlatp.reserved", "7", {**_HLAT, "HLAT_POINTER": 0xB020}, _HLAT, p=MAX)
for _bit, _rid in ((C.TERTIARY_EXEC_EPT_PAGING_WRITE, "ept_paging_write"),
                   (C.TERTIARY_EXEC_GUEST_PAGING_VERIFY, "guest_paging_verify")):
    case(f"ctrl.{_rid}.needs_ept", "7", {**_TER_ON, "TERTIARY_VM_EXEC_CONTROL": _bit,
                                         "SECONDARY_VM_EXEC_CONTROL": andn(C.SECONDARY_EXEC_ENABLE_EPT)},
         {**_TER_ON, "TERTIARY_VM_EXEC_CONTROL": _bit}, p=MAX)
_VMF = {"SECONDARY_VM_EXEC_CONTROL": orr(C.SECONDARY_EXEC_ENABLE_VMFUNC), "VM_FUNCTION_CONTROL": 1,
        "EPTP_LIST_ADDRESS": 0xC000}
case("ctrl.vmfunc.reserved", "7", {**_VMF, "VM_FUNCTION_CONTROL": 2}, _VMF)
case("ctrl.vmfunc.eptp_switching_needs_ept", "7",
     {**_VMF, "SECONDARY_VM_EXEC_CONTROL": lambda x: (x | C.SECONDARY_EXEC_ENABLE_VMFUNC) & ~C.SECONDARY_EXEC_ENABLE_EPT},
     _VMF)
case("ctrl.eptp_list.aligned", "7", {**_VMF, "EPTP_LIST_ADDRESS": 0xC800}, {**_VMF, "VM_FUNCTION_CONTROL": 0,
                                                                          "EPTP_LIST_ADDRESS": 0xC800})
case("ctrl.eptp_list.width", "7", {**_VMF, "EPTP_LIST_ADDRESS": 1 << 39}, _VMF)
_SHADOW = {"SECONDARY_VM_EXEC_CONTROL": orr(C.SECONDARY_EXEC_SHADOW_VMCS), "VMREAD_BITMAP": 0xD000,
           "VMWRITE_BITMAP": 0xE000}
for _n in ("vmread", "vmwrite"):
    case(f"ctrl.{_n}_bitmap.aligned", "7", {**_SHADOW, f"{_n.upper()}_BITMAP": 0xD001}, _SHADOW)
    case(f"ctrl.{_n}_bitmap.width", "7", {**_SHADOW, f"{_n.upper()}_BITMAP": 1 << 40}, _SHADOW)
_VE = {"SECONDARY_VM_EXEC_CONTROL": orr(C.SECONDARY_EXEC_EPT_VIOLATION_VE), "VE_INFORMATION_ADDRESS": 0xF000}
case("ctrl.ve_info.aligned", "7", {**_VE, "VE_INFORMATION_ADDRESS": 0xF0F0}, _VE)
case("ctrl.ve_info.width", "7", {**_VE, "VE_INFORMATION_ADDRESS": 1 << 40}, _VE)
_PT = {"SECONDARY_VM_EXEC_CONTROL": orr(C.SECONDARY_EXEC_PT_USE_GPA),
       "VM_ENTRY_CONTROLS": orr(C.VM_ENTRY_LOAD_IA32_RTIT_CTL), "VM_EXIT_CONTROLS": orr(C.VM_EXIT_CLEAR_IA32_RTIT_CTL)}
case("ctrl.pt_guest_physical.controls", "7", {**_PT, "VM_EXIT_CONTROLS": lambda x: x}, _PT, p=MAX)

# ---- VM-exit controls ------------------------------------------------------------------------
case("ctrl.exit.allowed0", "7", {"VM_EXIT_CONTROLS": andn(0x1)},
     {"VM_EXIT_CONTROLS": orr(C.VM_EXIT_SAVE_DEBUG_CONTROLS)})
case("ctrl.exit.allowed1", "7", {"VM_EXIT_CONTROLS": orr(C.VM_EXIT_CLEAR_IA32_LBR_CTL)})
_X2ON = {"VM_EXIT_CONTROLS": orr(C.VM_EXIT_ACTIVATE_SECONDARY_CONTROLS)}
case("ctrl.exit2.reserved", "7", {**_X2ON, "SECONDARY_VM_EXIT_CONTROLS": 4},
     {**_X2ON, "SECONDARY_VM_EXIT_CONTROLS": 1}, p=MAX)
case("ctrl.exit.save_preemption_timer", "7", {"VM_EXIT_CONTROLS": orr(C.VM_EXIT_SAVE_VMX_PREEMPTION_TIMER)},
     {"VM_EXIT_CONTROLS": orr(C.VM_EXIT_SAVE_VMX_PREEMPTION_TIMER),
      "PIN_BASED_VM_EXEC_CONTROL": orr(C.PIN_BASED_VMX_PREEMPTION_TIMER)})
for _area, _ad, _cn in (("exit_msr_store", "VM_EXIT_MSR_STORE_ADDR", "VM_EXIT_MSR_STORE_COUNT"),
                        ("exit_msr_load", "VM_EXIT_MSR_LOAD_ADDR", "VM_EXIT_MSR_LOAD_COUNT")):
    _ok = {_cn: 2, _ad: 0xB000}
    case(f"ctrl.{_area}.aligned", "7", {_cn: 2, _ad: 0xB008}, _ok)
    case(f"ctrl.{_area}.width", "7", {_cn: 2, _ad: 1 << 39}, {_cn: 0, _ad: 1 << 39})
    case(f"ctrl.{_area}.last_byte", "7", {_cn: 2, _ad: (1 << 39) - 16}, {_cn: 1, _ad: (1 << 39) - 16})

# ---- VM-entry controls -----------------------------------------------------------------------
case("ctrl.entry.allowed0", "7", {"VM_ENTRY_CONTROLS": andn(0x1)},
     {"VM_ENTRY_CONTROLS": orr(C.VM_ENTRY_LOAD_DEBUG_CONTROLS)})
case("ctrl.entry.allowed1", "7", {"VM_ENTRY_CONTROLS": orr(C.VM_ENTRY_LOAD_CET_STATE)})
_IF = {"GUEST_RFLAGS": 0x202}
case("ctrl.event.type", "7", {"VM_ENTRY_INTR_INFO_FIELD": vm_entry_info(0x20, 1)},
     {"VM_ENTRY_INTR_INFO_FIELD": vm_entry_info(0, 7)})
CASES.append(Case("ctrl.event.type", "7", {"VM_ENTRY_INTR_INFO_FIELD": vm_entry_info(0, 7)},
                  {**_IF, "VM_ENTRY_INTR_INFO_FIELD": vm_entry_info(0x20, 0)}, p=PEN))
case("ctrl.event.vector", "7", {"VM_ENTRY_INTR_INFO_FIELD": vm_entry_info(3, 2)},
     {"VM_ENTRY_INTR_INFO_FIELD": vm_entry_info(2, 2)})
CASES.append(Case("ctrl.event.vector", "7", {"VM_ENTRY_INTR_INFO_FIELD": vm_entry_info(32, 3)},
                  {"VM_ENTRY_INTR_INFO_FIELD": vm_entry_info(31, 3)}))
case("ctrl.event.deliver_error_code", "7", {"VM_ENTRY_INTR_INFO_FIELD": vm_entry_info(13, 3)},
     {"VM_ENTRY_INTR_INFO_FIELD": vm_entry_info(13, 3, code=True)})
CASES.append(Case("ctrl.event.deliver_error_code", "7", {"VM_ENTRY_INTR_INFO_FIELD": vm_entry_info(6, 3, code=True)},
                  {"VM_ENTRY_INTR_INFO_FIELD": vm_entry_info(6, 3)}))
# unrestricted guest 0: protected mode for this check even if the CR0 field has PE = 0 (the CR0 check fails later)
CASES.append(Case("ctrl.event.deliver_error_code", "7", {"VM_ENTRY_INTR_INFO_FIELD": vm_entry_info(13, 3),
                                                         "GUEST_CR0": lambda x: x & ~1},
                  {"VM_ENTRY_INTR_INFO_FIELD": vm_entry_info(13, 3, code=True), "GUEST_CR0": lambda x: x & ~1},
                  ok_full=False))
# real mode under unrestricted guest: no error code may be delivered
CASES.append(Case("ctrl.event.deliver_error_code", "7", {"VM_ENTRY_INTR_INFO_FIELD": vm_entry_info(13, 3, code=True)},
                  {"VM_ENTRY_INTR_INFO_FIELD": vm_entry_info(13, 3)}, mode="unrestricted-real"))
case("ctrl.event.reserved", "7", {"VM_ENTRY_INTR_INFO_FIELD": vm_entry_info(2, 2) | 1 << 12},
     {"VM_ENTRY_INTR_INFO_FIELD": vm_entry_info(2, 2) & ~(1 << 31) | 1 << 12})
case("ctrl.event.error_code", "7", {"VM_ENTRY_INTR_INFO_FIELD": vm_entry_info(14, 3, True),
                                    "VM_ENTRY_EXCEPTION_ERROR_CODE": 0x10000},
     {"VM_ENTRY_INTR_INFO_FIELD": vm_entry_info(14, 3, True), "VM_ENTRY_EXCEPTION_ERROR_CODE": 0xFFFF})
case("ctrl.event.instruction_length", "7", {"VM_ENTRY_INTR_INFO_FIELD": vm_entry_info(0x80, 4),
                                            "VM_ENTRY_INSTRUCTION_LEN": 16},
     {"VM_ENTRY_INTR_INFO_FIELD": vm_entry_info(0x80, 4), "VM_ENTRY_INSTRUCTION_LEN": 0})
CASES.append(Case("ctrl.event.instruction_length", "7", {"VM_ENTRY_INTR_INFO_FIELD": vm_entry_info(3, 6),
                                                         "VM_ENTRY_INSTRUCTION_LEN": 0},
                  {"VM_ENTRY_INTR_INFO_FIELD": vm_entry_info(3, 6), "VM_ENTRY_INSTRUCTION_LEN": 1}, p=PEN))
_ML = {"VM_ENTRY_MSR_LOAD_COUNT": 1, "VM_ENTRY_MSR_LOAD_ADDR": 0xB000}
_ML_MEM = {0xB000: msr_entries((0x174, 0, 0x10))}
case("ctrl.entry_msr_load.aligned", "7", {**_ML, "VM_ENTRY_MSR_LOAD_ADDR": 0xB004}, _ML, ok_mem=_ML_MEM)
case("ctrl.entry_msr_load.width", "7", {**_ML, "VM_ENTRY_MSR_LOAD_ADDR": 1 << 39}, _ML, ok_mem=_ML_MEM)
case("ctrl.entry_msr_load.last_byte", "7", {"VM_ENTRY_MSR_LOAD_COUNT": 2, "VM_ENTRY_MSR_LOAD_ADDR": (1 << 39) - 16},
     _ML, ok_mem=_ML_MEM)
case("ctrl.entry.smm_outside_smm", "7", {"VM_ENTRY_CONTROLS": orr(C.VM_ENTRY_SMM)})
case("ctrl.entry.smm_and_dual_monitor", "7", {"VM_ENTRY_CONTROLS": orr(C.VM_ENTRY_SMM | C.VM_ENTRY_DEACT_DUAL_MONITOR)},
     {"VM_ENTRY_CONTROLS": orr(C.VM_ENTRY_DEACT_DUAL_MONITOR)}, first=False, ok_full=False)

# ---- host state --------------------------------------------------------------------------------
case("host.cr0.fixed_bits", "8", {"HOST_CR0": andn(0x20)}, {"HOST_CR0": orr(1 << 30 | 1 << 29)})
CASES.append(Case("host.cr0.fixed_bits", "8", {"HOST_CR0": orr(1 << 32)}, {}))
case("host.cr4.fixed_bits", "8", {"HOST_CR4": 0}, {"HOST_CR4": orr(1 << 16)})
CASES.append(Case("host.cr4.fixed_bits", "8", {"HOST_CR4": orr(1 << 22)}, {"HOST_CR4": orr(1 << 22)}, ok_p=ICL))
case("host.cr4.cet_needs_wp", "8", {"HOST_CR4": orr(1 << 23), "HOST_CR0": andn(1 << 16)},
     {"HOST_CR4": orr(1 << 23)}, p=MAX)
case("host.cr3.width", "8", {"HOST_CR3": 1 << 39}, {"HOST_CR3": (1 << 39) - 4096})
for _r in ("esp", "eip"):
    case(f"host.sysenter_{_r}.canonical", "8", {f"HOST_IA32_SYSENTER_{_r.upper()}": NONCANON},
         {f"HOST_IA32_SYSENTER_{_r.upper()}": 0xFFFF800000000000})
_HCET = {"VM_EXIT_CONTROLS": orr(C.VM_EXIT_LOAD_CET_STATE)}
case("host.s_cet.canonical", "8", {**_HCET, "HOST_S_CET": NONCANON}, {**_HCET, "HOST_S_CET": 0xFFFF800000000000}, p=MAX)
case("host.intr_ssp_table.canonical", "8", {**_HCET, "HOST_INTR_SSP_TABLE": NONCANON}, _HCET, p=MAX)
case("host.s_cet.reserved", "8", {**_HCET, "HOST_S_CET": 1 << 6}, {**_HCET, "HOST_S_CET": 0x3F | 0xC00}, p=MAX)
case("host.ssp.aligned", "8", {**_HCET, "HOST_SSP": 0x1002}, {**_HCET, "HOST_SSP": 0x1004}, p=MAX)
_HPERF = {"VM_EXIT_CONTROLS": orr(C.VM_EXIT_LOAD_IA32_PERF_GLOBAL_CTRL)}
case("host.perf_global_ctrl.reserved", "8", {**_HPERF, "HOST_IA32_PERF_GLOBAL_CTRL": 1 << 10},
     {**_HPERF, "HOST_IA32_PERF_GLOBAL_CTRL": 0x70000000F})
_HPAT = {"VM_EXIT_CONTROLS": orr(C.VM_EXIT_LOAD_IA32_PAT)}
case("host.pat.memory_types", "8", {**_HPAT, "HOST_IA32_PAT": 0x0007040600070402},
     {**_HPAT, "HOST_IA32_PAT": 0x0706050401000000})
CASES.append(Case("host.pat.memory_types", "8", {**_HPAT, "HOST_IA32_PAT": 0x0807040600070406}, _HPAT))
_HEFER = {"VM_EXIT_CONTROLS": orr(C.VM_EXIT_LOAD_IA32_EFER)}
case("host.efer.reserved", "8", {**_HEFER, "HOST_IA32_EFER": orr(0x2)}, _HEFER)
case("host.efer.lma_lme", "8", {**_HEFER, "HOST_IA32_EFER": andn(0x400)}, _HEFER)
case("host.pkrs.reserved", "8", {"VM_EXIT_CONTROLS": orr(C.VM_EXIT_LOAD_IA32_PKRS), "HOST_IA32_PKRS": 1 << 32},
     {"VM_EXIT_CONTROLS": orr(C.VM_EXIT_LOAD_IA32_PKRS), "HOST_IA32_PKRS": 0xFFFFFFFF}, p=MAX)
for _s in ("CS", "SS", "DS", "ES", "FS", "GS", "TR"):
    case(f"host.{_s.lower()}.selector_rpl_ti", "8", {f"HOST_{_s}_SELECTOR": orr(4 if _s == "GS" else 1)})
case("host.cs.selector_null", "8", {"HOST_CS_SELECTOR": 0})
case("host.tr.selector_null", "8", {"HOST_TR_SELECTOR": 0})
_H32 = {"VM_EXIT_CONTROLS": andn(C.VM_EXIT_HOST_ADDR_SPACE_SIZE)}
case("host.ss.selector_null", "8", {**_H32, "HOST_SS_SELECTOR": 0}, {"HOST_SS_SELECTOR": 0}, mode="protected",
     kw={"host_lma": False}, ok_mode="long", ok_kw={})
for _r in ("FS", "GS", "GDTR", "IDTR", "TR"):
    case(f"host.{_r.lower()}.base_canonical", "8", {f"HOST_{_r}_BASE": NONCANON},
         {f"HOST_{_r}_BASE": 0xFFFFF80000000000})
case("host.addr_size.ia32e_guest_outside_lma", "8", {}, _H32, kw={"host_lma": False}, ok_mode="protected",
     ok_kw={"host_lma": False})
case("host.addr_size.host_size_outside_lma", "8", {}, _H32, mode="protected", kw={"host_lma": False},
     ok_kw={"host_lma": False})
case("host.addr_size.host_size_inside_lma", "8", _H32, {}, mode="protected")
case("host.addr_size.ia32e_guest_needs_host_size", "8", _H32, {}, first=False)
case("host.addr_size.cr4_pcide", "8", {**_H32, "HOST_CR4": orr(1 << 17)}, _H32, mode="protected",
     kw={"host_lma": False}, ok_kw={"host_lma": False})
case("host.addr_size.rip_upper", "8", {**_H32, "HOST_RIP": 1 << 32}, {**_H32, "HOST_RIP": 0xFFFFF000}, mode="protected",
     kw={"host_lma": False}, ok_kw={"host_lma": False})
case("host.addr_size.cr4_pae", "8", {"HOST_CR4": andn(0x20)})
case("host.addr_size.rip_canonical", "8", {"HOST_RIP": NONCANON}, {"HOST_RIP": 0xFFFFFFFF81000000})
case("host.addr_size.ssp", "8", {**_HCET, "HOST_SSP": NONCANON}, {**_HCET, "HOST_SSP": 0xFFFF800000001000}, p=MAX)
_HCET32 = {"VM_EXIT_CONTROLS": lambda x: (x | C.VM_EXIT_LOAD_CET_STATE) & ~C.VM_EXIT_HOST_ADDR_SPACE_SIZE}
CASES.append(Case("host.addr_size.ssp", "8", {**_HCET32, "HOST_SSP": 1 << 32}, {**_HCET32, "HOST_SSP": 0x1000},
                  p=MAX, mode="protected", kw={"host_lma": False}, ok_kw={"host_lma": False}))

# ---- guest control registers, debug registers, MSRs -------------------------------------------------
_UG = {"SECONDARY_VM_EXEC_CONTROL": orr(C.SECONDARY_EXEC_UNRESTRICTED_GUEST)}
case("guest.cr0.fixed_bits", "33/0", {"GUEST_CR0": andn(0x20)}, {"GUEST_CR0": andn(0x80000001)}, ok_mode="unrestricted-real")
CASES.append(Case("guest.cr0.fixed_bits", "33/0", {"GUEST_CR0": andn(0x1)}, {"GUEST_CR0": orr(0x60000000)}))
case("guest.cr0.pg_needs_pe", "33/0", {"GUEST_CR0": orr(1 << 31)}, {"GUEST_CR0": orr(1)}, mode="unrestricted-real")
case("guest.cr4.fixed_bits", "33/0", {"GUEST_CR4": andn(1 << 13)}, {"GUEST_CR4": orr(1 << 17)})
case("guest.cr4.cet_needs_wp", "33/0", {"GUEST_CR4": orr(1 << 23), "GUEST_CR0": andn(1 << 16)},
     {"GUEST_CR4": orr(1 << 23)}, p=MAX)
_LDBG = {"VM_ENTRY_CONTROLS": orr(C.VM_ENTRY_LOAD_DEBUG_CONTROLS)}
case("guest.debugctl.reserved", "33/0", {**_LDBG, "GUEST_IA32_DEBUGCTL": 0x4}, {**_LDBG, "GUEST_IA32_DEBUGCTL": 0x3})
case("guest.ia32e.cr0_pg", "33/0", {**_UG, "GUEST_CR0": andn(1 << 31)}, _UG)
case("guest.ia32e.cr4_pae", "33/0", {"GUEST_CR4": andn(0x20)})
case("guest.cr4.pcide_outside_ia32e", "33/0", {"GUEST_CR4": orr(1 << 17)}, {"GUEST_CR4": orr(1 << 17)}, mode="protected",
     ok_mode="long")
case("guest.cr3.width", "33/0", {"GUEST_CR3": 1 << 39}, {"GUEST_CR3": (1 << 39) - 4096})
case("guest.dr7.upper", "33/0", {**_LDBG, "GUEST_DR7": 1 << 32 | 0x400}, {"GUEST_DR7": 1 << 32 | 0x400})
for _r in ("ESP", "EIP"):
    case(f"guest.sysenter_{_r.lower()}.canonical", "33/0", {f"GUEST_SYSENTER_{_r}": NONCANON},
         {f"GUEST_SYSENTER_{_r}": ALL64})
_GCET = {"VM_ENTRY_CONTROLS": orr(C.VM_ENTRY_LOAD_CET_STATE)}
case("guest.s_cet.canonical", "33/0", {**_GCET, "GUEST_S_CET": NONCANON}, {"GUEST_S_CET": NONCANON}, p=MAX)
case("guest.intr_ssp_table.canonical", "33/0", {**_GCET, "GUEST_INTR_SSP_TABLE": NONCANON}, _GCET, p=MAX)
case("guest.s_cet.reserved", "33/0", {**_GCET, "GUEST_S_CET": 1 << 9}, {"GUEST_S_CET": 1 << 9}, p=MAX)
_GPERF = {"VM_ENTRY_CONTROLS": orr(C.VM_ENTRY_LOAD_IA32_PERF_GLOBAL_CTRL)}
case("guest.perf_global_ctrl.reserved", "33/0", {**_GPERF, "GUEST_IA32_PERF_GLOBAL_CTRL": 1 << 35},
     {**_GPERF, "GUEST_IA32_PERF_GLOBAL_CTRL": 0x700000001})
_GPAT = {"VM_ENTRY_CONTROLS": orr(C.VM_ENTRY_LOAD_IA32_PAT)}
case("guest.pat.memory_types", "33/0", {**_GPAT, "GUEST_IA32_PAT": 0x0300000000000000}, _GPAT)
_GEFER = {"VM_ENTRY_CONTROLS": orr(C.VM_ENTRY_LOAD_IA32_EFER)}
case("guest.efer.reserved", "33/0", {**_GEFER, "GUEST_IA32_EFER": orr(1 << 12)}, _GEFER)
case("guest.efer.lma", "33/0", {**_GEFER, "GUEST_IA32_EFER": andn(0x400)}, _GEFER)
CASES.append(Case("guest.efer.lma", "33/0", {**_GEFER, "GUEST_IA32_EFER": 0x500}, {**_GEFER, "GUEST_IA32_EFER": 0x800},
                  mode="protected"))
case("guest.efer.lme", "33/0", {**_GEFER, "GUEST_IA32_EFER": andn(0x100)}, _GEFER)
CASES.append(Case("guest.efer.lme", "33/0", {**_GEFER, "GUEST_IA32_EFER": 0x100},
                  # CR0.PG = 0 (real mode under unrestricted guest): LME need not equal LMA
                  {**_GEFER, "GUEST_IA32_EFER": 0x100}, mode="protected", ok_mode="unrestricted-real"))
_GBND = {"VM_ENTRY_CONTROLS": orr(C.VM_ENTRY_LOAD_BNDCFGS)}
case("guest.bndcfgs.reserved", "33/0", {**_GBND, "GUEST_BNDCFGS": 0x4}, {**_GBND, "GUEST_BNDCFGS": 0x3}, p=MAX)
case("guest.bndcfgs.canonical", "33/0", {**_GBND, "GUEST_BNDCFGS": 1 << 60},
     {**_GBND, "GUEST_BNDCFGS": 0xFFFFFF0000001003}, p=MAX)
case("guest.pkrs.reserved", "33/0", {"VM_ENTRY_CONTROLS": orr(C.VM_ENTRY_LOAD_IA32_PKRS), "GUEST_IA32_PKRS": 1 << 40},
     {"VM_ENTRY_CONTROLS": orr(C.VM_ENTRY_LOAD_IA32_PKRS), "GUEST_IA32_PKRS": 0x55555555}, p=MAX)
case("guest.uinv.reserved", "33/0", {"VM_ENTRY_CONTROLS": orr(C.VM_ENTRY_LOAD_UINV), "GUEST_UINV": 0x1EC},
     {"VM_ENTRY_CONTROLS": orr(C.VM_ENTRY_LOAD_UINV), "GUEST_UINV": 0xEC}, p=MAX)
# (guest.rtit_ctl.reserved and guest.lbr_ctl.reserved: test_msr_reserved_rules below)

# ---- guest segment registers ------------------------------------------------------------------------
case("guest.tr.selector_ti", "33/0", {"GUEST_TR_SELECTOR": orr(4)})
_LDT = {"GUEST_LDTR_SELECTOR": 0x30, "GUEST_LDTR_BASE": 0x5000, "GUEST_LDTR_LIMIT": 0xFF, "GUEST_LDTR_AR_BYTES": 0x82}
case("guest.ldtr.selector_ti", "33/0", {**_LDT, "GUEST_LDTR_SELECTOR": 0x34}, {"GUEST_LDTR_SELECTOR": 0x34})
case("guest.ss.selector_rpl", "33/0", {"GUEST_SS_SELECTOR": 0x1B}, {**_UG, "GUEST_SS_SELECTOR": 0x1B})
# virtual-8086 mode: protected-mode guest with RFLAGS.VM = 1 and real-mode-style segments
_V86 = {"GUEST_RFLAGS": 0x20002}
for _s in ("CS", "SS", "DS", "ES", "FS", "GS"):
    _V86.update({f"GUEST_{_s}_SELECTOR": 0x100, f"GUEST_{_s}_BASE": 0x1000, f"GUEST_{_s}_LIMIT": 0xFFFF,
                 f"GUEST_{_s}_AR_BYTES": 0xF3})
for _s in ("CS", "SS", "DS", "ES", "FS", "GS"):
    _l = _s.lower()
    case(f"guest.{_l}.base_v86", "33/0", {**_V86, f"GUEST_{_s}_BASE": 0x1010}, _V86, mode="protected")
    case(f"guest.{_l}.limit_v86", "33/0", {**_V86, f"GUEST_{_s}_LIMIT": 0xFFFFF}, _V86, mode="protected")
    case(f"guest.{_l}.ar_v86", "33/0", {**_V86, f"GUEST_{_s}_AR_BYTES": 0xF2}, _V86, mode="protected")
for _s in ("TR", "FS", "GS"):
    case(f"guest.{_s.lower()}.base_canonical", "33/0", {f"GUEST_{_s}_BASE": NONCANON},
         {f"GUEST_{_s}_BASE": 0xFFFF800000000000})
case("guest.ldtr.base_canonical", "33/0", {**_LDT, "GUEST_LDTR_BASE": NONCANON}, {"GUEST_LDTR_BASE": NONCANON})
case("guest.cs.base_upper", "33/0", {"GUEST_CS_BASE": 1 << 32}, {"GUEST_CS_BASE": 0xFFFFF000})
for _s in ("SS", "DS", "ES"):
    case(f"guest.{_s.lower()}.base_upper", "33/0", {f"GUEST_{_s}_BASE": 1 << 32},
         {f"GUEST_{_s}_BASE": 1 << 32, f"GUEST_{_s}_AR_BYTES": 0x10000})
# CS
case("guest.cs.ar_type", "33/0", {"GUEST_CS_AR_BYTES": 0xA093}, {"GUEST_CS_AR_BYTES": 0x93}, ok_mode="unrestricted-real")
case("guest.cs.ar_s", "33/0", {"GUEST_CS_AR_BYTES": andn(0x10)})
case("guest.cs.ar_dpl", "33/0", {"GUEST_CS_AR_BYTES": orr(0x60)}, {"GUEST_CS_AR_BYTES": 0xA09F})
CASES.append(Case("guest.cs.ar_dpl", "33/0", {"GUEST_CS_AR_BYTES": 0xA0FF, "GUEST_SS_AR_BYTES": 0xC0B3,
                                              "GUEST_SS_SELECTOR": 0x19, "GUEST_CS_SELECTOR": 0x11},
                  {"GUEST_CS_AR_BYTES": 0xA0BF, "GUEST_SS_AR_BYTES": 0xC0F3, "GUEST_SS_SELECTOR": 0x1B,
                   "GUEST_CS_SELECTOR": 0x13}))
case("guest.cs.ar_p", "33/0", {"GUEST_CS_AR_BYTES": andn(0x80)})
case("guest.cs.ar_reserved_11_8", "33/0", {"GUEST_CS_AR_BYTES": orr(0x400)})
case("guest.cs.ar_db", "33/0", {"GUEST_CS_AR_BYTES": orr(0x4000)}, {"GUEST_CS_AR_BYTES": orr(0x4000)}, ok_mode="compat")
case("guest.cs.ar_g", "33/0", {"GUEST_CS_LIMIT": 0xFFFFE}, {"GUEST_CS_LIMIT": 0xFFFFF, "GUEST_CS_AR_BYTES": andn(0x8000)})
CASES.append(Case("guest.cs.ar_g", "33/0", {"GUEST_CS_LIMIT": 0x100000, "GUEST_CS_AR_BYTES": andn(0x8000)},
                  {"GUEST_CS_LIMIT": 0x100FFF}))
case("guest.cs.ar_reserved_31_17", "33/0", {"GUEST_CS_AR_BYTES": orr(1 << 20)})
# SS
case("guest.ss.ar_type", "33/0", {"GUEST_SS_AR_BYTES": 0xC091}, {"GUEST_SS_AR_BYTES": 0xC097})
case("guest.ss.ar_s", "33/0", {"GUEST_SS_AR_BYTES": andn(0x10)}, {"GUEST_SS_AR_BYTES": 0x10000})
case("guest.ss.ar_dpl_rpl", "33/0", {"GUEST_SS_AR_BYTES": orr(0x20), "GUEST_CS_AR_BYTES": orr(0x20)}, {**_UG, "GUEST_SS_AR_BYTES": orr(0x20),
                                                                        "GUEST_CS_AR_BYTES": 0xA0BF})
case("guest.ss.ar_dpl_zero", "33/0", {"GUEST_SS_AR_BYTES": 0xF3, "GUEST_CS_AR_BYTES": 0x93},
     {"GUEST_SS_AR_BYTES": 0x10000}, mode="unrestricted-real")
CASES.append(Case("guest.ss.ar_dpl_zero", "33/0", {"GUEST_SS_AR_BYTES": 0xB3, "GUEST_CS_AR_BYTES": 0xBB},
                  {**_UG, "GUEST_SS_AR_BYTES": 0xC0B3, "GUEST_CS_AR_BYTES": 0xA0BB}, mode="unrestricted-real",
                  ok_mode="long"))
case("guest.ss.ar_p", "33/0", {"GUEST_SS_AR_BYTES": andn(0x80)})
case("guest.ss.ar_reserved_11_8", "33/0", {"GUEST_SS_AR_BYTES": orr(0x800)}, {"GUEST_SS_AR_BYTES": 0x10F00})
case("guest.ss.ar_g", "33/0", {"GUEST_SS_AR_BYTES": andn(0x8000)}, {"GUEST_SS_AR_BYTES": andn(0x8000),
                                                                     "GUEST_SS_LIMIT": 0xFFFFF})
case("guest.ss.ar_reserved_31_17", "33/0", {"GUEST_SS_AR_BYTES": orr(1 << 17)})
# DS ES FS GS
for _s in ("DS", "ES", "FS", "GS"):
    _a = f"GUEST_{_s}_AR_BYTES"
    case(f"guest.{_s.lower()}.ar_type", "33/0", {_a: 0xC092}, {_a: 0xC09B})
    CASES.append(Case(f"guest.{_s.lower()}.ar_type", "33/0", {_a: 0xC099}, {_a: 0x10000 | 0xC099}))
    case(f"guest.{_s.lower()}.ar_s", "33/0", {_a: andn(0x10)})
    case(f"guest.{_s.lower()}.ar_dpl", "33/0", {f"GUEST_{_s}_SELECTOR": 0x1B},
         {f"GUEST_{_s}_SELECTOR": 0x1B, _a: 0xC0F3})
    CASES.append(Case(f"guest.{_s.lower()}.ar_dpl", "33/0", {f"GUEST_{_s}_SELECTOR": 0x1A},
                      {f"GUEST_{_s}_SELECTOR": 0x1A, _a: 0xC09F}))       # conforming code: no DPL/RPL check
    case(f"guest.{_s.lower()}.ar_p", "33/0", {_a: andn(0x80)}, {_a: 0x10000})
    case(f"guest.{_s.lower()}.ar_reserved_11_8", "33/0", {_a: orr(0x100)})
    case(f"guest.{_s.lower()}.ar_g", "33/0", {f"GUEST_{_s}_LIMIT": 0x1000})
    case(f"guest.{_s.lower()}.ar_reserved_31_17", "33/0", {_a: orr(1 << 31)})
# TR
case("guest.tr.ar_type", "33/0", {"GUEST_TR_AR_BYTES": 0x89}, {"GUEST_TR_AR_BYTES": 0x83}, ok_mode="protected")
CASES.append(Case("guest.tr.ar_type", "33/0", {"GUEST_TR_AR_BYTES": 0x83}, {}))
case("guest.tr.ar_s", "33/0", {"GUEST_TR_AR_BYTES": orr(0x10)})
case("guest.tr.ar_p", "33/0", {"GUEST_TR_AR_BYTES": andn(0x80)})
case("guest.tr.ar_reserved_11_8", "33/0", {"GUEST_TR_AR_BYTES": orr(0x200)})
case("guest.tr.ar_g", "33/0", {"GUEST_TR_AR_BYTES": orr(0x8000)}, {"GUEST_TR_AR_BYTES": orr(0x8000),
                                                                   "GUEST_TR_LIMIT": 0xFFF})
case("guest.tr.ar_unusable", "33/0", {"GUEST_TR_AR_BYTES": orr(0x10000)})
case("guest.tr.ar_reserved_31_17", "33/0", {"GUEST_TR_AR_BYTES": orr(1 << 18)})
# LDTR
case("guest.ldtr.ar_type", "33/0", {**_LDT, "GUEST_LDTR_AR_BYTES": 0x8B}, _LDT)
case("guest.ldtr.ar_s", "33/0", {**_LDT, "GUEST_LDTR_AR_BYTES": 0x92}, {"GUEST_LDTR_AR_BYTES": 0x10092})
case("guest.ldtr.ar_p", "33/0", {**_LDT, "GUEST_LDTR_AR_BYTES": 0x02}, _LDT)
case("guest.ldtr.ar_reserved_11_8", "33/0", {**_LDT, "GUEST_LDTR_AR_BYTES": 0x182}, _LDT)
case("guest.ldtr.ar_g", "33/0", {**_LDT, "GUEST_LDTR_LIMIT": 0x100000}, {**_LDT, "GUEST_LDTR_LIMIT": 0xFFFFF})
case("guest.ldtr.ar_reserved_31_17", "33/0", {**_LDT, "GUEST_LDTR_AR_BYTES": 0x20082}, _LDT)

# ---- descriptor tables, RIP, RFLAGS, SSP ----------------------------------------------------------
for _r in ("GDTR", "IDTR"):
    case(f"guest.{_r.lower()}.base_canonical", "33/0", {f"GUEST_{_r}_BASE": NONCANON},
         {f"GUEST_{_r}_BASE": 0xFFFFFFFFFFFFF000})
    case(f"guest.{_r.lower()}.limit_upper", "33/0", {f"GUEST_{_r}_LIMIT": 0x10000}, {f"GUEST_{_r}_LIMIT": 0xFFFF})
case("guest.rip.upper", "33/0", {"GUEST_RIP": 1 << 32}, {"GUEST_RIP": 0xFFFFFFFF}, mode="compat")
CASES.append(Case("guest.rip.upper", "33/0", {"GUEST_RIP": 0xFFFFFFFF00000000}, {"GUEST_RIP": 0xFFFFFFFF00000000},
                  mode="protected", ok_mode="long"))
# bits 63:48 identical suffices (0x0000800000000000 is not canonical, yet passes VM entry)
case("guest.rip.linear_bits", "33/0", {"GUEST_RIP": 0x0001000000000000}, {"GUEST_RIP": 0x0000800000000000})
case("guest.rflags.reserved", "33/0", {"GUEST_RFLAGS": orr(1 << 3)}, {"GUEST_RFLAGS": 0x3F7FD7 & ~0x20200 & ~(1 << 17)})
CASES.append(Case("guest.rflags.reserved", "33/0", {"GUEST_RFLAGS": orr(1 << 22)}, {}))
case("guest.rflags.reserved_bit1", "33/0", {"GUEST_RFLAGS": 0}, {"GUEST_RFLAGS": 2})
case("guest.rflags.vm", "33/0", _V86, _V86, ok_mode="protected")
case("guest.rflags.if_for_ext_intr", "33/0", {"VM_ENTRY_INTR_INFO_FIELD": vm_entry_info(0x30, 0)},
     {**_IF, "VM_ENTRY_INTR_INFO_FIELD": vm_entry_info(0x30, 0)})
case("guest.ssp.load_cet_state", "33/0", {**_GCET, "GUEST_SSP": 0x1002}, {**_GCET, "GUEST_SSP": 0x1008}, p=MAX)
CASES.append(Case("guest.ssp.load_cet_state", "33/0", {**_GCET, "GUEST_SSP": NONCANON}, _GCET, p=MAX))

# ---- non-register state -------------------------------------------------------------------------------
case("guest.activity.range", "33/0", {"GUEST_ACTIVITY_STATE": 4}, {"GUEST_ACTIVITY_STATE": 3})
case("guest.activity.supported", "33/0", {"GUEST_ACTIVITY_STATE": 2}, {"GUEST_ACTIVITY_STATE": 2}, p=ICL, ok_p=SKL)
_CPL3 = {"GUEST_CS_SELECTOR": 0x13, "GUEST_CS_AR_BYTES": 0xA0FB, "GUEST_SS_SELECTOR": 0x1B,
         "GUEST_SS_AR_BYTES": 0xC0F3}
case("guest.activity.hlt_needs_ss_dpl0", "33/0", {**_CPL3, "GUEST_ACTIVITY_STATE": 1}, {"GUEST_ACTIVITY_STATE": 1})
case("guest.activity.active_when_blocking", "33/0", {**_IF, "GUEST_INTERRUPTIBILITY_INFO": 1, "GUEST_ACTIVITY_STATE": 1},
     {**_IF, "GUEST_INTERRUPTIBILITY_INFO": 1})
case("guest.activity.injection", "33/0", {"GUEST_ACTIVITY_STATE": 1,
                                          "VM_ENTRY_INTR_INFO_FIELD": vm_entry_info(13, 3, True)},
     {"GUEST_ACTIVITY_STATE": 1, "VM_ENTRY_INTR_INFO_FIELD": vm_entry_info(18, 3)})
CASES.append(Case("guest.activity.injection", "33/0", {"GUEST_ACTIVITY_STATE": 2,
                                                       "VM_ENTRY_INTR_INFO_FIELD": vm_entry_info(1, 3)},
                  {"GUEST_ACTIVITY_STATE": 2, "VM_ENTRY_INTR_INFO_FIELD": vm_entry_info(2, 2)}))
CASES.append(Case("guest.activity.injection", "33/0", {"GUEST_ACTIVITY_STATE": 3,
                                                       "VM_ENTRY_INTR_INFO_FIELD": vm_entry_info(2, 2)},
                  {"GUEST_ACTIVITY_STATE": 1, "VM_ENTRY_INTR_INFO_FIELD": vm_entry_info(0, 7)}))
case("guest.activity.wait_sipi_entry_smm", "7", {"GUEST_ACTIVITY_STATE": 3, "VM_ENTRY_CONTROLS": orr(C.VM_ENTRY_SMM)},
     {"GUEST_ACTIVITY_STATE": 3}, first=False)
case("guest.interruptibility.reserved", "33/0", {"GUEST_INTERRUPTIBILITY_INFO": 0x20}, {"GUEST_INTERRUPTIBILITY_INFO": 8})
case("guest.interruptibility.sti_and_mov_ss", "33/0", {**_IF, "GUEST_INTERRUPTIBILITY_INFO": 3},
     {"GUEST_INTERRUPTIBILITY_INFO": 2})
case("guest.interruptibility.sti_needs_if", "33/0", {"GUEST_INTERRUPTIBILITY_INFO": 1},
     {**_IF, "GUEST_INTERRUPTIBILITY_INFO": 1})
case("guest.interruptibility.ext_intr_injection", "33/0", {**_IF, "GUEST_INTERRUPTIBILITY_INFO": 2,
                                                          "VM_ENTRY_INTR_INFO_FIELD": vm_entry_info(0x30, 0)},
     {**_IF, "GUEST_INTERRUPTIBILITY_INFO": 8, "VM_ENTRY_INTR_INFO_FIELD": vm_entry_info(0x30, 0)})
case("guest.interruptibility.nmi_injection_mov_ss", "33/0", {"GUEST_INTERRUPTIBILITY_INFO": 2,
                                                            "VM_ENTRY_INTR_INFO_FIELD": vm_entry_info(2, 2)},
     {**_IF, "GUEST_INTERRUPTIBILITY_INFO": 1, "VM_ENTRY_INTR_INFO_FIELD": vm_entry_info(2, 2)})
case("guest.interruptibility.smi_outside_smm", "33/0", {"GUEST_INTERRUPTIBILITY_INFO": 4})
case("guest.interruptibility.smi_entry_to_smm", "7", {"VM_ENTRY_CONTROLS": orr(C.VM_ENTRY_SMM)},
     {"VM_ENTRY_CONTROLS": orr(C.VM_ENTRY_SMM), "GUEST_INTERRUPTIBILITY_INFO": 4}, first=False, ok_full=False)
_VNMI = {"PIN_BASED_VM_EXEC_CONTROL": orr(C.PIN_BASED_NMI_EXITING | C.PIN_BASED_VIRTUAL_NMIS)}
case("guest.interruptibility.nmi_virtual_nmis", "33/0", {**_VNMI, "GUEST_INTERRUPTIBILITY_INFO": 8,
                                                        "VM_ENTRY_INTR_INFO_FIELD": vm_entry_info(2, 2)},
     {"GUEST_INTERRUPTIBILITY_INFO": 8, "VM_ENTRY_INTR_INFO_FIELD": vm_entry_info(2, 2)})
case("guest.interruptibility.enclave", "33/0", {"GUEST_INTERRUPTIBILITY_INFO": 0x12}, {"GUEST_INTERRUPTIBILITY_INFO": 0x10})
CASES.append(Case("guest.interruptibility.enclave", "33/0", {"GUEST_INTERRUPTIBILITY_INFO": 0x10},
                  {"GUEST_INTERRUPTIBILITY_INFO": 0x10}, p=PEN, ok_p=SKL))
case("guest.pending_dbg.reserved", "33/0", {"GUEST_PENDING_DBG_EXCEPTIONS": 0x10},
     {"GUEST_PENDING_DBG_EXCEPTIONS": 0x500F})
_TF = {"GUEST_RFLAGS": 0x302, "GUEST_INTERRUPTIBILITY_INFO": 1}
case("guest.pending_dbg.bs", "33/0", _TF, {**_TF, "GUEST_PENDING_DBG_EXCEPTIONS": 1 << 14})
CASES.append(Case("guest.pending_dbg.bs", "33/0", {"GUEST_ACTIVITY_STATE": 1, "GUEST_PENDING_DBG_EXCEPTIONS": 1 << 14},
                  {"GUEST_PENDING_DBG_EXCEPTIONS": 1 << 14}))
case("guest.pending_dbg.rtm", "33/0", {"GUEST_PENDING_DBG_EXCEPTIONS": 1 << 16},
     {"GUEST_PENDING_DBG_EXCEPTIONS": 1 << 16 | 1 << 12})
CASES.append(Case("guest.pending_dbg.rtm", "33/0", {"GUEST_PENDING_DBG_EXCEPTIONS": 1 << 16 | 1 << 12},
                  {"GUEST_PENDING_DBG_EXCEPTIONS": 1 << 16 | 1 << 12}, p=PEN, ok_p=SKL))
_LINK = {"VMCS_LINK_POINTER": 0x5000}
_LINK_MEM = {0x5000: struct.pack("<I", 4) + bytes(0xFFC)}          # skylake revision 4
case("guest.link_pointer.aligned", "33/4", {"VMCS_LINK_POINTER": 0x5800}, _LINK, ok_mem=_LINK_MEM,
     ok_kw={"vmcs_pointer": 0x9000})
case("guest.link_pointer.width", "33/4", {"VMCS_LINK_POINTER": 1 << 39}, _LINK, ok_mem=_LINK_MEM,
     ok_kw={"vmcs_pointer": 0x9000})
case("guest.link_pointer.revision", "33/4", _LINK, _LINK, mem={0x5000: struct.pack("<I", 5)}, ok_mem=_LINK_MEM,
     kw={"vmcs_pointer": 0x9000}, ok_kw={"vmcs_pointer": 0x9000})
_SH_MEM = {0x5000: struct.pack("<I", 4 | 1 << 31)}
case("guest.link_pointer.shadow_bit", "33/4", {**_SHADOW, **_LINK}, {**_SHADOW, **_LINK}, mem=_LINK_MEM, ok_mem=_SH_MEM,
     kw={"vmcs_pointer": 0x9000}, ok_kw={"vmcs_pointer": 0x9000})
CASES.append(Case("guest.link_pointer.shadow_bit", "33/4", _LINK, _LINK, mem=_SH_MEM, ok_mem=_LINK_MEM,
                  kw={"vmcs_pointer": 0x9000}, ok_kw={"vmcs_pointer": 0x9000}))
case("guest.link_pointer.not_current", "33/4", _LINK, _LINK, mem=_LINK_MEM, ok_mem=_LINK_MEM,
     kw={"vmcs_pointer": 0x5000}, ok_kw={"vmcs_pointer": 0x6000})
_PAE = {"GUEST_CR4": orr(0x20), "GUEST_CR3": 0x4000}
_PDPT_OK = {0x4000: struct.pack("<4Q", 0x5001, 0, 0x6001, 1 << 63)}     # not-present entries are not checked
case("guest.pdpte.memory", "33/2", _PAE, _PAE, p=PEN, mode="protected",
     mem={0x4000: struct.pack("<4Q", 0x5001, 0x5003, 0, 0)}, ok_mem=_PDPT_OK)
CASES.append(Case("guest.pdpte.memory", "33/2", _PAE, _PAE, p=PEN, mode="protected",
                  mem={0x4000: struct.pack("<4Q", 0, 0, 0, 1 << 38 | 1)}, ok_mem=_PDPT_OK))
case("guest.pdpte.fields", "33/2", {**_PAE, "GUEST_PDPTR2": 0x6101}, {**_PAE, "GUEST_PDPTR2": 0x6001},
     mode="protected")
CASES.append(Case("guest.pdpte.fields", "33/2", {**_PAE, "GUEST_PDPTR0": 1 << 63 | 1},
                  {**_PAE, "GUEST_PDPTR0": 1 << 63 | 1}, mode="protected", ok_mode="long"))

# ---- loading MSRs -----------------------------------------------------------------------------------------
for _rid, _bad in (("fs_gs_base", (0xC0000100, 0, 0)), ("x2apic", (0x808, 0, 0)), ("smm_only", (0x9B, 0, 0)),
                   ("model_specific", (0x79, 0, 0)), ("reserved_bits", (0x174, 1, 0)),
                   ("wrmsr_gp", (0xC0000080, 0, 0x2))):
    case(f"msr_load.{_rid}", "34/2", {**_ML, "VM_ENTRY_MSR_LOAD_COUNT": 3},
         {**_ML, "VM_ENTRY_MSR_LOAD_COUNT": 3},
         mem={0xB000: msr_entries((0x174, 0, 0x10), _bad, (0x9B, 0, 0))},
         ok_mem={0xB000: msr_entries((0x174, 0, 0x10), (0x175, 0, 0xFFFF800000000000), (0x277, 0, 0x0007040600070406))})
CASES.append(Case("msr_load.wrmsr_gp", "34/1", _ML, _ML, mem={0xB000: msr_entries((0x277, 0, 0x0002040600070406))},
                  ok_mem=_ML_MEM))


def _expect(result, expect):
    if "/" in expect:
        reason, qual = map(int, expect.split("/"))
        assert result.outcome == "entry_failure", result.lines()
        assert (result.exit_reason, result.qualification) == (reason, qual), result.lines()
        assert result.exit_reason_field == reason | 1 << 31
    else:
        assert result.outcome == "vmfail_valid", result.lines()
        assert result.error == int(expect), result.lines()


def _ids(cases):
    seen = {}
    out = []
    for c in cases:
        n = seen.get(c.rule, 0)
        seen[c.rule] = n + 1
        out.append(c.rule if n == 0 else f"{c.rule}#{n + 1}")
    return out


@pytest.mark.parametrize("c", CASES, ids=_ids(CASES))
def test_failing_case(c):
    first = run(c.p, c.mode, c.fail, c.mem, **c.kw)
    everything = run(c.p, c.mode, c.fail, c.mem, all=True, **c.kw)
    assert c.rule in [v.rule.id for v in everything.violations], everything.lines()
    _expect(first, c.expect)
    if c.first:
        assert first.violations[0].rule.id == c.rule, first.lines()
        assert len(first.violations) == 1
        v = first.violations[0]
        assert v.message and v.field
        assert v.rule.section


@pytest.mark.parametrize("c", CASES, ids=_ids(CASES))
def test_passing_case(c):
    kw = c.kw if c.ok_kw is None else c.ok_kw
    mem = c.mem if c.ok_mem is None else c.ok_mem
    r = run(c.ok_p or c.p, c.ok_mode or c.mode, c.ok or {}, mem, all=True, **kw)
    assert c.rule not in [v.rule.id for v in r.violations], r.lines()
    assert c.rule not in [n.rule.id for n in r.not_checked], r.lines()
    if c.ok_full:
        assert r.outcome == "success", r.lines()


def test_msr_reserved_rules():
    """guest.rtit_ctl.reserved / guest.lbr_ctl.reserved apply the reserved bits the
    MSR model gives; the shipped model knows none for these MSRs, so the test
    gives the profile's facts a mask (the bits the SDM marks reserved)."""
    from vmxlab.checks.facts import facts
    from checks_support import profile
    k = facts(profile(MAX))
    saved = k.rtit_ctl_reserved, k.lbr_ctl_reserved
    k.rtit_ctl_reserved = 1 << 18 | 1 << 23 | 0xF << 28        # IA32_RTIT_CTL reserved bits (subset)
    k.lbr_ctl_reserved = ~0x7F000F & ALL64                    # IA32_LBR_CTL: bits 22:16, 3:0 defined
    try:
        for rid, ctl, name, bad, good in (
                ("guest.rtit_ctl.reserved", C.VM_ENTRY_LOAD_IA32_RTIT_CTL, "GUEST_IA32_RTIT_CTL", 1 << 18, 1),
                ("guest.lbr_ctl.reserved", C.VM_ENTRY_LOAD_IA32_LBR_CTL, "GUEST_IA32_LBR_CTL", 1 << 8, 1)):
            r = run(MAX, "long", {"VM_ENTRY_CONTROLS": orr(ctl), name: bad})
            _expect(r, "33/0")
            assert r.violations[0].rule.id == rid
            assert run(MAX, "long", {"VM_ENTRY_CONTROLS": orr(ctl), name: good}).ok
            assert run(MAX, "long", {name: bad}).ok          # not loaded: not checked
    finally:
        k.rtit_ctl_reserved, k.lbr_ctl_reserved = saved


def test_every_rule_has_cases():
    tested = {c.rule for c in CASES} | {"guest.rtit_ctl.reserved", "guest.lbr_ctl.reserved"}
    missing = [r.id for r in RULES if r.id not in tested]
    assert missing == []
    unknown = tested - {r.id for r in RULES}
    assert unknown == set()

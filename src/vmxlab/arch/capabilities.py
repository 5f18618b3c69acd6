"""Layouts of the non-control VMX capability MSRs.

Source: Intel SDM Vol. 3D Appendix A: A.1 "Basic VMX Information", A.6
"Miscellaneous Data", A.7/A.8 "VMX-Fixed Bits in CR0/CR4", A.9 "VMCS Enumeration",
A.10 "VPID and EPT Capabilities".
"""
from __future__ import annotations

from .layout import Bits, Layout
from .registers import MEMORY_TYPES

BASIC = Layout("IA32_VMX_BASIC", (
    Bits("revision_id", 0, 30),
    Bits("vmcs_size", 32, 44, doc="bytes to allocate for the VMXON region and any VMCS region"),
    Bits("phys_addr_width_32", 48, doc="1: addresses of VMXON, VMCS and structures they reference limited to 32 bits"),
    Bits("dual_monitor", 49, doc="dual-monitor treatment of SMIs and SMM supported"),
    Bits("memory_type", 50, 53, values=MEMORY_TYPES),
    Bits("ins_outs_info", 54, doc="VM exits due to INS/OUTS report instruction information"),
    Bits("true_ctls", 55, doc="TRUE capability MSRs 48DH-490H exist; default1 controls may be 0"),
    Bits("no_hw_error_code_check", 56, doc="VM entry may deliver a hardware exception with or without an error code"),
), section="Basic VMX Information")

MISC = Layout("IA32_VMX_MISC", (
    Bits("preemption_timer_rate", 0, 4, doc="timer counts down by 1 each time TSC bit X changes, X = this value"),
    Bits("store_lma", 5, doc="VM exits store EFER.LMA into the IA-32e mode guest VM-entry control"),
    Bits("activity_hlt", 6),
    Bits("activity_shutdown", 7),
    Bits("activity_wait_sipi", 8),
    Bits("pt_in_vmx", 14),
    Bits("rdmsr_smbase_in_smm", 15),
    Bits("cr3_target_count", 16, 24),
    Bits("max_msr_list", 25, 27, doc="recommended maximum MSR-list entries: 512 * (N + 1)"),
    Bits("smm_monitor_ctl_bit2", 28),
    Bits("vmwrite_any_field", 29, doc="VMWRITE may write to VM-exit information fields"),
    Bits("zero_length_injection", 30, doc="VM entry may inject software events with instruction length 0"),
    Bits("mseg_revision", 32, 63),
), section="Miscellaneous Data")

VMCS_ENUM = Layout("IA32_VMX_VMCS_ENUM", (
    Bits("max_index", 1, 9, doc="highest index value used for any VMCS encoding"),
), section="VMCS Enumeration")

EPT_VPID_CAP = Layout("IA32_VMX_EPT_VPID_CAP", (
    Bits("ept_execute_only", 0),
    Bits("ept_walk_4", 6, doc="page-walk length of 4"),
    Bits("ept_walk_5", 7, doc="page-walk length of 5"),
    Bits("ept_uc", 8, doc="EPT paging structures may be uncacheable"),
    Bits("ept_wb", 14, doc="EPT paging structures may be write-back"),
    Bits("ept_2mb", 16),
    Bits("ept_1gb", 17),
    Bits("invept", 20),
    Bits("ept_ad", 21, doc="accessed and dirty flags for EPT"),
    Bits("ept_advanced_exit_info", 22),
    Bits("ept_sss", 23, doc="supervisor shadow-stack control"),
    Bits("invept_single", 25),
    Bits("invept_all", 26),
    Bits("invvpid", 32),
    Bits("invvpid_address", 40),
    Bits("invvpid_single", 41),
    Bits("invvpid_all", 42),
    Bits("invvpid_single_keep_global", 43),
    Bits("hlat_prefix_size", 48, 53),
), section="VPID and EPT Capabilities")

VMFUNC = Layout("IA32_VMX_VMFUNC", (
    Bits("eptp_switching", 0),
), section="VM Functions")

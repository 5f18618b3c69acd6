"""Every VMCS field: encoding, Linux name, width, type, SDM name, aliases.

Source: Intel SDM Vol. 3D Appendix B "Field Encoding in VMCS" (Tables B-1 .. B-14)
and Vol. 3C "Field Encoding in VMCS" (the VMREAD, VMWRITE, and Encodings of VMCS
Fields section) for the meaning of the encoding bits:

    bit 0      access type: 0 full, 1 high (64-bit fields only)
    bits 9:1   index
    bits 11:10 type: 0 control, 1 VM-exit information (read-only), 2 guest state, 3 host state
    bit 12     reserved (0)
    bits 14:13 width: 0 16-bit, 1 64-bit, 2 32-bit, 3 natural-width
    bits 31:15 reserved (0)

Names follow Linux (arch/x86/include/asm/vmx.h); fields Linux does not name get a
name in the same style.  Each row also states which capability makes the field
exist on a processor (`requires`: control-bit names, any of which allowed-1 is
enough); the caps layer evaluates it.  "SEAM" marks fields that exist only for
SEAM (TDX) VMCSs and that no profile here supports.

Not listed: the APX "extended instruction information" field (not in the SDM
revision these tables follow) and the FRED IA32_FMASK / IA32_PL0_SSP fields seen in
some hypervisor sources but absent from published SDM tables.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

WIDTHS = ("16", "64", "32", "natural")
TYPES = ("control", "read-only", "guest", "host")
WIDTH_BITS = {"16": 16, "32": 32, "64": 64, "natural": 64}


@dataclass(frozen=True)
class Field:
    name: str                 # Linux name
    encoding: int             # full-access encoding
    width: str                # "16", "32", "64", "natural"
    type: str                 # "control", "read-only", "guest", "host"
    sdm: str                  # SDM name (Appendix B)
    aliases: tuple[str, ...]  # other accepted names (seed, SDM-style)
    requires: tuple[str, ...]  # capability names; empty = every VMX processor

    @property
    def bits(self) -> int:
        return WIDTH_BITS[self.width]

    @property
    def mask(self) -> int:
        return (1 << self.bits) - 1

    @property
    def index(self) -> int:
        return (self.encoding >> 1) & 0x1FF

    @property
    def read_only(self) -> bool:
        return self.type == "read-only"


@dataclass(frozen=True)
class Encoding:
    """What the SDM says the bits of an encoding mean (no table lookup)."""
    value: int
    access: str   # "full" or "high"
    index: int
    type: str
    width: str
    reserved_bits: int  # bits 12 and 31:15 that are set (must be 0)


def decode_encoding(value: int) -> Encoding:
    return Encoding(
        value=value,
        access="high" if value & 1 else "full",
        index=(value >> 1) & 0x1FF,
        type=TYPES[(value >> 10) & 3],
        width=WIDTHS[(value >> 13) & 3],
        reserved_bits=value & ~0x6FFF,
    )


# Capability names used in `requires` (control-bit names from arch.controls).
_VPID = ("SECONDARY_EXEC_ENABLE_VPID",)
_EPT = ("SECONDARY_EXEC_ENABLE_EPT",)
_PI = ("PIN_BASED_POSTED_INTR",)
_VID = ("SECONDARY_EXEC_VIRTUAL_INTR_DELIVERY",)
_PML = ("SECONDARY_EXEC_ENABLE_PML",)
_VE = ("SECONDARY_EXEC_EPT_VIOLATION_VE",)
_HLAT = ("TERTIARY_EXEC_ENABLE_HLAT",)
_IPIV = ("TERTIARY_EXEC_IPI_VIRT",)
_CET_G = ("VM_ENTRY_LOAD_CET_STATE", "VM_EXIT_LOAD_CET_STATE")
_CET_H = ("VM_EXIT_LOAD_CET_STATE",)
_FRED_G = ("VM_ENTRY_LOAD_IA32_FRED", "SECONDARY_VM_EXIT_SAVE_IA32_FRED")
_FRED_H = ("SECONDARY_VM_EXIT_LOAD_IA32_FRED",)
_SEAM = ("SEAM",)

# (encoding, Linux name, SDM name, aliases, requires), grouped by (width, type).
_TABLE: list[tuple[str, str, list[tuple]]] = [
    ("16", "control", [
        (0x0000, "VIRTUAL_PROCESSOR_ID", "Virtual-processor identifier (VPID)", ("VPID",), _VPID),
        (0x0002, "POSTED_INTR_NV", "Posted-interrupt notification vector", (), _PI),
        (0x0004, "EPTP_INDEX", "EPTP index", (), _VE),
        (0x0006, "HLAT_PREFIX_SIZE", "HLAT prefix size", (), _HLAT),
        (0x0008, "LAST_PID_POINTER_INDEX", "Last PID-pointer index", (), _IPIV),
    ]),
    ("16", "guest", [
        (0x0800, "GUEST_ES_SELECTOR", "Guest ES selector", (), ()),
        (0x0802, "GUEST_CS_SELECTOR", "Guest CS selector", (), ()),
        (0x0804, "GUEST_SS_SELECTOR", "Guest SS selector", (), ()),
        (0x0806, "GUEST_DS_SELECTOR", "Guest DS selector", (), ()),
        (0x0808, "GUEST_FS_SELECTOR", "Guest FS selector", (), ()),
        (0x080A, "GUEST_GS_SELECTOR", "Guest GS selector", (), ()),
        (0x080C, "GUEST_LDTR_SELECTOR", "Guest LDTR selector", (), ()),
        (0x080E, "GUEST_TR_SELECTOR", "Guest TR selector", (), ()),
        (0x0810, "GUEST_INTR_STATUS", "Guest interrupt status", (), _VID),
        (0x0812, "GUEST_PML_INDEX", "PML index", (), _PML),
        (0x0814, "GUEST_UINV", "Guest UINV", (), ("VM_ENTRY_LOAD_UINV", "VM_EXIT_CLEAR_UINV")),
    ]),
    ("16", "host", [
        (0x0C00, "HOST_ES_SELECTOR", "Host ES selector", (), ()),
        (0x0C02, "HOST_CS_SELECTOR", "Host CS selector", (), ()),
        (0x0C04, "HOST_SS_SELECTOR", "Host SS selector", (), ()),
        (0x0C06, "HOST_DS_SELECTOR", "Host DS selector", (), ()),
        (0x0C08, "HOST_FS_SELECTOR", "Host FS selector", (), ()),
        (0x0C0A, "HOST_GS_SELECTOR", "Host GS selector", (), ()),
        (0x0C0C, "HOST_TR_SELECTOR", "Host TR selector", (), ()),
    ]),
    ("64", "control", [
        (0x2000, "IO_BITMAP_A", "Address of I/O bitmap A", (), ()),
        (0x2002, "IO_BITMAP_B", "Address of I/O bitmap B", (), ()),
        (0x2004, "MSR_BITMAP", "Address of MSR bitmaps", (), ("CPU_BASED_USE_MSR_BITMAPS",)),
        (0x2006, "VM_EXIT_MSR_STORE_ADDR", "VM-exit MSR-store address", (), ()),
        (0x2008, "VM_EXIT_MSR_LOAD_ADDR", "VM-exit MSR-load address", (), ()),
        (0x200A, "VM_ENTRY_MSR_LOAD_ADDR", "VM-entry MSR-load address", (), ()),
        (0x200C, "EXECUTIVE_VMCS_POINTER", "Executive-VMCS pointer", (), ()),
        (0x200E, "PML_ADDRESS", "PML address", (), _PML),
        (0x2010, "TSC_OFFSET", "TSC offset", (), ()),
        (0x2012, "VIRTUAL_APIC_PAGE_ADDR", "Virtual-APIC address", (), ("CPU_BASED_TPR_SHADOW",)),
        (0x2014, "APIC_ACCESS_ADDR", "APIC-access address", (), ("SECONDARY_EXEC_VIRTUALIZE_APIC_ACCESSES",)),
        (0x2016, "POSTED_INTR_DESC_ADDR", "Posted-interrupt descriptor address", (), _PI),
        (0x2018, "VM_FUNCTION_CONTROL", "VM-function controls", (), ("SECONDARY_EXEC_ENABLE_VMFUNC",)),
        (0x201A, "EPT_POINTER", "EPT pointer (EPTP)", ("EPTP",), _EPT),
        (0x201C, "EOI_EXIT_BITMAP0", "EOI-exit bitmap 0 (EOI_EXIT0)", (), _VID),
        (0x201E, "EOI_EXIT_BITMAP1", "EOI-exit bitmap 1 (EOI_EXIT1)", (), _VID),
        (0x2020, "EOI_EXIT_BITMAP2", "EOI-exit bitmap 2 (EOI_EXIT2)", (), _VID),
        (0x2022, "EOI_EXIT_BITMAP3", "EOI-exit bitmap 3 (EOI_EXIT3)", (), _VID),
        (0x2024, "EPTP_LIST_ADDRESS", "EPTP-list address", (), ("SECONDARY_EXEC_ENABLE_VMFUNC",)),
        (0x2026, "VMREAD_BITMAP", "VMREAD-bitmap address", (), ("SECONDARY_EXEC_SHADOW_VMCS",)),
        (0x2028, "VMWRITE_BITMAP", "VMWRITE-bitmap address", (), ("SECONDARY_EXEC_SHADOW_VMCS",)),
        (0x202A, "VE_INFORMATION_ADDRESS", "Virtualization-exception information address", (), _VE),
        (0x202C, "XSS_EXIT_BITMAP", "XSS-exiting bitmap", (), ("SECONDARY_EXEC_ENABLE_XSAVES",)),
        (0x202E, "ENCLS_EXITING_BITMAP", "ENCLS-exiting bitmap", (), ("SECONDARY_EXEC_ENCLS_EXITING",)),
        (0x2030, "SPP_TABLE_POINTER", "Sub-page-permission-table pointer (SPPTP)", (), ("SECONDARY_EXEC_ENABLE_SPP",)),
        (0x2032, "TSC_MULTIPLIER", "TSC multiplier", (), ("SECONDARY_EXEC_TSC_SCALING",)),
        (0x2034, "TERTIARY_VM_EXEC_CONTROL", "Tertiary processor-based VM-execution controls", (), ("CPU_BASED_ACTIVATE_TERTIARY_CONTROLS",)),
        (0x2036, "ENCLV_EXITING_BITMAP", "ENCLV-exiting bitmap", (), ("SECONDARY_EXEC_ENCLV_EXITING",)),
        (0x2038, "LOW_PASID_DIRECTORY_ADDRESS", "Low PASID directory address", (), ("SECONDARY_EXEC_PASID_TRANSLATION",)),
        (0x203A, "HIGH_PASID_DIRECTORY_ADDRESS", "High PASID directory address", (), ("SECONDARY_EXEC_PASID_TRANSLATION",)),
        (0x203C, "SHARED_EPT_POINTER", "Shared EPT pointer", (), _SEAM),
        (0x203E, "PCONFIG_EXITING_BITMAP", "PCONFIG-exiting bitmap", (), ("SECONDARY_EXEC_ENABLE_PCONFIG",)),
        (0x2040, "HLAT_POINTER", "Hypervisor-managed linear-address translation pointer (HLATP)", ("HLATP",), _HLAT),
        (0x2042, "PID_POINTER_TABLE", "PID-pointer table address", (), _IPIV),
        (0x2044, "SECONDARY_VM_EXIT_CONTROLS", "Secondary VM-exit controls", (), ("VM_EXIT_ACTIVATE_SECONDARY_CONTROLS",)),
        (0x204A, "IA32_SPEC_CTRL_MASK", "IA32_SPEC_CTRL mask", (), ("TERTIARY_EXEC_SPEC_CTRL_VIRT",)),
        (0x204C, "IA32_SPEC_CTRL_SHADOW", "IA32_SPEC_CTRL shadow", (), ("TERTIARY_EXEC_SPEC_CTRL_VIRT",)),
        (0x2052, "INJECTED_EVENT_DATA", "Injected-event data", (), ("VM_ENTRY_LOAD_IA32_FRED",)),
    ]),
    ("64", "read-only", [
        (0x2400, "GUEST_PHYSICAL_ADDRESS", "Guest-physical address", (), _EPT),
        (0x2404, "ORIGINAL_EVENT_DATA", "Original-event data", (), ("VM_ENTRY_LOAD_IA32_FRED",)),
    ]),
    ("64", "guest", [
        (0x2800, "VMCS_LINK_POINTER", "VMCS link pointer", (), ()),
        (0x2802, "GUEST_IA32_DEBUGCTL", "Guest IA32_DEBUGCTL", ("GUEST_DEBUGCTL",), ()),
        (0x2804, "GUEST_IA32_PAT", "Guest IA32_PAT", ("GUEST_PAT",), ("VM_ENTRY_LOAD_IA32_PAT", "VM_EXIT_SAVE_IA32_PAT")),
        (0x2806, "GUEST_IA32_EFER", "Guest IA32_EFER", ("GUEST_EFER",), ("VM_ENTRY_LOAD_IA32_EFER", "VM_EXIT_SAVE_IA32_EFER")),
        (0x2808, "GUEST_IA32_PERF_GLOBAL_CTRL", "Guest IA32_PERF_GLOBAL_CTRL", (), ("VM_ENTRY_LOAD_IA32_PERF_GLOBAL_CTRL", "VM_EXIT_SAVE_IA32_PERF_GLOBAL_CTRL")),
        (0x280A, "GUEST_PDPTR0", "Guest PDPTE0", ("GUEST_PDPTE0",), _EPT),
        (0x280C, "GUEST_PDPTR1", "Guest PDPTE1", ("GUEST_PDPTE1",), _EPT),
        (0x280E, "GUEST_PDPTR2", "Guest PDPTE2", ("GUEST_PDPTE2",), _EPT),
        (0x2810, "GUEST_PDPTR3", "Guest PDPTE3", ("GUEST_PDPTE3",), _EPT),
        (0x2812, "GUEST_BNDCFGS", "Guest IA32_BNDCFGS", ("GUEST_IA32_BNDCFGS",), ("VM_ENTRY_LOAD_BNDCFGS", "VM_EXIT_CLEAR_BNDCFGS")),
        (0x2814, "GUEST_IA32_RTIT_CTL", "Guest IA32_RTIT_CTL", (), ("VM_ENTRY_LOAD_IA32_RTIT_CTL", "VM_EXIT_CLEAR_IA32_RTIT_CTL")),
        (0x2816, "GUEST_IA32_LBR_CTL", "Guest IA32_LBR_CTL", (), ("VM_ENTRY_LOAD_IA32_LBR_CTL", "VM_EXIT_CLEAR_IA32_LBR_CTL")),
        (0x2818, "GUEST_IA32_PKRS", "Guest IA32_PKRS", (), ("VM_ENTRY_LOAD_IA32_PKRS",)),
        (0x281A, "GUEST_IA32_FRED_CONFIG", "Guest IA32_FRED_CONFIG", (), _FRED_G),
        (0x281C, "GUEST_IA32_FRED_RSP1", "Guest IA32_FRED_RSP1", (), _FRED_G),
        (0x281E, "GUEST_IA32_FRED_RSP2", "Guest IA32_FRED_RSP2", (), _FRED_G),
        (0x2820, "GUEST_IA32_FRED_RSP3", "Guest IA32_FRED_RSP3", (), _FRED_G),
        (0x2822, "GUEST_IA32_FRED_STKLVLS", "Guest IA32_FRED_STKLVLS", (), _FRED_G),
        (0x2824, "GUEST_IA32_FRED_SSP1", "Guest IA32_FRED_SSP1", (), _FRED_G),
        (0x2826, "GUEST_IA32_FRED_SSP2", "Guest IA32_FRED_SSP2", (), _FRED_G),
        (0x2828, "GUEST_IA32_FRED_SSP3", "Guest IA32_FRED_SSP3", (), _FRED_G),
    ]),
    ("64", "host", [
        (0x2C00, "HOST_IA32_PAT", "Host IA32_PAT", ("HOST_PAT",), ("VM_EXIT_LOAD_IA32_PAT",)),
        (0x2C02, "HOST_IA32_EFER", "Host IA32_EFER", ("HOST_EFER",), ("VM_EXIT_LOAD_IA32_EFER",)),
        (0x2C04, "HOST_IA32_PERF_GLOBAL_CTRL", "Host IA32_PERF_GLOBAL_CTRL", (), ("VM_EXIT_LOAD_IA32_PERF_GLOBAL_CTRL",)),
        (0x2C06, "HOST_IA32_PKRS", "Host IA32_PKRS", (), ("VM_EXIT_LOAD_IA32_PKRS",)),
        (0x2C08, "HOST_IA32_FRED_CONFIG", "Host IA32_FRED_CONFIG", (), _FRED_H),
        (0x2C0A, "HOST_IA32_FRED_RSP1", "Host IA32_FRED_RSP1", (), _FRED_H),
        (0x2C0C, "HOST_IA32_FRED_RSP2", "Host IA32_FRED_RSP2", (), _FRED_H),
        (0x2C0E, "HOST_IA32_FRED_RSP3", "Host IA32_FRED_RSP3", (), _FRED_H),
        (0x2C10, "HOST_IA32_FRED_STKLVLS", "Host IA32_FRED_STKLVLS", (), _FRED_H),
        (0x2C12, "HOST_IA32_FRED_SSP1", "Host IA32_FRED_SSP1", (), _FRED_H),
        (0x2C14, "HOST_IA32_FRED_SSP2", "Host IA32_FRED_SSP2", (), _FRED_H),
        (0x2C16, "HOST_IA32_FRED_SSP3", "Host IA32_FRED_SSP3", (), _FRED_H),
    ]),
    ("32", "control", [
        (0x4000, "PIN_BASED_VM_EXEC_CONTROL", "Pin-based VM-execution controls", (), ()),
        (0x4002, "CPU_BASED_VM_EXEC_CONTROL", "Primary processor-based VM-execution controls", (), ()),
        (0x4004, "EXCEPTION_BITMAP", "Exception bitmap", (), ()),
        (0x4006, "PAGE_FAULT_ERROR_CODE_MASK", "Page-fault error-code mask", (), ()),
        (0x4008, "PAGE_FAULT_ERROR_CODE_MATCH", "Page-fault error-code match", (), ()),
        (0x400A, "CR3_TARGET_COUNT", "CR3-target count", (), ()),
        (0x400C, "VM_EXIT_CONTROLS", "Primary VM-exit controls", (), ()),
        (0x400E, "VM_EXIT_MSR_STORE_COUNT", "VM-exit MSR-store count", (), ()),
        (0x4010, "VM_EXIT_MSR_LOAD_COUNT", "VM-exit MSR-load count", (), ()),
        (0x4012, "VM_ENTRY_CONTROLS", "VM-entry controls", (), ()),
        (0x4014, "VM_ENTRY_MSR_LOAD_COUNT", "VM-entry MSR-load count", (), ()),
        (0x4016, "VM_ENTRY_INTR_INFO_FIELD", "VM-entry interruption-information field", ("VM_ENTRY_INTR_INFO",), ()),
        (0x4018, "VM_ENTRY_EXCEPTION_ERROR_CODE", "VM-entry exception error code", (), ()),
        (0x401A, "VM_ENTRY_INSTRUCTION_LEN", "VM-entry instruction length", (), ()),
        (0x401C, "TPR_THRESHOLD", "TPR threshold", (), ("CPU_BASED_TPR_SHADOW",)),
        (0x401E, "SECONDARY_VM_EXEC_CONTROL", "Secondary processor-based VM-execution controls", (), ("CPU_BASED_ACTIVATE_SECONDARY_CONTROLS",)),
        (0x4020, "PLE_GAP", "PLE_Gap", (), ("SECONDARY_EXEC_PAUSE_LOOP_EXITING",)),
        (0x4022, "PLE_WINDOW", "PLE_Window", (), ("SECONDARY_EXEC_PAUSE_LOOP_EXITING",)),
        (0x4024, "NOTIFY_WINDOW", "Instruction-timeout control", ("INSTRUCTION_TIMEOUT_CONTROL",), ("SECONDARY_EXEC_NOTIFY_VM_EXITING",)),
    ]),
    ("32", "read-only", [
        (0x4400, "VM_INSTRUCTION_ERROR", "VM-instruction error", (), ()),
        (0x4402, "VM_EXIT_REASON", "Exit reason", (), ()),
        (0x4404, "VM_EXIT_INTR_INFO", "VM-exit interruption information", (), ()),
        (0x4406, "VM_EXIT_INTR_ERROR_CODE", "VM-exit interruption error code", (), ()),
        (0x4408, "IDT_VECTORING_INFO_FIELD", "IDT-vectoring information field", ("IDT_VECTORING_INFO",), ()),
        (0x440A, "IDT_VECTORING_ERROR_CODE", "IDT-vectoring error code", (), ()),
        (0x440C, "VM_EXIT_INSTRUCTION_LEN", "VM-exit instruction length", (), ()),
        (0x440E, "VMX_INSTRUCTION_INFO", "VM-exit instruction information", ("VM_EXIT_INSTRUCTION_INFO",), ()),
    ]),
    ("32", "guest", [
        (0x4800, "GUEST_ES_LIMIT", "Guest ES limit", (), ()),
        (0x4802, "GUEST_CS_LIMIT", "Guest CS limit", (), ()),
        (0x4804, "GUEST_SS_LIMIT", "Guest SS limit", (), ()),
        (0x4806, "GUEST_DS_LIMIT", "Guest DS limit", (), ()),
        (0x4808, "GUEST_FS_LIMIT", "Guest FS limit", (), ()),
        (0x480A, "GUEST_GS_LIMIT", "Guest GS limit", (), ()),
        (0x480C, "GUEST_LDTR_LIMIT", "Guest LDTR limit", (), ()),
        (0x480E, "GUEST_TR_LIMIT", "Guest TR limit", (), ()),
        (0x4810, "GUEST_GDTR_LIMIT", "Guest GDTR limit", (), ()),
        (0x4812, "GUEST_IDTR_LIMIT", "Guest IDTR limit", (), ()),
        (0x4814, "GUEST_ES_AR_BYTES", "Guest ES access rights", ("GUEST_ES_ACCESS_RIGHTS", "GUEST_ES_AR"), ()),
        (0x4816, "GUEST_CS_AR_BYTES", "Guest CS access rights", ("GUEST_CS_ACCESS_RIGHTS", "GUEST_CS_AR"), ()),
        (0x4818, "GUEST_SS_AR_BYTES", "Guest SS access rights", ("GUEST_SS_ACCESS_RIGHTS", "GUEST_SS_AR"), ()),
        (0x481A, "GUEST_DS_AR_BYTES", "Guest DS access rights", ("GUEST_DS_ACCESS_RIGHTS", "GUEST_DS_AR"), ()),
        (0x481C, "GUEST_FS_AR_BYTES", "Guest FS access rights", ("GUEST_FS_ACCESS_RIGHTS", "GUEST_FS_AR"), ()),
        (0x481E, "GUEST_GS_AR_BYTES", "Guest GS access rights", ("GUEST_GS_ACCESS_RIGHTS", "GUEST_GS_AR"), ()),
        (0x4820, "GUEST_LDTR_AR_BYTES", "Guest LDTR access rights", ("GUEST_LDTR_ACCESS_RIGHTS", "GUEST_LDTR_AR"), ()),
        (0x4822, "GUEST_TR_AR_BYTES", "Guest TR access rights", ("GUEST_TR_ACCESS_RIGHTS", "GUEST_TR_AR"), ()),
        (0x4824, "GUEST_INTERRUPTIBILITY_INFO", "Guest interruptibility state", ("GUEST_INTERRUPTIBILITY_STATE",), ()),
        (0x4826, "GUEST_ACTIVITY_STATE", "Guest activity state", (), ()),
        (0x4828, "GUEST_SMBASE", "Guest SMBASE", (), ()),
        (0x482A, "GUEST_SYSENTER_CS", "Guest IA32_SYSENTER_CS", ("GUEST_IA32_SYSENTER_CS",), ()),
        (0x482E, "VMX_PREEMPTION_TIMER_VALUE", "VMX-preemption timer value", (), ("PIN_BASED_VMX_PREEMPTION_TIMER",)),
    ]),
    ("32", "host", [
        (0x4C00, "HOST_IA32_SYSENTER_CS", "Host IA32_SYSENTER_CS", ("HOST_SYSENTER_CS",), ()),
    ]),
    ("natural", "control", [
        (0x6000, "CR0_GUEST_HOST_MASK", "CR0 guest/host mask", (), ()),
        (0x6002, "CR4_GUEST_HOST_MASK", "CR4 guest/host mask", (), ()),
        (0x6004, "CR0_READ_SHADOW", "CR0 read shadow", (), ()),
        (0x6006, "CR4_READ_SHADOW", "CR4 read shadow", (), ()),
        (0x6008, "CR3_TARGET_VALUE0", "CR3-target value 0", (), ()),
        (0x600A, "CR3_TARGET_VALUE1", "CR3-target value 1", (), ()),
        (0x600C, "CR3_TARGET_VALUE2", "CR3-target value 2", (), ()),
        (0x600E, "CR3_TARGET_VALUE3", "CR3-target value 3", (), ()),
    ]),
    ("natural", "read-only", [
        (0x6400, "EXIT_QUALIFICATION", "Exit qualification", (), ()),
        (0x6402, "IO_RCX", "I/O RCX", (), ()),
        (0x6404, "IO_RSI", "I/O RSI", (), ()),
        (0x6406, "IO_RDI", "I/O RDI", (), ()),
        (0x6408, "IO_RIP", "I/O RIP", (), ()),
        (0x640A, "GUEST_LINEAR_ADDRESS", "Guest-linear address", (), ()),
    ]),
    ("natural", "guest", [
        (0x6800, "GUEST_CR0", "Guest CR0", (), ()),
        (0x6802, "GUEST_CR3", "Guest CR3", (), ()),
        (0x6804, "GUEST_CR4", "Guest CR4", (), ()),
        (0x6806, "GUEST_ES_BASE", "Guest ES base", (), ()),
        (0x6808, "GUEST_CS_BASE", "Guest CS base", (), ()),
        (0x680A, "GUEST_SS_BASE", "Guest SS base", (), ()),
        (0x680C, "GUEST_DS_BASE", "Guest DS base", (), ()),
        (0x680E, "GUEST_FS_BASE", "Guest FS base", (), ()),
        (0x6810, "GUEST_GS_BASE", "Guest GS base", (), ()),
        (0x6812, "GUEST_LDTR_BASE", "Guest LDTR base", (), ()),
        (0x6814, "GUEST_TR_BASE", "Guest TR base", (), ()),
        (0x6816, "GUEST_GDTR_BASE", "Guest GDTR base", (), ()),
        (0x6818, "GUEST_IDTR_BASE", "Guest IDTR base", (), ()),
        (0x681A, "GUEST_DR7", "Guest DR7", (), ()),
        (0x681C, "GUEST_RSP", "Guest RSP", (), ()),
        (0x681E, "GUEST_RIP", "Guest RIP", (), ()),
        (0x6820, "GUEST_RFLAGS", "Guest RFLAGS", (), ()),
        (0x6822, "GUEST_PENDING_DBG_EXCEPTIONS", "Guest pending debug exceptions", ("GUEST_PENDING_DEBUG_EXCEPTIONS",), ()),
        (0x6824, "GUEST_SYSENTER_ESP", "Guest IA32_SYSENTER_ESP", ("GUEST_IA32_SYSENTER_ESP",), ()),
        (0x6826, "GUEST_SYSENTER_EIP", "Guest IA32_SYSENTER_EIP", ("GUEST_IA32_SYSENTER_EIP",), ()),
        (0x6828, "GUEST_S_CET", "Guest IA32_S_CET", ("GUEST_IA32_S_CET",), _CET_G),
        (0x682A, "GUEST_SSP", "Guest SSP", (), _CET_G),
        (0x682C, "GUEST_INTR_SSP_TABLE", "Guest IA32_INTERRUPT_SSP_TABLE_ADDR", ("GUEST_IA32_INTERRUPT_SSP_TABLE_ADDR",), _CET_G),
    ]),
    ("natural", "host", [
        (0x6C00, "HOST_CR0", "Host CR0", (), ()),
        (0x6C02, "HOST_CR3", "Host CR3", (), ()),
        (0x6C04, "HOST_CR4", "Host CR4", (), ()),
        (0x6C06, "HOST_FS_BASE", "Host FS base", (), ()),
        (0x6C08, "HOST_GS_BASE", "Host GS base", (), ()),
        (0x6C0A, "HOST_TR_BASE", "Host TR base", (), ()),
        (0x6C0C, "HOST_GDTR_BASE", "Host GDTR base", (), ()),
        (0x6C0E, "HOST_IDTR_BASE", "Host IDTR base", (), ()),
        (0x6C10, "HOST_IA32_SYSENTER_ESP", "Host IA32_SYSENTER_ESP", ("HOST_SYSENTER_ESP",), ()),
        (0x6C12, "HOST_IA32_SYSENTER_EIP", "Host IA32_SYSENTER_EIP", ("HOST_SYSENTER_EIP",), ()),
        (0x6C14, "HOST_RSP", "Host RSP", (), ()),
        (0x6C16, "HOST_RIP", "Host RIP", (), ()),
        (0x6C18, "HOST_S_CET", "Host IA32_S_CET", ("HOST_IA32_S_CET",), _CET_H),
        (0x6C1A, "HOST_SSP", "Host SSP", (), _CET_H),
        (0x6C1C, "HOST_INTR_SSP_TABLE", "Host IA32_INTERRUPT_SSP_TABLE_ADDR", ("HOST_IA32_INTERRUPT_SSP_TABLE_ADDR",), _CET_H),
    ]),
]


def normalize(name: str) -> str:
    """Canonical lookup key: upper case, runs of non-alphanumerics become '_'.

    'Guest ES selector' -> 'GUEST_ES_SELECTOR'; 'guest-es-selector' likewise.
    """
    out, prev_us = [], True
    for ch in name.strip().upper():
        if ch.isalnum():
            out.append(ch)
            prev_us = False
        elif not prev_us:
            out.append("_")
            prev_us = True
    return "".join(out).rstrip("_")


def _build() -> tuple[tuple[Field, ...], dict[int, Field], dict[str, Field]]:
    fields: list[Field] = []
    for width, ftype, rows in _TABLE:
        for enc, name, sdm, aliases, requires in rows:
            fields.append(Field(name, enc, width, ftype, sdm, tuple(aliases), tuple(requires)))
    fields.sort(key=lambda f: f.encoding)
    by_enc = {f.encoding: f for f in fields}
    by_name: dict[str, Field] = {}
    for f in fields:
        keys = {f.name, normalize(f.sdm), *f.aliases}
        # SDM names often carry a parenthesised acronym: accept the text without it.
        if "(" in f.sdm:
            keys.add(normalize(f.sdm.split("(")[0]))
        for key in keys:
            key = normalize(key)
            other = by_name.get(key)
            if other is not None and other is not f:
                raise AssertionError(f"VMCS name {key} names both {other.name} and {f.name}")
            by_name[key] = f
    return tuple(fields), by_enc, by_name


FIELDS, BY_ENCODING, _BY_NAME = _build()

# Every Linux name is also a module constant holding its encoding:
# `fields.GUEST_RIP == 0x681E`.
globals().update({f.name: f.encoding for f in FIELDS})


def lookup(name_or_encoding: str | int) -> Field | None:
    """Field by Linux name, alias, SDM name, or full-access encoding (int or '0x..')."""
    if isinstance(name_or_encoding, int):
        return BY_ENCODING.get(name_or_encoding)
    text = name_or_encoding.strip()
    try:
        return BY_ENCODING.get(int(text, 0))
    except ValueError:
        return _BY_NAME.get(normalize(text))


def by_name(name: str) -> Field:
    f = _BY_NAME.get(name) or _BY_NAME.get(normalize(name))
    if f is None:
        raise KeyError(name)
    return f


def group(width: str | None = None, ftype: str | None = None) -> Iterable[Field]:
    return (f for f in FIELDS if (width is None or f.width == width) and (ftype is None or f.type == ftype))

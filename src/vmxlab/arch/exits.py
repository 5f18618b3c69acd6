"""VM-exit reasons, exit-qualification layouts, VM-exit instruction information.

Sources: Intel SDM Vol. 3D Appendix C "VMX Basic Exit Reasons"; Vol. 3C "Basic VM-Exit
Information" (Exit Reason; Exit Qualification for ... tables), "Information for VM
Exits Due to Instruction Execution" (VM-exit instruction-information tables).
Names are those of Linux's kvm_exit trace (VMX_EXIT_REASONS in
arch/x86/include/uapi/asm/vmx.h); reasons Linux does not name get a name in the
same style from the SDM's wording.
"""
from __future__ import annotations

from dataclasses import dataclass

from .layout import Bits, Layout
from .registers import GPRS64, SEGMENT_REGISTERS


@dataclass(frozen=True)
class ExitReason:
    number: int
    name: str
    sdm: str


_REASONS = [
    (0, "EXCEPTION_NMI", "Exception or non-maskable interrupt (NMI)"),
    (1, "EXTERNAL_INTERRUPT", "External interrupt"),
    (2, "TRIPLE_FAULT", "Triple fault"),
    (3, "INIT_SIGNAL", "INIT signal"),
    (4, "SIPI_SIGNAL", "Start-up IPI (SIPI)"),
    (5, "IO_SMI", "I/O system-management interrupt (SMI)"),
    (6, "OTHER_SMI", "Other SMI"),
    (7, "INTERRUPT_WINDOW", "Interrupt window"),
    (8, "NMI_WINDOW", "NMI window"),
    (9, "TASK_SWITCH", "Task switch"),
    (10, "CPUID", "CPUID"),
    (11, "GETSEC", "GETSEC"),
    (12, "HLT", "HLT"),
    (13, "INVD", "INVD"),
    (14, "INVLPG", "INVLPG"),
    (15, "RDPMC", "RDPMC"),
    (16, "RDTSC", "RDTSC"),
    (17, "RSM", "RSM"),
    (18, "VMCALL", "VMCALL"),
    (19, "VMCLEAR", "VMCLEAR"),
    (20, "VMLAUNCH", "VMLAUNCH"),
    (21, "VMPTRLD", "VMPTRLD"),
    (22, "VMPTRST", "VMPTRST"),
    (23, "VMREAD", "VMREAD"),
    (24, "VMRESUME", "VMRESUME"),
    (25, "VMWRITE", "VMWRITE"),
    (26, "VMOFF", "VMXOFF"),
    (27, "VMON", "VMXON"),
    (28, "CR_ACCESS", "Control-register accesses"),
    (29, "DR_ACCESS", "MOV DR"),
    (30, "IO_INSTRUCTION", "I/O instruction"),
    (31, "MSR_READ", "RDMSR"),
    (32, "MSR_WRITE", "WRMSR"),
    (33, "INVALID_STATE", "VM-entry failure due to invalid guest state"),
    (34, "MSR_LOAD_FAIL", "VM-entry failure due to MSR loading"),
    (36, "MWAIT_INSTRUCTION", "MWAIT"),
    (37, "MONITOR_TRAP_FLAG", "Monitor trap flag"),
    (39, "MONITOR_INSTRUCTION", "MONITOR"),
    (40, "PAUSE_INSTRUCTION", "PAUSE"),
    (41, "MCE_DURING_VMENTRY", "VM-entry failure due to machine-check event"),
    (43, "TPR_BELOW_THRESHOLD", "TPR below threshold"),
    (44, "APIC_ACCESS", "APIC access"),
    (45, "EOI_INDUCED", "Virtualized EOI"),
    (46, "GDTR_IDTR", "Access to GDTR or IDTR"),
    (47, "LDTR_TR", "Access to LDTR or TR"),
    (48, "EPT_VIOLATION", "EPT violation"),
    (49, "EPT_MISCONFIG", "EPT misconfiguration"),
    (50, "INVEPT", "INVEPT"),
    (51, "RDTSCP", "RDTSCP"),
    (52, "PREEMPTION_TIMER", "VMX-preemption timer expired"),
    (53, "INVVPID", "INVVPID"),
    (54, "WBINVD", "WBINVD or WBNOINVD"),
    (55, "XSETBV", "XSETBV"),
    (56, "APIC_WRITE", "APIC write"),
    (57, "RDRAND", "RDRAND"),
    (58, "INVPCID", "INVPCID"),
    (59, "VMFUNC", "VMFUNC"),
    (60, "ENCLS", "ENCLS"),
    (61, "RDSEED", "RDSEED"),
    (62, "PML_FULL", "Page-modification log full"),
    (63, "XSAVES", "XSAVES"),
    (64, "XRSTORS", "XRSTORS"),
    (66, "SPP_EVENT", "SPP-related event"),
    (67, "UMWAIT", "UMWAIT"),
    (68, "TPAUSE", "TPAUSE"),
    (69, "LOADIWKEY", "LOADIWKEY"),
    (70, "ENCLV", "ENCLV"),
    (72, "ENQCMD_PASID_FAIL", "ENQCMD PASID translation failure"),
    (73, "ENQCMDS_PASID_FAIL", "ENQCMDS PASID translation failure"),
    (74, "BUS_LOCK", "Bus lock"),
    (75, "NOTIFY", "Instruction timeout"),
    (76, "SEAMCALL", "SEAMCALL"),
    (77, "TDCALL", "TDCALL"),
    (78, "RDMSRLIST", "RDMSRLIST"),
    (79, "WRMSRLIST", "WRMSRLIST"),
    (84, "MSR_READ_IMM", "RDMSR with immediate operand"),
    (85, "MSR_WRITE_IMM", "WRMSR with immediate operand"),
]

REASONS: dict[int, ExitReason] = {n: ExitReason(n, name, sdm) for n, name, sdm in _REASONS}
_BY_NAME = {r.name: r for r in REASONS.values()}
# Every reason name is also a module constant: `exits.CPUID == 10`.
globals().update({r.name: r.number for r in REASONS.values()})

VM_ENTRY_FAILURE = 1 << 31

EXIT_REASON = Layout("Exit reason", (
    Bits("basic", 0, 15),
    Bits("bus_lock", 26, doc="a bus lock was asserted while the guest ran"),
    Bits("enclave", 27),
    Bits("pending_mtf", 28),
    Bits("from_vmx_root", 29),
    Bits("entry_failure", 31),
), section="Basic VM-Exit Information")


def lookup(key: int | str) -> ExitReason | None:
    if isinstance(key, int):
        return REASONS.get(key & 0xFFFF)
    text = key.strip().upper()
    try:
        return REASONS.get(int(text, 0) & 0xFFFF)
    except ValueError:
        return _BY_NAME.get(text.removeprefix("EXIT_REASON_"))


def name_of(reason: int) -> str:
    r = REASONS.get(reason & 0xFFFF)
    return r.name if r else f"REASON_{reason & 0xFFFF}"


_GPR = dict(enumerate(GPRS64))
_SEG = dict(enumerate(SEGMENT_REGISTERS))
_ADDR_SIZE = {0: "16-bit", 1: "32-bit", 2: "64-bit"}
_SCALE = {0: "1", 1: "2", 2: "4", 3: "8"}

# ---- Exit qualifications ------------------------------------------------------
QUAL_CR_ACCESS = Layout("Exit qualification for control-register accesses", (
    Bits("cr", 0, 3, doc="number of the control register (0 for CLTS and LMSW)"),
    Bits("access", 4, 5, values={0: "MOV to CR", 1: "MOV from CR", 2: "CLTS", 3: "LMSW"}),
    Bits("lmsw_memory", 6, values={0: "register", 1: "memory"}),
    Bits("gpr", 8, 11, values=_GPR),
    Bits("lmsw_source", 16, 31),
), section="Exit Qualification for Control-Register Accesses")

QUAL_DR_ACCESS = Layout("Exit qualification for MOV DR", (
    Bits("dr", 0, 2),
    Bits("direction", 4, values={0: "MOV to DR", 1: "MOV from DR"}),
    Bits("gpr", 8, 11, values=_GPR),
), section="Exit Qualification for MOV DR")

QUAL_IO = Layout("Exit qualification for I/O instructions", (
    Bits("size", 0, 2, values={0: "1 byte", 1: "2 bytes", 3: "4 bytes"}),
    Bits("direction", 3, values={0: "OUT", 1: "IN"}),
    Bits("string", 4),
    Bits("rep", 5),
    Bits("operand", 6, values={0: "DX", 1: "immediate"}),
    Bits("port", 16, 31),
), section="Exit Qualification for I/O Instructions")

QUAL_EPT_VIOLATION = Layout("Exit qualification for EPT violations", (
    Bits("read", 0, doc="the access was a data read"),
    Bits("write", 1, doc="the access was a data write"),
    Bits("fetch", 2, doc="the access was an instruction fetch"),
    Bits("readable", 3, doc="the guest-physical address was readable (AND of the R bits of the walk)"),
    Bits("writable", 4),
    Bits("executable", 5, doc="executable (supervisor-mode executable with mode-based execute control)"),
    Bits("user_executable", 6, doc="user-mode executable (mode-based execute control)"),
    Bits("gla_valid", 7, doc="the guest-linear-address field is valid"),
    Bits("gla_translation", 8, doc="1: access to the translated linear address; 0: access to a paging-structure entry"),
    Bits("user", 9, doc="advanced information: user-mode linear address"),
    Bits("rw_page", 10, doc="advanced information: read/write linear address"),
    Bits("nx_page", 11, doc="advanced information: execute-disable linear address"),
    Bits("nmi_unblocking", 12, doc="NMI unblocking due to IRET"),
    Bits("shadow_stack", 13),
    Bits("sss", 14, doc="supervisor shadow stack"),
    Bits("guest_paging_verify", 15),
    Bits("async", 16, doc="asynchronous to instruction execution"),
), section="Exit Qualification for EPT Violations")

QUAL_TASK_SWITCH = Layout("Exit qualification for task switches", (
    Bits("selector", 0, 15),
    Bits("source", 30, 31, values={0: "CALL", 1: "IRET", 2: "JMP", 3: "task gate in IDT"}),
), section="Exit Qualification for Task Switches")

QUAL_DEBUG = Layout("Exit qualification for debug exceptions", (
    Bits("B0", 0), Bits("B1", 1), Bits("B2", 2), Bits("B3", 3),
    Bits("BLD", 11, doc="bus-lock detected"),
    Bits("BD", 13, doc="debug-register access detected"),
    Bits("BS", 14, doc="single step"),
    Bits("RTM", 16),
), section="Exit Qualification for Debug Exceptions")

QUAL_APIC_ACCESS = Layout("Exit qualification for APIC-access VM exits", (
    Bits("offset", 0, 11),
    Bits("access", 12, 15, values={
        0: "linear read", 1: "linear write", 2: "linear instruction fetch",
        3: "linear access during event delivery",
        10: "guest-physical access during event delivery",
        15: "guest-physical access for instruction fetch or execution"}),
    Bits("async", 16),
), section="Exit Qualification for APIC-Access VM Exits from Linear Accesses and Guest-Physical Accesses")

QUAL_LINEAR = Layout("Exit qualification (linear address or displacement)", (
    Bits("address", 0, 63),
), section="Basic VM-Exit Information")

QUAL_ENTRY_FAILURE = Layout("Exit qualification for VM-entry failures", (
    Bits("code", 0, 63, values={0: "default", 2: "PDPTE loading", 3: "NMI injection with blocking by NMI",
                                4: "invalid VMCS link pointer"}),
), section="VM-Entry Failures During or After Loading Guest State")

QUAL_MSR_LOAD_FAIL = Layout("Exit qualification for VM-entry failure due to MSR loading", (
    Bits("entry", 0, 63, doc="1-based index of the MSR-load entry that failed"),
), section="VM-Entry Failures During or After Loading Guest State")

# Which layout describes the qualification of which basic exit reason.
QUALIFICATIONS: dict[int, Layout] = {
    0: QUAL_DEBUG,           # for #DB (the caller checks the vector); #PF: CR2 value
    9: QUAL_TASK_SWITCH,
    14: QUAL_LINEAR,         # INVLPG: linear address
    28: QUAL_CR_ACCESS,
    29: QUAL_DR_ACCESS,
    30: QUAL_IO,
    33: QUAL_ENTRY_FAILURE,
    34: QUAL_MSR_LOAD_FAIL,
    44: QUAL_APIC_ACCESS,
    48: QUAL_EPT_VIOLATION,
    58: QUAL_LINEAR,         # INVPCID: displacement
}

# ---- VM-exit instruction information ---------------------------------------------
_MEM_PARTS = (
    Bits("scaling", 0, 1, values=_SCALE),
    Bits("address_size", 7, 9, values=_ADDR_SIZE),
    Bits("segment", 15, 17, values=_SEG),
    Bits("index", 18, 21, values=_GPR),
    Bits("index_invalid", 22),
    Bits("base", 23, 26, values=_GPR),
    Bits("base_invalid", 27),
)

INFO_INS_OUTS = Layout("Instruction information for INS and OUTS", (
    Bits("address_size", 7, 9, values=_ADDR_SIZE),
    Bits("segment", 15, 17, values=_SEG),
), section="Format of the VM-Exit Instruction-Information Field as Used for INS and OUTS")

INFO_INVEPT = Layout("Instruction information for INVEPT, INVPCID, INVVPID", (
    *_MEM_PARTS, Bits("reg2", 28, 31, values=_GPR),
), section="Format of the VM-Exit Instruction-Information Field as Used for INVEPT, INVPCID, and INVVPID")

INFO_DESC_TABLE = Layout("Instruction information for LIDT, LGDT, SIDT, SGDT", (
    *_MEM_PARTS,
    Bits("operand_size", 11, values={0: "16-bit", 1: "32-bit"}),
    Bits("identity", 28, 29, values={0: "SGDT", 1: "SIDT", 2: "LGDT", 3: "LIDT"}),
), section="Format of the VM-Exit Instruction-Information Field as Used for LIDT, LGDT, SIDT, or SGDT")

INFO_LDT_TR = Layout("Instruction information for LLDT, LTR, SLDT, STR", (
    *_MEM_PARTS,
    Bits("reg1", 3, 6, values=_GPR),
    Bits("register_operand", 10),
    Bits("identity", 28, 29, values={0: "SLDT", 1: "STR", 2: "LLDT", 3: "LTR"}),
), section="Format of the VM-Exit Instruction-Information Field as Used for LLDT, LTR, SLDT, and STR")

INFO_RDRAND = Layout("Instruction information for RDRAND, RDSEED, TPAUSE, UMWAIT", (
    Bits("reg1", 3, 6, values=_GPR),
    Bits("operand_size", 11, 12, values={0: "16-bit", 1: "32-bit", 2: "64-bit"}),
), section="Format of the VM-Exit Instruction-Information Field as Used for RDRAND, RDSEED, TPAUSE, and UMWAIT")

INFO_VMX_MEM = Layout("Instruction information for VMCLEAR, VMPTRLD, VMPTRST, VMXON, XRSTORS, XSAVES", (
    *_MEM_PARTS,
), section="Format of the VM-Exit Instruction-Information Field as Used for VMCLEAR, VMPTRLD, VMPTRST, VMXON, XRSTORS, and XSAVES")

INFO_VMREAD_VMWRITE = Layout("Instruction information for VMREAD and VMWRITE", (
    *_MEM_PARTS,
    Bits("reg1", 3, 6, values=_GPR),
    Bits("register_operand", 10),
    Bits("reg2", 28, 31, values=_GPR),
), section="Format of the VM-Exit Instruction-Information Field as Used for VMREAD and VMWRITE")

INSTRUCTION_INFO: dict[int, Layout] = {
    30: INFO_INS_OUTS,
    50: INFO_INVEPT, 53: INFO_INVEPT, 58: INFO_INVEPT,
    46: INFO_DESC_TABLE, 47: INFO_LDT_TR,
    57: INFO_RDRAND, 61: INFO_RDRAND, 67: INFO_RDRAND, 68: INFO_RDRAND,
    19: INFO_VMX_MEM, 21: INFO_VMX_MEM, 22: INFO_VMX_MEM, 27: INFO_VMX_MEM, 63: INFO_VMX_MEM, 64: INFO_VMX_MEM,
    23: INFO_VMREAD_VMWRITE, 25: INFO_VMREAD_VMWRITE,
}


# ---- VMX aborts (SDM Vol. 3C "VMX Aborts"): the indicator written at byte 4 of the
# VMCS region when a VM exit cannot complete; the processor then enters shutdown
VMX_ABORT_INDICATORS: dict[int, str] = {
    1: "there was a failure in saving guest MSRs",
    2: "host checking of the page-directory-pointer-table entries failed",
    3: "the current VMCS has been corrupted and the VM exit cannot complete",
    4: "there was a failure on loading host MSRs",
    5: "there was a machine-check event during the VM exit",
    6: "the logical processor was in IA-32e mode before the VM exit and the \"host address-space size\" "
       "VM-exit control was 0",
}

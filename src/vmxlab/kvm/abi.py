"""The /dev/kvm ABI for x86-64: ioctl numbers, structure layouts, constants.

Everything here is a fact of the Linux user-space API (include/uapi/linux/kvm.h and
arch/x86/include/uapi/asm/kvm.h); the names are the kernel's.  Structures are
ctypes mirrors of the C structs; ioctl numbers are computed from the _IO/_IOR/
_IOW/_IOWR macros (include/uapi/asm-generic/ioctl.h) and the ctypes sizes, so a
layout mistake also shows up as a wrong ioctl number.  tests/kvm/test_abi.py
checks sizes, offsets and numbers against the values the kernel headers give
(measured on these machines, ../shared/notes/kvm.md, and recompiled from
<linux/kvm.h> when a C compiler is present).

The offsets into `struct kvm_run` (the page shared with the kernel after
KVM_RUN) are module constants (RUN_*), because the exit path reads them with
struct.unpack_from on the mmap: that is the fastest access from Python.
"""
from __future__ import annotations

import ctypes as C

# ---- ioctl number encoding (include/uapi/asm-generic/ioctl.h) ------------------
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2
KVMIO = 0xAE


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


def _io(nr: int) -> int:
    return _ioc(_IOC_NONE, nr, 0)


def _ior(nr: int, struct) -> int:
    return _ioc(_IOC_READ, nr, C.sizeof(struct))


def _iow(nr: int, struct) -> int:
    return _ioc(_IOC_WRITE, nr, C.sizeof(struct))


def _iowr(nr: int, struct) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, nr, C.sizeof(struct))


u8, u16, u32, u64 = C.c_uint8, C.c_uint16, C.c_uint32, C.c_uint64


# ---- structures (arch/x86/include/uapi/asm/kvm.h, include/uapi/linux/kvm.h) -------
class kvm_regs(C.Structure):
    """struct kvm_regs: the general registers, RIP and RFLAGS (KVM_GET/SET_REGS)."""
    _fields_ = [(n, u64) for n in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
                                   "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
                                   "rip", "rflags")]


class kvm_segment(C.Structure):
    """struct kvm_segment: a segment register with its hidden part.  `limit` is
    byte-granular (already scaled by G), as in the VMCS."""
    _fields_ = [("base", u64), ("limit", u32), ("selector", u16),
                ("type", u8), ("present", u8), ("dpl", u8), ("db", u8), ("s", u8),
                ("l", u8), ("g", u8), ("avl", u8), ("unusable", u8), ("padding", u8)]


class kvm_dtable(C.Structure):
    """struct kvm_dtable: GDTR or IDTR (the limit is 16 bits)."""
    _fields_ = [("base", u64), ("limit", u16), ("padding", u16 * 3)]


KVM_NR_INTERRUPTS = 256
SREGS_SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")


class kvm_sregs(C.Structure):
    """struct kvm_sregs (KVM_GET/SET_SREGS): segments, descriptor tables, CRs, EFER."""
    _fields_ = ([(n, kvm_segment) for n in SREGS_SEGMENTS]
                + [("gdt", kvm_dtable), ("idt", kvm_dtable)]
                + [(n, u64) for n in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")]
                + [("interrupt_bitmap", u64 * ((KVM_NR_INTERRUPTS + 63) // 64))])


class kvm_userspace_memory_region(C.Structure):
    _fields_ = [("slot", u32), ("flags", u32), ("guest_phys_addr", u64),
                ("memory_size", u64), ("userspace_addr", u64)]


KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY = 1 << 0, 1 << 1


class kvm_cpuid_entry2(C.Structure):
    _fields_ = [("function", u32), ("index", u32), ("flags", u32),
                ("eax", u32), ("ebx", u32), ("ecx", u32), ("edx", u32), ("padding", u32 * 3)]


class kvm_cpuid2(C.Structure):
    """struct kvm_cpuid2 header; the entries follow (flexible array)."""
    _fields_ = [("nent", u32), ("padding", u32)]


def cpuid2(n: int):
    """A kvm_cpuid2 with room for n entries."""
    class kvm_cpuid2_n(C.Structure):
        _fields_ = [("nent", u32), ("padding", u32), ("entries", kvm_cpuid_entry2 * n)]
    c = kvm_cpuid2_n()
    c.nent = n
    return c


class kvm_msr_entry(C.Structure):
    _fields_ = [("index", u32), ("reserved", u32), ("data", u64)]


class kvm_msrs(C.Structure):
    """struct kvm_msrs header; the entries follow (flexible array)."""
    _fields_ = [("nmsrs", u32), ("pad", u32)]


def msrs(n: int):
    """A kvm_msrs with room for n entries."""
    class kvm_msrs_n(C.Structure):
        _fields_ = [("nmsrs", u32), ("pad", u32), ("entries", kvm_msr_entry * n)]
    m = kvm_msrs_n()
    m.nmsrs = n
    return m


class kvm_msr_list(C.Structure):
    _fields_ = [("nmsrs", u32)]


class kvm_debugregs(C.Structure):
    _fields_ = [("db", u64 * 4), ("dr6", u64), ("dr7", u64), ("flags", u64), ("reserved", u64 * 9)]


class kvm_xcr(C.Structure):
    _fields_ = [("xcr", u32), ("reserved", u32), ("value", u64)]


KVM_MAX_XCRS = 16


class kvm_xcrs(C.Structure):
    _fields_ = [("nr_xcrs", u32), ("flags", u32), ("xcrs", kvm_xcr * KVM_MAX_XCRS), ("padding", u64 * 16)]


class _events_exception(C.Structure):
    _fields_ = [("injected", u8), ("nr", u8), ("has_error_code", u8), ("pending", u8), ("error_code", u32)]


class _events_interrupt(C.Structure):
    _fields_ = [("injected", u8), ("nr", u8), ("soft", u8), ("shadow", u8)]


class _events_nmi(C.Structure):
    _fields_ = [("injected", u8), ("pending", u8), ("masked", u8), ("pad", u8)]


class _events_smi(C.Structure):
    _fields_ = [("smm", u8), ("pending", u8), ("smm_inside_nmi", u8), ("latched_init", u8)]


class kvm_vcpu_events(C.Structure):
    """struct kvm_vcpu_events (KVM_GET/SET_VCPU_EVENTS): events in flight and the
    interrupt shadow (STI / MOV SS blocking) and NMI blocking."""
    _fields_ = [("exception", _events_exception), ("interrupt", _events_interrupt),
                ("nmi", _events_nmi), ("sipi_vector", u32), ("flags", u32),
                ("smi", _events_smi), ("triple_fault_pending", u8), ("reserved", u8 * 26),
                ("exception_has_payload", u8), ("exception_payload", u64)]


KVM_VCPUEVENT_VALID_NMI_PENDING = 0x01
KVM_VCPUEVENT_VALID_SIPI_VECTOR = 0x02
KVM_VCPUEVENT_VALID_SHADOW = 0x04
KVM_VCPUEVENT_VALID_SMM = 0x08
KVM_VCPUEVENT_VALID_PAYLOAD = 0x10
KVM_VCPUEVENT_VALID_TRIPLE_FAULT = 0x20
KVM_X86_SHADOW_INT_MOV_SS = 0x01
KVM_X86_SHADOW_INT_STI = 0x02


class kvm_mp_state(C.Structure):
    _fields_ = [("mp_state", u32)]


KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED, KVM_MP_STATE_INIT_RECEIVED = 0, 1, 2
KVM_MP_STATE_HALTED, KVM_MP_STATE_SIPI_RECEIVED = 3, 4


class kvm_interrupt(C.Structure):
    _fields_ = [("irq", u32)]


class kvm_translation(C.Structure):
    _fields_ = [("linear_address", u64), ("physical_address", u64),
                ("valid", u8), ("writeable", u8), ("usermode", u8), ("pad", u8 * 5)]


class kvm_guest_debug(C.Structure):
    _fields_ = [("control", u32), ("pad", u32), ("debugreg", u64 * 8)]


class kvm_enable_cap(C.Structure):
    _fields_ = [("cap", u32), ("flags", u32), ("args", u64 * 4), ("pad", u8 * 64)]


class kvm_msr_filter_range(C.Structure):
    _fields_ = [("flags", u32), ("nmsrs", u32), ("base", u32), ("bitmap", C.c_void_p)]


KVM_MSR_FILTER_MAX_RANGES = 16
KVM_MSR_FILTER_MAX_BITMAP_SIZE = 0x600      # bytes per range
KVM_MSR_FILTER_READ, KVM_MSR_FILTER_WRITE = 1 << 0, 1 << 1
KVM_MSR_FILTER_DEFAULT_ALLOW, KVM_MSR_FILTER_DEFAULT_DENY = 0, 1


class kvm_msr_filter(C.Structure):
    _fields_ = [("flags", u32), ("ranges", kvm_msr_filter_range * KVM_MSR_FILTER_MAX_RANGES)]


# ---- struct kvm_run: the shared page ------------------------------------------------
class _run_hw(C.Structure):
    _fields_ = [("hardware_exit_reason", u64)]


class _run_fail_entry(C.Structure):
    _fields_ = [("hardware_entry_failure_reason", u64), ("cpu", u32)]


class _run_ex(C.Structure):
    _fields_ = [("exception", u32), ("error_code", u32)]


class _run_io(C.Structure):
    _fields_ = [("direction", u8), ("size", u8), ("port", u16), ("count", u32), ("data_offset", u64)]


class _run_debug(C.Structure):
    _fields_ = [("exception", u32), ("pad", u32), ("pc", u64), ("dr6", u64), ("dr7", u64)]


class _run_mmio(C.Structure):
    _fields_ = [("phys_addr", u64), ("data", u8 * 8), ("len", u32), ("is_write", u8)]


class _run_internal(C.Structure):
    _fields_ = [("suberror", u32), ("ndata", u32), ("data", u64 * 16)]


class _run_emulation_failure(C.Structure):
    _fields_ = [("suberror", u32), ("ndata", u32), ("flags", u64),
                ("insn_size", u8), ("insn_bytes", u8 * 15)]


class _run_system_event(C.Structure):
    _fields_ = [("type", u32), ("ndata", u32), ("data", u64 * 16)]


class _run_msr(C.Structure):
    _fields_ = [("error", u8), ("pad", u8 * 7), ("reason", u32), ("index", u32), ("data", u64)]


class _run_exit_union(C.Union):
    _fields_ = [("hw", _run_hw), ("fail_entry", _run_fail_entry), ("ex", _run_ex), ("io", _run_io),
                ("debug", _run_debug), ("mmio", _run_mmio), ("internal", _run_internal),
                ("emulation_failure", _run_emulation_failure), ("system_event", _run_system_event),
                ("msr", _run_msr), ("padding", C.c_char * 256)]


class kvm_run(C.Structure):
    """struct kvm_run up to the synchronized registers (kvm_run->s.regs)."""
    _fields_ = [("request_interrupt_window", u8), ("immediate_exit", u8), ("padding1", u8 * 6),
                ("exit_reason", u32), ("ready_for_interrupt_injection", u8), ("if_flag", u8),
                ("flags", u16), ("cr8", u64), ("apic_base", u64), ("u", _run_exit_union),
                ("kvm_valid_regs", u64), ("kvm_dirty_regs", u64), ("s_regs", kvm_regs)]


def _off(member: str, field: str | None = None) -> int:
    base = kvm_run.u.offset + getattr(_run_exit_union, member).offset
    if field is None:
        return base
    union_member = dict(_run_exit_union._fields_)[member]
    return base + getattr(union_member, field).offset


RUN_REQUEST_INTERRUPT_WINDOW = kvm_run.request_interrupt_window.offset
RUN_IMMEDIATE_EXIT = kvm_run.immediate_exit.offset
RUN_EXIT_REASON = kvm_run.exit_reason.offset
RUN_READY_FOR_INTERRUPT_INJECTION = kvm_run.ready_for_interrupt_injection.offset
RUN_IF_FLAG = kvm_run.if_flag.offset
RUN_HW_EXIT_REASON = _off("hw", "hardware_exit_reason")
RUN_FAIL_ENTRY_REASON = _off("fail_entry", "hardware_entry_failure_reason")
RUN_FAIL_ENTRY_CPU = _off("fail_entry", "cpu")
RUN_EX_EXCEPTION = _off("ex", "exception")
RUN_EX_ERROR_CODE = _off("ex", "error_code")
RUN_IO_DIRECTION = _off("io", "direction")
RUN_IO_SIZE = _off("io", "size")
RUN_IO_PORT = _off("io", "port")
RUN_IO_COUNT = _off("io", "count")
RUN_IO_DATA_OFFSET = _off("io", "data_offset")
RUN_DEBUG_EXCEPTION = _off("debug", "exception")
RUN_DEBUG_PC = _off("debug", "pc")
RUN_DEBUG_DR6 = _off("debug", "dr6")
RUN_DEBUG_DR7 = _off("debug", "dr7")
RUN_MMIO_PHYS_ADDR = _off("mmio", "phys_addr")
RUN_MMIO_DATA = _off("mmio", "data")
RUN_MMIO_LEN = _off("mmio", "len")
RUN_MMIO_IS_WRITE = _off("mmio", "is_write")
RUN_INTERNAL_SUBERROR = _off("internal", "suberror")
RUN_INTERNAL_NDATA = _off("internal", "ndata")
RUN_INTERNAL_DATA = _off("internal", "data")
RUN_EMULATION_FAILURE_FLAGS = _off("emulation_failure", "flags")
RUN_EMULATION_FAILURE_INSN_SIZE = _off("emulation_failure", "insn_size")
RUN_EMULATION_FAILURE_INSN_BYTES = _off("emulation_failure", "insn_bytes")
RUN_SYSTEM_EVENT_TYPE = _off("system_event", "type")
RUN_SYSTEM_EVENT_NDATA = _off("system_event", "ndata")
RUN_SYSTEM_EVENT_DATA = _off("system_event", "data")
RUN_MSR_ERROR = _off("msr", "error")
RUN_MSR_REASON = _off("msr", "reason")
RUN_MSR_INDEX = _off("msr", "index")
RUN_MSR_DATA = _off("msr", "data")
RUN_KVM_VALID_REGS = kvm_run.kvm_valid_regs.offset
RUN_KVM_DIRTY_REGS = kvm_run.kvm_dirty_regs.offset
RUN_SYNC_REGS = kvm_run.s_regs.offset
RUN_SYNC_RIP = RUN_SYNC_REGS + kvm_regs.rip.offset
KVM_SYNC_X86_REGS = 1 << 0

# ---- ioctl numbers ------------------------------------------------------------------
# system (/dev/kvm)
KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_GET_MSR_INDEX_LIST = _iowr(0x02, kvm_msr_list)
KVM_CHECK_EXTENSION = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_GET_SUPPORTED_CPUID = _iowr(0x05, kvm_cpuid2)
# VM
KVM_CREATE_VCPU = _io(0x41)
KVM_SET_USER_MEMORY_REGION = _iow(0x46, kvm_userspace_memory_region)
KVM_SET_TSS_ADDR = _io(0x47)
KVM_ENABLE_CAP = _iow(0xA3, kvm_enable_cap)          # also a vCPU ioctl
KVM_X86_SET_MSR_FILTER = _iow(0xC6, kvm_msr_filter)
# vCPU
KVM_RUN = _io(0x80)
KVM_GET_REGS = _ior(0x81, kvm_regs)
KVM_SET_REGS = _iow(0x82, kvm_regs)
KVM_GET_SREGS = _ior(0x83, kvm_sregs)
KVM_SET_SREGS = _iow(0x84, kvm_sregs)
KVM_TRANSLATE = _iowr(0x85, kvm_translation)
KVM_INTERRUPT = _iow(0x86, kvm_interrupt)
KVM_GET_MSRS = _iowr(0x88, kvm_msrs)
KVM_SET_MSRS = _iow(0x89, kvm_msrs)
KVM_SET_CPUID2 = _iow(0x90, kvm_cpuid2)
KVM_GET_CPUID2 = _iowr(0x91, kvm_cpuid2)
KVM_GET_MP_STATE = _ior(0x98, kvm_mp_state)
KVM_SET_MP_STATE = _iow(0x99, kvm_mp_state)
KVM_NMI = _io(0x9A)
KVM_SET_GUEST_DEBUG = _iow(0x9B, kvm_guest_debug)
KVM_GET_VCPU_EVENTS = _ior(0x9F, kvm_vcpu_events)
KVM_SET_VCPU_EVENTS = _iow(0xA0, kvm_vcpu_events)
KVM_GET_DEBUGREGS = _ior(0xA1, kvm_debugregs)
KVM_SET_DEBUGREGS = _iow(0xA2, kvm_debugregs)
KVM_GET_XCRS = _ior(0xA6, kvm_xcrs)
KVM_SET_XCRS = _iow(0xA7, kvm_xcrs)

KVM_API_VERSION = 12

# ---- capabilities (KVM_CHECK_EXTENSION) -------------------------------------------
KVM_CAP_USER_MEMORY = 3
KVM_CAP_SET_TSS_ADDR = 4
KVM_CAP_EXT_CPUID = 7
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_MP_STATE = 14
KVM_CAP_VCPU_EVENTS = 41
KVM_CAP_DEBUGREGS = 50
KVM_CAP_XCRS = 56
KVM_CAP_SYNC_REGS = 74
KVM_CAP_READONLY_MEM = 81
KVM_CAP_IMMEDIATE_EXIT = 136
KVM_CAP_X86_USER_SPACE_MSR = 188
KVM_CAP_X86_MSR_FILTER = 189

KVM_MSR_EXIT_REASON_INVAL = 1 << 0
KVM_MSR_EXIT_REASON_UNKNOWN = 1 << 1
KVM_MSR_EXIT_REASON_FILTER = 1 << 2
MSR_EXIT_REASONS = {KVM_MSR_EXIT_REASON_INVAL: "invalid access",
                    KVM_MSR_EXIT_REASON_UNKNOWN: "MSR unknown to KVM",
                    KVM_MSR_EXIT_REASON_FILTER: "MSR filter"}

# ---- exit reasons (kvm_run->exit_reason) -----------------------------------------
EXIT_NAMES = {
    0: "KVM_EXIT_UNKNOWN", 1: "KVM_EXIT_EXCEPTION", 2: "KVM_EXIT_IO", 3: "KVM_EXIT_HYPERCALL",
    4: "KVM_EXIT_DEBUG", 5: "KVM_EXIT_HLT", 6: "KVM_EXIT_MMIO", 7: "KVM_EXIT_IRQ_WINDOW_OPEN",
    8: "KVM_EXIT_SHUTDOWN", 9: "KVM_EXIT_FAIL_ENTRY", 10: "KVM_EXIT_INTR", 11: "KVM_EXIT_SET_TPR",
    12: "KVM_EXIT_TPR_ACCESS", 13: "KVM_EXIT_S390_SIEIC", 14: "KVM_EXIT_S390_RESET",
    15: "KVM_EXIT_DCR", 16: "KVM_EXIT_NMI", 17: "KVM_EXIT_INTERNAL_ERROR", 18: "KVM_EXIT_OSI",
    19: "KVM_EXIT_PAPR_HCALL", 20: "KVM_EXIT_S390_UCONTROL", 21: "KVM_EXIT_WATCHDOG",
    22: "KVM_EXIT_S390_TSCH", 23: "KVM_EXIT_EPR", 24: "KVM_EXIT_SYSTEM_EVENT",
    25: "KVM_EXIT_S390_STSI", 26: "KVM_EXIT_IOAPIC_EOI", 27: "KVM_EXIT_HYPERV",
    28: "KVM_EXIT_ARM_NISV", 29: "KVM_EXIT_X86_RDMSR", 30: "KVM_EXIT_X86_WRMSR",
    31: "KVM_EXIT_DIRTY_RING_FULL", 32: "KVM_EXIT_AP_RESET_HOLD", 33: "KVM_EXIT_X86_BUS_LOCK",
    34: "KVM_EXIT_XEN", 35: "KVM_EXIT_RISCV_SBI", 36: "KVM_EXIT_RISCV_CSR", 37: "KVM_EXIT_NOTIFY",
    38: "KVM_EXIT_LOONGARCH_IOCSR", 39: "KVM_EXIT_MEMORY_FAULT", 40: "KVM_EXIT_TDX",
}
KVM_EXIT_UNKNOWN, KVM_EXIT_EXCEPTION, KVM_EXIT_IO, KVM_EXIT_HYPERCALL = 0, 1, 2, 3
KVM_EXIT_DEBUG, KVM_EXIT_HLT, KVM_EXIT_MMIO, KVM_EXIT_IRQ_WINDOW_OPEN = 4, 5, 6, 7
KVM_EXIT_SHUTDOWN, KVM_EXIT_FAIL_ENTRY, KVM_EXIT_INTR = 8, 9, 10
KVM_EXIT_INTERNAL_ERROR, KVM_EXIT_SYSTEM_EVENT = 17, 24
KVM_EXIT_X86_RDMSR, KVM_EXIT_X86_WRMSR = 29, 30
KVM_EXIT_IO_IN, KVM_EXIT_IO_OUT = 0, 1

INTERNAL_ERRORS = {1: "KVM_INTERNAL_ERROR_EMULATION (instruction emulation failed)",
                   2: "KVM_INTERNAL_ERROR_SIMUL_EX (exception while delivering an exception)",
                   3: "KVM_INTERNAL_ERROR_DELIVERY_EV (exit while delivering an event)",
                   4: "KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON"}
KVM_INTERNAL_ERROR_EMULATION = 1
KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES = 1 << 0
SYSTEM_EVENTS = {1: "SHUTDOWN", 2: "RESET", 3: "CRASH", 4: "WAKEUP", 5: "SUSPEND", 6: "SEV_TERM"}

# Where KVM_SET_TSS_ADDR puts the three pages VMX needs for real mode without
# unrestricted guest (the address QEMU uses): keep guest memory away from it.
TSS_ADDR = 0xFFFBD000

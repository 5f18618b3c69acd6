"""kvm/abi.py against the kernel ABI.

Two sources: the values measured with layout.c on these machines and recorded in
../shared/notes/kvm.md (literals below, so the test runs anywhere), and -- where a C
compiler and <linux/kvm.h> are present -- every value abi.py mirrors, recompiled
from the headers (abi_layout.c).  No /dev/kvm needed.
"""
import ctypes as C
import os
import shutil
import subprocess

import pytest

from vmxlab.kvm import abi

# ioctl numbers from notes/kvm.md ("ioctl numbers and layouts (checked against linux/kvm.h
# with layout.c)"), plus those measured the same way for this backend (KVM_GET/SET_XCRS,
# KVM_GET/SET_VCPU_EVENTS, KVM_GET/SET_MP_STATE, KVM_NMI, KVM_TRANSLATE, KVM_SET_TSS_ADDR).
IOCTLS = {
    "KVM_CREATE_VM": 0xAE01, "KVM_CHECK_EXTENSION": 0xAE03, "KVM_GET_VCPU_MMAP_SIZE": 0xAE04,
    "KVM_CREATE_VCPU": 0xAE41, "KVM_SET_USER_MEMORY_REGION": 0x4020AE46, "KVM_RUN": 0xAE80,
    "KVM_GET_REGS": 0x8090AE81, "KVM_SET_REGS": 0x4090AE82,
    "KVM_GET_SREGS": 0x8138AE83, "KVM_SET_SREGS": 0x4138AE84,
    "KVM_GET_MSRS": 0xC008AE88, "KVM_SET_MSRS": 0x4008AE89,
    "KVM_GET_SUPPORTED_CPUID": 0xC008AE05, "KVM_SET_CPUID2": 0x4008AE90, "KVM_GET_CPUID2": 0xC008AE91,
    "KVM_SET_GUEST_DEBUG": 0x4048AE9B, "KVM_GET_DEBUGREGS": 0x8080AEA1, "KVM_SET_DEBUGREGS": 0x4080AEA2,
    "KVM_ENABLE_CAP": 0x4068AEA3, "KVM_X86_SET_MSR_FILTER": 0x4188AEC6,
    "KVM_GET_MSR_INDEX_LIST": 0xC004AE02, "KVM_INTERRUPT": 0x4004AE86,
    "KVM_GET_XCRS": 0x8188AEA6, "KVM_SET_XCRS": 0x4188AEA7,
    "KVM_GET_VCPU_EVENTS": 0x8040AE9F, "KVM_SET_VCPU_EVENTS": 0x4040AEA0,
    "KVM_GET_MP_STATE": 0x8004AE98, "KVM_SET_MP_STATE": 0x4004AE99, "KVM_NMI": 0xAE9A,
    "KVM_TRANSLATE": 0xC018AE85, "KVM_SET_TSS_ADDR": 0xAE47, "KVM_GET_API_VERSION": 0xAE00,
}

SIZES = {
    "kvm_regs": 144, "kvm_sregs": 312, "kvm_segment": 24, "kvm_dtable": 16,
    "kvm_guest_debug": 72, "kvm_enable_cap": 104, "kvm_msr_filter": 392, "kvm_debugregs": 128,
    "kvm_xcrs": 392, "kvm_vcpu_events": 64, "kvm_translation": 24, "kvm_userspace_memory_region": 32,
    "kvm_cpuid_entry2": 40, "kvm_msr_entry": 16,
}

RUN_OFFSETS = {   # struct kvm_run, notes/kvm.md
    "RUN_EXIT_REASON": 8, "RUN_IO_DIRECTION": 32, "RUN_IO_SIZE": 33, "RUN_IO_PORT": 34,
    "RUN_IO_COUNT": 36, "RUN_IO_DATA_OFFSET": 40, "RUN_MMIO_PHYS_ADDR": 32, "RUN_MMIO_DATA": 40,
    "RUN_MMIO_LEN": 48, "RUN_MMIO_IS_WRITE": 52, "RUN_DEBUG_EXCEPTION": 32, "RUN_DEBUG_PC": 40,
    "RUN_DEBUG_DR6": 48, "RUN_DEBUG_DR7": 56, "RUN_INTERNAL_SUBERROR": 32, "RUN_INTERNAL_NDATA": 36,
    "RUN_INTERNAL_DATA": 40, "RUN_FAIL_ENTRY_REASON": 32, "RUN_MSR_ERROR": 32, "RUN_MSR_REASON": 40,
    "RUN_MSR_INDEX": 44, "RUN_MSR_DATA": 48, "RUN_KVM_VALID_REGS": 288, "RUN_SYNC_REGS": 304,
    # measured for this backend with abi_layout.c
    "RUN_REQUEST_INTERRUPT_WINDOW": 0, "RUN_IMMEDIATE_EXIT": 1, "RUN_READY_FOR_INTERRUPT_INJECTION": 12,
    "RUN_IF_FLAG": 13, "RUN_KVM_DIRTY_REGS": 296, "RUN_SYNC_RIP": 432,
    "RUN_EMULATION_FAILURE_FLAGS": 40, "RUN_EMULATION_FAILURE_INSN_SIZE": 48,
    "RUN_EMULATION_FAILURE_INSN_BYTES": 49,
}


@pytest.mark.parametrize("name,value", sorted(IOCTLS.items()))
def test_ioctl_numbers(name, value):
    assert getattr(abi, name) == value, f"{name} = {getattr(abi, name):#x}, kernel {value:#x}"


@pytest.mark.parametrize("name,size", sorted(SIZES.items()))
def test_struct_sizes(name, size):
    assert C.sizeof(getattr(abi, name)) == size


@pytest.mark.parametrize("name,offset", sorted(RUN_OFFSETS.items()))
def test_kvm_run_offsets(name, offset):
    assert getattr(abi, name) == offset


def test_sregs_and_segment_offsets():
    # notes/kvm.md: gdt at 192, cr0 at 224, efer at 264, interrupt_bitmap at 280;
    # kvm_segment: base u64, limit u32, selector u16, then the attribute bytes.
    assert abi.kvm_sregs.gdt.offset == 192
    assert abi.kvm_sregs.cr0.offset == 224
    assert abi.kvm_sregs.efer.offset == 264
    assert abi.kvm_sregs.interrupt_bitmap.offset == 280
    assert (abi.kvm_segment.limit.offset, abi.kvm_segment.selector.offset) == (8, 12)
    assert (abi.kvm_segment.type.offset, abi.kvm_segment.unusable.offset) == (14, 22)
    assert [n for n, _ in abi.kvm_regs._fields_] == \
        "rax rbx rcx rdx rsi rdi rsp rbp r8 r9 r10 r11 r12 r13 r14 r15 rip rflags".split()


def _header_values():
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or not os.path.exists("/usr/include/linux/kvm.h"):
        pytest.skip("no C compiler or no <linux/kvm.h>: checked against the recorded values only")
    src = os.path.join(os.path.dirname(__file__), "abi_layout.c")
    exe = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"vmxlab_abi_layout_{os.getpid()}")
    try:
        subprocess.run([cc, "-o", exe, src], check=True, capture_output=True)
        out = subprocess.run([exe], check=True, capture_output=True, text=True).stdout
    finally:
        if os.path.exists(exe):
            os.unlink(exe)
    return {name: int(value) for name, value in (line.split() for line in out.splitlines())}


def test_against_the_kernel_headers():
    values = _header_values()
    nested = {"kvm_sregs.gdt": abi.kvm_sregs.gdt.offset, "kvm_sregs.idt": abi.kvm_sregs.idt.offset,
              "kvm_sregs.cr0": abi.kvm_sregs.cr0.offset, "kvm_sregs.efer": abi.kvm_sregs.efer.offset,
              "kvm_sregs.interrupt_bitmap": abi.kvm_sregs.interrupt_bitmap.offset,
              "kvm_segment.limit": abi.kvm_segment.limit.offset,
              "kvm_segment.selector": abi.kvm_segment.selector.offset,
              "kvm_segment.type": abi.kvm_segment.type.offset,
              "kvm_segment.unusable": abi.kvm_segment.unusable.offset,
              "kvm_vcpu_events.interrupt": abi.kvm_vcpu_events.interrupt.offset,
              "kvm_vcpu_events.nmi": abi.kvm_vcpu_events.nmi.offset,
              "kvm_vcpu_events.flags": abi.kvm_vcpu_events.flags.offset,
              "kvm_vcpu_events.exception_payload": abi.kvm_vcpu_events.exception_payload.offset}
    wrong = []
    for name, value in values.items():
        if name.startswith("sizeof_"):
            ours = C.sizeof(getattr(abi, name[len("sizeof_"):]))
        elif name in nested:
            ours = nested[name]
        else:
            ours = getattr(abi, name)
        if ours != value:
            wrong.append(f"{name}: abi.py {ours:#x}, kernel {value:#x}")
    assert not wrong, wrong
    assert len(values) > 140


def test_filter_and_cap_constants():
    assert abi.KVM_MSR_FILTER_MAX_RANGES == 16 and abi.KVM_MSR_FILTER_MAX_BITMAP_SIZE == 0x600
    assert abi.KVM_EXIT_IO == 2 and abi.KVM_EXIT_MMIO == 6 and abi.KVM_EXIT_SHUTDOWN == 8
    assert abi.KVM_EXIT_INTERNAL_ERROR == 17 and abi.KVM_EXIT_X86_RDMSR == 29 and abi.KVM_EXIT_X86_WRMSR == 30

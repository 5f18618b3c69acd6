/* Prints the KVM ABI facts that src/vmxlab/kvm/abi.py mirrors, from the kernel's
 * own headers (<linux/kvm.h>, <asm/kvm.h>): "name value" lines.
 * tests/kvm/test_abi.py compiles and runs it when a C compiler and the headers
 * are present. */
#include <stdio.h>
#include <stddef.h>
#include <linux/kvm.h>
#define V(x) printf("%s %lu\n", #x, (unsigned long)(x))
#define S(t) printf("sizeof_%s %zu\n", #t, sizeof(struct t))
#define O(t, f, name) printf("%s %zu\n", name, offsetof(struct t, f))
int main(void) {
    V(KVM_GET_API_VERSION); V(KVM_CREATE_VM); V(KVM_GET_MSR_INDEX_LIST); V(KVM_CHECK_EXTENSION);
    V(KVM_GET_VCPU_MMAP_SIZE); V(KVM_GET_SUPPORTED_CPUID); V(KVM_CREATE_VCPU);
    V(KVM_SET_USER_MEMORY_REGION); V(KVM_SET_TSS_ADDR); V(KVM_ENABLE_CAP); V(KVM_X86_SET_MSR_FILTER);
    V(KVM_RUN); V(KVM_GET_REGS); V(KVM_SET_REGS); V(KVM_GET_SREGS); V(KVM_SET_SREGS); V(KVM_TRANSLATE);
    V(KVM_INTERRUPT); V(KVM_GET_MSRS); V(KVM_SET_MSRS); V(KVM_SET_CPUID2); V(KVM_GET_CPUID2);
    V(KVM_GET_MP_STATE); V(KVM_SET_MP_STATE); V(KVM_NMI); V(KVM_SET_GUEST_DEBUG);
    V(KVM_GET_VCPU_EVENTS); V(KVM_SET_VCPU_EVENTS); V(KVM_GET_DEBUGREGS); V(KVM_SET_DEBUGREGS);
    V(KVM_GET_XCRS); V(KVM_SET_XCRS); V(KVM_API_VERSION);
    V(KVM_CAP_USER_MEMORY); V(KVM_CAP_SET_TSS_ADDR); V(KVM_CAP_EXT_CPUID); V(KVM_CAP_NR_MEMSLOTS);
    V(KVM_CAP_MP_STATE); V(KVM_CAP_VCPU_EVENTS); V(KVM_CAP_DEBUGREGS); V(KVM_CAP_XCRS);
    V(KVM_CAP_SYNC_REGS); V(KVM_CAP_READONLY_MEM); V(KVM_CAP_IMMEDIATE_EXIT);
    V(KVM_CAP_X86_USER_SPACE_MSR); V(KVM_CAP_X86_MSR_FILTER);
    V(KVM_EXIT_IO); V(KVM_EXIT_HLT); V(KVM_EXIT_MMIO); V(KVM_EXIT_IRQ_WINDOW_OPEN); V(KVM_EXIT_SHUTDOWN);
    V(KVM_EXIT_FAIL_ENTRY); V(KVM_EXIT_INTR); V(KVM_EXIT_INTERNAL_ERROR); V(KVM_EXIT_SYSTEM_EVENT);
    V(KVM_EXIT_X86_RDMSR); V(KVM_EXIT_X86_WRMSR); V(KVM_EXIT_IO_IN); V(KVM_EXIT_IO_OUT);
    V(KVM_MEM_READONLY); V(KVM_MSR_EXIT_REASON_INVAL); V(KVM_MSR_EXIT_REASON_UNKNOWN);
    V(KVM_MSR_EXIT_REASON_FILTER); V(KVM_MSR_FILTER_MAX_RANGES); V(KVM_MSR_FILTER_MAX_BITMAP_SIZE);
    V(KVM_MSR_FILTER_READ); V(KVM_MSR_FILTER_WRITE); V(KVM_SYNC_X86_REGS);
    V(KVM_VCPUEVENT_VALID_SHADOW); V(KVM_X86_SHADOW_INT_MOV_SS); V(KVM_X86_SHADOW_INT_STI);
    V(KVM_MP_STATE_RUNNABLE); V(KVM_MP_STATE_HALTED); V(KVM_INTERNAL_ERROR_EMULATION);
    V(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES);
    S(kvm_regs); S(kvm_sregs); S(kvm_segment); S(kvm_dtable); S(kvm_userspace_memory_region);
    S(kvm_cpuid_entry2); S(kvm_cpuid2); S(kvm_msr_entry); S(kvm_msrs); S(kvm_msr_list);
    S(kvm_debugregs); S(kvm_xcrs); S(kvm_vcpu_events); S(kvm_mp_state); S(kvm_interrupt);
    S(kvm_translation); S(kvm_guest_debug); S(kvm_enable_cap); S(kvm_msr_filter_range);
    S(kvm_msr_filter);
    O(kvm_sregs, gdt, "kvm_sregs.gdt"); O(kvm_sregs, idt, "kvm_sregs.idt"); O(kvm_sregs, cr0, "kvm_sregs.cr0");
    O(kvm_sregs, efer, "kvm_sregs.efer"); O(kvm_sregs, interrupt_bitmap, "kvm_sregs.interrupt_bitmap");
    O(kvm_segment, limit, "kvm_segment.limit"); O(kvm_segment, selector, "kvm_segment.selector");
    O(kvm_segment, type, "kvm_segment.type"); O(kvm_segment, unusable, "kvm_segment.unusable");
    O(kvm_vcpu_events, interrupt, "kvm_vcpu_events.interrupt"); O(kvm_vcpu_events, nmi, "kvm_vcpu_events.nmi");
    O(kvm_vcpu_events, flags, "kvm_vcpu_events.flags");
    O(kvm_vcpu_events, exception_payload, "kvm_vcpu_events.exception_payload");
    O(kvm_run, request_interrupt_window, "RUN_REQUEST_INTERRUPT_WINDOW");
    O(kvm_run, immediate_exit, "RUN_IMMEDIATE_EXIT"); O(kvm_run, exit_reason, "RUN_EXIT_REASON");
    O(kvm_run, ready_for_interrupt_injection, "RUN_READY_FOR_INTERRUPT_INJECTION");
    O(kvm_run, if_flag, "RUN_IF_FLAG"); O(kvm_run, hw.hardware_exit_reason, "RUN_HW_EXIT_REASON");
    O(kvm_run, fail_entry.hardware_entry_failure_reason, "RUN_FAIL_ENTRY_REASON");
    O(kvm_run, fail_entry.cpu, "RUN_FAIL_ENTRY_CPU");
    O(kvm_run, io.direction, "RUN_IO_DIRECTION"); O(kvm_run, io.size, "RUN_IO_SIZE");
    O(kvm_run, io.port, "RUN_IO_PORT"); O(kvm_run, io.count, "RUN_IO_COUNT");
    O(kvm_run, io.data_offset, "RUN_IO_DATA_OFFSET");
    O(kvm_run, debug.arch.exception, "RUN_DEBUG_EXCEPTION"); O(kvm_run, debug.arch.pc, "RUN_DEBUG_PC");
    O(kvm_run, debug.arch.dr6, "RUN_DEBUG_DR6"); O(kvm_run, debug.arch.dr7, "RUN_DEBUG_DR7");
    O(kvm_run, mmio.phys_addr, "RUN_MMIO_PHYS_ADDR"); O(kvm_run, mmio.data, "RUN_MMIO_DATA");
    O(kvm_run, mmio.len, "RUN_MMIO_LEN"); O(kvm_run, mmio.is_write, "RUN_MMIO_IS_WRITE");
    O(kvm_run, internal.suberror, "RUN_INTERNAL_SUBERROR"); O(kvm_run, internal.ndata, "RUN_INTERNAL_NDATA");
    O(kvm_run, internal.data, "RUN_INTERNAL_DATA");
    O(kvm_run, emulation_failure.flags, "RUN_EMULATION_FAILURE_FLAGS");
    O(kvm_run, emulation_failure.insn_size, "RUN_EMULATION_FAILURE_INSN_SIZE");
    O(kvm_run, emulation_failure.insn_bytes, "RUN_EMULATION_FAILURE_INSN_BYTES");
    O(kvm_run, system_event.type, "RUN_SYSTEM_EVENT_TYPE"); O(kvm_run, system_event.ndata, "RUN_SYSTEM_EVENT_NDATA");
    O(kvm_run, system_event.data, "RUN_SYSTEM_EVENT_DATA");
    O(kvm_run, msr.error, "RUN_MSR_ERROR"); O(kvm_run, msr.reason, "RUN_MSR_REASON");
    O(kvm_run, msr.index, "RUN_MSR_INDEX"); O(kvm_run, msr.data, "RUN_MSR_DATA");
    O(kvm_run, kvm_valid_regs, "RUN_KVM_VALID_REGS"); O(kvm_run, kvm_dirty_regs, "RUN_KVM_DIRTY_REGS");
    O(kvm_run, s.regs, "RUN_SYNC_REGS"); O(kvm_run, s.regs.regs.rip, "RUN_SYNC_RIP");
    return 0;
}

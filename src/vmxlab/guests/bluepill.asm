# The blue-pill scene for the built-in kernel (kernel.asm): a driver stub, where the
# Python hypervisor (hypervisor/) takes over the running kernel, and the workload
# the kernel then runs -- virtualized -- to see the hypervisor and make it leave.
#
# bp_driver -- the kernel calls it ([driver_ptr], rdi = services).  At
#   bp_load_driver the hypervisor is "loaded": execution stops there (a breakpoint
#   the host sets) and the hypervisor virtualizes the processor with GUEST_RIP =
#   bp_resume, the instruction after the load point, and GUEST_RSP = the RSP there.
# bp_workload -- the kernel calls it ([workload_ptr], rdi = services).  It prints
#   what it finds: CPUID.1:ECX[31] and leaf 40000000H (the hypervisor's
#   signature), RDTSCP, WRMSR/RDMSR of IA32_SYSENTER_CS, RDMSR of an MSR the
#   processor does not have (the hypervisor injects #GP: a handler here skips the
#   instruction), XSETBV, the "ping" hypercall, then "unload", and CPUID again.
#
# Hypercalls: VMCALL with RAX = 0x564d5801 ("ping": the hypervisor returns
# 0x706f6e67 "pong" in RAX) or 0x564d5802 ("unload": the hypervisor leaves).
# Results (bp_results, byte offsets): 0 hypervisor bit before (qword), 8 the leaf
# 40000000H signature EBX, ECX, EDX (12 bytes + NUL), 24 RDTSCP ECX (TSC_AUX),
# 32 SYSENTER_CS read back, 40 #GP count, 48 ping reply, 56 unload reply,
# 64 hypervisor bit after, 72 XCR0 read back.

.code64
bp_driver:
    push rbx
bp_load_driver:                          # "load driver" point: the hypervisor takes over here
    nop
bp_resume:                               # GUEST_RIP: the kernel continues here, virtualized
    pop rbx
    xor eax, eax
    ret

bp_workload:
    push rbx
    push r12
    push r13
    mov r12, rdi                         # services: putc, puts, print_hex
    lea r13, [bp_results]
    lea rsi, [bp_msg_start]
    call qword ptr [r12 + 8]

    mov eax, 1                           # CPUID.1:ECX bit 31: a hypervisor is present
    cpuid
    shr ecx, 31
    mov qword ptr [r13], rcx
    mov eax, 0x40000000                  # the hypervisor's leaf: its signature
    cpuid
    mov dword ptr [r13 + 8], ebx
    mov dword ptr [r13 + 12], ecx
    mov dword ptr [r13 + 16], edx
    lea rsi, [bp_msg_sig]
    call qword ptr [r12 + 8]
    lea rsi, [bp_results + 8]
    call qword ptr [r12 + 8]
    lea rsi, [bp_msg_nl]
    call qword ptr [r12 + 8]

    mov eax, 0x80000001                  # RDTSCP, where CPUID.80000001H:EDX[27] reports it
    cpuid
    bt edx, 27
    jnc bp_no_rdtscp
    mov ecx, 0xc0000103                  # ECX = IA32_TSC_AUX
    mov eax, 0x2a
    xor edx, edx
    wrmsr
    rdtscp
    mov qword ptr [r13 + 24], rcx
bp_no_rdtscp:

    mov ecx, 0x174                       # WRMSR / RDMSR of IA32_SYSENTER_CS
    mov eax, 0x10
    xor edx, edx
    wrmsr
    xor eax, eax
    rdmsr
    mov qword ptr [r13 + 32], rax

    lea rax, [bp_gp_handler]             # our own #GP handler (IDT entry 13) for the next step
    sidt [bp_idtr]
    mov rdi, qword ptr [bp_idtr + 2]
    add rdi, 13 * 16
    mov word ptr [rdi], ax
    shr rax, 16
    mov word ptr [rdi + 6], ax
    shr rax, 16
    mov dword ptr [rdi + 8], eax
    mov ecx, 0x4b564d00                  # an MSR this processor does not have: #GP
    rdmsr

    mov eax, 1                           # XSETBV where CPUID.1:ECX[26] reports XSAVE:
    cpuid
    bt ecx, 26
    jnc bp_no_xsave
    mov rax, cr4                         # CR4.OSXSAVE, then XCR0 = x87 | SSE
    or rax, 0x40000
    mov cr4, rax
    xor ecx, ecx
    mov eax, 3
    xor edx, edx
    xsetbv
    xor ecx, ecx
    xgetbv
    mov qword ptr [r13 + 72], rax
bp_no_xsave:

    mov eax, 0x564d5801                  # hypercall "ping"
    vmcall
    mov qword ptr [r13 + 48], rax
    lea rsi, [bp_msg_unload]
    call qword ptr [r12 + 8]
    mov eax, 0x564d5802                  # hypercall "unload"
    vmcall
    mov qword ptr [r13 + 56], rax

    mov eax, 1                           # after unload: no hypervisor
    cpuid
    shr ecx, 31
    mov qword ptr [r13 + 64], rcx
    test ecx, ecx
    jnz bp_still_there
    lea rsi, [bp_msg_gone]
    call qword ptr [r12 + 8]
    jmp bp_done
bp_still_there:
    lea rsi, [bp_msg_still]
    call qword ptr [r12 + 8]
bp_done:
    pop r13
    pop r12
    pop rbx
    ret

bp_gp_handler:                           # #GP from RDMSR: count it, skip the 2-byte instruction
    lea rax, [bp_results]
    inc qword ptr [rax + 40]
    add qword ptr [rsp + 8], 2           # [rsp] = error code, [rsp + 8] = RIP
    add rsp, 8
    iretq

.balign 4096                             # data on its own page (code pages stay unwritten)
bp_idtr:
    .zero 16
bp_results:
    .zero 12 * 8
bp_msg_start:
    .asciz "workload: running\n"
bp_msg_sig:
    .asciz "workload: hypervisor signature "
bp_msg_nl:
    .asciz "\n"
bp_msg_unload:
    .asciz "workload: asking the hypervisor to unload\n"
bp_msg_gone:
    .asciz "workload: CPUID shows no hypervisor: back on the bare processor\n"
bp_msg_still:
    .asciz "workload: a hypervisor is still present\n"

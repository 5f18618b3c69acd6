# A small hypervisor in machine code, loaded as the built-in kernel's driver
# (kernel.asm calls [driver_ptr] with rdi = services).
#
# It does what the seed's hypervisor does, in machine code: enables VMX (CR4.VMXE,
# IA32_FEATURE_CONTROL), VMXON, VMCLEAR, VMPTRLD, fills the VMCS (host state from the
# live processor: MOV from CRn, SGDT, SIDT, STR, segment registers, RDMSR; controls
# adjusted through the capability MSRs, TRUE ones only when IA32_VMX_BASIC bit 55 says
# so), and launches a guest (hv_guest, its own stack) that runs CPUID, RDMSR, an OUT
# and VMCALL.  The exit handler (vmexit) saves the guest's general registers, handles
# CPUID (executes it for the guest), RDMSR (reads the MSR for the guest), I/O (performs
# the OUT for the guest) and VMCALL (leaves: VMXOFF and return to the kernel), advances
# GUEST_RIP by the exit instruction length and VMRESUMEs.
#
# Set hv_iterations (a qword) to make the guest run CPUID that many more times.
# Results for the caller: hv_exit_counts (64 qwords, by basic exit reason),
# hv_vendor (CPUID.0 EBX, EDX, ECX as the guest saw them), hv_sysenter_cs (RDMSR 174H
# in the guest), hv_status (0 = the guest ran to its VMCALL; else 1 VMXON failed,
# 2 VMCLEAR, 3 VMPTRLD, 4 VMLAUNCH failed (hv_error = VM-instruction error, 0xffff for
# VMfailInvalid), 5 VMRESUME failed, 6 an unexpected exit (hv_error = exit reason)).

VIRTUAL_PROCESSOR_ID = 0x0000
VMCS_LINK_POINTER = 0x2800
GUEST_IA32_DEBUGCTL = 0x2802
PIN_BASED = 0x4000
CPU_BASED = 0x4002
EXCEPTION_BITMAP = 0x4004
EXIT_CONTROLS = 0x400c
ENTRY_CONTROLS = 0x4012
SECONDARY = 0x401e
VM_INSTRUCTION_ERROR = 0x4400
EXIT_REASON = 0x4402
EXIT_INSTRUCTION_LEN = 0x440c
GUEST_INTERRUPTIBILITY = 0x4824
GUEST_ACTIVITY = 0x4826
GUEST_SYSENTER_CS = 0x482a
EXIT_QUALIFICATION = 0x6400
GUEST_CR0 = 0x6800
GUEST_CR3 = 0x6802
GUEST_CR4 = 0x6804
GUEST_GDTR_BASE = 0x6816
GUEST_IDTR_BASE = 0x6818
GUEST_DR7 = 0x681a
GUEST_RSP = 0x681c
GUEST_RIP = 0x681e
GUEST_RFLAGS = 0x6820
GUEST_PENDING_DBG = 0x6822
GUEST_SYSENTER_ESP = 0x6824
GUEST_SYSENTER_EIP = 0x6826
GUEST_GDTR_LIMIT = 0x4810
GUEST_IDTR_LIMIT = 0x4812
HOST_CR0 = 0x6c00
HOST_CR3 = 0x6c02
HOST_CR4 = 0x6c04
HOST_FS_BASE = 0x6c06
HOST_GS_BASE = 0x6c08
HOST_TR_BASE = 0x6c0a
HOST_GDTR_BASE = 0x6c0c
HOST_IDTR_BASE = 0x6c0e
HOST_SYSENTER_ESP = 0x6c10
HOST_SYSENTER_EIP = 0x6c12
HOST_RSP = 0x6c14
HOST_RIP = 0x6c16
HOST_SYSENTER_CS = 0x4c00

.code64
hv_driver:
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    mov qword ptr [hv_driver_rsp], rsp
    mov qword ptr [hv_status], 0

    mov ecx, 0x486                      # CR0 and CR4 as VMX operation needs them:
    call fixed_bits                     # (CRn | FIXED0) & FIXED1 (this sets CR0.NE, CR4.VMXE)
    mov rdx, cr0
    or rdx, rax
    and rdx, rbx
    mov cr0, rdx
    mov ecx, 0x488
    call fixed_bits
    mov rdx, cr4
    or rdx, rax
    and rdx, rbx
    mov cr4, rdx
    mov ecx, 0x3a                       # IA32_FEATURE_CONTROL: lock with VMX outside SMX
    rdmsr
    test eax, 1
    jnz fc_locked
    or eax, 5
    wrmsr
fc_locked:
    mov ecx, 0x480                      # IA32_VMX_BASIC: revision identifier, TRUE MSRs (bit 55)
    rdmsr
    and eax, 0x7fffffff
    mov dword ptr [hv_vmxon_region], eax
    mov dword ptr [hv_vmcs], eax
    bt edx, 23
    setc byte ptr [hv_true_ctls]

    lea rax, [hv_vmxon_ptr]
    vmxon qword ptr [rax]
    mov r12, 1
    jbe hv_fail                         # CF (VMfailInvalid) or ZF (VMfailValid)
    lea rax, [hv_vmcs_ptr]
    vmclear qword ptr [rax]
    mov r12, 2
    jbe hv_fail
    lea rax, [hv_vmcs_ptr]
    vmptrld qword ptr [rax]
    mov r12, 3
    jbe hv_fail

    # ---- host state: the live processor ----
    mov rbx, HOST_CR0
    mov rax, cr0
    vmwrite rbx, rax
    mov rbx, GUEST_CR0
    vmwrite rbx, rax
    mov rbx, HOST_CR3
    mov rax, cr3
    vmwrite rbx, rax
    mov rbx, GUEST_CR3
    vmwrite rbx, rax
    mov rbx, HOST_CR4
    mov rax, cr4
    vmwrite rbx, rax
    mov rbx, GUEST_CR4
    vmwrite rbx, rax

    mov ax, es                          # host selectors: RPL and TI cleared (& ~7)
    mov ebx, 0x0c00
    call host_sel
    mov ax, cs
    mov ebx, 0x0c02
    call host_sel
    mov ax, ss
    mov ebx, 0x0c04
    call host_sel
    mov ax, ds
    mov ebx, 0x0c06
    call host_sel
    mov ax, fs
    mov ebx, 0x0c08
    call host_sel
    mov ax, gs
    mov ebx, 0x0c0a
    call host_sel
    str ax
    mov ebx, 0x0c0c
    call host_sel

    sgdt [hv_gdtr]
    sidt [hv_idtr]
    mov rax, qword ptr [hv_gdtr + 2]
    mov rbx, HOST_GDTR_BASE
    vmwrite rbx, rax
    mov rbx, GUEST_GDTR_BASE
    vmwrite rbx, rax
    movzx eax, word ptr [hv_gdtr]
    mov rbx, GUEST_GDTR_LIMIT
    vmwrite rbx, rax
    mov rax, qword ptr [hv_idtr + 2]
    mov rbx, HOST_IDTR_BASE
    vmwrite rbx, rax
    mov rbx, GUEST_IDTR_BASE
    vmwrite rbx, rax
    movzx eax, word ptr [hv_idtr]
    mov rbx, GUEST_IDTR_LIMIT
    vmwrite rbx, rax

    str ax                              # TR base from the TSS descriptor (16 bytes)
    movzx edi, ax
    call desc_base
    mov rbx, HOST_TR_BASE
    vmwrite rbx, rax

    mov ecx, 0xc0000100                 # FS and GS bases from their MSRs
    rdmsr
    shl rdx, 32
    or rax, rdx
    mov rbx, HOST_FS_BASE
    vmwrite rbx, rax
    mov ecx, 0xc0000101
    rdmsr
    shl rdx, 32
    or rax, rdx
    mov rbx, HOST_GS_BASE
    vmwrite rbx, rax
    mov ecx, 0x174                      # SYSENTER MSRs, host and guest
    rdmsr
    mov rbx, HOST_SYSENTER_CS
    vmwrite rbx, rax
    mov rbx, GUEST_SYSENTER_CS
    vmwrite rbx, rax
    mov ecx, 0x175
    rdmsr
    shl rdx, 32
    or rax, rdx
    mov rbx, HOST_SYSENTER_ESP
    vmwrite rbx, rax
    mov rbx, GUEST_SYSENTER_ESP
    vmwrite rbx, rax
    mov ecx, 0x176
    rdmsr
    shl rdx, 32
    or rax, rdx
    mov rbx, HOST_SYSENTER_EIP
    vmwrite rbx, rax
    mov rbx, GUEST_SYSENTER_EIP
    vmwrite rbx, rax

    lea rax, [hv_stack_top]
    mov rbx, HOST_RSP
    vmwrite rbx, rax
    lea rax, [vmexit]
    mov rbx, HOST_RIP
    vmwrite rbx, rax

    # ---- guest state: the same processor, its own code and stack ----
    xor edi, edi
    mov ax, es
    call guest_seg
    mov edi, 1
    mov ax, cs
    call guest_seg
    mov edi, 2
    mov ax, ss
    call guest_seg
    mov edi, 3
    mov ax, ds
    call guest_seg
    mov edi, 4
    mov ax, fs
    call guest_seg
    mov edi, 5
    mov ax, gs
    call guest_seg
    mov edi, 6
    sldt ax
    call guest_seg
    mov edi, 7
    str ax
    call guest_seg
    mov ecx, 0xc0000100                 # guest FS/GS bases (guest_seg wrote 0 for flat ones)
    rdmsr
    shl rdx, 32
    or rax, rdx
    mov rbx, 0x680e
    vmwrite rbx, rax
    mov ecx, 0xc0000101
    rdmsr
    shl rdx, 32
    or rax, rdx
    mov rbx, 0x6810
    vmwrite rbx, rax

    mov rbx, GUEST_DR7
    mov eax, 0x400
    vmwrite rbx, rax
    mov rbx, GUEST_IA32_DEBUGCTL
    xor eax, eax
    vmwrite rbx, rax
    mov rbx, GUEST_RFLAGS
    mov eax, 2
    vmwrite rbx, rax
    mov rbx, GUEST_RSP
    lea rax, [hv_guest_stack_top]
    vmwrite rbx, rax
    mov rbx, GUEST_RIP
    lea rax, [hv_guest]
    vmwrite rbx, rax
    mov rbx, VMCS_LINK_POINTER
    mov rax, -1
    vmwrite rbx, rax
    xor eax, eax
    mov rbx, EXCEPTION_BITMAP
    vmwrite rbx, rax
    mov rbx, GUEST_INTERRUPTIBILITY
    vmwrite rbx, rax
    mov rbx, GUEST_ACTIVITY
    vmwrite rbx, rax
    mov rbx, GUEST_PENDING_DBG
    vmwrite rbx, rax

    # ---- controls, adjusted through the capability MSRs ----
    xor edi, edi                        # pin-based: nothing wanted
    mov esi, 0x481
    mov ebx, PIN_BASED
    call write_ctl
    mov edi, 0x81000000                 # primary: unconditional I/O exiting (24), secondary (31)
    mov esi, 0x482
    mov ebx, CPU_BASED
    call write_ctl
    mov edi, 0x20                       # secondary: enable VPID (bit 5), where allowed
    mov esi, 0x48b | 0x80000000         # (no TRUE variant)
    mov ebx, SECONDARY
    call write_ctl
    mov rbx, VIRTUAL_PROCESSOR_ID       # VPID 1 (the field exists where VPID does)
    mov eax, 1
    vmwrite rbx, rax
    mov edi, 0x200                      # exit: host address-space size
    mov esi, 0x483
    mov ebx, EXIT_CONTROLS
    call write_ctl
    mov edi, 0x200                      # entry: IA-32e mode guest
    mov esi, 0x484
    mov ebx, ENTRY_CONTROLS
    call write_ctl

    vmlaunch
    mov r12, 4                          # here only if VMLAUNCH failed
    jmp hv_fail

# ---- the VM-exit handler (HOST_RIP) ----------------------------------------------------
vmexit:
    push rax                            # the guest's general registers, RAX at [rsp + 112]
    push rcx
    push rdx
    push rbx
    push rbp
    push rsi
    push rdi
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    mov rbx, EXIT_REASON
    vmread rax, rbx
    movzx eax, ax
    cmp eax, 64
    jae count_done
    lea rcx, [hv_exit_counts]
    inc qword ptr [rcx + rax * 8]
count_done:
    cmp eax, 10
    je exit_cpuid
    cmp eax, 31
    je exit_rdmsr
    cmp eax, 30
    je exit_io
    cmp eax, 18
    je exit_vmcall
    mov qword ptr [hv_error], rax
    mov r12, 6
    jmp hv_leave

exit_cpuid:                             # execute CPUID for the guest
    mov eax, dword ptr [rsp + 112]
    mov ecx, dword ptr [rsp + 104]
    cpuid
    mov qword ptr [rsp + 112], rax
    mov qword ptr [rsp + 104], rcx
    mov qword ptr [rsp + 96], rdx
    mov qword ptr [rsp + 88], rbx
    jmp advance

exit_rdmsr:                             # read the MSR for the guest
    mov ecx, dword ptr [rsp + 104]
    rdmsr
    mov qword ptr [rsp + 112], rax
    mov qword ptr [rsp + 96], rdx
    jmp advance

exit_io:                                # perform a one-byte OUT for the guest
    mov rbx, EXIT_QUALIFICATION
    vmread rax, rbx
    test eax, 8                         # bit 3: 1 = IN (not handled: unexpected)
    jnz io_unexpected
    shr eax, 16
    mov edx, eax
    mov eax, dword ptr [rsp + 112]
    out dx, al
    jmp advance
io_unexpected:
    mov qword ptr [hv_error], 30
    mov r12, 6
    jmp hv_leave

exit_vmcall:                            # the guest is done: leave VMX operation
    xor r12d, r12d
    jmp hv_leave

advance:                                # GUEST_RIP += exit instruction length; VMRESUME
    mov rbx, GUEST_RIP
    vmread rax, rbx
    mov rbx, EXIT_INSTRUCTION_LEN
    vmread rcx, rbx
    add rax, rcx
    mov rbx, GUEST_RIP
    vmwrite rbx, rax
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rdi
    pop rsi
    pop rbp
    pop rbx
    pop rdx
    pop rcx
    pop rax
    vmresume
    mov r12, 5
    jmp hv_fail

hv_leave:
    vmxoff
    mov qword ptr [hv_status], r12
    jmp hv_return

hv_fail:                                # r12 = what failed; VM-instruction error if any
    mov qword ptr [hv_status], r12
    mov qword ptr [hv_error], 0xffff
    jc hv_fail_off                      # VMfailInvalid: no error field
    mov rbx, VM_INSTRUCTION_ERROR
    vmread rax, rbx
    mov qword ptr [hv_error], rax
hv_fail_off:
    cmp r12, 1
    je hv_return
    vmxoff
hv_return:
    mov rsp, qword ptr [hv_driver_rsp]
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    ret

# ---- helpers -------------------------------------------------------------------------------
fixed_bits:                             # ecx = FIXED0 MSR -> rax = FIXED0, rbx = FIXED1 (ecx + 1)
    rdmsr
    shl rdx, 32
    or rax, rdx
    push rax
    inc ecx
    rdmsr
    shl rdx, 32
    or rax, rdx
    mov rbx, rax
    pop rax
    ret

host_sel:                               # ax = selector, ebx = host selector field
    and eax, 0xfff8
    vmwrite rbx, rax
    ret

desc_base:                              # edi = selector -> rax = base (16-byte system descriptors too)
    mov rsi, qword ptr [hv_gdtr + 2]
    and edi, 0xfff8
    add rsi, rdi
    mov eax, dword ptr [rsi + 2]
    and eax, 0xffffff                   # base 23:0
    movzx edx, byte ptr [rsi + 7]
    shl edx, 24
    or eax, edx                         # base 31:24
    test byte ptr [rsi + 5], 0x10       # S = 0: a system descriptor: base 63:32 follows
    jnz desc_done
    mov edx, dword ptr [rsi + 8]
    shl rdx, 32
    or rax, rdx
desc_done:
    ret

guest_seg:                              # edi = register index (ES..GS, LDTR, TR), ax = selector
    movzx r8d, ax
    lea rbx, [rdi * 2 + 0x0800]         # selector field
    vmwrite rbx, r8
    test r8d, 0xfffc
    jz guest_unusable
    lar r9d, r8d                        # access rights: bits 23:8 of LAR -> VMCS format
    shr r9d, 8
    and r9d, 0xf0ff
    lsl r10d, r8d                       # limit, scaled by G
    push rdi
    mov edi, r8d
    call desc_base
    pop rdi
    test r9d, 0x10                      # code/data in 64-bit mode: flat, base 0 (FS/GS: MSRs)
    jz guest_base
    xor eax, eax
guest_base:
    lea rbx, [rdi * 2 + 0x6806]
    vmwrite rbx, rax
    lea rbx, [rdi * 2 + 0x4800]
    vmwrite rbx, r10
    lea rbx, [rdi * 2 + 0x4814]
    vmwrite rbx, r9
    ret
guest_unusable:
    lea rbx, [rdi * 2 + 0x4814]
    mov eax, 0x10000
    vmwrite rbx, rax
    xor eax, eax
    lea rbx, [rdi * 2 + 0x6806]
    vmwrite rbx, rax
    lea rbx, [rdi * 2 + 0x4800]
    vmwrite rbx, rax
    ret

write_ctl:                              # edi = wanted, esi = capability MSR (bit 31: no TRUE),
    mov ecx, esi                        # ebx = field: (wanted | allowed-0) & allowed-1
    and ecx, 0x7fffffff
    test esi, 0x80000000
    jnz ctl_read
    cmp byte ptr [hv_true_ctls], 0
    je ctl_read
    add ecx, 0x0c                       # 481H..484H -> TRUE 48DH..490H
ctl_read:
    rdmsr
    or edi, eax
    and edi, edx
    vmwrite rbx, rdi
    ret

# ---- the guest ---------------------------------------------------------------------------------
hv_guest:
    xor eax, eax
    xor ecx, ecx
    cpuid
    mov dword ptr [hv_vendor], ebx
    mov dword ptr [hv_vendor + 4], edx
    mov dword ptr [hv_vendor + 8], ecx
    mov rsi, qword ptr [hv_iterations]   # then CPUID hv_iterations more times (benchmarks)
hv_cpuid_loop:
    test rsi, rsi
    jz hv_cpuid_done
    xor eax, eax
    cpuid
    dec rsi
    jmp hv_cpuid_loop
hv_cpuid_done:
    mov ecx, 0x174
    rdmsr
    mov dword ptr [hv_sysenter_cs], eax
    mov dx, 0xe9
    mov al, 0x47                        # 'G' on the debug console, through the host
    out dx, al
    vmcall
    hlt

# ---- data ---------------------------------------------------------------------------------------
.balign 4096
hv_vmxon_region:
    .zero 4096
hv_vmcs:
    .zero 4096
hv_vmxon_ptr:
    .quad hv_vmxon_region
hv_vmcs_ptr:
    .quad hv_vmcs
hv_driver_rsp:
    .quad 0
hv_status:
    .quad 0
hv_error:
    .quad 0
hv_true_ctls:
    .byte 0
.balign 8
hv_gdtr:
    .zero 16
hv_idtr:
    .zero 16
hv_vendor:
    .zero 16
hv_sysenter_cs:
    .quad 0
hv_iterations:
    .quad 0
hv_exit_counts:
    .zero 64 * 8
.balign 16
    .zero 4096
hv_stack_top:
    .zero 4096
hv_guest_stack_top:
    .quad 0

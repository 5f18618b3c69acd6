# vmxlab built-in kernel.  Reset state, memory layout and entry points: kernel.py.
# Syntax: keystone (Intel); '#' starts a comment, ';' separates statements.

.code16
start16:                                # real mode, CS:IP = 0000:8000, IF = 0
    cli
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7000
    lgdt [gdt_desc]                     # 16-bit LGDT: 24-bit base (the GDT is below 1 MiB)
    mov eax, cr0
    or eax, 1                           # CR0.PE
    mov cr0, eax
    .byte 0x66, 0xea                    # jmp far 0x18:start32 (32-bit offset)
    .long start32
    .word 0x18

.code32
start32:                                # protected mode, paging off
    mov ax, 0x20
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov fs, ax
    mov gs, ax
    mov esp, 0x7000
    # 4-level tables at 0x20000 (PML4), 0x21000 (PDPT), 0x22000 (PD): identity map
    # of the first GiB with 2 MiB pages
    mov edi, 0x20000
    xor eax, eax
    mov ecx, 3 * 1024
    cld
    rep stosd
    mov dword ptr [0x20000], 0x21003
    mov dword ptr [0x21000], 0x22003
    mov edi, 0x22000
    mov eax, 0x83                       # P | RW | PS
    mov ecx, 512
pd_fill:
    mov dword ptr [edi], eax
    mov dword ptr [edi + 4], 0
    add eax, 0x200000
    add edi, 8
    loop pd_fill
    mov eax, cr4
    or eax, 0x20                        # CR4.PAE
    mov cr4, eax
    mov eax, 0x20000
    mov cr3, eax
    mov ecx, 0xc0000080                 # IA32_EFER
    rdmsr
    or eax, 0x900                       # LME | NXE
    wrmsr
    mov eax, cr0
    or eax, 0x80010000                  # CR0.PG | CR0.WP: IA-32e mode is now active
    mov cr0, eax
    .byte 0xea                          # jmp far 0x08:start64
    .long start64
    .word 0x08

.code64
start64:                                # 64-bit mode
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    mov rsp, 0x90000
    lgdt [gdt_desc]
    # TSS: RSP0 = 0x90000, IST1 = 0x98000; its 16-byte descriptor at selector 0x28
    lea rdi, [tss]
    mov qword ptr [rdi + 4], 0x90000
    mov qword ptr [rdi + 0x24], 0x98000
    mov word ptr [rdi + 0x66], 0x68     # I/O map base beyond the limit: no I/O bitmap
    mov rax, rdi
    lea rbx, [gdt]
    mov word ptr [rbx + 0x28], 0x67     # limit
    mov word ptr [rbx + 0x2a], ax       # base 15:0
    shr rax, 16
    mov byte ptr [rbx + 0x2c], al       # base 23:16
    mov byte ptr [rbx + 0x2d], 0x89     # P, 64-bit TSS (available)
    mov byte ptr [rbx + 0x2e], 0
    mov byte ptr [rbx + 0x2f], ah       # base 31:24
    mov dword ptr [rbx + 0x30], 0       # base 63:32
    mov dword ptr [rbx + 0x34], 0
    mov ax, 0x28
    ltr ax
    # IDT: 256 interrupt gates, selector 0x08, gate i -> isr_stubs + 16 * i,
    # #DF (8) and NMI (2) on IST1
    lea rdi, [idt]
    lea rsi, [isr_stubs]
    xor ecx, ecx
idt_fill:
    mov rax, rsi
    mov word ptr [rdi], ax              # offset 15:0
    mov word ptr [rdi + 2], 0x08        # selector
    mov word ptr [rdi + 4], 0x8e00      # P, DPL 0, 64-bit interrupt gate, IST 0
    shr rax, 16
    mov word ptr [rdi + 6], ax          # offset 31:16
    shr rax, 16
    mov dword ptr [rdi + 8], eax        # offset 63:32
    mov dword ptr [rdi + 12], 0
    cmp ecx, 2
    je idt_ist
    cmp ecx, 8
    jne idt_next
idt_ist:
    mov byte ptr [rdi + 4], 1           # IST1
idt_next:
    add rdi, 16
    add rsi, 16
    inc ecx
    cmp ecx, 256
    jb idt_fill
    mov byte ptr [idt + 3 * 16 + 5], 0xee    # #BP gate DPL 3 (INT3 from user mode)
    lidt [idt_desc]
    lea rsi, [msg_banner]
    call puts
kernel_main:                            # entry points for later workloads
    mov rax, qword ptr [driver_ptr]     # "load driver" point: call it when set
    test rax, rax
    jz no_driver
    lea rdi, [services]
    call rax
no_driver:
    mov rax, qword ptr [workload_ptr]
    lea rdi, [services]
    call rax
    lea rsi, [msg_done]
    call puts
halt_forever:
    cli
    hlt
    jmp halt_forever

default_workload:                       # prints, takes a breakpoint trap, returns
    lea rsi, [msg_workload]
    call puts
workload_int3:
    int3
    ret

# ---- services (System V calling convention: rdi = argument) --------------------------
putc:                                   # dil: the byte
    push rdx
    push rax
uart_wait:
    mov dx, 0x3fd                       # LSR
    in al, dx
    test al, 0x20                       # THRE
    jz uart_wait
    mov dx, 0x3f8
    mov eax, edi
    out dx, al
    pop rax
    pop rdx
    ret

puts:                                   # rsi: NUL-terminated string
    push rdi
    push rsi
puts_next:
    movzx edi, byte ptr [rsi]
    test edi, edi
    jz puts_done
    call putc
    inc rsi
    jmp puts_next
puts_done:
    pop rsi
    pop rdi
    ret

print_hex:                              # rdi: value, printed as 0x... without leading zeros
    push rax
    push rcx
    push rdi
    mov rax, rdi
    mov edi, 0x30                       # '0'
    call putc
    mov edi, 0x78                       # 'x'
    call putc
    mov ecx, 60
hex_skip:
    test ecx, ecx
    jz hex_digit
    mov rdi, rax
    shr rdi, cl
    and edi, 15
    jnz hex_digit
    sub ecx, 4
    jmp hex_skip
hex_digit:
    mov rdi, rax
    shr rdi, cl
    and edi, 15
    cmp edi, 10
    jb hex_num
    add edi, 0x57                       # 'a' - 10
    jmp hex_out
hex_num:
    add edi, 0x30
hex_out:
    call putc
    sub ecx, 4
    jns hex_digit
    pop rdi
    pop rcx
    pop rax
    ret

# ---- interrupt and exception handlers ----------------------------------------------------
# Every vector: print "vector <v> [error <e>] rip <rip>".  Faults and aborts
# (vectors < 32 except #DB, NMI, #BP, #OF) then halt; the others return.
isr_common:                             # [rsp] vector, then error code (if any), RIP, CS, RFLAGS, RSP, SS
    push rax
    push rcx
    push rdx
    push rsi
    push rdi
    push r8
    push r9
    push r10
    push r11
    mov r8, qword ptr [rsp + 72]        # vector
    lea r9, [rsp + 80]                  # -> error code or RIP
    xor r10, r10                        # 1 when the processor pushed an error code
    cmp r8, 32
    jae isr_print
    mov eax, 0x60227d00                 # vectors 8, 10-14, 17, 21, 29, 30
    bt eax, r8d
    jnc isr_print
    mov r10, 1
isr_print:
    lea rsi, [msg_vector]
    call puts
    mov rdi, r8
    call print_hex
    test r10, r10
    jz isr_rip
    lea rsi, [msg_error]
    call puts
    mov rdi, qword ptr [r9]
    call print_hex
isr_rip:
    lea rsi, [msg_rip]
    call puts
    mov rdi, qword ptr [r9 + r10 * 8]
    call print_hex
    mov edi, 10
    call putc
    lea rax, [vector_counts]
    inc qword ptr [rax + r8 * 8]
    cmp r8, 32
    jae isr_return
    cmp r8, 1
    je isr_return
    cmp r8, 2
    je isr_return
    cmp r8, 3
    je isr_return
    cmp r8, 4
    je isr_return
    lea rsi, [msg_halted]
    call puts
    jmp halt_forever
isr_return:
    pop r11
    pop r10
    pop r9
    pop r8
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rax
    add rsp, 8                          # vector
    iretq

.balign 16
isr_stubs:                              # 256 stubs of 16 bytes: push vector; jmp isr_common
.set vec, 0
.rept 256
    .byte 0x68
    .long vec
    jmp isr_common
    .balign 16
.set vec, vec + 1
.endr

# ---- data (its own pages: code pages are never written) -----------------------------------
.balign 4096
gdt:
    .quad 0
    .quad 0x00af9b000000ffff            # 0x08 code, 64-bit, DPL 0 (accessed)
    .quad 0x00cf93000000ffff            # 0x10 data, DPL 0 (accessed)
    .quad 0x00cf9a000000ffff            # 0x18 code, 32-bit, DPL 0
    .quad 0x00cf92000000ffff            # 0x20 data, 32-bit boot
    .quad 0, 0                          # 0x28 TSS (16 bytes, filled at boot)
    .quad 0x00cff2000000ffff            # 0x38 data, DPL 3
    .quad 0x00affa000000ffff            # 0x40 code, 64-bit, DPL 3
gdt_end:
gdt_desc:
    .word gdt_end - gdt - 1
    .quad gdt
idt_desc:
    .word 256 * 16 - 1
    .quad idt
.balign 16
tss:
    .zero 0x68
.balign 8
driver_ptr:                             # set to a function address to run it before the workload
    .quad 0
workload_ptr:                           # the workload (called with rdi = services)
    .quad default_workload
services:                               # function table for loaded code
    .quad putc, puts, print_hex
vector_counts:                          # how many times each vector was taken
    .zero 256 * 8
msg_banner:
    .asciz "vmxlab kernel: long mode\n"
msg_workload:
    .asciz "workload: default\n"
msg_done:
    .asciz "kernel: done\n"
msg_vector:
    .asciz "vector "
msg_error:
    .asciz " error "
msg_rip:
    .asciz " rip "
msg_halted:
    .asciz "halted\n"
.balign 4096
idt:
    .zero 4096
kernel_end:

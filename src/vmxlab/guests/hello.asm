# hello: a guest image for `vmxlab run` (docs/run.md) that does port I/O and HLT.
# Loaded at 0x1000000 (hypervisor/image.py FLAT_BASE) and entered by the built-in
# kernel as its workload: 64-bit mode, CPL 0, IF = 0, RDI = the kernel's services
# (not used: this image drives the 16550 UART at 0x3F8 itself).
#
# It prints a greeting, the hypervisor's CPUID signature (leaf 40000000H: EBX, ECX,
# EDX), writes 0x5A to the UART scratch register (0x3FF) and reads it back with IN,
# prints what it read, and halts.  The console text is the same on every backend.
# Syntax: keystone (Intel); '#' starts a comment, ';' separates statements.

.code64
hello_start:
    lea rsi, [hello_msg_start]
    call hello_puts

    mov eax, 0x40000000                  # the hypervisor's leaf: EBX, ECX, EDX = signature
hello_cpuid:
    cpuid
    lea rdi, [hello_sig]
    mov dword ptr [rdi], ebx
    mov dword ptr [rdi + 4], ecx
    mov dword ptr [rdi + 8], edx
    lea rsi, [hello_msg_sig]
    call hello_puts
    lea rsi, [hello_sig]
    call hello_puts
    lea rsi, [hello_msg_nl]
    call hello_puts

    mov dx, 0x3ff                        # UART scratch register: OUT, then IN
    mov al, 0x5a
    out dx, al
    xor eax, eax
    in al, dx
    mov ebx, eax
    lea rsi, [hello_msg_scratch]
    call hello_puts
    mov eax, ebx
    call hello_print_byte
    lea rsi, [hello_msg_nl]
    call hello_puts

    lea rsi, [hello_msg_halt]
    call hello_puts
hello_halt:
    cli
    hlt
    jmp hello_halt

hello_puts:                              # rsi: NUL-terminated string
    movzx eax, byte ptr [rsi]
    test eax, eax
    jz hello_puts_done
    call hello_putc
    inc rsi
    jmp hello_puts
hello_puts_done:
    ret

hello_putc:                              # al: the byte; waits for THRE in the LSR (0x3FD)
    push rdx
    push rax
hello_wait:
    mov dx, 0x3fd
    in al, dx
    test al, 0x20
    jz hello_wait
    pop rax
    mov dx, 0x3f8
    out dx, al
    pop rdx
    ret

hello_print_byte:                        # al: printed as 0x followed by two hex digits
    push rbx
    mov ebx, eax
    mov al, 0x30
    call hello_putc
    mov al, 0x78
    call hello_putc
    mov eax, ebx
    shr eax, 4
    call hello_hex_digit
    mov eax, ebx
    call hello_hex_digit
    pop rbx
    ret

hello_hex_digit:                         # low nibble of al as a hex digit
    and eax, 15
    cmp eax, 10
    jb hello_digit_num
    add eax, 0x57                        # 'a' - 10
    jmp hello_digit_out
hello_digit_num:
    add eax, 0x30
hello_digit_out:
    call hello_putc
    ret

.balign 4096                             # data on its own page (code pages stay unwritten)
hello_sig:
    .zero 16
hello_msg_start:
    .asciz "hello: a guest image under the vmxlab hypervisor\n"
hello_msg_sig:
    .asciz "hello: hypervisor signature "
hello_msg_scratch:
    .asciz "hello: UART scratch register reads back "
hello_msg_halt:
    .asciz "hello: halting\n"
hello_msg_nl:
    .asciz "\n"

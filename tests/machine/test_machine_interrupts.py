"""External interrupts, NMI, HLT and the platform devices ("Masking Maskable
Hardware Interrupts", "Interrupt Shadows" in "Interrupt and Exception Handling";
"HLT"; the 16550 register map)."""
import mhelpers as H

from vmxlab.machine import StopReason

TIMER = 0x4C0


def test_pending_interrupt_waits_for_if_and_the_sti_shadow():
    e = H.Env()
    e.handler(0x40, "mov r8, [rsp]; inc r14; iretq")
    a = e.code("""
        mov r10, 1
        mov r11, 2
        sti
        nop                   # the STI shadow: no interrupt before this completes
    after: mov r12, 3
        cli
        hlt""")
    e.m.raise_interrupt(0x40)
    st = e.m.run(time_budget=2)
    assert st.reason == StopReason.HALTED
    assert e.reg("R14") == 1
    assert e.reg("R8") == a.labels["after"]        # delivered at the first open boundary


def test_mov_ss_blocks_for_one_instruction():
    e = H.Env()
    e.handler(0x41, "mov r8, [rsp]; iretq")
    a = e.code("""
        mov eax, 0x10
        sti
        nop
        mov ss, eax           # MOV SS: interrupts blocked until the next instruction completes
    shadowed: nop
    after: cli
        hlt""")
    e.m.add_breakpoint(a.labels["shadowed"])
    st = e.m.run(time_budget=2)
    assert st.reason == StopReason.BREAKPOINT
    # RFLAGS.IF = 1 and the shadow is in effect: reported as blocking by STI (QEMU keeps
    # one flag for STI and MOV SS blocking)
    assert e.state("GUEST_INTERRUPTIBILITY_INFO") & 3
    e.m.raise_interrupt(0x41)
    e.m.run(time_budget=2)
    assert e.reg("R8") == a.labels["after"]


def test_timer_interrupt_wakes_hlt():
    e = H.Env()
    e.handler(0x20, "inc r14; iretq")
    a = e.code(f"""
        mov dx, {TIMER}; mov al, 0x20; out dx, al           # vector
        mov dx, {TIMER + 4}; mov eax, 100000; out dx, eax    # 100000 TSC ticks
        mov dx, {TIMER + 1}; mov al, 1; out dx, al           # one-shot
        sti
    halt: hlt
        mov r13, 1
        cli
    end: hlt""")
    st = e.m.run(time_budget=5)
    assert st.reason == StopReason.HALTED
    assert e.reg("R14") == 1
    assert e.reg("R13") == 1
    assert e.state("GUEST_RIP") == a.labels["end"] + 1


def test_hlt_with_nothing_to_wake_it_ends_the_run():
    e = H.Env()
    a = e.code("cli; stop: hlt; nop")
    st = e.m.run(time_budget=2)
    assert st.reason == StopReason.HALTED
    assert st.rip == a.labels["stop"] + 1               # HLT completed: RIP after it
    assert e.state("GUEST_ACTIVITY_STATE") == 1
    # still halted on the next run
    assert e.m.run(time_budget=0.1).reason == StopReason.HALTED
    # an interrupt with IF = 1 wakes it (IF is 0 here: it does not)
    e.m.raise_interrupt(0x30)
    assert e.m.run(time_budget=0.1).reason == StopReason.HALTED


def test_periodic_timer():
    e = H.Env()
    e.handler(0x21, "inc r14; iretq")
    e.code(f"""
        xor r14, r14
        mov dx, {TIMER}; mov al, 0x21; out dx, al
        mov dx, {TIMER + 4}; mov eax, 50000; out dx, eax
        mov dx, {TIMER + 1}; mov al, 2; out dx, al
    again: sti
        hlt                   # in the STI shadow: the interrupt wakes HLT
        cli
        cmp r14, 5
        jb again
        mov dx, {TIMER + 1}; xor eax, eax; out dx, al
        hlt""")
    st = e.m.run(time_budget=5)
    assert st.reason == StopReason.HALTED
    # one interrupt per HLT at least; another may arrive between IRETQ and CLI
    assert e.reg("R14") >= 5
    assert e.m.timer.deadline is None


def test_uart_and_debug_console_output():
    e = H.Env()
    e.load_string = None
    e.m.load(H.DATA, b"hello, uart\0")
    e.code(f"""
        mov rsi, {H.DATA}
    next: mov al, byte ptr [rsi]
        test al, al
        jz done
        mov bl, al
    wait: mov dx, 0x3fd
        in al, dx
        test al, 0x20          # LSR.THRE
        jz wait
        mov al, bl
        mov dx, 0x3f8
        out dx, al
        inc rsi
        jmp next
    done: mov al, 0x21
        out 0xe9, al
        cli
        hlt""")
    st = e.m.run(time_budget=2)
    assert st.reason == StopReason.HALTED
    assert e.m.uart.text() == "hello, uart"
    assert e.m.console.text() == "!"


def test_rep_outsb_to_the_uart():
    e = H.Env()
    e.m.load(H.DATA, b"rep string")
    e.code(f"mov rsi, {H.DATA}; mov ecx, 10; mov dx, 0x3f8; cld; rep outsb; cli; hlt")
    e.m.run(time_budget=2)
    assert e.m.uart.text() == "rep string"
    assert e.reg("RCX") == 0
    assert e.reg("RSI") == H.DATA + 10


def test_unclaimed_port_reads_all_ones():
    e = H.Env()
    e.code("mov dx, 0x1234; in eax, dx; mov r10, rax; cli; hlt")
    e.m.run(time_budget=2)
    assert e.reg("R10") == 0xFFFFFFFF


def test_nmi_blocking_ends_at_iret():
    e = H.Env()
    e.handler(2, "inc r14; mov r9, [rsp]; iretq")
    e.code("cli; nop; nop; nop; nop; cli; hlt")
    e.m.raise_nmi()
    e.m.run(instruction_budget=1)          # NMI (not masked by IF) delivered at once, handler entered
    assert e.state("GUEST_INTERRUPTIBILITY_INFO") & 8      # blocking by NMI until IRET
    e.m.raise_nmi()                        # blocked now: held pending
    st = e.m.run(time_budget=2)
    assert st.reason == StopReason.HALTED
    assert e.reg("R14") == 2               # the second NMI came after the first IRETQ
    assert not e.state("GUEST_INTERRUPTIBILITY_INFO") & 8


def test_syscall_and_sysret():
    e = H.Env()
    a = e.code("""
        mov ecx, 0xc0000081; xor eax, eax; mov edx, 0x00180008; wrmsr    # STAR
        mov ecx, 0xc0000082; mov eax, 0x45000; xor edx, edx; wrmsr      # LSTAR
        mov ecx, 0xc0000084; mov eax, 0x200; xor edx, edx; wrmsr        # FMASK: IF
        sti
        syscall
    back: cli; hlt""")
    e.code("mov r13, rcx; mov r12, r11; pushfq; pop r10; mov rbx, cs; mov rdx, ss; cli; hlt", 0x45000)
    e.m.run(time_budget=2)
    # "SYSCALL": RCX = next RIP, R11 = RFLAGS, RFLAGS &= ~FMASK, CS = STAR[47:32], SS = CS + 8
    assert e.reg("R13") == a.labels["back"]
    assert e.reg("R12") & 0x200 and not e.reg("R10") & 0x200
    assert (e.reg("RBX"), e.reg("RDX")) == (0x08, 0x10)
    # SYSRET (unicorn's own): CS = STAR[63:48] + 16 | 3, SS = STAR[63:48] + 8 | 3, CPL 3
    e2 = H.Env()
    e2.code("""
        mov ecx, 0xc0000081; xor eax, eax; mov edx, 0x00180008; wrmsr
        mov rcx, 0x46000
        mov r11, 0x202
        .byte 0x48, 0x0f, 0x07""")
    e2.code("mov r9, 7; spin: jmp spin", 0x46000)
    e2.m.run(time_budget=0.2)
    assert e2.reg("R9") == 7 and e2.m.cpl() == 3
    assert e2.state("GUEST_CS_SELECTOR") == 0x2B and e2.state("GUEST_SS_SELECTOR") == 0x23


def _shadowed_by_python(client_kind=None):
    """sti, then two CPUIDs executed in Python (emulated, or by a client), then CLI:
    the STI shadow covers the first CPUID only ("Interrupt Shadows"), so a pending
    interrupt arrives right after it -- not never (QEMU would keep its shadow until
    an instruction it executes itself, the CLI, completes)."""
    from vmxlab.machine import Action, Kind
    from vmxlab.machine import registers as REG
    e = H.Env()
    e.handler(0x40, "mov r8, [rsp]; inc r14; iretq")
    a = e.code("""
        xor r14, r14
        sti
        cpuid
    after: cpuid
        cli
        hlt""")
    if client_kind is not None:
        def client(m, ev):
            g = m.gprs.read()
            g[REG.RIP] = ev.rip + ev.length
            m.gprs.write()
            return Action.DONE
        e.m.client = client
        e.m.intercept(client_kind)
    e.m.raise_interrupt(0x40)
    assert e.m.run(time_budget=2).reason == StopReason.HALTED
    return e, a


def test_the_sti_shadow_ends_after_an_instruction_emulated_in_python():
    e, a = _shadowed_by_python()
    assert e.reg("R14") == 1 and e.reg("R8") == a.labels["after"]


def test_the_sti_shadow_ends_after_an_instruction_a_client_did():
    from vmxlab.machine import Kind
    e, a = _shadowed_by_python(Kind.CPUID)
    assert e.reg("R14") == 1 and e.reg("R8") == a.labels["after"]

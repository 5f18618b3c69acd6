"""Exception delivery through the IDT, worked out from the SDM ("Interrupt and
Exception Handling", "Exception and Interrupt Reference", INT n pseudo-code)."""
import mhelpers as H
import pytest

from vmxlab.machine import StopReason

RF, IF = 1 << 16, 1 << 9


def test_divide_error_is_delivered_through_the_idt():
    e = H.Env()
    # handler: save the pushed frame, skip the 2-byte DIV, return
    e.handler(0, """
        mov r8, [rsp]          # RIP
        mov r9, [rsp + 8]      # CS
        mov r10, [rsp + 16]    # RFLAGS
        mov r11, [rsp + 24]    # RSP
        mov r12, [rsp + 32]    # SS
        add qword ptr [rsp], 2
        iretq""")
    a = e.code("""
        mov rsp, 0x7ff00
        xor ecx, ecx
        mov eax, 1
    fault: div ecx
        mov r13, 0x600d
        hlt""")
    st = e.m.run(time_budget=2)
    assert st.reason == StopReason.HALTED
    # #DE is a fault: the saved RIP is the DIV itself; 64-bit frames push SS:RSP always
    assert e.reg("R8") == a.labels["fault"]
    assert e.reg("R9") == H.KCODE
    assert e.reg("R10") & RF                      # fault-class: RF = 1 in the pushed image
    assert e.reg("R11") == 0x7ff00
    assert e.reg("R12") == H.KDATA
    assert e.reg("R13") == 0x600d                 # IRETQ returned after the skipped DIV
    assert e.state("GUEST_RSP") == 0x7ff00


def test_general_protection_pushes_the_selector_error_code():
    e = H.Env()
    e.handler(13, """
        pop r8                 # error code
        mov r9, [rsp]          # faulting RIP
        add qword ptr [rsp], 2 # skip mov ds, eax
        iretq""")
    a = e.code("""
        mov ax, 0x7f8          # index 0xff: beyond the 8-entry GDT
    fault: mov ds, eax
        mov r13, 1
        hlt""")
    e.m.run(time_budget=2)
    # "Segment Selector Error Code": index 0xff, TI 0, EXT 0 -> 0x7f8
    assert e.reg("R8") == 0x7F8
    assert e.reg("R9") == a.labels["fault"]
    assert e.reg("R13") == 1


def test_user_page_fault_goes_to_ring0_on_the_rsp0_stack():
    e = H.Env()
    e.handler(14, """
        pop r8                 # error code
        mov r9, cr2
        mov r10, rsp           # stack of the handler
        mov r11, [rsp + 8]     # pushed CS
        mov rax, 0x13000 + 8 * 0x61
        mov qword ptr [rax], 0x61007   # map linear 0x61000: P RW US
        invlpg [r9]
        iretq""")
    e.code("""
        mov rbx, 0x61008
    fault: mov qword ptr [rbx], 0x55   # user write to a not-present page
        mov r13, [rbx]
        hlt""")
    e.set_pte(0x61, 0x61000 | H.RW | H.US)           # not present
    e.user_mode()
    st = e.m.run(time_budget=2)
    # HLT at CPL 3 is #GP(0): the run stops after the retry, when the handler for 13 is absent
    assert e.reg("R8") == 0x6                       # P=0 (not present), W/R=1, U/S=1
    assert e.reg("R9") == 0x61008                   # CR2 = faulting linear address
    # 64-bit delivery to ring 0: stack from TSS.RSP0 (0x80000), aligned, 5 qwords pushed
    # (SS, RSP, RFLAGS, CS, RIP) + error code, and the handler popped the error code
    assert e.reg("R10") == H.KSTACK - 5 * 8
    assert e.reg("R11") == H.UCODE
    assert e.reg("R13") == 0x55                     # the retried write happened
    assert st is not None


def test_ist_stack_is_used_even_without_privilege_change():
    e = H.Env()
    e.handler(3, "mov r10, rsp; iretq", ist=1, dpl=0)
    e.code("mov rsp, 0x7f000; int3; mov r13, 1; hlt")
    e.m.run(time_budget=2)
    # IST1 = 0x90000: RSP after pushing SS, RSP, RFLAGS, CS, RIP
    assert e.reg("R10") == H.ISTSTACK - 5 * 8
    assert e.reg("R13") == 1


def test_software_interrupt_checks_gate_dpl_at_cpl3():
    e = H.Env()
    e.handler(0x80, "mov r10, 0x80; iretq", dpl=0)
    e.handler(13, "pop r8; mov r9, [rsp]; add qword ptr [rsp], 2; iretq")
    a = e.code("fault: int 0x80; mov r13, 1; spin: jmp spin")
    e.user_mode()
    e.m.run(time_budget=0.3)
    # INT n from CPL 3 through a DPL-0 gate: #GP(vector * 8 + 2), EXT = 0
    assert e.reg("R8") == 0x80 * 8 + 2
    assert e.reg("R9") == a.labels["fault"]
    assert e.reg("R10") == 0


def test_double_fault_when_the_gp_handler_is_missing():
    e = H.Env()
    e.handler(8, "pop r8; mov r9, 0xdf; hlt")
    e.code("mov ax, 0x7f8; mov ds, eax; hlt")
    st = e.m.run(time_budget=2)
    # #GP (contributory) during whose delivery the IDT gate 13 is not present: #NP(13*8+2+EXT)
    # is contributory too -> #DF with error code 0
    assert e.reg("R9") == 0xDF
    assert e.reg("R8") == 0
    assert st.reason == StopReason.HALTED


def test_triple_fault_is_a_shutdown():
    e = H.Env()
    e.code("mov ax, 0x7f8; mov ds, eax; hlt")        # #GP, no gate 13, no gate 8
    st = e.m.run(time_budget=2)
    assert st.reason == StopReason.SHUTDOWN
    assert e.state("GUEST_ACTIVITY_STATE") == 2
    assert e.m.run(time_budget=0.1).reason == StopReason.SHUTDOWN


def test_three_page_faults_in_a_row_are_three_page_faults():
    e = H.Env()
    e.handler(14, """
        pop r8
        inc r14
        mov r9, cr2
        shr r9, 12
        lea rax, [r9 * 8 + 0x13000]
        mov r10, cr2
        and r10, -4096
        or r10, 7
        mov qword ptr [rax], r10
        mov r9, cr2
        invlpg [r9]
        iretq""")
    e.handler(8, "mov r15, 0xdf; hlt")
    for page in (0x61, 0x62, 0x63):
        e.set_pte(page, page << 12 | H.RW | H.US)
    e.code("""
        xor r14, r14
        mov rbx, 0x61000; mov rax, [rbx]
        mov rbx, 0x62000; mov rax, [rbx]
        mov rbx, 0x63000; mov qword ptr [rbx], 1
        hlt""")
    st = e.m.run(time_budget=2)
    assert st.reason == StopReason.HALTED
    assert e.reg("R14") == 3
    assert e.reg("R15") == 0
    assert e.reg("R8") == 0x2                        # the last one was a supervisor write


def test_interrupt_gate_clears_if_trap_gate_keeps_it():
    e = H.Env()
    e.handler(0x40, "pushfq; pop r8; iretq")
    e.handler(0x41, "pushfq; pop r9; iretq", trap=True)
    e.code("sti; int 0x40; int 0x41; cli; hlt")
    e.m.run(time_budget=2)
    assert not e.reg("R8") & IF
    assert e.reg("R9") & IF


def test_page_fault_error_codes_for_reserved_bit_and_fetch():
    e = H.Env()
    e.handler(14, "pop r8; mov r9, cr2; mov r11, 1; hlt")
    # reserved bit 51 set in a present PTE (MAXPHYADDR 39 of skylake-client)
    e.set_pte(0x61, 0x61000 | H.P | H.RW | (1 << 51))
    e.code("mov rbx, 0x61010; mov rax, [rbx]; hlt")
    e.m.run(time_budget=2)
    assert e.reg("R8") == 0x9                       # P=1, RSVD=1, read, supervisor
    assert e.reg("R9") == 0x61010
    # instruction fetch from an execute-disable page with EFER.NXE=1: I/D = 1
    e = H.Env()
    e.handler(14, "pop r8; mov r9, cr2; hlt")
    e.set_pte(0x62, 0x62000 | H.P | H.RW | (1 << 63))
    e.code("mov rbx, 0x62000; jmp rbx")
    e.m.run(time_budget=2)
    assert e.reg("R8") == 0x11                      # P=1, I/D=1
    assert e.reg("R9") == 0x62000


@pytest.mark.parametrize("bad", ["not_present_gate", "limit"])
def test_gp_error_code_names_the_idt_entry(bad):
    e = H.Env()
    e.handler(13, "pop r8; hlt")
    if bad == "limit":
        s = e.m.get_state()
        s["GUEST_IDTR_LIMIT"] = 16 * 0x30 - 1          # vectors 0-0x2f only
        e.m.set_state(s)
        e.code("int 0x30")
        e.m.run(time_budget=2)
        assert e.reg("R8") == 0x30 * 8 + 2             # #GP(IDT index, IDT bit)
    else:
        e.handler(11, "pop r9; hlt")
        e.set_gate(0x31, H.HANDLERS)
        e.m.mem.write(H.IDT + 16 * 0x31 + 5, bytes([0x0E]))   # clear P, keep type 14
        e.code("int 0x31")
        e.m.run(time_budget=2)
        # the present-bit check comes after the type check: #NP(vector*8+2), EXT=0 (INT n)
        assert e.reg("R9") == 0x31 * 8 + 2
        # an all-zero entry has type 0: #GP(vector*8+2)
        e2 = H.Env()
        e2.handler(13, "pop r8; hlt")
        e2.code("int 0x32")
        e2.m.run(time_budget=2)
        assert e2.reg("R8") == 0x32 * 8 + 2


@pytest.mark.parametrize("insn", ["add dword ptr [rbx], 1", "xchg qword ptr [rbx], rax",
                                  "lock cmpxchg qword ptr [rbx], rcx", "inc byte ptr [rbx + 5]"])
def test_read_modify_write_to_a_not_present_page_faults_as_a_write(insn):
    # "Page-Fault Error Code": W/R = 1 for a write; the operand of a read-modify-write
    # instruction is accessed as a write (hardware and KVM report W=1 for it)
    e = H.Env()
    e.handler(14, "pop r8; mov r9, cr2; hlt")
    e.set_pte(0x61, 0)                               # page 0x61 not present
    e.code(f"mov rbx, 0x61000; {insn}; hlt")
    e.m.run(time_budget=2)
    assert e.reg("R8") == 0x2                        # P=0, W=1, supervisor
    assert e.reg("R9") == (0x61005 if "+ 5" in insn else 0x61000)


def test_plain_read_of_a_not_present_page_faults_as_a_read():
    e = H.Env()
    e.handler(14, "pop r8; mov r9, 1; hlt")
    e.set_pte(0x61, 0)
    e.code("mov rbx, 0x61000; add rax, qword ptr [rbx]; hlt")   # the memory operand is only read
    e.m.run(time_budget=2)
    assert e.reg("R9") == 1 and e.reg("R8") == 0x0

"""Client interception (NATIVE / DONE / STOP), the second-stage plug point, wild
accesses, budgets, breakpoints and windows."""
import mhelpers as H
import pytest

from vmxlab.machine import Action, Kind, SecondStageRefusal, StopReason
from vmxlab.machine import operands as OP
from vmxlab.machine import registers as REG
from vmxlab.arch import events as EV


def counting_client(action, seen):
    def client(machine, event):
        seen.append(event)
        return action
    return client


def test_cpuid_native_done_stop():
    src = "mov eax, 1; site: cpuid; mov r10, rcx; mov r11, 0x77; cli; hlt"
    # NATIVE: the machine runs CPUID from the profile
    e = H.Env()
    seen = []
    e.m.client = counting_client(Action.NATIVE, seen)
    e.m.intercept(Kind.CPUID)
    a = e.code(src)
    e.m.run(time_budget=2)
    assert len(seen) == 1 and seen[0].kind == Kind.CPUID and seen[0].leaf == 1
    assert seen[0].rip == a.labels["site"] and seen[0].length == 2
    assert e.reg("R10") >> 5 & 1 == 1
    # DONE: the client emulates (sets ECX, advances RIP)
    e = H.Env()

    def done(machine, event):
        g = machine.gprs.read()
        g[REG.RCX] = 0xC0FFEE
        g[REG.RIP] = event.rip + event.length
        machine.gprs.write()
        return Action.DONE
    e.m.client = done
    e.m.intercept(Kind.CPUID)
    e.code(src)
    e.m.run(time_budget=2)
    assert e.reg("R10") == 0xC0FFEE
    # STOP: nothing of the instruction executed; resume executes it exactly once
    e = H.Env()
    seen = []
    e.m.client = counting_client(Action.STOP, seen)
    e.m.intercept(Kind.CPUID)
    a = e.code(src)
    st = e.m.run(time_budget=2)
    assert st.reason == StopReason.EVENT and st.event.kind == Kind.CPUID
    assert st.rip == a.labels["site"] == e.state("GUEST_RIP")
    assert e.reg("RAX") == 1 and e.reg("R10") == 0       # CPUID has not run
    st = e.m.run(time_budget=2)
    assert st.reason == StopReason.HALTED
    assert len(seen) == 1                                # not asked again for the same execution
    assert e.reg("R10") >> 5 & 1 == 1 and e.reg("R11") == 0x77


def test_rdmsr_wrmsr_and_io_events_carry_their_operands():
    e = H.Env()
    seen = []
    e.m.client = counting_client(Action.NATIVE, seen)
    e.m.intercept(Kind.RDMSR, Kind.WRMSR, Kind.IO, Kind.MOV_TO_CR, Kind.MOV_FROM_CR)
    e.code("""
        mov ecx, 0x277; rdmsr
        mov ecx, 0xc0000102; mov eax, 0x1000; mov edx, 0x2; wrmsr
        mov dx, 0x3f8; mov al, 0x41; out dx, al
        in al, 0x40
        mov rbx, cr3
        mov cr3, rbx
        cli; hlt""")
    e.m.run(time_budget=2)
    kinds = [x.kind for x in seen]
    assert kinds == [Kind.RDMSR, Kind.WRMSR, Kind.IO, Kind.IO, Kind.MOV_FROM_CR, Kind.MOV_TO_CR]
    assert seen[0].msr == 0x277
    assert seen[1].msr == 0xC0000102 and seen[1].value == 0x2_00001000
    assert (seen[2].port, seen[2].size, seen[2].is_in, seen[2].value) == (0x3F8, 1, False, 0x41)
    assert (seen[3].port, seen[3].is_in) == (0x40, True)
    assert seen[4].cr == 3 and seen[4].gpr == 3          # RBX
    assert seen[5].cr == 3 and seen[5].value == H.PML4
    assert e.state("KERNEL_GS_BASE") == 0x2_00001000
    assert e.m.uart.text() == "A"


def test_vmx_instruction_without_a_client_is_ud():
    e = H.Env()
    e.handler(6, "mov r8, [rsp]; add qword ptr [rsp], 3; iretq")
    a = e.code("site: vmcall; mov r13, 1; cli; hlt")
    e.m.run(time_budget=2)
    assert e.reg("R8") == a.labels["site"] and e.reg("R13") == 1


def test_vmx_instruction_stop_gives_the_operand_address():
    e = H.Env()
    seen = []
    e.m.client = counting_client(Action.STOP, seen)
    e.m.intercept(Kind.VMPTRLD, Kind.VMREAD)
    a = e.code("mov rbx, 0x60000; site: vmptrld [rbx + 8]; cli; hlt")
    st = e.m.run(time_budget=2)
    assert st.event.kind == Kind.VMPTRLD and st.rip == a.labels["site"]
    assert st.event.address == 0x60008
    assert OP.operand_address(e.m, st.event.insn) == 0x60008
    e.m.load(0x60008, (0x123000).to_bytes(8, "little"))
    assert OP.read_operand(e.m, st.event.insn, 0, 8) == 0x123000
    # the client performs it (DONE) by advancing RIP
    g = e.m.gprs.read()
    g[REG.RIP] = st.rip + st.event.length
    e.m.gprs.write()
    e.m.client = counting_client(Action.DONE, [])
    assert e.m.run(time_budget=2).reason == StopReason.HALTED


def test_exception_intercept_and_page_fault_cr2_untouched():
    e = H.Env()
    seen = []
    e.m.client = counting_client(Action.STOP, seen)
    e.m.intercept(exceptions=1 << EV.PF)
    e.set_pte(0x61, 0x61000 | H.RW)
    a = e.code("mov rbx, 0x61010; site: mov rax, [rbx]; cli; hlt")
    st = e.m.run(time_budget=2)
    ev = st.event
    assert ev.kind == Kind.EXCEPTION and ev.vector == EV.PF and ev.error_code == 0
    assert ev.cr2 == 0x61010 and st.rip == a.labels["site"]
    assert e.state("CR2") == 0                          # a #PF handed on does not load CR2
    # NATIVE: delivered through the IDT (here to a #PF handler that halts)
    e.handler(14, "pop r8; mov r9, cr2; hlt")
    e.m.client = counting_client(Action.NATIVE, [])
    e.m.run(time_budget=2)
    assert e.reg("R9") == 0x61010


def test_int3_stop_reports_a_software_exception_at_the_instruction():
    e = H.Env()
    e.m.client = counting_client(Action.STOP, [])
    e.m.intercept(exceptions=1 << EV.BP)
    a = e.code("nop; site: int3; cli; hlt")
    st = e.m.run(time_budget=2)
    assert st.event.vector == 3 and st.event.event_type == EV.INTR_TYPE_SOFT_EXCEPTION
    assert st.event.length == 1 and st.rip == a.labels["site"] == e.state("GUEST_RIP")


def test_second_stage_refusal_stops_at_the_faulting_instruction():
    e = H.Env()
    refused = []

    def translate(gpa, access, linear, paging_entry):
        if gpa >> 12 == 0x66:
            refused.append((gpa, access, linear, paging_entry))
            raise SecondStageRefusal({"why": "no mapping"})
        return gpa, 7
    e.m.second_stage = translate
    a = e.code("mov rbx, 0x66018; mov r10, 1; site: mov qword ptr [rbx], 5; mov r11, 2; cli; hlt")
    st = e.m.run(time_budget=2)
    assert st.reason == StopReason.SECOND_STAGE
    assert st.rip == a.labels["site"] == e.state("GUEST_RIP")
    assert e.reg("R10") == 1 and e.reg("R11") == 0
    r = st.event.detail
    assert r.payload == {"why": "no mapping"}
    assert (r.gpa, r.access, r.linear, r.paging_entry) == (0x66018, 2, 0x66018, False)
    # the translator now allows it: resume executes the write once
    e.m.second_stage = lambda gpa, access, linear, pe: (gpa, 7)
    assert e.m.run(time_budget=2).reason == StopReason.HALTED
    assert e.m.mem.read64(0x66018) == 5 and e.reg("R11") == 2


def test_second_stage_refusal_during_delivery_names_the_event():
    e = H.Env()
    e.handler(0x40, "iretq")

    def translate(gpa, access, linear, paging_entry):
        if gpa >> 12 == 0x7F and access == 2:        # the stack page of the handler frame
            raise SecondStageRefusal("stack")
        return gpa, 7
    e.m.second_stage = translate
    e.code("sti; nop; nop; cli; hlt")
    e.m.raise_interrupt(0x40)
    st = e.m.run(time_budget=2)
    assert st.reason == StopReason.SECOND_STAGE
    assert st.event.vectoring.vector == 0x40
    assert st.event.vectoring.type == EV.INTR_TYPE_EXT_INTR


def test_second_stage_translates_guest_physical_to_host_physical():
    e = H.Env()
    # guest-physical page 0x61 lives at host-physical 0x300000
    e.m.mem.write64(0x300008, 0xABCD)
    e.m.second_stage = lambda gpa, access, linear, pe: ((0x300000 | gpa & 0xFFF) if gpa >> 12 == 0x61 else gpa, 7)
    e.code("mov rbx, 0x61008; mov r10, [rbx]; cli; hlt")
    e.m.run(time_budget=2)
    assert e.reg("R10") == 0xABCD


def test_access_beyond_physical_memory_is_a_reported_stop():
    e = H.Env(memory_size=16 << 20)
    # PD entry 8: a 2 MiB page at 16 MiB, beyond the 16 MiB of RAM
    a = e.code("mov rbx, 0x1000010; mov r10, 1; site: mov rax, [rbx]; mov r11, 2; cli; hlt")
    st = e.m.run(time_budget=2)
    assert st.reason == StopReason.NONEXISTENT_MEMORY
    assert st.rip == a.labels["site"]
    assert st.event.detail.address == 0x1000010
    assert e.reg("R10") == 1 and e.reg("R11") == 0


def test_runaway_loop_ends_at_the_time_budget_and_resumes():
    e = H.Env()
    a = e.code("xor rcx, rcx; L: inc rcx; jmp L")
    st = e.m.run(time_budget=0.05)
    assert st.reason == StopReason.BUDGET
    n = e.reg("RCX")
    assert n > 1000
    assert st.rip in (a.labels["L"], a.labels["L"] + 3)
    e.m.run(time_budget=0.05)
    assert e.reg("RCX") > n


def test_instruction_budget_is_exact():
    e = H.Env()
    e.code("xor rcx, rcx; L: inc rcx; jmp L")
    st = e.m.run(instruction_budget=101)        # xor + 50 x (inc, jmp)
    assert st.reason == StopReason.BUDGET
    assert e.reg("RCX") == 50


def test_breakpoint_stops_before_and_resumes_after():
    e = H.Env()
    a = e.code("mov r10, 1; bp: mov r11, 2; mov r12, 3; cli; hlt")
    e.m.add_breakpoint(a.labels["bp"])
    st = e.m.run(time_budget=2)
    assert st.reason == StopReason.BREAKPOINT and st.rip == a.labels["bp"]
    assert e.reg("R10") == 1 and e.reg("R11") == 0
    assert e.m.run(time_budget=2).reason == StopReason.HALTED
    assert e.reg("R11") == 2 and e.reg("R12") == 3


def test_interrupt_window_request():
    e = H.Env()
    seen = []
    e.m.client = counting_client(Action.STOP, seen)
    a = e.code("nop; nop; sti; nop; open: nop; cli; hlt")
    e.m.request_interrupt_window()
    st = e.m.run(time_budget=2)
    assert st.event.kind == Kind.INTERRUPT_WINDOW
    assert st.rip == a.labels["open"]                  # after STI and its shadow


def test_tsc_deadline_event():
    e = H.Env()
    e.m.client = counting_client(Action.STOP, [])
    e.code("L: pause; jmp L")
    now = e.m.tsc.read()
    e.m.set_tsc_deadline(now + 1_000_000)
    st = e.m.run(time_budget=5)
    assert st.event.kind == Kind.TSC_DEADLINE
    assert e.m.tsc.read() >= now + 1_000_000


def test_deliver_injects_an_event_like_vm_entry():
    e = H.Env()
    e.handler(0x50, "mov r8, [rsp]; cli; hlt")
    e.handler(3, "mov r9, [rsp]; cli; hlt")
    a = e.code("site: int3; nop; cli; hlt")
    # external interrupt: return address = RIP
    assert e.m.deliver(0x50, EV.INTR_TYPE_EXT_INTR) is None
    e.m.run(time_budget=2)
    assert e.reg("R8") == a.labels["site"]
    # software exception with instruction length 1: return address = RIP + 1
    e2 = H.Env()
    e2.handler(3, "mov r9, [rsp]; cli; hlt")
    a2 = e2.code("site: int3; nop; cli; hlt")
    assert e2.m.deliver(3, EV.INTR_TYPE_SOFT_EXCEPTION, instruction_length=1) is None
    e2.m.run(time_budget=2)
    assert e2.reg("R9") == a2.labels["site"] + 1


def test_deliver_reports_a_nested_intercepted_exception():
    e = H.Env()
    e.m.client = counting_client(Action.STOP, [])
    e.m.intercept(exceptions=1 << EV.NP)
    e.set_gate(0x51, H.HANDLERS)
    e.m.mem.write(H.IDT + 16 * 0x51 + 5, bytes([0x0E]))      # not present
    e.code("cli; hlt")
    ev = e.m.deliver(0x51, EV.INTR_TYPE_EXT_INTR)
    assert ev.kind == Kind.EXCEPTION and ev.vector == EV.NP
    assert ev.error_code == 0x51 * 8 + 2 + 1                 # IDT, EXT (external interrupt)
    assert ev.vectoring.vector == 0x51


@pytest.mark.parametrize("kind,src", [(Kind.RDTSC, "rdtsc"), (Kind.INVLPG, "invlpg [rbx]"),
                                      (Kind.WBINVD, "wbinvd"), (Kind.HLT, "hlt"),
                                      (Kind.MOV_DR, "mov rax, dr7"), (Kind.GDTR_IDTR, "sgdt [rbx]")])
def test_more_kinds_stop_precisely(kind, src):
    e = H.Env()
    seen = []
    e.m.client = counting_client(Action.STOP, seen)
    e.m.intercept(kind)
    a = e.code(f"mov rbx, 0x60000; mov r10, 1; site: {src}; mov r11, 2; cli; hlt")
    st = e.m.run(time_budget=2)
    assert st.reason == StopReason.EVENT and st.event.kind == kind
    assert st.rip == a.labels["site"] == e.state("GUEST_RIP")
    assert e.reg("R11") == 0
    if kind == Kind.HLT:
        return
    st = e.m.run(time_budget=2)
    assert st.reason == StopReason.HALTED and e.reg("R11") == 2 and len(seen) == 1


def test_self_modifying_code_gets_its_new_intercept_sites():
    e = H.Env()
    e.m.client = counting_client(Action.STOP, [])
    e.m.intercept(Kind.CPUID)
    # patch: 4 NOPs at `slot` become "cpuid; nop; nop" after the slot ran once
    a = e.code("""
        xor r14, r14
    again:
        inc r14
    slot: nop; nop; nop; nop
        cmp r14, 2
        je done
        lea rbx, [slot]
        mov word ptr [rbx], 0xa20f        # cpuid
        jmp again
    done: cli; hlt""")
    st = e.m.run(time_budget=2)
    assert st.reason == StopReason.EVENT and st.event.kind == Kind.CPUID
    assert st.rip == a.labels["slot"] and e.reg("R14") == 2


def test_remapped_code_page_is_rescanned():
    e = H.Env()
    e.m.client = counting_client(Action.STOP, [])
    e.m.intercept(Kind.RDMSR)
    # linear 0x70000 -> physical 0x70000 (ret) first, then -> 0x71000 (rdmsr; ret)
    e.m.load(0x70000, bytes.fromhex("c3"))
    e.m.load(0x71000, bytes.fromhex("0f32c3"))
    e.code(f"""
        mov rbx, 0x70000
        call rbx
        mov rax, {H.pte(0x70)}
        mov qword ptr [rax], 0x71003
        invlpg [rbx]
        call rbx
        cli; hlt""")
    st = e.m.run(time_budget=2)
    assert st.reason == StopReason.EVENT and st.event.kind == Kind.RDMSR and st.rip == 0x70000


def test_ud_class_instructions_natively():
    e = H.Env()
    e.handler(6, "mov r8, [rsp]; cli; hlt")
    e.handler(13, "pop r9; mov r10, [rsp]; cli; hlt")
    # MONITOR/MWAIT exist on skylake-client (CPUID.1:ECX.MONITOR): they complete at CPL 0;
    # RDPMC: no counters are modelled, #GP(0); XSAVES: not reported by CPUID, #UD
    a = e.code(f"""
        mov rax, {H.DATA}; xor ecx, ecx; xor edx, edx
        monitor
        xor eax, eax; xor ecx, ecx
        mwait
        mov r11, 1
        xor ecx, ecx
    pmc: rdpmc
        cli; hlt""")
    e.m.run(time_budget=2)
    assert e.reg("R11") == 1 and e.m.monitor_address == H.DATA
    assert e.reg("R10") == a.labels["pmc"] and e.reg("R9") == 0
    e2 = H.Env()
    e2.handler(6, "mov r8, [rsp]; cli; hlt")
    a2 = e2.code(f"mov rbx, {H.DATA}; xor eax, eax; xor edx, edx; site: xsaves [rbx]; cli; hlt")
    e2.m.run(time_budget=2)
    assert e2.reg("R8") == a2.labels["site"]

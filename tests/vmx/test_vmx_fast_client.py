"""The fast path of VMREAD/VMWRITE from the #UD hook (Machine.fast_client) is taken
only when nothing waits for an instruction boundary: with an interrupt pending the
instructions go through the general path, which ends the run segment after each,
so the interrupt arrives at the first open boundary."""
from vhelpers import Bench, root_bench

from vmxlab.machine import StopReason


def test_pending_interrupt_arrives_at_the_first_open_boundary_between_vmreads():
    b = root_bench()
    b.env.handler(0x40, "mov r8, [rsp]; iretq")
    a = b.env.code("""
        mov rbx, 0x681e
        vmread rax, rbx        # RFLAGS.IF = 0: the interrupt waits
        sti
        nop                    # the STI shadow: no interrupt before this completes
    after: vmread rcx, rbx
        vmread rdx, rbx
        cli
        hlt""")
    b.m.raise_interrupt(0x40)
    stop = b.cpu.run(time_budget=5)
    assert stop.reason == StopReason.HALTED
    assert b.env.reg("R8") == a.labels["after"]
    assert b.env.reg("RAX") == b.env.reg("RCX") == b.env.reg("RDX") == 0x1234


def test_vmread_and_vmwrite_take_the_fast_path_when_nothing_waits():
    b = root_bench()
    taken = []
    fast = b.m.fast_client
    b.m.fast_client = lambda *args: taken.append(args[2]) or fast(*args)
    b.env.code("""
        mov rbx, 0x681e
        mov rax, 0x5678
        vmwrite rbx, rax
        vmread rcx, rbx
        hlt""")
    stop = b.cpu.run(time_budget=5)
    assert stop.reason == StopReason.HALTED
    assert b.env.reg("RCX") == 0x5678 and b.cpu.vmread("GUEST_RIP") == 0x5678
    assert len(taken) == 2


def test_blocking_by_sti_survives_a_vm_exit_and_entry():
    """CPUID right after STI exits before completing: the exit saves blocking by
    STI, VMRESUME loads it back ("Guest Non-Register State"), so the first
    instruction after the entry still runs in the shadow; a pending interrupt
    (no external-interrupt exiting) arrives through the guest IDT after it."""
    from vmxlab.arch import controls as C
    b = Bench()
    b.env.handler(0x40, "mov r8, [rsp]; iretq")
    cpu = b.start("""
        sti
        cpuid
        nop                    # blocking by STI loaded by VMRESUME: the interrupt waits
    after: nop
        cli
        hlt""", controls={"CPU_BASED_VM_EXEC_CONTROL": C.CPU_BASED_ACTIVATE_SECONDARY_CONTROLS},
        host=b.record_and_resume())
    b.m.raise_interrupt(0x40)
    assert cpu.run(time_budget=5).reason == StopReason.HALTED
    assert [e.basic for e in b.exits] == [10]
    assert b.env.reg("R8") == b.guest.labels["after"]

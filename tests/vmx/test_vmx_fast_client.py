"""The fast path of VMREAD/VMWRITE from the #UD hook (Machine.fast_client) is taken
only when nothing waits for an instruction boundary: with an interrupt pending the
instructions go through the general path, which ends the run segment after each,
so the interrupt arrives at the first open boundary."""
from vhelpers import VMCS, VMXON, Bench

from vmxlab.machine import StopReason


def _root_bench():
    b = Bench()
    b.cpu.vmxon(VMXON)
    b.cpu.vmclear(VMCS)
    b.cpu.vmptrld(VMCS)
    b.cpu.vmwrite("GUEST_RIP", 0x1234)
    return b


def test_pending_interrupt_arrives_at_the_first_open_boundary_between_vmreads():
    b = _root_bench()
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
    b = _root_bench()
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

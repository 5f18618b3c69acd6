"""Clients called inside the hook (Machine.inline_clients): whatever the client
changes applies from the next instruction, exactly as when the run segment ends
and the client runs at the boundary.  Each case runs both ways."""
import struct

import mhelpers as H
import pytest

from vmxlab.machine import Action, Kind, StopReason
from vmxlab.machine import registers as REG

BOTH = pytest.mark.parametrize("inline", [True, False], ids=["inline", "boundary"])


def _env(inline: bool) -> H.Env:
    e = H.Env()
    e.m.inline_clients = inline
    e.m.intercept(Kind.CPUID)
    return e


def _skip(m, ev) -> None:
    """The client's RIP write past the intercepted instruction."""
    g = m.gprs.read()
    g[REG.RIP] = ev.rip + ev.length
    m.gprs.write()


@BOTH
def test_client_changes_a_hidden_segment_base(inline):
    """set_state of FS base (hidden segment state: the context blob) inside the
    client: the next instruction's fs: access uses the new base."""
    e = _env(inline)
    e.m.mem.write64(H.DATA, 0x1111)
    e.m.mem.write64(H.DATA + 0x100, 0x2222)

    def client(m, ev):
        s = m.get_state()
        s["GUEST_FS_BASE"] = H.DATA + 0x100
        s["GUEST_RIP"] = ev.rip + ev.length
        m.set_state(s)
        return Action.DONE
    e.m.client = client
    e.code("xor eax, eax; xor esi, esi; cpuid; mov rbx, qword ptr fs:[rsi]; hlt")
    assert e.m.run(time_budget=5).reason == StopReason.HALTED
    assert e.reg("RBX") == 0x2222


@BOTH
def test_client_switches_to_compatibility_mode(inline):
    """CS switched to a 32-bit code segment by the client: the following bytes
    decode as 32-bit code (48 is DEC EAX there, a REX prefix in 64-bit mode)."""
    e = _env(inline)
    after = H.CODE + 0x100
    e.m.load(after, bytes.fromhex("b8 05 00 00 00 48 f4"))     # mov eax, 5; dec eax (32-bit) ; hlt

    def client(m, ev):
        s = m.get_state()
        s["GUEST_CS_SELECTOR"], s["GUEST_CS_AR_BYTES"] = 0x18, 0xC09B     # 32-bit code, DPL 0
        s["GUEST_RIP"] = after
        m.set_state(s)
        return Action.DONE
    e.m.client = client
    e.code("cpuid; hlt")
    assert e.m.run(time_budget=5).reason == StopReason.HALTED
    assert e.reg("RAX") & 0xFFFFFFFF == 4


@BOTH
def test_client_rewrites_the_code_that_follows(inline):
    """A client writing the next instructions (a code page unicorn has
    translated): the new bytes run, not the stale translation."""
    e = _env(inline)
    a = e.code("cpuid; next: mov ebx, 1; hlt")

    def client(m, ev):
        m.write_host(a.labels["next"], bytes.fromhex("bb 02 00 00 00"))     # mov ebx, 2
        _skip(m, ev)
        return Action.DONE
    e.m.client = client
    assert e.m.run(time_budget=5).reason == StopReason.HALTED
    assert e.reg("RBX") == 2


@BOTH
def test_client_delivers_an_interrupt_through_the_idt(inline):
    """Event delivery by the client (privilege level unchanged, the IDT gate's
    handler runs, IRETQ returns after the CPUID)."""
    e = _env(inline)
    e.handler(0x40, "mov r9, 0x40; iretq")

    def client(m, ev):
        _skip(m, ev)
        assert m.deliver(0x40, 4) is None                  # software interrupt type
        return Action.DONE
    e.m.client = client
    e.code("cpuid; mov r10, 7; hlt")
    assert e.m.run(time_budget=5).reason == StopReason.HALTED
    assert (e.reg("R9"), e.reg("R10")) == (0x40, 7)


@BOTH
def test_stop_and_native_from_the_client(inline):
    """STOP: run() returns at the instruction, which then runs natively on the
    next run(); NATIVE: the machine executes it (the profile's CPUID)."""
    e = _env(inline)
    actions = [Action.STOP, Action.NATIVE]
    seen = []

    def client(m, ev):
        seen.append(ev.rip)
        return actions.pop(0)
    e.m.client = client
    a = e.code("mov eax, 1; site: cpuid; mov r10, rcx; mov eax, 1; site2: cpuid; mov r11, rcx; hlt")
    stop = e.m.run(time_budget=5)
    assert stop.reason == StopReason.EVENT and stop.rip == a.labels["site"] and stop.event.kind == Kind.CPUID
    assert e.m.run(time_budget=5).reason == StopReason.HALTED
    assert seen == [a.labels["site"], a.labels["site2"]]
    assert e.reg("R10") >> 5 & 1 and e.reg("R11") >> 5 & 1            # CPUID.1:ECX.VMX from the profile


@BOTH
def test_a_pending_interrupt_raised_by_the_client_is_delivered_at_the_next_boundary(inline):
    e = _env(inline)
    e.handler(0x30, "mov r9, 0x30; iretq")

    def client(m, ev):
        m.raise_interrupt(0x30)
        _skip(m, ev)
        return Action.DONE
    e.m.client = client
    e.code("sti; cpuid; nop; nop; hlt")
    e.m.run(time_budget=5)
    assert e.reg("R9") == 0x30


def test_inline_clients_end_no_run_segment():
    """The point of it: a thousand intercepted CPUIDs in one uc_emu_start."""
    e = _env(True)

    def client(m, ev):
        _skip(m, ev)
        return Action.DONE
    e.m.client = client
    e.code("mov ecx, 1000; top: push rcx; cpuid; pop rcx; dec ecx; jnz top; hlt")
    segments = e.m.segments
    assert e.m.run(time_budget=10).reason == StopReason.HALTED
    assert e.m.segments - segments <= 2

"""CMPXCHG with 32-bit operands in 64-bit mode (SDM Vol. 2 "CMPXCHG", Operation):
TEMP := DEST; the flags are those of CMP accumulator, TEMP; if equal, ZF := 1 and
DEST := SRC, and the accumulator is not written; else ZF := 0, accumulator :=
TEMP and DEST := TEMP (a memory destination gets its write cycle either way).
A 32-bit register write clears bits 63:32 ("General-Purpose Registers in 64-Bit
Mode").  Unicorn writes EAX in both cases (RAX bits 63:32 lost on success); the
machine executes this form itself.  Found by the differential runner
(docs/differential.md)."""
import pytest

from mhelpers import CODE, DATA, HANDLERS, KSTACK, Env, P, US
from vmxlab.machine import StopReason

RAX, RBX, RCX = 0xAAAAAAAA_11111111, 0xBBBBBBBB_11111111, 0xCCCCCCCC_22222222
CF, PF, AF, ZF, SF, OF = 1, 4, 0x10, 0x40, 0x80, 0x800
ARITH = CF | PF | AF | ZF | SF | OF


def run(source, **regs):
    e = Env()
    e.handler(6, "hlt")
    e.handler(14, "hlt")
    e.code(source + "\nhlt")
    e.m.load(DATA, bytes(16))
    s = e.m.get_state()
    s.update({"RAX": RAX, "RBX": RBX, "RCX": RCX, "GUEST_RFLAGS": 2})
    s.update(regs)
    e.m.set_state(s)
    assert e.m.run(time_budget=2).reason == StopReason.HALTED
    return e


def test_register_destination_equal_keeps_rax():
    e = run("cmpxchg ebx, ecx", RBX=0xBBBBBBBB_11111111)
    assert e.reg("RAX") == RAX                        # not written
    assert e.reg("RBX") == 0x22222222                 # DEST := SRC, zero-extended
    assert e.state("GUEST_RFLAGS") & ARITH == ZF | PF  # CMP with equal operands: ZF, PF (result 0)


def test_register_destination_not_equal():
    e = run("cmpxchg ebx, ecx", RBX=0xBBBBBBBB_33333333)
    assert e.reg("RAX") == 0x33333333                 # accumulator := TEMP, zero-extended
    assert e.reg("RBX") == 0x33333333                 # DEST := TEMP, zero-extended
    # 0x11111111 - 0x33333333 = 0xDDDDDDDE: borrow, sign; PF of 0xDE (6 ones): set; AF: borrow from bit 4
    assert e.state("GUEST_RFLAGS") & ARITH == CF | SF | PF | AF


def test_memory_destination_equal_keeps_rax():
    e = run(f"mov rsi, {DATA:#x}\nmov dword ptr [rsi], 0x11111111\ncmpxchg dword ptr [rsi], ecx")
    assert e.reg("RAX") == RAX
    assert e.m.mem.read(DATA, 8) == bytes.fromhex("2222222200000000")
    assert e.state("GUEST_RFLAGS") & ZF


def test_memory_destination_not_equal_writes_eax():
    e = run(f"mov rsi, {DATA:#x}\nmov dword ptr [rsi], 0x44444444\ncmpxchg dword ptr [rsi], ecx")
    assert e.reg("RAX") == 0x44444444
    assert e.m.mem.read(DATA, 4) == bytes.fromhex("44444444")
    assert not e.state("GUEST_RFLAGS") & ZF


def test_lock_with_register_destination_is_ud():
    e = run(".byte 0xf0, 0x0f, 0xb1, 0xcb")            # lock cmpxchg ebx, ecx
    assert e.state("GUEST_RIP") == HANDLERS + 0x100 * 6 + 1
    assert e.reg("RBX") == RBX and e.reg("RAX") == RAX


@pytest.mark.parametrize("accumulator", [0x11111111, 0x99999999])
def test_read_only_destination_faults_as_a_write_whatever_the_comparison(accumulator):
    e = Env()
    e.handler(14, "hlt")
    e.m.load(DATA, (0x11111111).to_bytes(4, "little"))
    e.set_pte(DATA >> 12, DATA | P | US)             # present, read-only, user
    e.code(f"mov rsi, {DATA:#x}\ncmpxchg dword ptr [rsi], ecx\nhlt")
    s = e.m.get_state()
    s.update({"RAX": accumulator, "RCX": RCX, "GUEST_RFLAGS": 2})
    e.m.set_state(s)
    e.user_mode()
    assert e.m.run(time_budget=2).reason == StopReason.HALTED
    assert e.state("GUEST_RIP") == HANDLERS + 0x100 * 14 + 1
    assert e.state("CR2") == DATA
    assert e.q(KSTACK - 48) == 0b111                  # error code: P, W/R = write, U/S
    assert e.q(KSTACK - 40) == CODE + 7               # the faulting CMPXCHG
    assert e.reg("RAX") == accumulator                # nothing written


def test_a_destination_in_nonexistent_physical_memory_stops_the_run_before_the_instruction():
    # the 2-MiB page at linear 0x3E00000 maps physical 0x3E00000, beyond the 16 MiB of RAM
    e = Env()
    at = e.code("mov rbx, 0x3e00010\nat: lock cmpxchg dword ptr [rbx], ecx\nhlt").labels["at"]
    st = e.m.run(time_budget=2)
    assert st.reason == StopReason.NONEXISTENT_MEMORY
    assert st.rip == at and e.state("GUEST_RIP") == at            # not executed

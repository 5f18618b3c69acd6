"""VM exits on the simulated processor: each exit with its control on (exit
information asserted from the SDM) and the instruction running natively with it off."""
import pytest

from vmxlab.arch import controls as C
from vmxlab.arch import exits as X
from vhelpers import GUEST, Bench


def test_cpuid_exits_unconditionally_and_resumes():
    b = Bench()
    b.start("mov eax, 1\ncpuid\nmov ebx, 0x1234\nhlt", host=b.record_and_resume())
    stop = b.cpu.run(time_budget=5)
    assert [e.basic for e in b.exits] == [X.CPUID]
    e = b.exits[0]
    assert e.guest_rip == GUEST + 5 and e.instruction_length == 2 and e.qualification == 0
    assert b.m.gprs.read()[3] == 0x1234          # RBX: the guest ran on after VMRESUME
    assert stop.reason.value == "halted"

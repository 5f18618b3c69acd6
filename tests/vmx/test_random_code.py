"""Guest code can do anything: random bytes (biased toward 0F-prefixed system and
VMX instructions) run in VMX root operation and as a guest under EPT always end
in a reported stop -- never an exception out of run()."""
import random

import pytest
from test_vmx_exits import ept_bench
from vhelpers import VMCS, VMXON, Bench

from vmxlab.arch import controls as C
from vmxlab.machine import StopReason
from vmxlab.machine.events import MachineNotImplemented
from vmxlab.vmx.cpu import VmxFail, VmxFault

CODE = 0x40000


def random_code(rng: random.Random) -> bytes:
    return bytes(0x0F if rng.random() < 0.15 else rng.randrange(256) for _ in range(64))


@pytest.mark.parametrize("seed", range(3))
def test_random_code_in_vmx_root_operation(seed):
    rng = random.Random(seed)
    for _ in range(12):
        b = Bench()
        for vector in range(32):
            b.env.handler(vector, "hlt")
        b.m.load(CODE, random_code(rng))
        b.cpu.vmxon(VMXON)
        b.cpu.vmclear(VMCS)
        b.cpu.vmptrld(VMCS)
        try:
            stop = b.cpu.run(time_budget=0.2)
        except MachineNotImplemented:
            continue                                   # a documented limit, named
        assert isinstance(stop.reason, StopReason)


@pytest.mark.parametrize("seed", range(3))
def test_random_code_as_a_guest_under_ept(seed):
    rng = random.Random(100 + seed)
    for _ in range(12):
        b, eptp = ept_bench()
        for vector in range(32):
            b.env.handler(vector, "hlt")
        exits = []

        def host(cpu):
            exits.append(cpu.exit.basic)
            if len(exits) > 30:
                cpu.stop("enough")
                return
            try:
                cpu.vmwrite("GUEST_RIP", cpu.vmread("GUEST_RIP") + cpu.vmread("VM_EXIT_INSTRUCTION_LEN"))
                cpu.vmresume()
            except (VmxFail, VmxFault):
                cpu.stop("VMRESUME failed")
        controls = {"CPU_BASED_VM_EXEC_CONTROL": C.CPU_BASED_ACTIVATE_SECONDARY_CONTROLS | rng.choice(
                        [0, C.CPU_BASED_HLT_EXITING | C.CPU_BASED_UNCOND_IO_EXITING | C.CPU_BASED_MOV_DR_EXITING
                         | C.CPU_BASED_CR3_LOAD_EXITING | C.CPU_BASED_RDTSC_EXITING, C.CPU_BASED_MONITOR_TRAP_FLAG]),
                    "SECONDARY_VM_EXEC_CONTROL": C.SECONDARY_EXEC_ENABLE_EPT | C.SECONDARY_EXEC_ENABLE_VPID}
        code = random_code(rng)
        b.start(".byte " + ",".join(map(str, code)), controls=controls, host=host,
                fields={"EPT_POINTER": eptp, "VIRTUAL_PROCESSOR_ID": 1,
                        "EXCEPTION_BITMAP": rng.choice([0, 0xFFFFFFFF])})
        try:
            stop = b.cpu.run(time_budget=0.2)
        except MachineNotImplemented:
            continue
        assert isinstance(stop.reason, StopReason)

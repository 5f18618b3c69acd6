"""A VMX test bench: the flat 64-bit environment of the machine tests with a VMX
unit, a VMXON region and a VMCS, guest and host on the same processor."""
from __future__ import annotations

import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "machine"))
from mhelpers import CODE, DATA, KSTACK, Env  # noqa: E402

from vmxlab.arch import fields as F  # noqa: E402
from vmxlab.vmx.cpu import VmxCpu  # noqa: E402
from vmxlab.vmx.setup import fields_from_state  # noqa: E402

VMXON, VMCS = 0x100000, 0x101000
GUEST = 0x70000            # guest code
HOST = 0x48000             # host code (machine-code host) or registered Python host address
GSTACK = 0x7F000
HSTACK = 0x8F000

# host machine code: GUEST_RIP += VM-exit instruction length (RAX, RBX, RCX clobbered)
ADVANCE_RIP = """
    mov rbx, 0x681e
    vmread rax, rbx
    mov rbx, 0x440c
    vmread rcx, rbx
    add rax, rcx
    mov rbx, 0x681e
    vmwrite rbx, rax
"""


class Bench:
    def __init__(self, profile=None, memory_size=16 << 20):
        self.env = Env(memory_size, profile)
        self.m = self.env.m
        self.cpu = VmxCpu(self.m)
        p = self.m.profile
        for page in (VMXON, VMCS):
            self.m.load(page, struct.pack("<I", p.revision_id))
        s = self.m.get_state()
        s["GUEST_CR4"] |= 1 << 13                       # CR4.VMXE
        self.m.set_state(s)
        self.m.msrs.poke(0x3A, 0x5)                     # IA32_FEATURE_CONTROL: locked, VMX outside SMX
        self.exits = []

    def start(self, guest_source: str, controls: dict | None = None, host=None, fields: dict | None = None):
        """VMXON, VMCLEAR, VMPTRLD, fill the VMCS from the current state, VMLAUNCH."""
        self.guest = self.env.code(guest_source, GUEST)
        cpu = self.cpu
        cpu.vmxon(VMXON)
        cpu.vmclear(VMCS)
        cpu.vmptrld(VMCS)
        state = self.m.get_state()
        values = fields_from_state(state, self.m.profile, host_rip=HOST, host_rsp=HSTACK, controls=controls)
        values[F.GUEST_RIP] = GUEST
        values[F.GUEST_RSP] = GSTACK
        for enc, value in values.items():
            cpu.vmwrite(enc, value)
        for name, value in (fields or {}).items():
            cpu.vmwrite(name, value)
        if host is not None:
            cpu.register_host(HOST, host)
        cpu.vmlaunch()
        return cpu

    def record_and_resume(self, advance: bool = True):
        """A Python host handler that records the exit and resumes after the instruction."""
        def handler(cpu):
            self.exits.append(cpu.exit)
            if advance:
                cpu.vmwrite("GUEST_RIP", cpu.vmread("GUEST_RIP") + cpu.vmread("VM_EXIT_INSTRUCTION_LEN"))
            cpu.vmresume()
        return handler


def root_bench() -> Bench:
    """A Bench in VMX root operation with a current VMCS whose GUEST_RIP is 0x1234."""
    b = Bench()
    b.cpu.vmxon(VMXON)
    b.cpu.vmclear(VMCS)
    b.cpu.vmptrld(VMCS)
    b.cpu.vmwrite("GUEST_RIP", 0x1234)
    return b

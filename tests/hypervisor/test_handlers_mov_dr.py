"""The hypervisor's MOV DR handler.  A MOV-DR VM exit "takes priority over" the
#GP for CPL > 0 and the #UD for DR4/DR5 with CR4.DE = 1 (SDM "Instructions That
Cause VM Exits Conditionally"), so the handler must raise them; DR4/DR5 alias
DR6/DR7 when CR4.DE = 0, and DR7.GD = 1 makes any MOV DR a #DB with DR6.BD set
("MOV-Move to/from Debug Registers", "Debug Exception Conditions")."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "vmx"))
from vhelpers import Bench  # noqa: E402

from vmxlab.arch import controls as C  # noqa: E402
from vmxlab.arch import exits as X  # noqa: E402
from vmxlab.hypervisor.handlers import ExitHandler  # noqa: E402
from vmxlab.machine import registers as REG  # noqa: E402

MOV_DR = C.CPU_BASED_ACTIVATE_SECONDARY_CONTROLS | C.CPU_BASED_MOV_DR_EXITING
CR4_DE = 1 << 3


def run(source, fields=None, cr4_de=False, handlers=None):
    b = Bench()
    for vector, code in (handlers or {}).items():
        b.env.handler(vector, code)
    h = ExitHandler()

    def host(cpu):
        b.exits.append(cpu.exit)
        h.handle(cpu)
    fields = dict(fields or {})
    if cr4_de:
        cr4 = b.m.get_state()["GUEST_CR4"] | CR4_DE
        fields["GUEST_CR4"] = cr4
    b.start(source + "\nhlt", controls={"CPU_BASED_VM_EXEC_CONTROL": MOV_DR}, host=host, fields=fields)
    stop = b.cpu.run(time_budget=5)
    assert h.report is None, h.report
    return b, stop


def reg(b, name):
    return b.m.gprs.read()[REG.GPR_INDEX[name]]


def test_mov_to_and_from_dr0_and_dr7_are_emulated():
    b, stop = run("mov rax, 0x1234\nmov dr0, rax\nmov rbx, dr0\nmov rax, 0x401\nmov dr7, rax\nmov rcx, dr7")
    assert [e.basic for e in b.exits] == [X.DR_ACCESS] * 4 and stop.reason.value == "halted"
    assert reg(b, "RBX") == 0x1234 and reg(b, "RCX") == 0x401


def test_dr4_dr5_alias_dr6_dr7_when_cr4_de_is_clear():
    b, _ = run("mov rax, 0x403\nmov dr5, rax\nmov rbx, dr7\nmov rcx, dr4\nmov rdx, dr6")
    assert reg(b, "RBX") == 0x403                      # DR5 written = DR7
    assert reg(b, "RCX") == reg(b, "RDX")              # DR4 read = DR6


def test_dr4_with_cr4_de_set_is_an_invalid_opcode():
    b, _ = run("mov r15, 0\nmov rbx, dr4\nmov r14, 1", cr4_de=True, handlers={6: "mov r15, 6\nhlt"})
    assert [e.basic for e in b.exits] == [X.DR_ACCESS]
    assert reg(b, "R15") == 6 and reg(b, "R14") == 0   # #UD delivered, the MOV not completed


def test_general_detect_is_a_debug_exception_with_bd_set():
    b, _ = run("mov rax, 0x2400\nmov dr7, rax\nmov rbx, 0x77\nmov dr0, rbx\nmov r14, 1",
               handlers={1: "mov r15, 1\nmov r13, dr6\nmov r12, dr7\nhlt"})
    assert [e.basic for e in b.exits] == [X.DR_ACCESS] * 2 + [X.DR_ACCESS] * 2  # + the handler's two reads
    assert reg(b, "R15") == 1 and reg(b, "R14") == 0
    assert reg(b, "R13") & (1 << 13)                   # DR6.BD
    assert reg(b, "R12") == 0x400                      # DR7.GD cleared for the handler
    assert b.m.ctrl.read()[REG.DR0] != 0x77            # the MOV to DR0 did not happen


def test_mov_dr_at_cpl3_is_a_general_protection_fault():
    b = Bench()
    b.env.handler(13, "pop r8\nmov r15, 13\nhlt")
    h = ExitHandler()

    def host(cpu):
        b.exits.append(cpu.exit)
        h.handle(cpu)
    user = {}
    b.env.set_segments(user, ring=3)                   # the guest starts at CPL3
    user["GUEST_RSP"] = 0x9F000
    b.start("mov rax, dr7\nmov r14, 1\nhlt", controls={"CPU_BASED_VM_EXEC_CONTROL": MOV_DR}, host=host,
            fields=user)
    b.cpu.run(time_budget=5)
    assert [e.basic for e in b.exits] == [X.DR_ACCESS]  # the exit first, then the handler's #GP(0)
    assert reg(b, "R15") == 13 and reg(b, "R8") == 0 and reg(b, "R14") == 0

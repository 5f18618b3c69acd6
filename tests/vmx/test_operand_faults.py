"""A VMX instruction whose memory operand cannot be read or written takes #PF
(CR2 = the address) after the instruction's #UD/#GP checks, as its Operation in the
SDM's "VMX Instruction Reference" orders them; nothing of it takes effect."""
import pytest
from vhelpers import VMCS, VMXON, Bench

from vmxlab.machine import registers as REG

HANDLERS = {14: "pop r8\nmov r9, cr2\nmov r15, 14\nhlt", 13: "pop r8\nmov r15, 13\nhlt",
            12: "pop r8\nmov r15, 12\nhlt"}


def run(code, vmxon_first=True, user=False):
    b = Bench()
    for vector, src in HANDLERS.items():
        b.env.handler(vector, src)
    b.env.set_pte(0x61, 0)                                # page 0x61000 not present
    if vmxon_first:
        b.cpu.vmxon(VMXON)
        b.cpu.vmclear(VMCS)
        b.cpu.vmptrld(VMCS)
    if user:
        b.env.user_mode()
    b.env.code(code + "\nmov r14, 1\nhlt")
    stop = b.cpu.run(time_budget=5)
    g = b.m.gprs.read()
    return b, stop, {n: g[REG.GPR_INDEX[n]] for n in ("R8", "R9", "R14", "R15")}


@pytest.mark.parametrize("code,error_code", [
    ("mov rax, 0x61000\nvmptrld [rax]", 0x0),             # read, supervisor, not present
    ("mov rax, 0x61000\nvmclear [rax]", 0x0),
    ("mov rax, 0x61000\nvmptrst [rax]", 0x2),             # a write
    ("mov rax, 0x61000\nmov rbx, 0x681e\nvmread [rax], rbx", 0x2),
    ("mov rax, 0x61000\nmov rbx, 0x681e\nvmwrite rbx, [rax]", 0x0),
])
def test_unreadable_operand_is_a_page_fault(code, error_code):
    b, stop, r = run(code)
    assert stop.reason.value == "halted"
    assert (r["R15"], r["R8"], r["R9"], r["R14"]) == (14, error_code, 0x61000, 0)


def test_vmxon_operand_fault():
    b, stop, r = run("mov rax, 0x61000\nvmxon [rax]", vmxon_first=False)
    assert (r["R15"], r["R9"], r["R14"]) == (14, 0x61000, 0)
    assert not b.cpu.vmx.in_vmx


def test_cpl3_is_a_general_protection_fault_before_the_operand_is_read():
    b, stop, r = run("mov rax, 0x61000\nvmptrld [rax]", user=True)
    assert (r["R15"], r["R8"], r["R14"]) == (13, 0, 0)


@pytest.mark.parametrize("code,vector", [
    ("mov rax, 0x8000000000000000\nvmptrld [rax]", 13),
    ("mov rax, 0x8000000000000000\nmov rbx, 0x681e\nvmread [rax], rbx", 13),
    ("mov rbp, 0x8000000000000000\nvmptrst [rbp]", 12),           # through SS: #SS(0)
])
def test_noncanonical_operand_is_gp_or_ss(code, vector):
    b, stop, r = run(code)
    assert (r["R15"], r["R8"], r["R14"]) == (vector, 0, 0)

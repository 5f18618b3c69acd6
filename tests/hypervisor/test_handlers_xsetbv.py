"""The hypervisor's XSETBV handler and the XCR0 rules it applies (SDM Vol. 3A
"Extended Control Registers (Including XCR0)"; "XSETBV" exceptions)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "vmx"))
from vhelpers import Bench  # noqa: E402

from vmxlab.arch import exits as X  # noqa: E402
from vmxlab.arch.registers import xcr0_problem  # noqa: E402
from vmxlab.hypervisor.handlers import ExitHandler  # noqa: E402
from vmxlab.machine import registers as REG  # noqa: E402

ALL = (1 << 19) - 1


@pytest.mark.parametrize("value,ok", [
    (0x1, True), (0x3, True), (0x7, True), (0x1F, True), (0xE7, True), (0x60003, True),
    (0x0, False), (0x2, False),                       # x87 (bit 0) must be 1
    (0x5, False),                                     # AVX without SSE
    (0xB, False), (0x13, False),                      # BNDREGS without BNDCSR and the reverse
    (0x27, False), (0xC7, False),                     # AVX-512 components not all together
    (0xE3, False),                                    # AVX-512 without AVX
    (0x20003, False), (0x40003, False),               # TILECFG without TILEDATA and the reverse
])
def test_xcr0_rules(value, ok):
    assert (xcr0_problem(value, ALL) is None) == ok


def test_xcr0_unsupported_component():
    assert "not supported" in xcr0_problem(0x7, 0x3)


def run(source):
    b = Bench()
    b.env.handler(13, "pop r8\nmov r15, 13\nhlt")
    s = b.m.get_state()
    s["GUEST_CR4"] |= 1 << 18                         # CR4.OSXSAVE
    b.m.set_state(s)
    h = ExitHandler()

    def host(cpu):
        b.exits.append(cpu.exit)
        h.handle(cpu)
    b.start(source + "\nmov r14, 1\nhlt", host=host)
    b.cpu.run(time_budget=5)
    g = b.m.gprs.read()
    return b, {n: g[REG.GPR_INDEX[n]] for n in ("R8", "R14", "R15")}


def test_valid_xcr0_is_loaded():
    b, r = run("xor ecx, ecx\nmov eax, 7\nxor edx, edx\nxsetbv\nxor ecx, ecx\nxgetbv\nmov r13, rax")
    assert [e.basic for e in b.exits] == [X.XSETBV] and r["R14"] == 1 and r["R15"] == 0
    assert b.m.gprs.read()[REG.GPR_INDEX["R13"]] == 7


@pytest.mark.parametrize("ecx,eax", [(0, 5), (1, 1), (0, 0)])
def test_refused_value_is_a_general_protection_fault(ecx, eax):
    b, r = run(f"mov ecx, {ecx}\nmov eax, {eax}\nxor edx, edx\nxsetbv")
    assert [e.basic for e in b.exits] == [X.XSETBV]
    assert r["R15"] == 13 and r["R8"] == 0 and r["R14"] == 0

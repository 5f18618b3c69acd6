"""Virtualize APIC accesses (SDM Vol. 3C "Virtualizing Memory-Mapped APIC Accesses",
"Exit Qualification for APIC-Access VM Exits"; APIC-register virtualization and
virtual-interrupt delivery 0): an access to the APIC-access page is an APIC-access
VM exit, fault-like, qualification = offset | access type << 12 (0 linear read,
1 linear write, 2 linear fetch, 15 guest-physical access); with "use TPR shadow",
a 32-bit MOV reading or writing offset 80H goes to VTPR instead (a write below the
TPR threshold then exits "TPR below threshold", trap-like)."""
import pytest
from test_vmx_exits import ept_bench, ept_controls
from vhelpers import Bench

from vmxlab.arch import controls as C
from vmxlab.arch import exits as X
from vmxlab.machine import registers as REG

APIC, VAPIC = 0x209000, 0x201000
P2 = C.CPU_BASED_ACTIVATE_SECONDARY_CONTROLS
VAA = C.SECONDARY_EXEC_VIRTUALIZE_APIC_ACCESSES


def run(source, tpr=False, threshold=0, bench=None, controls=None, fields=None):
    b, extra = bench if bench is not None else (Bench(), {})
    page = bytearray(4096)
    page[0x80] = 0x50
    b.m.mem.write(VAPIC, bytes(page))
    b.m.mem.write(APIC, b"\x11" * 4096)                 # what the page holds: never read through
    ctl = dict(controls or {"CPU_BASED_VM_EXEC_CONTROL": P2, "SECONDARY_VM_EXEC_CONTROL": 0})
    if tpr:
        ctl["CPU_BASED_VM_EXEC_CONTROL"] |= C.CPU_BASED_TPR_SHADOW
    ctl["SECONDARY_VM_EXEC_CONTROL"] |= VAA
    b.start(source + "\nhlt", controls=ctl, host=lambda cpu: (b.exits.append(cpu.exit), cpu.stop("exit")),
            fields={"APIC_ACCESS_ADDR": APIC, "VIRTUAL_APIC_PAGE_ADDR": VAPIC, "TPR_THRESHOLD": threshold,
                    **extra, **(fields or {})})
    stop = b.cpu.run(time_budget=5)
    return b, stop


def reg(b, name):
    return b.m.gprs.read()[REG.GPR_INDEX[name]]


@pytest.mark.parametrize("source,qualification", [
    ("mov rbx, 0x209000\nat: mov eax, dword ptr [rbx + 0x20]", 0x0020),     # read of the APIC ID register
    ("mov rbx, 0x209000\nat: mov dword ptr [rbx + 0x300], eax", 0x1300),    # write of the ICR
    ("mov rbx, 0x209000\nat: add dword ptr [rbx + 0xb0], 0", 0x10B0),       # read-modify-write: a write
    ("mov rbx, 0x209000\nat: mov eax, dword ptr [rbx + 0x80]", 0x0080),     # TPR without TPR shadow
])
def test_an_access_to_the_page_is_an_apic_access_exit_before_the_instruction(source, qualification):
    b, _ = run(source)
    e = b.exits[0]
    assert (e.basic, e.qualification, e.guest_rip) == (X.APIC_ACCESS, qualification, b.guest.labels["at"])
    assert reg(b, "RAX") != 0x11111111                     # nothing read


def test_an_instruction_fetch_from_the_page_exits_as_a_fetch():
    b, _ = run("mov rbx, 0x209010\njmp rbx")
    e = b.exits[0]
    assert (e.basic, e.qualification, e.guest_rip) == (X.APIC_ACCESS, 0x2010, 0x209010)


def test_other_pages_are_untouched():
    b, stop = run("mov rbx, 0x20a000\nmov dword ptr [rbx], 7\nmov eax, dword ptr [rbx]")
    assert b.exits == [] and stop.reason.value == "halted" and reg(b, "RAX") == 7


def test_with_tpr_shadow_a_32bit_read_of_80h_reads_vtpr():
    b, stop = run("mov rbx, 0x209000\nmov eax, dword ptr [rbx + 0x80]\nmov ecx, dword ptr [rbx + 0x20]", tpr=True)
    assert reg(b, "RAX") == 0x50                           # VTPR, no exit
    assert [(e.basic, e.qualification) for e in b.exits] == [(X.APIC_ACCESS, 0x20)]   # other offsets still exit


def test_with_tpr_shadow_a_write_of_80h_is_tpr_virtualization():
    b, _ = run("mov rbx, 0x209000\nmov dword ptr [rbx + 0x80], 0x40\nmov eax, 0x30\n"
               "at: mov dword ptr [rbx + 0x80], eax\nafter: nop", tpr=True, threshold=4)
    e = b.exits[0]
    assert (e.basic, e.guest_rip) == (X.TPR_BELOW_THRESHOLD, b.guest.labels["after"])   # 0x40 was not below 4
    assert b.m.mem.read(VAPIC + 0x80, 4) == bytes((0x30, 0, 0, 0))
    assert b.m.mem.read(APIC + 0x80, 1) == b"\x11"          # the APIC-access page itself never written


def test_under_ept_the_page_is_found_after_translation():
    # guest-physical 0x209000 maps (identity EPT) to the APIC-access page
    b, eptp = ept_bench()
    controls = ept_controls(b)
    b2, _ = run("mov rbx, 0x209000\nat: mov eax, dword ptr [rbx + 0x30]", bench=(b, {"EPT_POINTER": eptp,
                "VIRTUAL_PROCESSOR_ID": 1}), controls=controls)
    e = b.exits[0]
    assert (e.basic, e.qualification, e.guest_rip) == (X.APIC_ACCESS, 0x30, b.guest.labels["at"])

"""CR8 with "use TPR shadow" (SDM Vol. 3C "Virtualizing MOV to CR8", "Virtualizing
MOV from CR8", "TPR Virtualization"): CR8 reads and writes go to VTPR (byte 80H of
the virtual-APIC page), a write below the TPR threshold is a trap-like VM exit
"TPR below threshold"; CR8-load/store exiting take priority."""
from vhelpers import Bench

from vmxlab.arch import controls as C
from vmxlab.arch import exits as X
from vmxlab.machine import registers as REG

VAPIC = 0x201000
TPR = C.CPU_BASED_ACTIVATE_SECONDARY_CONTROLS | C.CPU_BASED_TPR_SHADOW


def run(source, vtpr=0x50, threshold=0, extra=0, handlers=None, advance=False):
    b = Bench()
    for vector, code in (handlers or {}).items():
        b.env.handler(vector, code)
    page = bytearray(4096)
    page[0x80:0x84] = bytes((vtpr, 0xFF, 0xFF, 0xFF))        # bytes 81H-83H: to see them cleared
    b.m.mem.write(VAPIC, bytes(page))
    b.start(source + "\nhlt", controls={"CPU_BASED_VM_EXEC_CONTROL": TPR | extra}, host=b.record_and_resume(advance),
            fields={"VIRTUAL_APIC_PAGE_ADDR": VAPIC, "TPR_THRESHOLD": threshold})
    stop = b.cpu.run(time_budget=5)
    return b, stop


def reg(b, name):
    return b.m.gprs.read()[REG.GPR_INDEX[name]]


def test_mov_from_cr8_reads_vtpr_bits_7_4():
    b, stop = run("mov rax, -1\nmov rax, cr8")
    assert b.exits == [] and stop.reason.value == "halted"
    assert reg(b, "RAX") == 5


def test_mov_to_cr8_writes_vtpr_and_clears_the_rest_of_the_dword():
    b, _ = run("mov rax, 3\nmov cr8, rax\nmov rbx, cr8", threshold=2)
    assert b.exits == []
    assert b.m.mem.read(VAPIC + 0x80, 4) == bytes((0x30, 0, 0, 0))
    assert reg(b, "RBX") == 3
    assert b.m.cr8 == 0                                        # the processor's TPR is not written


def test_a_write_below_the_threshold_is_a_trap_like_exit():
    b, _ = run("mov rax, 3\nat: mov cr8, rax\nafter: nop", threshold=4)
    e = b.exits[0]
    assert (e.basic, e.qualification, e.guest_rip) == (X.TPR_BELOW_THRESHOLD, 0, b.guest.labels["after"])
    assert b.m.mem.read(VAPIC + 0x80, 1) == b"\x30"            # the write happened first
    assert len(b.exits) == 1


def test_reserved_bits_of_the_source_are_a_general_protection_fault():
    b, _ = run("mov rax, 0x10\nmov cr8, rax\nmov r14, 1", handlers={13: "pop r8\nmov r15, 13\nhlt"})
    assert reg(b, "R15") == 13 and reg(b, "R8") == 0 and reg(b, "R14") == 0
    assert b.m.mem.read(VAPIC + 0x80, 1) == b"\x50"            # VTPR unchanged


def test_cr8_exiting_takes_priority_over_the_shadow():
    b, _ = run("mov rax, 3\nmov cr8, rax\nmov rbx, cr8",
               extra=C.CPU_BASED_CR8_LOAD_EXITING | C.CPU_BASED_CR8_STORE_EXITING, advance=True)
    assert [e.basic for e in b.exits] == [X.CR_ACCESS, X.CR_ACCESS]
    assert b.m.mem.read(VAPIC + 0x80, 1) == b"\x50"


# ---- "virtualize x2APIC mode": the x2APIC TPR MSR (808H) ("Virtualizing MSR-Based APIC Accesses")
X2APIC = C.SECONDARY_EXEC_VIRTUALIZE_X2APIC_MODE
BITMAP = 0x202000                                  # all-zero MSR bitmap: 808H does not exit


def run_x2(source, threshold=0, handlers=None):
    b = Bench()
    for vector, code in (handlers or {}).items():
        b.env.handler(vector, code)
    page = bytearray(4096)
    page[0x80:0x88] = bytes((0x50, 0, 0, 0, 0, 0, 0, 0))
    b.m.mem.write(VAPIC, bytes(page))
    b.m.mem.write(BITMAP, bytes(4096))
    b.start(source + "\nhlt", controls={"CPU_BASED_VM_EXEC_CONTROL": TPR | C.CPU_BASED_USE_MSR_BITMAPS,
                                        "SECONDARY_VM_EXEC_CONTROL": X2APIC},
            host=b.record_and_resume(False), fields={"VIRTUAL_APIC_PAGE_ADDR": VAPIC, "TPR_THRESHOLD": threshold,
                                                     "MSR_BITMAP": BITMAP})
    b.cpu.run(time_budget=5)
    return b


def test_rdmsr_808h_reads_vtpr():
    b = run_x2("mov ecx, 0x808\nrdmsr")
    assert b.exits == [] and (reg(b, "RAX"), reg(b, "RDX")) == (0x50, 0)


def test_wrmsr_808h_writes_vtpr_and_may_exit_below_the_threshold():
    b = run_x2("mov ecx, 0x808\nmov eax, 0x30\nxor edx, edx\nat: wrmsr\nafter: nop", threshold=4)
    e = b.exits[0]
    assert (e.basic, e.guest_rip) == (X.TPR_BELOW_THRESHOLD, b.guest.labels["after"])
    assert b.m.mem.read(VAPIC + 0x80, 8) == bytes((0x30, 0, 0, 0, 0, 0, 0, 0))


def test_wrmsr_808h_with_bits_63_8_is_a_general_protection_fault():
    b = run_x2("mov ecx, 0x808\nmov eax, 0x130\nxor edx, edx\nwrmsr\nmov r14, 1",
               handlers={13: "pop r8\nmov r15, 13\nhlt"})
    assert reg(b, "R15") == 13 and reg(b, "R14") == 0
    assert b.m.mem.read(VAPIC + 0x80, 1) == b"\x50"


def test_other_x2apic_msrs_are_not_virtualized():
    # without a local APIC in x2APIC mode, RDMSR of the x2APIC ID (802H) is #GP(0)
    b = run_x2("mov ecx, 0x802\nrdmsr\nmov r14, 1", handlers={13: "pop r8\nmov r15, 13\nhlt"})
    assert reg(b, "R15") == 13 and reg(b, "R14") == 0

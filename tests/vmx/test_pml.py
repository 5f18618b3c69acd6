"""Page-modification logging (SDM Vol. 3C "Page-Modification Logging"): with EPT
accessed/dirty flags on, setting a dirty flag from 0 to 1 writes the 4-KByte
aligned guest-physical address at PML address + 8 * PML index and decrements the
index; with the index outside 0-511 the access is a PML-full VM exit (reason 62)
and neither the flag nor the access happens."""
from test_vmx_exits import P2, ept_bench, ept_pd

from vmxlab.arch import controls as C
from vmxlab.arch import exits as X
from vmxlab.arch import fields as F

PML_PAGE = 0x300000
AD = 1 << 6                                      # EPTP bit 6: accessed and dirty flags
CONTROLS = {"CPU_BASED_VM_EXEC_CONTROL": P2,
            "SECONDARY_VM_EXEC_CONTROL": C.SECONDARY_EXEC_ENABLE_EPT | C.SECONDARY_EXEC_ENABLE_VPID
            | C.SECONDARY_EXEC_ENABLE_PML}
# three writes to the 2-MiB page at 0x400000 (one dirty flag), then one to 0x600000
GUEST = ("mov rax, 0x401008\nmov qword ptr [rax], 1\nmov qword ptr [rax + 0x1000], 2\nmov rbx, [rax]\n"
         "mov rax, 0x600010\nat: mov qword ptr [rax], 3\nhlt")


def run(index, ad=True):
    b, eptp = ept_bench()
    b.m.mem.write(PML_PAGE, b"\xAA" * 4096)
    b.start(GUEST, controls=CONTROLS, host=lambda cpu: (b.exits.append(cpu.exit), cpu.stop("exit")),
            fields={"EPT_POINTER": eptp | (AD if ad else 0), "VIRTUAL_PROCESSOR_ID": 1,
                    "PML_ADDRESS": PML_PAGE, "GUEST_PML_INDEX": index})
    stop = b.cpu.run(time_budget=5)
    return b, stop


def pml_index(b):
    return b.cpu.vmx.current_vmcs.values[F.GUEST_PML_INDEX]      # (the guest may still run: no VMREAD)


def entry(b, i):
    return b.m.mem.read64(PML_PAGE + 8 * i)


def test_each_newly_dirty_page_is_logged_once_and_the_index_counts_down():
    b, stop = run(511)
    assert b.exits == [] and stop.reason.value == "halted"
    # first the guest's own page walk: with EPT A/D its accesses to the paging
    # structures count as writes, dirtying the 2-MiB leaf at 0 (PML4 at 0x10000);
    # then the stores dirty the leaves of 0x400000 and 0x600000, each logged once
    logged = [entry(b, 511 - i) for i in range(3)]
    assert logged == [0x10000, 0x401000, 0x600000]   # the access's address, bits 11:0 clear
    assert pml_index(b) == 508
    assert entry(b, 508) == 0xAAAAAAAAAAAAAAAA     # nothing else written


def test_an_index_outside_the_log_is_a_pml_full_exit_before_the_access():
    b, _ = run(1)                                   # two entries left: the third dirty page overflows
    assert [entry(b, 1), entry(b, 0)] == [0x10000, 0x401000]
    e = b.exits[0]
    assert (e.basic, e.qualification, e.guest_rip) == (X.PML_FULL, 0, b.guest.labels["at"])
    assert pml_index(b) == 0xFFFF
    assert b.m.mem.read64(0x600010) == 0            # the store did not happen


def test_without_epts_accessed_and_dirty_flags_nothing_is_logged():
    b, stop = run(511, ad=False)
    assert b.exits == [] and stop.reason.value == "halted"
    assert entry(b, 511) == 0xAAAAAAAAAAAAAAAA and pml_index(b) == 511


def test_an_instruction_emulated_in_python_meets_ept_like_any_other():
    # CMPXCHG r/m32 in 64-bit mode is executed by the machine itself; its write to a
    # guest-physical page that EPT does not map is an EPT violation (data write,
    # bit 1; read bit 0 too: a read-modify-write), the instruction not executed
    b, eptp = ept_bench()
    pd = ept_pd(b, eptp)
    b.m.mem.write64(pd + 8 * 5, 0)                        # 0xA00000-0xBFFFFF not present
    b.start("mov rbx, 0xa00010\nat: cmpxchg dword ptr [rbx], ecx\nhlt", controls=CONTROLS,
            host=lambda cpu: (b.exits.append(cpu.exit), cpu.stop("exit")),
            fields={"EPT_POINTER": eptp, "VIRTUAL_PROCESSOR_ID": 1, "PML_ADDRESS": PML_PAGE,
                    "GUEST_PML_INDEX": 511})
    b.cpu.run(time_budget=5)
    e = b.exits[0]
    assert e.basic == X.EPT_VIOLATION and e.guest_rip == b.guest.labels["at"]
    assert e.guest_physical == 0xA00010 and e.qualification & 0b10

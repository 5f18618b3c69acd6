"""The machine-code hypervisor (guests/vmx_hypervisor.asm) runs entirely inside the
simulator: VMXON, VMCS filled by VMWRITE, VMLAUNCH, exits handled by host machine
code with VMREAD/VMWRITE/VMRESUME, VMXOFF."""
from vmxlab.arch import exits as X
from vmxlab.guests.hypervisor import install
from vmxlab.machine import Machine
from vmxlab.vmx.cpu import VmxCpu


def test_machine_code_hypervisor_runs_its_guest_to_completion():
    m = Machine("skylake-client")
    cpu = VmxCpu(m)
    drv = install(m)
    stop = cpu.run(time_budget=20)
    lab = drv.labels
    status = m.mem.read64(lab["hv_status"])
    assert status == 0, (status, hex(m.mem.read64(lab["hv_error"])), stop, m.uart.text())
    counts = {r: m.mem.read64(lab["hv_exit_counts"] + 8 * r) for r in range(64)}
    assert {r: n for r, n in counts.items() if n} == {X.CPUID: 1, X.MSR_READ: 1, X.IO_INSTRUCTION: 1, X.VMCALL: 1}
    # CPUID leaf 0 executed by the host for the guest: the profile's vendor string
    assert m.mem.read(lab["hv_vendor"], 12) == b"GenuineIntel"
    assert m.console.text() == "G"                       # the guest's OUT, performed by the host
    assert "kernel: done" in m.uart.text()                # VMXOFF and back to the kernel
    assert stop.reason.value == "halted"
    assert not cpu.vmx.in_vmx and cpu.exit_count == 4


def _fills_after(iterations: int) -> int:
    m = Machine("skylake-client")
    cpu = VmxCpu(m)
    drv = install(m)
    m.mem.write64(drv.labels["hv_iterations"], iterations)
    cpu.run(time_budget=60)
    assert m.mem.read64(drv.labels["hv_status"]) == 0
    return m.tlb_fills


def test_exits_between_a_guest_and_host_that_share_paging_keep_the_tlb_with_vpid():
    """With VPID, VM exits and entries need not invalidate linear mappings ("VPID" /
    "Invalidation of TLBs and Paging-Structure Caches"), and guest and host here
    share CR3/CR0/CR4/EFER: the round trips refill nothing (the CPUID loop of 40
    more exits costs no more fills than the loop of 0)."""
    assert _fills_after(40) == _fills_after(0)

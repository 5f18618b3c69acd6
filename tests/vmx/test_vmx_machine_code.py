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


def _run_hypervisor(fast: bool, iterations: int = 5):
    from vmxlab.machine import cpu_state
    m = Machine("skylake-client")
    cpu = VmxCpu(m)
    if not fast:
        cpu._vmrw_fast = lambda ev: False              # every VMREAD/VMWRITE through the general path
        m.fast_client = None                            # (also from the #UD hook)
        cpu_state._segments_of = cpu_state._segment_items       # no memoized segment conversions
        cpu_state._caches_of = cpu_state._cache_values
    exits = []                                          # at each exit: every VMCS field, the host state
    cpu.observers.append(lambda c, e: exits.append((dict(c.vmx.current_vmcs.values), c.m.get_state())))
    drv = install(m)
    m.mem.write64(drv.labels["hv_iterations"], iterations)
    stop = cpu.run(time_budget=60)
    assert m.mem.read64(drv.labels["hv_status"]) == 0 and len(exits) == iterations + 4
    return stop.reason, m.get_state(), exits, bytes(m.mem.view[:0x300000])


def test_fast_paths_end_in_the_same_state_and_vmcs_as_the_general_paths(monkeypatch):
    """The VMREAD/VMWRITE fast paths of machine code (VmxCpu._vmrw_fast, Machine.fast_client) and the
    memoized segment conversions of get_state/set_state: the same guest and
    hypervisor run through the general paths give every VMCS field and the host
    state at every exit, and the final processor state and memory."""
    from vmxlab.machine import cpu_state
    fast = _run_hypervisor(True)
    monkeypatch.setattr(cpu_state, "_segments_of", cpu_state._segments_of)
    monkeypatch.setattr(cpu_state, "_caches_of", cpu_state._caches_of)
    slow = _run_hypervisor(False)
    assert fast[0] == slow[0]
    assert fast[1] == slow[1]
    for (fv, fs), (sv, ss) in zip(fast[2], slow[2], strict=True):
        assert fv == sv
        assert fs == ss
    assert fast[3] == slow[3]

"""Round trips to Python host code that change only GUEST_RIP take a short path
(VmxCpu._quick_resume): the VM-entry checks that read GUEST_RIP, then RIP.  These
tests hold it to what the SDM says VMRESUME does ("VM Entries", "Checks on Guest
RIP, RFLAGS, and SSP"; "VM-Entry Failures During or After Loading Guest State"),
whichever path runs."""
from vmxlab.arch import controls as C
from vmxlab.arch import exits as X
from vmxlab.machine import registers as REG
from vhelpers import Bench

LOOP = "mov esi, 6\ntop: xor eax, eax\ncpuid\ninc ebx\ndec esi\njnz top\nhlt"
P2 = C.CPU_BASED_ACTIVATE_SECONDARY_CONTROLS
VPID = C.SECONDARY_EXEC_ENABLE_VPID


def _run(on_exit, sec=VPID):
    """LOOP as the guest (six CPUIDs, EBX counting them); on_exit(cpu, n) runs in the
    handler before it advances RIP and resumes (n: 1-based exit number)."""
    b = Bench()
    seen = []

    def handler(cpu):
        e = cpu.exit
        seen.append((e.reason, e.qualification))
        if e.entry_failure:
            cpu.stop("entry failure")
            return
        on_exit(cpu, len(seen))
        cpu.vmwrite("GUEST_RIP", cpu.vmread("GUEST_RIP") + cpu.vmread("VM_EXIT_INSTRUCTION_LEN"))
        cpu.vmresume()
    controls = {"CPU_BASED_VM_EXEC_CONTROL": P2, "SECONDARY_VM_EXEC_CONTROL": sec}
    b.start(LOOP, controls=controls, host=handler, fields={"VIRTUAL_PROCESSOR_ID": 1} if sec else None)
    stop = b.cpu.run(time_budget=5)
    return b, seen, stop


def test_repeated_rip_only_round_trips_run_the_guest_to_its_end():
    for sec in (VPID, 0):                        # with and without VPID (entries then flush the TLB)
        b, seen, stop = _run(lambda cpu, n: None, sec)
        assert seen == [(X.CPUID, 0)] * 6 and stop.reason.value == "halted"
        assert b.m.gprs.read()[REG.RSI] == 0


def test_a_rip_beyond_the_linear_address_width_fails_the_entry_after_quick_round_trips():
    """With IA-32e mode guest and CS.L = 1, guest RIP bits 63:N (N = 48 linear-address
    bits here) must be identical: else VM-entry failure, exit reason 33 with bit 31,
    qualification 0."""
    def on_exit(cpu, n):
        if n == 4:
            assert cpu._quick is not None        # the short path is the one being tested
            cpu.vmwrite("GUEST_RIP", 0x0001_0000_0000_0000 - cpu.vmread("VM_EXIT_INSTRUCTION_LEN"))
    _b, seen, _stop = _run(on_exit)
    assert seen == [(X.CPUID, 0)] * 4 + [(X.VM_ENTRY_FAILURE | X.INVALID_STATE, 0)]


def test_a_control_written_between_quick_round_trips_takes_effect():
    """HLT exiting set by the host at the third exit: the guest's HLT then exits."""
    def on_exit(cpu, n):
        if n == 3:
            cpu.vmwrite("CPU_BASED_VM_EXEC_CONTROL", cpu.vmread("CPU_BASED_VM_EXEC_CONTROL")
                        | C.CPU_BASED_HLT_EXITING)
    b, seen, _stop = _run(on_exit)
    assert [r for r, _ in seen] == [X.CPUID] * 6 + [X.HLT]

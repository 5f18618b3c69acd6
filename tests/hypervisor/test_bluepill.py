"""The seed's hypervisor blue-pills the built-in kernel (issue: the main job).

Expected values come from the processor state read independently (Machine.get_state
at the load point) and from the profile's capability MSRs, never from the setup
code's own output."""
import json

import pytest

from vmxlab.arch import controls as C
from vmxlab.arch import exits as X
from vmxlab.caps import load
from vmxlab.cli import main
from vmxlab.hypervisor.bluepill import boot_to_load_point, load_hypervisor, run_demo
from vmxlab.hypervisor.handlers import PONG
from vmxlab.machine.runloop import StopReason

PROFILES = ["skylake-client", "penryn", "icelake-server", "kvm-nested"]


@pytest.mark.parametrize("name", PROFILES)
def test_the_kernel_sees_the_hypervisor_then_no_hypervisor(name):
    r = run_demo(name)
    assert r.outcome == "devirtualized; the kernel finished natively", (r.report, r.console)
    res = r.results
    assert res["hypervisor_before"] == 1 and res["signature"] == "vmxlab"
    assert res["ping"] == PONG and res["unload"] == 0
    assert res["hypervisor_after"] == 0
    assert res["gp_count"] == 1                      # RDMSR of a missing MSR: #GP injected
    assert res["sysenter_cs"] == 0x10
    assert "kernel: done" in r.console and "no hypervisor" in r.console
    assert r.exits["CPUID"] >= 3 and r.exits["VMCALL"] == 2 and r.exits["MSR_READ"] == 1


def _adjusted(profile, field, wanted):
    """(wanted | allowed-0) & allowed-1, from the raw MSR values (Appendix A.3)."""
    msr = {"PIN_BASED_VM_EXEC_CONTROL": (0x481, 0x48D), "CPU_BASED_VM_EXEC_CONTROL": (0x482, 0x48E),
           "VM_EXIT_CONTROLS": (0x483, 0x48F), "VM_ENTRY_CONTROLS": (0x484, 0x490),
           "SECONDARY_VM_EXEC_CONTROL": (0x48B, 0x48B)}[field]
    value = profile.msrs[msr[1] if profile.basic >> 55 & 1 else msr[0]]
    return (wanted | (value & 0xFFFFFFFF)) & (value >> 32)


@pytest.mark.parametrize("name", ["skylake-client", "penryn"])
def test_every_seed_step_writes_the_value_of_the_state_it_read(name):
    p = load(name)
    m, cpu, sc, stop = boot_to_load_point(p)
    assert stop.reason == StopReason.BREAKPOINT
    s = m.get_state()                                # the processor state, read independently
    load_hypervisor(m, cpu, sc)
    r = cpu.vmread
    cr0 = (s["GUEST_CR0"] | p.cr0_fixed0) & p.cr0_fixed1
    cr4 = (s["GUEST_CR4"] | p.cr4_fixed0) & p.cr4_fixed1
    assert r("HOST_CR0") == cr0 == r("GUEST_CR0")
    assert r("HOST_CR4") == cr4 == r("GUEST_CR4") and cr4 & (1 << 13)
    assert r("HOST_CR3") == s["GUEST_CR3"] == r("GUEST_CR3")
    for seg in ("ES", "CS", "SS", "DS", "FS", "GS", "TR"):
        assert r(f"HOST_{seg}_SELECTOR") == s[f"GUEST_{seg}_SELECTOR"] & ~7
    assert r("HOST_TR_BASE") == s["GUEST_TR_BASE"] and r("HOST_GDTR_BASE") == s["GUEST_GDTR_BASE"]
    assert r("HOST_IDTR_BASE") == s["GUEST_IDTR_BASE"] and r("HOST_FS_BASE") == s["GUEST_FS_BASE"]
    for seg in ("ES", "CS", "SS", "DS", "TR"):
        for part in ("SELECTOR", "BASE", "LIMIT", "AR_BYTES"):
            assert r(f"GUEST_{seg}_{part}") == s[f"GUEST_{seg}_{part}"], (seg, part)
    for seg in ("FS", "GS", "LDTR"):                 # null selectors: unusable
        assert s[f"GUEST_{seg}_SELECTOR"] == 0 and r(f"GUEST_{seg}_AR_BYTES") == 0x10000
    # PUSHFQ runs after VMXON/VMWRITE, whose VMsucceed clears CF, PF, AF, ZF, SF and OF
    assert r("GUEST_RFLAGS") == s["GUEST_RFLAGS"] & ~0x8D5 and r("GUEST_RSP") == s["GUEST_RSP"]
    assert r("GUEST_RIP") == sc.labels["bp_resume"] == s["GUEST_RIP"] + 1
    assert r("GUEST_GDTR_LIMIT") == s["GUEST_GDTR_LIMIT"] and r("GUEST_IDTR_LIMIT") == s["GUEST_IDTR_LIMIT"]
    assert r("VMCS_LINK_POINTER") == (1 << 64) - 1 and r("GUEST_DR7") == 0x400
    assert r("PIN_BASED_VM_EXEC_CONTROL") == _adjusted(p, "PIN_BASED_VM_EXEC_CONTROL", 0)
    assert r("CPU_BASED_VM_EXEC_CONTROL") == _adjusted(p, "CPU_BASED_VM_EXEC_CONTROL", 0x90000000)
    assert r("VM_EXIT_CONTROLS") == _adjusted(p, "VM_EXIT_CONTROLS", 0x8200)
    assert r("VM_ENTRY_CONTROLS") == _adjusted(p, "VM_ENTRY_CONTROLS", 0x200)
    sec = _adjusted(p, "SECONDARY_VM_EXEC_CONTROL", 0x10102A)
    assert r("SECONDARY_VM_EXEC_CONTROL") == sec
    if sec & C.SECONDARY_EXEC_ENABLE_VPID:
        assert r("VIRTUAL_PROCESSOR_ID") == 1


def test_seed_literal_reproduces_the_seeds_mistakes():
    r = run_demo("skylake-client", literal=True)
    assert r.launch_error == 7 and r.outcome == "VMLAUNCH failed"     # controls are checked first
    ids = {v.id for v in r.check.violations}
    assert {"ctrl.pin.allowed0", "ctrl.vpid.nonzero", "host.cr4.fixed_bits"} <= ids
    assert any(i.startswith("ctrl.eptp.") for i in ids)
    assert "HOST_CR3" in r.seed_lines["host.cr4.fixed_bits"]
    writes = [w for w in r.writes if w.field == "HOST_CR3"]
    assert len(writes) == 2 and writes[-1].value & (1 << 13)          # HOST_CR3 ends up with the CR4 value
    assert not any(w.field == "HOST_CR4" for w in r.writes)
    assert sum(1 for w in r.writes if w.field == "VM_EXIT_CONTROLS") == 2
    assert all(w.value & 0xFFFF == w.value & 0xF8 for w in r.writes if w.field.endswith("_SELECTOR") and
               w.field.startswith("HOST"))


def test_seed_literal_on_a_processor_without_true_msrs_crashes_the_driver():
    r = run_demo("penryn", literal=True)
    assert r.outcome == "driver crashed" and "TRUE" in r.report


def test_trace_lines_have_the_kvm_exit_shape():
    r = run_demo("skylake-client", trace=True)
    assert len(r.trace) == sum(r.exits.values())
    first = r.trace[0]
    assert first.startswith("kvm_exit: vcpu 0 reason CPUID rip 0x") and " info1 0x" in first
    assert " intr_info 0x" in first and " error_code 0x" in first


def test_cli_demo_text_json_and_literal(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    for part in ("(a) VMCS setup", "(b) the seed's controls", "(c) VM-entry checks", "(e) the kernel's console",
                 "(f) VM exits by reason", "exits/s", "devirtualized"):
        assert part in out
    assert main(["demo", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["outcome"].startswith("devirtualized") and doc["exits"]["VMCALL"] == 2
    assert main(["demo", "--seed-literal"]) == 0
    out = capsys.readouterr().out
    assert "VMfailValid(7)" in out and "HOST_CR4" in out and "ctrl.pin.allowed0" in out

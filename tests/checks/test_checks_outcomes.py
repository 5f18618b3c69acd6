"""Outcomes as the processor reports them: classes, their order, the result format."""
import json
import struct

from vmxlab import caps
from vmxlab.arch import controls as C
from vmxlab.checks import RULES, check
from vmxlab.checks.template import build
from checks_support import run

SKL = "skylake-client"


def test_no_current_vmcs_is_vmfail_invalid():
    r = check(None, caps.load(SKL))
    assert r.outcome == "vmfail_invalid"
    assert r.error is None and r.exit_reason is None and r.violations == []
    assert r.to_dict()["outcome"] == "vmfail_invalid"


def test_seed_bugs_are_caught():
    """The seed's VMCS: pin-based controls 0 (control error first), HOST_CR4 never
    written, no EPTP and no VPID."""
    r = run(SKL, mods={"PIN_BASED_VM_EXEC_CONTROL": 0, "HOST_CR4": 0, "EPT_POINTER": 0,
                       "VIRTUAL_PROCESSOR_ID": 0}, all=True)
    ids = [v.rule.id for v in r.violations]
    assert r.outcome == "vmfail_valid" and r.error == 7
    # (EPTP 0 has memory type 0, UC, which Skylake supports: only the walk length is wrong)
    assert "ctrl.eptp.memory_type" not in ids
    for rule in ("ctrl.pin.allowed0", "ctrl.vpid.nonzero", "ctrl.eptp.walk_length",
                 "host.cr4.fixed_bits"):
        assert rule in ids


def test_done_when_messages():
    r = run(SKL, mods={"GUEST_RFLAGS": 0})
    assert (r.outcome, r.exit_reason, r.qualification) == ("entry_failure", 33, 0)
    assert r.headline() == "VM-entry failure, exit reason 33 (INVALID_STATE), qualification 0"
    assert r.violations[0].rule.id == "guest.rflags.reserved_bit1" and "bit 1" in r.violations[0].message

    r = run(SKL, mods={"HOST_CR4": 0})
    assert r.headline() == "VMfailValid 8 (VMXERR_ENTRY_INVALID_HOST_STATE_FIELD)"
    assert r.violations[0].rule.id == "host.cr4.fixed_bits" and "VMXE" in r.violations[0].message

    r = run(SKL, mods={"PIN_BASED_VM_EXEC_CONTROL": 0})
    assert r.headline() == "VMfailValid 7 (VMXERR_ENTRY_INVALID_CONTROL_FIELD)"
    assert r.violations[0].rule.id == "ctrl.pin.allowed0"
    assert "bits 1, 2, 4 must be 1" in r.violations[0].message


def test_class_order_control_before_host_before_guest_before_msr():
    mem = {0xB000: struct.pack("<IIQ", 0xC0000100, 0, 0)}
    msr = {"VM_ENTRY_MSR_LOAD_COUNT": 1, "VM_ENTRY_MSR_LOAD_ADDR": 0xB000}
    guest = {"GUEST_RFLAGS": 0}
    host = {"HOST_CR4": 0}
    ctl = {"CR3_TARGET_COUNT": 9}
    assert run(SKL, mods={**msr}, memory=mem).exit_reason == 34
    assert run(SKL, mods={**msr, **guest}, memory=mem).exit_reason == 33
    assert run(SKL, mods={**msr, **guest, **host}, memory=mem).error == 8
    r = run(SKL, mods={**msr, **guest, **host, **ctl}, memory=mem)
    assert (r.outcome, r.error) == ("vmfail_valid", 7)
    # basic checks come before all of them
    r = run(SKL, mods={**msr, **guest, **host, **ctl}, memory=mem, mov_ss_blocking=True)
    assert r.error == 26
    r = run(SKL, mods={**guest, **ctl}, memory=mem, launch_state="launched")
    assert r.error == 4
    # with all=True every violation is listed, the outcome still the first's
    r = run(SKL, mods={**msr, **guest, **host, **ctl}, memory=mem, all=True)
    assert r.error == 7
    ids = [v.rule.id for v in r.violations]
    assert ids.index("ctrl.cr3_target_count") < ids.index("host.cr4.fixed_bits") < \
        ids.index("guest.rflags.reserved_bit1") < ids.index("msr_load.fs_gs_base")


def test_mov_ss_before_launch_state():
    r = run(SKL, mov_ss_blocking=True, launch_state="launched")
    assert r.error == 26


def test_msr_load_first_failing_entry_wins():
    """Entries are processed in order: entry 1 fails (#GP) before entry 2 (FS base),
    though the FS_BASE rule comes first in the SDM's list."""
    mem = {0xB000: struct.pack("<IIQIIQ", 0xC0000080, 0, 1 << 20, 0xC0000100, 0, 0)}
    r = run(SKL, mods={"VM_ENTRY_MSR_LOAD_COUNT": 2, "VM_ENTRY_MSR_LOAD_ADDR": 0xB000}, memory=mem)
    assert (r.exit_reason, r.qualification) == (34, 1)
    assert r.violations[0].rule.id == "msr_load.wrmsr_gp"
    r = run(SKL, mods={"VM_ENTRY_MSR_LOAD_COUNT": 2, "VM_ENTRY_MSR_LOAD_ADDR": 0xB000}, memory=mem, all=True)
    assert [(v.rule.id, v.index) for v in r.violations] == [("msr_load.wrmsr_gp", 1), ("msr_load.fs_gs_base", 2)]


def test_memory_not_available_is_not_checked():
    mods = {"VM_ENTRY_MSR_LOAD_COUNT": 1, "VM_ENTRY_MSR_LOAD_ADDR": 0xB000, "VMCS_LINK_POINTER": 0x5000}
    r = run(SKL, mods=mods, memory={}, all=True, vmcs_pointer=0x9000)
    assert r.outcome == "success"
    missing = {n.rule.id for n in r.not_checked}
    assert {"guest.link_pointer.revision", "guest.link_pointer.shadow_bit", "msr_load.wrmsr_gp"} <= missing
    assert "guest.link_pointer.aligned" not in missing


def test_vmcs_pointer_unknown_is_not_checked():
    mods = {"VMCS_LINK_POINTER": 0x5000}
    r = run(SKL, mods=mods, memory={0x5000: struct.pack("<I", 4)}, all=True)
    assert [n.rule.id for n in r.not_checked] == ["guest.link_pointer.not_current"]


def test_pdpte_memory_not_available():
    r = run("penryn", "protected", {"GUEST_CR4": lambda x: x | 0x20}, memory={}, all=True)
    assert [n.rule.id for n in r.not_checked] == ["guest.pdpte.memory"]


def test_result_json_format():
    r = run(SKL, mods={"HOST_CR4": 0})
    d = r.to_dict()
    assert d["outcome"] == "vmfail_valid" and d["error"] == 8
    assert d["error_name"] == "VMXERR_ENTRY_INVALID_HOST_STATE_FIELD"
    assert d["exit_reason"] is None and d["qualification"] is None
    v = d["violations"][0]
    assert v == {"rule": "host.cr4.fixed_bits", "section": "Checks on Host Control Registers, MSRs, and SSP",
                 "field": "HOST_CR4", "value": "0x0", "message": v["message"]}
    json.dumps(d)
    d = run(SKL, mods={"GUEST_RFLAGS": 0}).to_dict()
    assert (d["outcome"], d["exit_reason"], d["qualification"], d["error"]) == ("entry_failure", 33, 0, None)


def test_secondary_controls_not_activated_act_as_zero():
    """With 'activate secondary controls' 0 the secondary field is ignored: EPT is off,
    so a garbage EPTP and VPID 0 do not matter."""
    r = run(SKL, mods={"CPU_BASED_VM_EXEC_CONTROL": lambda x: x & ~C.CPU_BASED_ACTIVATE_SECONDARY_CONTROLS,
                       "EPT_POINTER": 0x123, "VIRTUAL_PROCESSOR_ID": 0, "SECONDARY_VM_EXEC_CONTROL": 0xFFFFFFFF})
    assert r.ok, r.lines()


def test_profiles_without_features():
    """Penryn has no secondary EPT/VPID: the seed's secondary controls are dropped by
    adjustment; setting enable EPT anyway is a reserved-bit violation."""
    r = run("penryn", mods={"SECONDARY_VM_EXEC_CONTROL": C.SECONDARY_EXEC_ENABLE_EPT})
    assert (r.error, r.violations[0].rule.id) == (7, "ctrl.secondary.allowed1")


def test_rule_metadata():
    ids = [r.id for r in RULES]
    assert len(ids) == len(set(ids))
    for r in RULES:
        assert r.section and r.klass and r.outcome
        assert r.id.split(".")[0] in ("basic", "ctrl", "host", "guest", "msr_load")


def test_template_with_every_profile_under_vmresume():
    for name in caps.shipped():
        p = caps.load(name)
        vmcs = build(p).vmcs
        vmcs.launch_state = "launched"
        assert check(vmcs, p, instruction="vmresume").ok
        assert check(vmcs, p, instruction="vmlaunch").error == 4


def test_msr_load_count_beyond_recommended_maximum():
    """Skylake's IA32_VMX_MISC bits 27:25 are 0: 512 entries at most are defined.
    A count of 2^32-1 is neither read nor looped over."""
    import time
    t = time.perf_counter()
    r = run(SKL, mods={"VM_ENTRY_MSR_LOAD_COUNT": 0xFFFFFFFF, "VM_ENTRY_MSR_LOAD_ADDR": 0x100000},
            memory={0x100000: bytes(16 * 512)}, all=True)
    assert time.perf_counter() - t < 5
    # (the area ends at 0x100000 + (2^32 - 1) * 16 - 1 < 2^39: the address checks pass)
    # entry 1 is MSR index 0, which does not exist: WRMSR would #GP
    assert (r.exit_reason, r.qualification) == (34, 1)
    missing = {n.rule.id: n.missing for n in r.not_checked}
    assert "recommended maximum of 512" in missing["msr_load.wrmsr_gp"]
    # entries 1..512 (all zero: MSR index 0 does not exist) were checked
    assert [v.index for v in r.violations if v.rule.id == "msr_load.wrmsr_gp"] == list(range(1, 513))


def test_msr_load_area_partly_in_memory():
    mem = {0xB000: struct.pack("<IIQ", 0x174, 0, 0)}
    r = run(SKL, mods={"VM_ENTRY_MSR_LOAD_COUNT": 2, "VM_ENTRY_MSR_LOAD_ADDR": 0xB000}, memory=mem, all=True)
    assert r.ok and {n.rule.id for n in r.not_checked} >= {"msr_load.wrmsr_gp"}


def test_secondary_controls_on_a_processor_that_cannot_activate_them():
    """A processor without the 1-setting of 'activate secondary controls' performs no
    checks on the secondary controls (only the primary field's reserved bit fails)."""
    from vmxlab.caps.profile import from_dict
    from checks_support import _shipped
    d = _shipped("penryn")
    d["msrs"]["IA32_VMX_PROCBASED_CTLS"] = hex(int(d["msrs"]["IA32_VMX_PROCBASED_CTLS"], 16) & ~(1 << 63))
    p = from_dict(d, "penryn-no-secondary")
    vmcs = build(p).vmcs
    vmcs["SECONDARY_VM_EXEC_CONTROL"] = 0xFFFFFFFF
    assert check(vmcs, p).ok
    vmcs["CPU_BASED_VM_EXEC_CONTROL"] = vmcs["CPU_BASED_VM_EXEC_CONTROL"] | C.CPU_BASED_ACTIVATE_SECONDARY_CONTROLS
    r = check(vmcs, p, all=True)
    assert [v.rule.id for v in r.violations] == ["ctrl.primary.allowed1"]

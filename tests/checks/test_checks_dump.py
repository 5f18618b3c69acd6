"""A Linux dump_vmcs text: rules needing fields the dump does not print are
reported as not checked, never assumed."""
from pathlib import Path

from vmxlab import caps
from vmxlab.checks import check
from vmxlab.vmcs.document import load

DUMP = Path(__file__).parent / "data" / "skylake-sti-no-if.dump"


def _check(text, **kw):
    doc = load(text, "dump")
    assert doc.source == "dump_vmcs"
    return check(doc.vmcs, caps.load("skylake-client"), doc.read_memory, **kw)


def test_dump_reports_first_violation_and_not_checked():
    r = _check(DUMP.read_text())
    # blocking by STI with RFLAGS.IF = 0 (RFLAGS=0x46, Interruptibility=1)
    assert (r.outcome, r.exit_reason, r.qualification) == ("entry_failure", 33, 0)
    assert r.violations[0].rule.id == "guest.interruptibility.sti_needs_if"
    missing = {n.rule.id: n.missing for n in r.not_checked}
    # the dump prints no launch state, CR3-target count, MSR bitmap address (use MSR bitmaps is 1)
    assert missing["basic.vmlaunch.launch_state"] == "the launch state"
    assert missing["ctrl.cr3_target_count"] == "CR3_TARGET_COUNT"
    assert missing["ctrl.msr_bitmap.aligned"] == "MSR_BITMAP"


def test_dump_all_rules():
    r = _check(DUMP.read_text(), all=True)
    assert [v.rule.id for v in r.violations] == ["guest.interruptibility.sti_needs_if"]
    missing = {n.rule.id for n in r.not_checked}
    assert {"guest.link_pointer.aligned", "msr_load.wrmsr_gp", "ctrl.entry_msr_load.aligned"} <= missing
    # rules whose fields the dump prints are checked
    assert "guest.rflags.reserved_bit1" not in missing and "host.cr4.fixed_bits" not in missing
    # a rule that does not need the unknown field under these controls is checked:
    # "use I/O bitmaps" is 0, so the I/O-bitmap addresses are never read
    assert "ctrl.io_bitmap_a.aligned" not in missing


def test_dump_fixed():
    text = DUMP.read_text().replace("RFLAGS=0x00000046", "RFLAGS=0x00000246")
    r = _check(text, all=True)
    assert r.outcome == "success" and r.violations == []
    assert r.not_checked            # success as far as checked
    assert "as far as checked" in r.headline()


def test_dump_host_error():
    text = DUMP.read_text().replace("CR4=00000000003726e0", "CR4=00000000003706e0")   # VMXE clear
    r = _check(text)
    assert (r.outcome, r.error, r.violations[0].rule.id) == ("vmfail_valid", 8, "host.cr4.fixed_bits")


def test_foundation_dump_on_its_processor():
    """The foundation's dump (tests/data, an Ice Lake-SP host's KVM reporting exit
    reason 33): every rule whose fields the dump prints passes; what it does not
    print (VMCS link pointer, MSR-area counts, ...) is not checked -- the cause of
    that failure is not in the dump, and the checker does not guess it."""
    text = (Path(__file__).parents[1] / "data" / "dump_vmcs_invalid_guest.txt").read_text()
    doc = load(text, "dump")
    r = check(doc.vmcs, caps.load("icelake-server"), doc.read_memory, all=True)
    assert r.outcome == "success" and r.violations == []
    missing = {n.rule.id for n in r.not_checked}
    assert "guest.link_pointer.aligned" in missing and "ctrl.cr3_target_count" in missing
    # on Skylake the same controls are refused (posted interrupts, APICv, TSC scaling)
    r = check(doc.vmcs, caps.load("skylake-client"), doc.read_memory, all=True)
    assert [v.rule.id for v in r.violations] == ["ctrl.pin.allowed1", "ctrl.secondary.allowed1"]

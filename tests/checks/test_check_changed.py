"""check_changed: the incremental VM-entry check that VMRESUME runs after a VM exit.

Premise (checks/engine.py): the VMCS passed every check at its last entry and has
changed since only in the fields given.  Then every rule that reads none of them
(and no physical memory) gives the answer it gave, so the first failing rule --
and with it the outcome the processor reports -- is the one the full check finds.
The property below holds that against the full check for random changes; it fails
whenever a rule reads a field its `fields` metadata does not declare.
"""
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from vmxlab import caps
from vmxlab.arch import controls as C
from vmxlab.arch import fields as F
from vmxlab.checks import check, check_changed
from vmxlab.checks.template import build

import checks_support

WRITABLE = [f for f in F.FIELDS if not f.read_only]
VMCS_POINTER = 0x5000


def _outcome(r):
    return r.outcome, r.rule, r.error, r.exit_reason, r.qualification


def _memory(addr, size):
    return bytes(size)                  # zero-filled physical memory


@st.composite
def changes(draw, base):
    chosen = draw(st.lists(st.sampled_from(WRITABLE), min_size=1, max_size=3, unique=True))
    out = {}
    for f in chosen:
        old = base.get(f.encoding, 0)
        out[f.encoding] = draw(st.one_of(
            st.integers(0, f.mask),
            st.integers(0, f.bits - 1).map(lambda b, old=old: old ^ (1 << b)),    # one bit flipped
            st.sampled_from([0, f.mask])))
    return out


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), name=st.sampled_from([*caps.shipped(), "synthetic-max"]),
       mode=st.sampled_from(["long", "compat", "protected", "unrestricted-real"]))
def test_incremental_check_finds_what_the_full_check_finds(data, name, mode):
    p = checks_support.profile(name)
    try:
        vmcs = build(p, mode).vmcs.copy()
    except Exception:                   # a mode the profile cannot run (unrestricted guest)
        assume(False)
    vmcs.launch_state = "launched"
    assert check(vmcs, p, _memory, instruction="vmresume", vmcs_pointer=VMCS_POINTER).ok
    delta = data.draw(changes(dict(vmcs.values)))
    for enc, value in delta.items():
        vmcs.values[enc] = value
    full = check(vmcs, p, _memory, instruction="vmresume", vmcs_pointer=VMCS_POINTER)
    quick = check_changed(vmcs, p, set(delta), _memory, instruction="vmresume", vmcs_pointer=VMCS_POINTER)
    assert _outcome(quick) == _outcome(full), (
        f"changed {[F.BY_ENCODING[e].name for e in delta]}: full {full.rule}, incremental {quick.rule}")


def test_a_rule_reading_memory_runs_when_only_memory_changed():
    """A PAE guest without EPT: VM entry checks the PDPTEs in the table GUEST_CR3
    references (SDM "Checks on Guest Page-Directory-Pointer-Table Entries"), so a
    PDPTE made invalid in memory fails VMRESUME although no field changed."""
    p = caps.load("skylake-client")
    vmcs = build(p, "protected").vmcs.copy()
    vmcs.launch_state = "launched"
    vmcs["SECONDARY_VM_EXEC_CONTROL"] = vmcs["SECONDARY_VM_EXEC_CONTROL"] & ~C.SECONDARY_EXEC_ENABLE_EPT
    vmcs["GUEST_CR0"] = vmcs["GUEST_CR0"] | 0x80000000          # PG
    vmcs["GUEST_CR4"] = vmcs["GUEST_CR4"] | 0x20                # PAE
    vmcs["GUEST_CR3"] = 0x7000
    pdpt = bytearray(32)

    def memory(addr, size):
        return bytes(pdpt[addr - 0x7000:addr - 0x7000 + size]) if 0x7000 <= addr < 0x7020 else bytes(size)

    assert check(vmcs, p, memory, instruction="vmresume", vmcs_pointer=VMCS_POINTER).ok
    pdpt[0:8] = (1 | 1 << 1).to_bytes(8, "little")            # present, reserved bit 1 set
    full = check(vmcs, p, memory, instruction="vmresume", vmcs_pointer=VMCS_POINTER)
    quick = check_changed(vmcs, p, set(), memory, instruction="vmresume", vmcs_pointer=VMCS_POINTER)
    assert (full.exit_reason, full.qualification, full.rule) == (33, 2, "guest.pdpte.memory")
    assert _outcome(quick) == _outcome(full)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), name=st.sampled_from([*caps.shipped(), "synthetic-max"]),
       mode=st.sampled_from(["long", "compat", "protected", "unrestricted-real"]))
def test_a_rule_whose_answer_changes_is_one_the_incremental_check_runs(data, name, mode):
    """The sharper form of the property: every rule (not only the first failing
    one) that fails after the change must be among the rules check_changed runs
    for the changed fields -- i.e. each rule declares every field it reads."""
    from vmxlab.checks.engine import Entry, _rules_reading, all_values
    from vmxlab.checks.facts import facts
    from vmxlab.checks.registry import MSR_LOAD, RULES, Unknown
    p = checks_support.profile(name)
    try:
        vmcs = build(p, mode).vmcs.copy()
    except Exception:
        assume(False)
    delta = data.draw(changes(dict(vmcs.values)))
    vmcs.values.update(delta)
    v = all_values(vmcs.values)
    e = Entry(v, facts(p), "vmresume", True, False, _memory, VMCS_POINTER, "launched")
    ran = {r.id for _g, _f, r in _rules_reading(frozenset(delta))}
    for r in RULES:
        if r.klass == MSR_LOAD or r.id in ran:
            continue
        try:
            out = r.fn(v, facts(p), e)
        except Unknown:
            continue
        assert out is None, (f"{r.id} fails after changing {[F.BY_ENCODING[x].name for x in delta]} "
                             f"but does not declare reading them: {out}")


def test_every_single_bit_change_is_seen_by_the_rules_that_read_it():
    """The same property swept: from each template, every bit of every writable
    field flipped alone: every violation the full check reports is of a rule
    that check_changed runs for that field."""
    from vmxlab.checks.engine import _rules_reading
    from vmxlab.checks.registry import MSR_LOAD
    from vmxlab.vmcs.store import Vmcs
    p = checks_support.profile("synthetic-max")
    for mode in ("long", "compat", "protected", "unrestricted-real"):
        base = dict(build(p, mode).vmcs.values)
        for f in WRITABLE:
            ran = {r.id for _g, _f, r in _rules_reading(frozenset([f.encoding]))}
            old = base.get(f.encoding, 0)
            for b in range(f.bits):
                vmcs = Vmcs({**base, f.encoding: old ^ (1 << b)})
                vmcs.launch_state = "launched"
                r = check(vmcs, p, _memory, instruction="vmresume", vmcs_pointer=VMCS_POINTER, all=True)
                missed = [x.rule.id for x in r.violations if x.rule.klass != MSR_LOAD and x.rule.id not in ran]
                assert not missed, f"{mode}: {f.name} bit {b} fails {missed}, which do not read it"


def test_the_generated_runner_returns_the_first_failing_rule_and_tests_each_guard_once():
    """changed_plan's runner: rules in order, a false guard passes its whole run of
    rules, a shared guard is evaluated once, -1 when every rule passes."""
    from vmxlab.checks.engine import _first_failing
    calls = []

    def guard(result):
        def g(v, e):
            calls.append("guard")
            return result
        return g

    def rule(out):
        def fn(v, k, e):
            calls.append(out)
            return out
        return fn

    off, on = guard(False), guard(True)
    plan = ((None, rule(None), "r0"), (off, rule("x1"), "r1"), (off, rule("x2"), "r2"),
            (on, rule(None), "r3"), (on, rule("x4"), "r4"), (None, rule("x5"), "r5"))
    assert _first_failing(plan)({}, None, None) == 4
    assert calls == [None, "guard", "guard", None, "x4"]
    assert _first_failing(plan[:4])({}, None, None) == -1
    assert _first_failing(((None, rule("y"), "r"),))({}, None, None) == 0


class _Recording(dict):
    """Field values that remember which encodings were read."""
    __slots__ = ("read",)

    def __getitem__(self, key):
        self.read.add(key)
        return dict.__getitem__(self, key)


def test_a_guard_reads_only_its_rules_fields():
    """steady_runner leaves out a guarded rule while its guard stays false; that is
    sound only when the guard reads fields its rule declares (and the Entry)."""
    from vmxlab.checks.engine import Entry, all_values, _ORDERED
    from vmxlab.checks.facts import facts
    guarded = [r for r in _ORDERED if r.guard is not None]
    assert guarded
    for name in caps.shipped():
        p = checks_support.profile(name)
        for mode in ("long", "protected"):
            v = all_values(build(p, mode).vmcs.values)
            e = Entry(v, facts(p), "vmresume", True, False, None, None, "launched")
            for r in guarded:
                rec = _Recording(v)
                rec.read = set()
                r.guard(rec, e)
                declared = {F.by_name(n).encoding for n in r.fields}
                assert rec.read <= declared, (r.id, [F.BY_ENCODING[x].name for x in rec.read - declared])


GUEST_FIELDS = [f for f in WRITABLE if (f.encoding & 0xC00) == 0x800]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), name=st.sampled_from([*caps.shipped(), "synthetic-max"]),
       mode=st.sampled_from(["long", "compat", "protected"]))
def test_the_steady_runner_fails_exactly_when_the_incremental_check_does(data, name, mode):
    """Guest-state fields changed after a successful entry (the Entry stays): the
    runner VMRESUME's quick round trip uses finds a failing rule exactly when
    check_changed does (the VM-entry MSR-load area aside: there is none here)."""
    from vmxlab.checks.engine import all_values, entry_context, steady_runner
    from vmxlab.checks.facts import facts
    p = checks_support.profile(name)
    try:
        vmcs = build(p, mode).vmcs.copy()
    except Exception:
        assume(False)
    vmcs.values.update(all_values(vmcs.values))      # every field present, as after a VM entry
    vmcs.launch_state = "launched"
    assert check(vmcs, p, _memory, instruction="vmresume", vmcs_pointer=VMCS_POINTER).ok
    chosen = data.draw(st.lists(st.sampled_from(GUEST_FIELDS), min_size=1, max_size=3, unique=True))
    changed = frozenset(f.encoding for f in chosen)
    entry = entry_context(vmcs, p, "vmresume", True, VMCS_POINTER)
    entry.memory = _memory
    run = steady_runner(changed, vmcs.values, entry)
    for f in chosen:
        vmcs.values[f.encoding] = data.draw(st.integers(0, f.mask))
    quick = check_changed(vmcs, p, set(changed), _memory, instruction="vmresume", vmcs_pointer=VMCS_POINTER)
    assert (run(vmcs.values, facts(p), entry) >= 0) == (not quick.ok), quick.rule

"""Any field values the VMCS accepts never make the checker raise."""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmxlab import caps
from vmxlab.arch import fields as F
from vmxlab.checks import check
from vmxlab.checks.template import build
from vmxlab.vmcs.store import Vmcs

WRITABLE = [f for f in F.FIELDS if not f.read_only]
PROFILES = caps.shipped()


@st.composite
def vmcs_values(draw):
    chosen = draw(st.lists(st.sampled_from(WRITABLE), min_size=0, max_size=40, unique=True))
    return {f.encoding: draw(st.one_of(st.integers(0, f.mask), st.sampled_from([0, f.mask, 1, 1 << (f.bits - 1)])))
            for f in chosen}


def _memory(data):
    def read(addr, size):
        return bytes((addr + i) * data & 0xFF for i in range(size)) if size < 1 << 16 else None
    return read


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=vmcs_values(), profile=st.sampled_from(PROFILES), on_template=st.booleans(),
       all_=st.booleans(), instruction=st.sampled_from(["vmlaunch", "vmresume"]), host_lma=st.booleans(),
       seed=st.integers(0, 255), default_unknown=st.booleans())
def test_checker_never_raises(values, profile, on_template, all_, instruction, host_lma, seed, default_unknown):
    p = caps.load(profile)
    base = dict(build(p).vmcs.values) if on_template else {}
    base.update(values)
    vmcs = Vmcs(base, default=None if default_unknown else 0)
    r = check(vmcs, p, _memory(seed), instruction=instruction, all=all_, host_lma=host_lma,
              vmcs_pointer=seed << 12)
    assert r.outcome in ("success", "vmfail_valid", "entry_failure")
    r.to_dict()
    r.lines()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=vmcs_values(), profile=st.sampled_from(PROFILES), seed=st.integers(0, 255), host_lma=st.booleans())
def test_guards_never_hide_a_violation(values, profile, seed, host_lma):
    """The engine skips a run of rules when their shared guard is false; evaluating
    every rule one by one must give the same violations."""
    from vmxlab.checks import RULES
    from vmxlab.checks.engine import Entry, all_values
    from vmxlab.checks.facts import facts
    from vmxlab.checks.registry import MSR_LOAD, Unknown
    p = caps.load(profile)
    base = dict(build(p).vmcs.values)
    base.update(values)
    vmcs = Vmcs(base)
    mem = _memory(seed)
    v = all_values(vmcs.values)
    k = facts(p)
    e = Entry(v, k, "vmlaunch", host_lma, False, mem, 0x1000, "clear")
    naive = []
    for r in RULES:
        if r.klass == MSR_LOAD:
            continue
        try:
            if r.fn(v, k, e) is not None:
                naive.append(r.id)
        except Unknown:
            pass
    got = [x.rule.id for x in check(vmcs, p, mem, all=True, vmcs_pointer=0x1000, host_lma=host_lma).violations
           if x.rule.klass != MSR_LOAD]
    assert got == naive

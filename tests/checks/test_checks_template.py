"""The template passes every check, for every shipped profile and mode."""
import pytest

from vmxlab import caps
from vmxlab.checks import check
from vmxlab.checks.template import MODES, build
from vmxlab.errors import BadInput


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("profile", caps.shipped())
def test_template_passes_every_rule(profile, mode):
    p = caps.load(profile)
    if mode == "unrestricted-real" and not p.can_set("SECONDARY_EXEC_UNRESTRICTED_GUEST"):
        with pytest.raises(BadInput, match="unrestricted"):
            build(p, mode)
        return
    doc = build(p, mode)
    for instruction, launch in (("vmlaunch", "clear"), ("vmresume", "launched")):
        vmcs = doc.vmcs.copy()
        vmcs.launch_state = launch
        r = check(vmcs, p, doc.read_memory, instruction=instruction, all=True)
        assert r.outcome == "success", r.lines()
        assert r.violations == [] and r.not_checked == []


def test_penryn_cannot_do_unrestricted_real():
    with pytest.raises(BadInput, match="penryn"):
        build(caps.load("penryn"), "unrestricted-real")


def test_long_template_is_a_blue_pill_state():
    p = caps.load("skylake-client")
    v = build(p).vmcs
    # host state = guest state for the registers the kernel shares with the hypervisor
    for reg in ("CR0", "CR3", "CR4", "GDTR_BASE", "IDTR_BASE", "TR_BASE"):
        assert v[f"HOST_{reg}"] == v[f"GUEST_{reg}"], reg
    assert v["HOST_CS_SELECTOR"] == v["GUEST_CS_SELECTOR"]
    assert v["VMCS_LINK_POINTER"] == (1 << 64) - 1
    assert v["VIRTUAL_PROCESSOR_ID"] != 0
    assert v["EPT_POINTER"] & 0x38 == 0x18          # 4-level walk
    assert v["MSR_BITMAP"] != 0 and v["MSR_BITMAP"] & 0xFFF == 0
    assert v["PIN_BASED_VM_EXEC_CONTROL"] == 0x16    # the seed's 0, adjusted

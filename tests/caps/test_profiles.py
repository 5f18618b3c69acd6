"""Capability profiles and adjust() (Vol. 3D Appendix A; Vol. 3C "Algorithms for
Determining VMX Capabilities")."""
import json

import pytest

from vmxlab.arch import controls as C
from vmxlab.caps import adjust, adjust_cr, load, shipped
from vmxlab.caps.profile import from_dict
from vmxlab.errors import BadInput

PROFILES = shipped()


def test_at_least_the_four_kinds_ship():
    assert {"skylake-client", "penryn", "icelake-server", "kvm-nested"} <= set(PROFILES)


@pytest.mark.parametrize("name", PROFILES)
def test_profile_consistency(name):
    p = load(name)
    assert p.revision_id and not p.basic >> 31 & 1
    assert 1 <= p.vmcs_size <= 4096
    for field in C.CONTROL_FIELDS:
        must1, may1, _ = p.allowed(field)
        assert must1 & ~may1 == 0, f"{field}: allowed-0 settings not within allowed-1"
    assert p.cr0_fixed0 & ~p.cr0_fixed1 == 0 and p.cr4_fixed0 & ~p.cr4_fixed1 == 0
    assert p.cr4_fixed0 & (1 << 13)                      # CR4.VMXE must be 1 in VMX operation
    assert p.has("VMX")
    assert p.description and p.source


def test_true_msrs_only_with_basic_bit_55():
    skl, penryn = load("skylake-client"), load("penryn")
    assert skl.true_ctls and not penryn.true_ctls
    # Skylake: TRUE_PROCBASED allowed-0 0x04006172 (CR3-load/store exiting may be 0)
    assert skl.allowed("CPU_BASED_VM_EXEC_CONTROL")[:1] == (0x04006172,)
    assert skl.allowed("CPU_BASED_VM_EXEC_CONTROL")[2] == "IA32_VMX_TRUE_PROCBASED_CTLS"
    assert penryn.allowed("CPU_BASED_VM_EXEC_CONTROL")[2] == "IA32_VMX_PROCBASED_CTLS"
    assert penryn.allowed("CPU_BASED_VM_EXEC_CONTROL")[0] & (1 << 15)   # CR3-load exiting forced


def test_adjust_pin_based_zero_forces_default1_bits():
    a = adjust(load("skylake-client"), "PIN_BASED_VM_EXEC_CONTROL", 0)
    assert a.value == 0x16 and a.forced == ["bit 1", "bit 2", "bit 4"] and a.dropped == []


def test_adjust_seed_primary_controls_on_skylake():
    wanted = C.CPU_BASED_USE_MSR_BITMAPS | C.CPU_BASED_ACTIVATE_SECONDARY_CONTROLS
    a = adjust(load("skylake-client"), "CPU_BASED_VM_EXEC_CONTROL", wanted)
    # (wanted | 0x04006172) & 0xfff9fffe
    assert a.value == (0x90000000 | 0x04006172) & 0xFFF9FFFE == 0x94006172


def test_adjust_drops_what_penryn_lacks():
    wanted = C.SECONDARY_EXEC_ENABLE_EPT | C.SECONDARY_EXEC_ENABLE_VPID | C.SECONDARY_EXEC_WBINVD_EXITING
    a = adjust(load("penryn"), "SECONDARY_VM_EXEC_CONTROL", wanted)
    assert a.value == C.SECONDARY_EXEC_WBINVD_EXITING
    assert a.dropped == ["SECONDARY_EXEC_ENABLE_EPT", "SECONDARY_EXEC_ENABLE_VPID"]


def test_secondary_field_absent_when_activate_secondary_cannot_be_1():
    doc = {"msrs": {"IA32_VMX_BASIC": "0xda040000000004", "IA32_VMX_PINBASED_CTLS": "0x7f00000016",
                    "IA32_VMX_PROCBASED_CTLS": "0x7ff9fffe0401e172", "IA32_VMX_EXIT_CTLS": "0x1ffffff00036dff",
                    "IA32_VMX_ENTRY_CTLS": "0x3ffff000011ff", "IA32_VMX_MISC": "0x7004c1e7",
                    "IA32_VMX_CR0_FIXED0": "0x80000021", "IA32_VMX_CR0_FIXED1": "0xffffffff",
                    "IA32_VMX_CR4_FIXED0": "0x2000", "IA32_VMX_CR4_FIXED1": "0x3727ff",
                    "IA32_VMX_VMCS_ENUM": "0x2e", "0x48b": "0x1ffcff00000000"}}
    p = from_dict(doc, "nosecondary")
    assert p.allowed("SECONDARY_VM_EXEC_CONTROL")[:2] == (0, 0)
    assert not p.can_set("SECONDARY_EXEC_ENABLE_EPT")


def test_cr_adjust_and_unrestricted_guest():
    p = load("skylake-client")
    a = adjust_cr(p, "CR4", 0x6A0)
    assert a.value == 0x26A0 and a.forced == ["VMXE"]
    real = adjust_cr(p, "CR0", 0x10)                                # real mode CR0 (ET only)
    assert real.value == 0x80000031 and real.forced == ["PE", "NE", "PG"]
    ug = adjust_cr(p, "CR0", 0x10, unrestricted_guest=True)
    assert ug.value == 0x30 and ug.forced == ["NE"]


def test_user_profile_with_hex_indices(tmp_path):
    src = load("skylake-client")
    doc = {"name": "dump", "msrs": {f"{i:#x}": f"{v:#x}" for i, v in src.msrs.items()}}
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(doc))
    p = load(str(path))
    assert p.msrs == src.msrs and p.name == "dump"


@pytest.mark.parametrize("doc,message", [
    ({"msrs": {}}, "'msrs' must be"),
    ({"msrs": {"IA32_VMX_BASIC": "0x1"}}, "missing IA32_VMX_PINBASED_CTLS"),
    ({"msrs": {"IA32_VMX_BOGUS": "0x1"}}, "unknown MSR 'IA32_VMX_BOGUS'"),
    ({"msrs": {"IA32_VMX_BASIC": "nothex"}}, "is not an integer"),
    ({"msrs": {"IA32_VMX_BASIC": "0x1ffffffffffffffff"}}, "not a 64-bit MSR value"),
    ({"format": "x"}, "is not vmxlab-caps/1"),
])
def test_malformed_profiles(doc, message):
    with pytest.raises(BadInput, match=message):
        from_dict(doc, "bad.json")


def test_unknown_profile_and_bad_json(tmp_path):
    with pytest.raises(BadInput, match="unknown profile 'nope'"):
        load("nope")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(BadInput, match="not valid JSON"):
        load(str(bad))

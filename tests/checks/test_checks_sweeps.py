"""Sweeps over one field at a time, in the manner of kvm-unit-tests' VM-entry tests
(restated: each expectation is the SDM's rule for that field)."""
import pytest

from vmxlab.arch import controls as C
from checks_support import run

SKL = "skylake-client"      # MAXPHYADDR 39, 4-level EPT only, CR3-target count 4
ICL = "icelake-server"      # MAXPHYADDR 46, 4- and 5-level EPT


@pytest.mark.parametrize("bit", range(64))
def test_msr_bitmap_address_bits(bit):
    r = run(SKL, mods={"MSR_BITMAP": 1 << bit})
    # bits 11:0 must be 0; no bit at or beyond MAXPHYADDR (39)
    ok = 12 <= bit < 39
    assert r.ok == ok, r.lines()
    if not ok:
        assert r.error == 7
        assert r.violations[0].rule.id == ("ctrl.msr_bitmap.aligned" if bit < 12 else "ctrl.msr_bitmap.width")


@pytest.mark.parametrize("bit", range(64))
def test_host_cr3_bits(bit):
    r = run(ICL, mods={"HOST_CR3": 1 << bit})
    assert r.ok == (bit < 46), r.lines()       # CR3 may hold PCD/PWT and PCID bits; none beyond MAXPHYADDR


@pytest.mark.parametrize("value", range(256))
def test_pat_byte_values(value):
    mods = {"VM_EXIT_CONTROLS": lambda x: x | C.VM_EXIT_LOAD_IA32_PAT,
            "VM_ENTRY_CONTROLS": lambda x: x | C.VM_ENTRY_LOAD_IA32_PAT,
            "HOST_IA32_PAT": 0x0007040600070400 | value, "GUEST_IA32_PAT": value << 56}
    r = run(SKL, mods=mods, all=True)
    ok = value in (0, 1, 4, 5, 6, 7)
    assert r.ok == ok
    if not ok:
        assert [v.rule.id for v in r.violations] == ["host.pat.memory_types", "guest.pat.memory_types"]


@pytest.mark.parametrize("walk", range(8))
@pytest.mark.parametrize("profile, supported", [(SKL, {3}), (ICL, {3, 4})])
def test_eptp_walk_lengths(profile, supported, walk):
    r = run(profile, mods={"EPT_POINTER": lambda x: x & ~0x38 | walk << 3})
    assert r.ok == (walk in supported)


@pytest.mark.parametrize("count", range(10))
def test_cr3_target_count(count):
    assert run(SKL, mods={"CR3_TARGET_COUNT": count}).ok == (count <= 4)


@pytest.mark.parametrize("itype", range(8))
@pytest.mark.parametrize("vector", [0, 1, 2, 3, 8, 13, 14, 18, 31, 32, 255])
def test_event_injection_type_and_vector(itype, vector):
    """Interruption type 1 is reserved; an NMI has vector 2; a hardware exception a
    vector of at most 31; type 7 vector 0.  (No error code is delivered; the error-code
    rule is asked to pass by choosing vectors without one where the type is 3.)"""
    info = 1 << 31 | itype << 8 | vector
    mods = {"VM_ENTRY_INTR_INFO_FIELD": info, "VM_ENTRY_INSTRUCTION_LEN": 2, "GUEST_RFLAGS": 0x202}
    r = run(SKL, mods=mods)
    bad_type = itype == 1
    bad_vector = (itype == 2 and vector != 2) or (itype == 3 and vector > 31) or (itype == 7 and vector != 0)
    needs_code = itype == 3 and vector in (8, 10, 11, 12, 13, 14, 17)
    if bad_type or bad_vector or needs_code:
        assert r.error == 7
        expected = "ctrl.event.type" if bad_type else "ctrl.event.vector" if bad_vector else \
            "ctrl.event.deliver_error_code"
        assert r.violations[0].rule.id == expected
    else:
        assert r.ok, r.lines()


@pytest.mark.parametrize("sel", [0x08, 0x10, 0x13, 0x14, 0x17, 0xFFF8])
@pytest.mark.parametrize("seg", ["CS", "SS", "DS", "ES", "FS", "GS", "TR"])
def test_host_selectors(seg, sel):
    r = run(SKL, mods={f"HOST_{seg}_SELECTOR": sel})
    assert r.ok == (sel & 7 == 0)

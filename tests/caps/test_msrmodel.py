"""MSR existence and WRMSR #GP rules (Vol. 4 Table 2-2; Vol. 2B WRMSR)."""
import pytest

from vmxlab.caps import load
from vmxlab.caps import msrmodel as MM

SKL = load("skylake-client")


@pytest.mark.parametrize("index,value,fault", [
    (0x277, 0x0007040600070406, None),           # power-up PAT
    (0x277, 0x0007040600070402, "PA0 = 0x2"),    # 2 and 3 are reserved memory types
    (0x277, 0x0807040600070406, "PA7 = 0x8"),
    (0xC0000080, 0xD01, None),                   # SCE | LME | LMA | NXE
    (0xC0000080, 0x1000, "reserved bits 0x1000"),
    (0x1D9, 0x1, None),
    (0x1D9, 0x4, "reserved bits 0x4"),           # DEBUGCTL bits 5:2 are reserved
    (0xC0000100, 0x0000_7FFF_FFFF_F000, None),
    (0xC0000100, 0x0000_8000_0000_0000, "not a canonical address"),
    (0x175, 0xFFFF_8000_0000_0000, None),
    (0x480, 0, "read-only"),
    (0x12345678, 0, "not implemented"),
    (0xC0000103, 0x1_0000_0000, "reserved bits"),  # TSC_AUX bits 63:32
])
def test_wrmsr_faults(index, value, fault):
    got = MM.wrmsr_fault(SKL, index, value)
    if fault is None:
        assert got is None
    else:
        assert got is not None and fault in got


def test_feature_control_lock():
    assert MM.wrmsr_fault(SKL, 0x3A, 0x5, current=0) is None
    assert "locked" in MM.wrmsr_fault(SKL, 0x3A, 0x5, current=0x1)


def test_rdmsr():
    assert MM.rdmsr_fault(SKL, 0x480) is None
    assert MM.rdmsr_fault(SKL, 0x492) is not None        # no PROCBASED_CTLS3 on Skylake
    assert MM.rdmsr_fault(load("penryn"), 0x48D) is not None  # no TRUE MSRs without BASIC bit 55
    assert MM.reset_value(SKL, 0x480) == SKL.basic


@pytest.mark.parametrize("index,value,fault", [
    # "Variable Range MTRRs" (MAXPHYADDR 39 on skylake-client): PHYSBASE0 / PHYSMASK0
    (0x200, 0x0000_0040_0000_0006, None),          # WB at 256 GiB: bit 38, inside 39 bits
    (0x200, 0x0000_0080_0000_0006, "reserved bits"),   # bit 39: beyond MAXPHYADDR
    (0x200, 0x0000_0000_8000_0002, "type 0x2"),    # 2 and 3 are reserved types
    (0x200, 0x0000_0000_8000_0106, "reserved bits 0x100"),
    (0x201, 0x0000_007F_C000_0800, None),          # 1 GiB mask, valid
    (0x201, 0x0000_007F_C000_0400, "reserved bits 0x400"),
    (0x213, 0x800, None),                          # PHYSMASK9: the tenth pair exists (VCNT 10)
    # fixed ranges: one memory type per byte
    (0x250, 0x0606_0606_0606_0606, None),
    (0x26F, 0x0505_0505_0505_0500, None),
    (0x259, 0x0000_0000_0000_0700, "byte 1 = 0x7"),   # UC- (7) is a PAT type, not an MTRR type
])
def test_mtrr_registers_the_mtrrcap_reports(index, value, fault):
    assert MM.rdmsr_fault(SKL, index) is None
    test_wrmsr_faults(index, value, fault)


def test_mtrrcap_counts_the_variable_ranges_that_exist():
    vcnt = MM.reset_value(SKL, 0xFE) & 0xFF
    assert all(MM.exists(SKL, 0x200 + i) for i in range(2 * vcnt))
    assert not MM.exists(SKL, 0x200 + 2 * vcnt)
    assert "not implemented" in MM.rdmsr_fault(SKL, 0x214)     # no eleventh pair

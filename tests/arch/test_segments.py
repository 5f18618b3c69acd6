"""Descriptors and access rights (Vol. 3A "Segment Descriptors", "Segment Descriptor
Tables"; Vol. 3C "Guest Register State" for the access-rights format)."""
import struct

import pytest
from hypothesis import given, strategies as st

from vmxlab.arch import segments as S

# Hand-assembled descriptors: the usual flat 64-bit code, flat data, 32-bit code.
CODE64 = 0x00AF9B000000FFFF   # base 0, limit 0xfffff, G, L, P, DPL0, type 0xb
DATA = 0x00CF93000000FFFF     # base 0, limit 0xfffff, G, D/B, P, type 3
CODE32_DPL3 = 0x00CFFB000000FFFF


@pytest.mark.parametrize("raw,base,limit,ar", [
    (CODE64, 0, 0xFFFFFFFF, 0xA09B),
    (DATA, 0, 0xFFFFFFFF, 0xC093),
    (CODE32_DPL3, 0, 0xFFFFFFFF, 0xC0FB),
    # byte-granular limit 0x67, base 0x12345678, type 9 (32-bit TSS), not 64-bit mode
    (0x12008934_56780067, 0x12345678, 0x67, 0x0089),
])
def test_decode_8_byte(raw, base, limit, ar):
    assert S.decode_descriptor(struct.pack("<Q", raw), long_mode=False) == (base, limit, ar)


def test_decode_16_byte_tss_in_long_mode():
    # 64-bit TSS at 0xffff_8000_0012_3000, limit 0x67, busy type 11, P
    lo = (0x67) | (0x3000 << 16) | (0x12 << 32) | (0x8B << 40) | (0x00 << 56)
    raw = struct.pack("<QII", lo, 0xFFFF8000, 0)
    assert S.decode_descriptor(raw, long_mode=True) == (0xFFFF800000123000, 0x67, 0x8B)


def test_g_bit_scaling():
    raw = struct.pack("<Q", 0x00C0930000000001)   # limit 1, G -> 0x1fff
    assert S.decode_descriptor(raw)[1] == 0x1FFF


def test_encode_round_trip_and_errors():
    raw = S.encode_descriptor(0xFFFF800000123000, 0x67, 0x8B, long_mode=True)
    assert len(raw) == 16
    assert S.decode_descriptor(raw, long_mode=True) == (0xFFFF800000123000, 0x67, 0x8B)
    with pytest.raises(ValueError):
        S.encode_descriptor(0, 0x123456, 0x93)          # over 20 bits: needs G
    with pytest.raises(ValueError):
        S.encode_descriptor(0, 0x1000, S.AR_G | 0x93)   # G limit must end in fff
    with pytest.raises(ValueError):
        S.encode_descriptor(0, 0, 0x10093)              # unusable is not a descriptor bit


@given(base=st.integers(0, 0xFFFFFFFF), raw_limit=st.integers(0, 0xFFFFF),
       access=st.integers(0, 0xFF).filter(lambda a: a & 0x10),  # code/data (8-byte)
       flags=st.integers(0, 0xF))
def test_round_trip_code_data(base, raw_limit, access, flags):
    ar = access | (flags << 12)
    limit = (raw_limit << 12) | 0xFFF if ar & S.AR_G else raw_limit
    raw = S.encode_descriptor(base, limit, ar)
    assert len(raw) == 8
    assert S.decode_descriptor(raw) == (base, limit, ar)


def test_selectors_and_host_mask():
    assert (S.selector_index(0x10B), S.selector_ti(0x10B), S.selector_rpl(0x10B)) == (0x21, 0, 3)
    # the host-state area wants RPL and TI clear: & ~7 keeps bits 15:3
    assert S.host_selector(0x10B) == 0x108
    assert S.host_selector(0x2F) == 0x28
    assert (0x10B & 0xF8) == 0x08            # the seed's mask truncates: what the checker must catch
    assert S.is_null(0) and S.is_null(3) and not S.is_null(8)


def test_segment_from_table_null_is_unusable():
    gdt = struct.pack("<QQQ", 0, CODE64, DATA)
    assert S.segment_from_table(gdt, 0).ar == S.AR_UNUSABLE
    cs = S.segment_from_table(gdt, 0x8)
    assert (cs.base, cs.limit, cs.ar, cs.unusable) == (0, 0xFFFFFFFF, 0xA09B, False)
    with pytest.raises(ValueError):
        S.segment_from_table(gdt, 0x18)


def test_describe_ar():
    assert S.describe_ar(0xA09B) == "code XR accessed, DPL 0, P, L, G"
    assert S.describe_ar(0x1C000).startswith("unusable")

"""The VMCS region (Vol. 3C "Format of the VMCS Region")."""
import struct

import pytest

from vmxlab.caps import load
from vmxlab.errors import BadInput
from vmxlab.vmcs import Vmcs, region


@pytest.mark.parametrize("profile", ["skylake-client", "penryn", "icelake-server", "kvm-nested"])
def test_round_trip_within_the_reported_size(profile):
    p = load(profile)
    v = Vmcs(launch_state="launched")
    v["GUEST_RIP"] = 0xFFFF_FFFF_8100_0000
    v["GUEST_CS_SELECTOR"] = 0x10
    v["VMCS_LINK_POINTER"] = -1
    data = region.pack(v, p)
    assert len(data) == p.vmcs_size
    assert struct.unpack_from("<I", data)[0] == p.revision_id          # bits 30:0, shadow bit 0
    assert region.revision_id(data) == p.revision_id
    assert not region.shadow_indicator(data)
    assert region.abort_indicator(data) == 0
    back = region.unpack(data, p)
    assert back.launch_state == "launched"
    assert back["GUEST_RIP"] == 0xFFFF_FFFF_8100_0000
    assert back["VMCS_LINK_POINTER"] == (1 << 64) - 1


def test_shadow_indicator_and_launch_state_byte():
    p = load("skylake-client")
    data = bytearray(region.pack(Vmcs(), p, shadow=True, abort=5))
    assert region.shadow_indicator(data) and region.abort_indicator(data) == 5
    region.set_launch_state(data, "launched")
    assert region.unpack(bytes(data), p).launch_state == "launched"


def test_short_region_is_bad_input():
    with pytest.raises(BadInput):
        region.unpack(b"\x00" * 16, load("skylake-client"))

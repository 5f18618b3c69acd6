"""The VMCS region in memory.

Source: Intel SDM Vol. 3C "Format of the VMCS Region": bytes 0-3 hold the VMCS
revision identifier (bits 30:0) and the shadow-VMCS indicator (bit 31); bytes 4-7
the VMX-abort indicator; the rest is VMCS data in an implementation-specific
format, which also holds the launch state ("VMCS Data" / "Software Use of Virtual-
Machine Control Structures").  The region size is IA32_VMX_BASIC bits 44:32.

vmxlab's implementation-specific format: byte 8 holds the launch state (0 clear,
1 launched), bytes 16 and up the fields the processor supports, packed in
encoding order (2, 4 or 8 bytes by width).  The layout depends only on the
processor, so it is computed once per profile.
"""
from __future__ import annotations

import struct
from functools import lru_cache

from ..arch import fields as F
from ..errors import BadInput
from .store import Vmcs

HEADER = 16
_SIZE = {"16": 2, "32": 4, "64": 8, "natural": 8}
_FMT = {2: "<H", 4: "<I", 8: "<Q"}
LAUNCH_CLEAR, LAUNCHED = 0, 1


@lru_cache(maxsize=32)
def _layout(supported: tuple[int, ...], size: int) -> tuple[tuple[int, int, str], ...]:
    out, offset = [], HEADER
    for enc in supported:
        n = _SIZE[F.BY_ENCODING[enc].width]
        out.append((enc, offset, _FMT[n]))
        offset += n
    if offset > size:
        raise BadInput(f"the supported VMCS fields need {offset} bytes; the processor's VMCS region has {size}")
    return tuple(out)


def layout(profile) -> tuple[tuple[int, int, str], ...]:
    """(encoding, offset, struct format) of every field the profile supports."""
    supported = tuple(f.encoding for f in F.FIELDS if profile.field_supported(f))
    return _layout(supported, profile.vmcs_size)


def revision_id(region: bytes) -> int:
    return struct.unpack_from("<I", region)[0] & 0x7FFFFFFF


def shadow_indicator(region: bytes) -> bool:
    return bool(struct.unpack_from("<I", region)[0] >> 31)


def abort_indicator(region: bytes) -> int:
    return struct.unpack_from("<I", region, 4)[0]


def pack(vmcs: Vmcs, profile, revision: int | None = None, shadow: bool = False, abort: int = 0) -> bytes:
    """The region bytes for a VMCS (fields it does not know are stored as 0)."""
    rev = profile.revision_id if revision is None else revision
    buf = bytearray(profile.vmcs_size)
    struct.pack_into("<IIB", buf, 0, (rev & 0x7FFFFFFF) | (shadow << 31), abort,
                     LAUNCHED if vmcs.launch_state == "launched" else LAUNCH_CLEAR)
    values = vmcs.values
    for enc, offset, fmt in layout(profile):
        struct.pack_into(fmt, buf, offset, values.get(enc, 0) or 0)
    return bytes(buf)


def unpack(region: bytes, profile) -> Vmcs:
    """The VMCS a region holds (every supported field known)."""
    if len(region) < profile.vmcs_size:
        raise BadInput(f"a VMCS region has {profile.vmcs_size} bytes, got {len(region)}")
    values = {enc: struct.unpack_from(fmt, region, offset)[0] for enc, offset, fmt in layout(profile)}
    launch = "launched" if region[8] == LAUNCHED else "clear"
    return Vmcs(values, default=0, launch_state=launch)


def set_launch_state(region: bytearray, state: str) -> None:
    region[8] = LAUNCHED if state == "launched" else LAUNCH_CLEAR

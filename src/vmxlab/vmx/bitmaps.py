"""Which RDMSR/WRMSR and I/O accesses exit, through the MSR and I/O bitmaps.

Sources: Intel SDM Vol. 3C "VMX Non-Root Operation" > "Instructions That Cause VM
Exits Conditionally" (RDMSR, WRMSR, IN/INS/OUT/OUTS), "I/O-Bitmap Addresses",
"MSR-Bitmap Address".
"""
from __future__ import annotations

from typing import Callable

ReadByte = Callable[[int], int]   # host-physical address -> byte


def msr_exits(bitmap: int | None, index: int, write: bool, read_byte: ReadByte) -> bool:
    """Does RDMSR (write=False) or WRMSR of MSR `index` cause a VM exit?

    bitmap: physical address of the MSR bitmaps, or None when "use MSR bitmaps" is 0
    (then every RDMSR/WRMSR exits).  MSRs outside 0-1FFFH and C0000000H-C0001FFFH
    always exit.
    """
    if bitmap is None:
        return True
    if index <= 0x1FFF:
        base = 2048 if write else 0
    elif 0xC0000000 <= index <= 0xC0001FFF:
        base = 3072 if write else 1024
        index -= 0xC0000000
    else:
        return True
    return bool(read_byte(bitmap + base + (index >> 3)) >> (index & 7) & 1)


def io_exits(port: int, size: int, uncond: bool, bitmaps: tuple[int, int] | None,
             read_byte: ReadByte) -> bool:
    """Does an I/O instruction on `size` bytes at `port` cause a VM exit?

    bitmaps: physical addresses of I/O bitmaps A and B when "use I/O bitmaps" is 1,
    else None (then the exit depends on "unconditional I/O exiting" alone).  With
    bitmaps, the access exits if the bit of any port it touches is 1, or if it wraps
    past port FFFFH.
    """
    if bitmaps is None:
        return uncond
    if port + size - 1 > 0xFFFF:
        return True
    for p in range(port, port + size):
        base = bitmaps[0] if p < 0x8000 else bitmaps[1]
        q = p & 0x7FFF
        if read_byte(base + (q >> 3)) >> (q & 7) & 1:
            return True
    return False

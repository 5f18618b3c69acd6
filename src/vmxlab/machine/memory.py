"""Physical memory of the simulated machine.

RAM is one anonymous host mapping (zero-filled, pages allocated by the host on
first touch) mapped into unicorn at host-physical address 0 with
`uc_mem_map_ptr`, so Python reads and writes it directly (struct on a
memoryview: no ctypes call per access) while unicorn's generated code reads and
writes the same bytes.

Addresses at or above `size` do not exist.  Python accessors raise
`NonexistentMemory`; a guest access that translates to such an address ends the
run with the stop reason `NONEXISTENT_MEMORY` (see machine.py): reads are not
made up, writes are not dropped silently.

Writes from Python bypass unicorn's self-modifying-code detection (in
UC_TLB_VIRTUAL mode even `uc_mem_write` does): the machine's `write_phys`
invalidates translated code when it writes a page that has been executed.
"""
from __future__ import annotations

import ctypes
import mmap
import struct

PAGE = 4096
PAGE_MASK = ~(PAGE - 1)

_Q = struct.Struct("<Q")
_I = struct.Struct("<I")
_H = struct.Struct("<H")


class NonexistentMemory(Exception):
    """An access to a physical address the machine has no memory at."""

    def __init__(self, address: int, size: int = 1, write: bool = False):
        kind = "write" if write else "read"
        super().__init__(f"{kind} of {size} byte(s) at physical {address:#x}: no memory there")
        self.address = address
        self.size = size
        self.write = write


class PhysicalMemory:
    """`size` bytes of RAM at physical addresses [0, size)."""

    def __init__(self, size: int):
        if size <= 0 or size % PAGE:
            raise ValueError(f"memory size {size:#x} is not a positive multiple of 4 KiB")
        self.size = size
        self._map = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._anchor = ctypes.c_char.from_buffer(self._map)
        self.host_address = ctypes.addressof(self._anchor)
        self.view = memoryview(self._map)

    def _check(self, address: int, size: int, write: bool = False) -> None:
        if address < 0 or address + size > self.size:
            raise NonexistentMemory(address, size, write)

    def contains(self, address: int, size: int = 1) -> bool:
        return 0 <= address and address + size <= self.size

    def read(self, address: int, size: int) -> bytes:
        self._check(address, size)
        return bytes(self.view[address:address + size])

    def write(self, address: int, data: bytes) -> None:
        self._check(address, len(data), True)
        self.view[address:address + len(data)] = data

    def fill(self, address: int, size: int, byte: int = 0) -> None:
        self._check(address, size, True)
        ctypes.memset(self.host_address + address, byte, size)

    def read64(self, address: int) -> int:
        self._check(address, 8)
        return _Q.unpack_from(self._map, address)[0]

    def write64(self, address: int, value: int) -> None:
        self._check(address, 8, True)
        _Q.pack_into(self._map, address, value & 0xFFFFFFFFFFFFFFFF)

    def read32(self, address: int) -> int:
        self._check(address, 4)
        return _I.unpack_from(self._map, address)[0]

    def write32(self, address: int, value: int) -> None:
        self._check(address, 4, True)
        _I.pack_into(self._map, address, value & 0xFFFFFFFF)

    def read16(self, address: int) -> int:
        self._check(address, 2)
        return _H.unpack_from(self._map, address)[0]

    def page(self, address: int) -> bytes:
        """The 4 KiB page containing `address`."""
        base = address & PAGE_MASK
        self._check(base, PAGE)
        return bytes(self.view[base:base + PAGE])

    def close(self) -> None:
        self.view.release()
        del self._anchor
        self._map.close()

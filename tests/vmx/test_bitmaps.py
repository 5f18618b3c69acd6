"""MSR and I/O bitmaps ("Instructions That Cause VM Exits Conditionally")."""
from vmxlab.vmx.bitmaps import io_exits, msr_exits


class Page:
    def __init__(self, base):
        self.base = base
        self.b = bytearray(4096 * 2)

    def set_bit(self, offset, bit):
        self.b[offset] |= 1 << bit

    def read(self, a):
        return self.b[a - self.base]


def test_msr_bitmap_quarters():
    p = Page(0x1000)
    p.set_bit(0x174 >> 3, 0x174 & 7)                     # read low: IA32_SYSENTER_CS
    p.set_bit(3072 + (0x80 >> 3), 0x80 & 7)              # write high: IA32_EFER (C0000080H)
    assert msr_exits(0x1000, 0x174, False, p.read)
    assert not msr_exits(0x1000, 0x174, True, p.read)
    assert msr_exits(0x1000, 0xC0000080, True, p.read)
    assert not msr_exits(0x1000, 0xC0000080, False, p.read)
    assert msr_exits(0x1000, 0x4000_0000, False, p.read)     # outside both ranges: always
    assert msr_exits(None, 0x10, False, p.read)              # no MSR bitmaps: always


def test_io_bitmaps():
    a, b = Page(0x2000), Page(0x3000)
    a.set_bit(0x3F9 >> 3, 0x3F9 & 7)
    b.set_bit((0x8000 & 0x7FFF) >> 3, 0)

    def read(addr):
        return a.read(addr) if addr < 0x3000 else b.read(addr)

    maps = (0x2000, 0x3000)
    assert not io_exits(0x3F8, 1, False, maps, read)
    assert io_exits(0x3F8, 2, False, maps, read)             # touches 0x3F9
    assert io_exits(0x8000, 1, False, maps, read)
    assert io_exits(0xFFFF, 2, False, maps, read)            # wraps past FFFFH
    assert io_exits(0x60, 1, True, None, read)               # unconditional I/O exiting
    assert not io_exits(0x60, 1, False, None, read)

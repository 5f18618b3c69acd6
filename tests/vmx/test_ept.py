"""EPT translation against the SDM ("EPT Translation Mechanism", "EPT Misconfigurations",
"EPT Violations", "Accessed and Dirty Flags for EPT")."""
import pytest

from vmxlab.arch import ept as A
from vmxlab.vmx import ept as E


class Mem:
    def __init__(self):
        self.q: dict[int, int] = {}
        self.next = 0x100000

    def read64(self, a):
        return self.q.get(a, 0)

    def write64(self, a, v):
        self.q[a] = v

    def alloc(self):
        self.next += 0x1000
        return self.next


def four_level(mem, gpa, leaf_entry, upper=0b111, levels=4):
    """Tables for one 4-KiB mapping of gpa; returns the EPTP (A/D off)."""
    root = mem.alloc()
    table = root
    for level in range(levels, 1, -1):
        nxt = mem.alloc()
        mem.write64(table + ((gpa >> (12 + 9 * (level - 1))) & 0x1FF) * 8, nxt | upper)
        table = nxt
    mem.write64(table + ((gpa >> 12) & 0x1FF) * 8, leaf_entry)
    return A.eptp(root, levels)


def test_4k_translation_and_permissions():
    m = Mem()
    eptp = four_level(m, 0x12345000, 0xABCDE000 | 0b011 | (6 << 3))   # RW, WB, no X
    t = E.translate(eptp, 0x12345678, E.READ, m.read64, m.write64, maxphyaddr=39)
    assert (t.hpa, t.page_size, t.memory_type, t.perms & 7) == (0xABCDE678, 4096, 6, 0b011)
    with pytest.raises(E.EptViolation) as v:
        E.translate(eptp, 0x12345678, E.FETCH, m.read64, m.write64, maxphyaddr=39)
    # bit 2 (fetch) | readable (bit 3) | writable (bit 4), not executable
    assert v.value.qualification == 0b100 | 0b011 << 3 and v.value.gpa == 0x12345678


def test_not_present_entry_is_a_violation_with_and_of_walk():
    m = Mem()
    eptp = four_level(m, 0x5000, 0)                      # leaf not present
    with pytest.raises(E.EptViolation) as v:
        E.translate(eptp, 0x5000, E.WRITE, m.read64, m.write64, maxphyaddr=39)
    assert v.value.qualification == 0b010                # write access; R/W/X AND = 0


def test_permissions_are_anded_across_levels():
    m = Mem()
    eptp = four_level(m, 0x5000, 0x9000 | 0b111 | (6 << 3), upper=0b101)   # upper levels RX
    with pytest.raises(E.EptViolation) as v:
        E.translate(eptp, 0x5000, E.WRITE, m.read64, m.write64, maxphyaddr=39)
    assert v.value.qualification == 0b010 | 0b101 << 3


def test_2mb_and_1gb_pages():
    m = Mem()
    root, pdpt, pd = m.alloc(), m.alloc(), m.alloc()
    m.write64(root, pdpt | 7)
    m.write64(pdpt + 8 * 1, 0x40000000 | 7 | (6 << 3) | A.EPT_LARGE)          # 1 GiB at 1 GiB
    m.write64(pdpt, pd | 7)
    m.write64(pd + 8 * 3, 0x00600000 | 7 | (6 << 3) | A.EPT_LARGE)            # 2 MiB at 6 MiB
    eptp = A.eptp(root)
    t = E.translate(eptp, 0x4123_4567, E.READ, m.read64, None, maxphyaddr=39)
    assert (t.hpa, t.page_size) == (0x4123_4567, 1 << 30)
    t = E.translate(eptp, 0x0067_8901, E.FETCH, m.read64, None, maxphyaddr=39)
    assert (t.hpa, t.page_size) == (0x0067_8901, 2 << 20)
    with pytest.raises(E.EptMisconfig, match="1-GiB page"):
        E.translate(eptp, 0x4000_0000, E.READ, m.read64, None, maxphyaddr=39, one_gb_pages=False)


@pytest.mark.parametrize("leaf,why", [
    (0x9000 | 0b010 | (6 << 3), "write-only"),
    (0x9000 | 0b100 | (6 << 3), "execute-only"),          # with execute_only=False below
    (0x9000 | 0b111 | (2 << 3), "reserved memory type 2"),
    (0x9000 | 0b111 | (7 << 3), "reserved memory type 7"),
    ((1 << 45) | 0b111 | (6 << 3), "reserved bits"),       # address bit above MAXPHYADDR 39
])
def test_misconfigurations(leaf, why):
    m = Mem()
    eptp = four_level(m, 0x5000, leaf)
    with pytest.raises(E.EptMisconfig, match=why):
        E.translate(eptp, 0x5000, E.READ, m.read64, None, maxphyaddr=39, execute_only=False)


def test_execute_only_allowed_when_supported():
    m = Mem()
    eptp = four_level(m, 0x5000, 0x9000 | 0b100 | (6 << 3))
    assert E.translate(eptp, 0x5000, E.FETCH, m.read64, None, maxphyaddr=39).hpa == 0x9000
    with pytest.raises(E.EptViolation):
        E.translate(eptp, 0x5000, E.READ, m.read64, None, maxphyaddr=39)


def test_accessed_and_dirty_flags():
    m = Mem()
    eptp = four_level(m, 0x5000, 0x9000 | 0b111 | (6 << 3)) | A.EPTP_AD
    E.translate(eptp, 0x5000, E.READ, m.read64, m.write64, maxphyaddr=39)
    assert all(v & A.EPT_A for v in m.q.values())
    assert not any(v & A.EPT_D for v in m.q.values())
    E.translate(eptp, 0x5000, E.WRITE, m.read64, m.write64, maxphyaddr=39)
    leaf_slots = [a for a, v in m.q.items() if v & ~0xFFF & ((1 << 52) - 1) == 0x9000]
    assert m.q[leaf_slots[0]] & A.EPT_D


def test_guest_paging_structure_access_counts_as_write_with_ad():
    m = Mem()
    eptp = four_level(m, 0x5000, 0x9000 | 0b101 | (6 << 3)) | A.EPTP_AD      # read-only page
    with pytest.raises(E.EptViolation) as v:
        E.translate(eptp, 0x5000, E.READ, m.read64, m.write64, maxphyaddr=39, paging_structure=True)
    assert v.value.qualification & 0b111 == E.WRITE


def test_mode_based_execute_control():
    m = Mem()
    eptp = four_level(m, 0x5000, 0x9000 | 0b001 | A.EPT_XU | (6 << 3), upper=0b111 | A.EPT_XU)
    assert E.translate(eptp, 0x5000, E.FETCH, m.read64, None, maxphyaddr=39, mbec=True, user=True).hpa == 0x9000
    with pytest.raises(E.EptViolation) as v:
        E.translate(eptp, 0x5000, E.FETCH, m.read64, None, maxphyaddr=39, mbec=True, user=False)
    assert v.value.qualification == 0b100 | (0b001 << 3) | (1 << 6)


def test_identity_map_covers_memory_with_2mb_pages():
    m = Mem()
    eptp = E.identity_map(m.alloc, m.write64, (8 << 20) + 0x3000)
    assert eptp & 0x3F == (3 << 3) | 6
    for gpa, size in ((0x0, 2 << 20), (0x7FFFFF, 2 << 20), (0x800000, 4096), (0x802FFF, 4096)):
        t = E.translate(eptp, gpa, E.WRITE, m.read64, None, maxphyaddr=39)
        assert (t.hpa, t.page_size, t.memory_type) == (gpa, size, 6)
    with pytest.raises(E.EptViolation):
        E.translate(eptp, 0x803000, E.READ, m.read64, None, maxphyaddr=39)


def test_5_level_walk():
    m = Mem()
    gpa = (3 << 48) | 0x7000
    eptp = four_level(m, gpa, 0xA000 | 0b111 | (6 << 3), levels=5)
    assert eptp >> 3 & 7 == 4
    assert E.translate(eptp, gpa, E.READ, m.read64, None, maxphyaddr=52).hpa == 0xA000

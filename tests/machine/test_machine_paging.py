"""Page walks against the SDM "Paging" chapter: access rights, A/D flags,
page-fault error codes, reserved bits, page sizes, PAE PDPTEs, 32-bit PSE,
5-level paging.  Pure: the walker runs on a dictionary of entries."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmxlab.machine import paging as PG
from vmxlab.machine.paging import FETCH, READ, WRITE, Context, Mode, PageFault

P, RW, US, A, D, PS = 1, 2, 4, 0x20, 0x40, 0x80
XD = 1 << 63


class Mem:
    def __init__(self):
        self.q = {}

    def read64(self, a):
        return self.q.get(a, 0)

    def read32(self, a):
        return self.q.get(a, 0) & 0xFFFFFFFF

    def write64(self, a, v):
        self.q[a] = v

    def write32(self, a, v):
        self.q[a] = v


def four_level(leaf_flags, upper_flags=P | RW | US, linear=0x7F_1234_5678):
    m = Mem()
    pml4, pdpt, pd, pt = 0x1000, 0x2000, 0x3000, 0x4000
    m.q[pml4 + 8 * ((linear >> 39) & 511)] = pdpt | upper_flags
    m.q[pdpt + 8 * ((linear >> 30) & 511)] = pd | upper_flags
    m.q[pd + 8 * ((linear >> 21) & 511)] = pt | upper_flags
    m.q[pt + 8 * ((linear >> 12) & 511)] = 0xABC000 | leaf_flags
    return m, linear, pt + 8 * ((linear >> 12) & 511)


def ctx(mode=Mode.LEVEL4, **kw):
    base = dict(cr3=0x1000, wp=True, nxe=True, maxphyaddr=46)
    base.update(kw)
    return Context(mode, **base)


def test_translation_sets_accessed_and_dirty():
    m, lin, pte = four_level(P | RW | US)
    tr = PG.translate(ctx(), lin, READ, user=True, accessor=m)
    assert tr.physical == 0xABC000 | (lin & 0xFFF)
    assert m.q[pte] & A and not m.q[pte] & D
    assert all(m.q[a] & A for a, _ in tr.entries)
    PG.translate(ctx(), lin, WRITE, user=True, accessor=m)
    assert m.q[pte] & D


def test_user_read_of_supervisor_page():
    m, lin, _ = four_level(P | RW)
    with pytest.raises(PageFault) as e:
        PG.translate(ctx(), lin, READ, user=True, accessor=m)
    assert e.value.error_code == 0b101            # P, U/S


def test_not_present_write_from_user():
    m, lin, _ = four_level(RW | US)
    with pytest.raises(PageFault) as e:
        PG.translate(ctx(), lin, WRITE, user=True, accessor=m)
    assert e.value.error_code == 0b110


def test_cr0_wp_governs_supervisor_writes_to_read_only_pages():
    m, lin, _ = four_level(P | US)
    PG.translate(ctx(wp=False), lin, WRITE, user=False, accessor=m)
    with pytest.raises(PageFault) as e:
        PG.translate(ctx(wp=True), lin, WRITE, user=False, accessor=m)
    assert e.value.error_code == 0b011


def test_execute_disable_sets_the_id_bit():
    m, lin, _ = four_level(P | RW | US | XD)
    with pytest.raises(PageFault) as e:
        PG.translate(ctx(), lin, FETCH, user=False, accessor=m)
    assert e.value.error_code == 0b10001
    # with NXE = 0 bit 63 is reserved: RSVD
    with pytest.raises(PageFault) as e:
        PG.translate(ctx(nxe=False), lin, READ, user=False, accessor=m)
    assert e.value.error_code & 0b1001 == 0b1001


def test_smep_and_smap():
    m, lin, _ = four_level(P | RW | US)
    with pytest.raises(PageFault) as e:
        PG.translate(ctx(smep=True), lin, FETCH, user=False, accessor=m)
    assert e.value.error_code == 0b10001           # P, I/D (SMEP)
    with pytest.raises(PageFault):
        PG.translate(ctx(smap=True), lin, READ, user=False, accessor=m, ac=False)
    PG.translate(ctx(smap=True), lin, READ, user=False, accessor=m, ac=True)
    with pytest.raises(PageFault):                  # implicit accesses ignore AC
        PG.translate(ctx(smap=True), lin, READ, user=False, accessor=m, ac=True, implicit=True)


def test_reserved_bits_beyond_maxphyaddr():
    m, lin, _ = four_level(P | RW | (1 << 45))
    PG.translate(ctx(maxphyaddr=46), lin, READ, user=False, accessor=m)
    with pytest.raises(PageFault) as e:
        PG.translate(ctx(maxphyaddr=39), lin, READ, user=False, accessor=m)
    assert e.value.error_code == 0b1001


def test_large_pages():
    m = Mem()
    m.q[0x1000] = 0x2000 | P | RW
    m.q[0x2000] = 0x40000000 | P | RW | PS                   # 1 GiB page
    m.q[0x2008] = 0x3000 | P | RW
    m.q[0x3000 + 8] = 0x00600000 | P | RW | PS               # 2 MiB page for 0x40200000
    assert PG.translate(ctx(), 0x12345678, READ, False, m).physical == 0x52345678
    assert PG.translate(ctx(), 0x40212345, READ, False, m).physical == 0x00612345
    with pytest.raises(PageFault):                            # 1 GiB pages unsupported: PS reserved
        PG.translate(ctx(gbpages=False), 0x12345678, READ, False, m)
    m.q[0x3000 + 8] |= 1 << 13                                # bit 13 of a 2 MiB PDE is reserved
    with pytest.raises(PageFault) as e:
        PG.translate(ctx(), 0x40212345, READ, False, m)
    assert e.value.error_code & 8


def test_pae_paging_uses_the_pdpte_registers():
    m = Mem()
    m.q[0x3000 + 8 * 1] = 0x4000 | P | RW
    m.q[0x4000 + 8 * 2] = 0x7000 | P | RW
    pdptes = (0, 0, 0x3000 | P, 0)
    linear = (2 << 30) | (1 << 21) | (2 << 12) | 0x34
    tr = PG.translate(ctx(Mode.PAE, pdptes=pdptes, cr3=0), linear, READ, False, m)
    assert tr.physical == 0x7034
    with pytest.raises(PageFault):
        PG.translate(ctx(Mode.PAE, pdptes=(0, 0, 0, 0), cr3=0), linear, READ, False, m)
    # a present PDPTE with reserved bit 1: loading it is #GP ("PDPTE Registers")
    m.q[0x9000] = 0x3000 | P | 2
    with pytest.raises(PG.PdpteFault):
        PG.read_pdptes(m, 0x9000, 46)


def test_32bit_paging_with_4mb_pages():
    m = Mem()
    m.q[0x1000 + 4 * 1] = 0x00800000 | P | RW | PS            # PDE 1: 4 MiB page at 8 MiB
    m.q[0x1000 + 4 * 2] = 0x5000 | P | RW | US
    m.q[0x5000 + 4 * 3] = 0x9000 | P | RW | US
    assert PG.translate(ctx(Mode.BITS32, pse=True), 0x00412345, READ, False, m).physical == 0x812345
    assert PG.translate(ctx(Mode.BITS32), 0x00803456, READ, True, m).physical == 0x9456


def test_five_level_paging():
    m = Mem()
    lin = 0x01_0000_0000_0000
    m.q[0x1000 + 8 * ((lin >> 48) & 511)] = 0x2000 | P | RW
    m.q[0x2000] = 0x3000 | P | RW
    m.q[0x3000] = 0x4000 | P | RW
    m.q[0x4000] = 0x5000 | P | RW
    m.q[0x5000] = 0x6000 | P | RW
    assert PG.translate(ctx(Mode.LEVEL5), lin | 0x10, READ, False, m).physical == 0x6010


def test_mode_selection():
    assert PG.mode_of(0, 0, 0) == Mode.NONE
    assert PG.mode_of(1 << 31, 0, 0) == Mode.BITS32
    assert PG.mode_of(1 << 31, 0x20, 0) == Mode.PAE
    assert PG.mode_of(1 << 31, 0x20, 0x500) == Mode.LEVEL4
    assert PG.mode_of(1 << 31, 0x20 | 0x1000, 0x500) == Mode.LEVEL5


@settings(max_examples=200, deadline=None)
@given(rw=st.booleans(), us=st.booleans(), xd=st.booleans(), user=st.booleans(), wp=st.booleans(),
       access=st.sampled_from([READ, WRITE, FETCH]))
def test_access_rights_table(rw, us, xd, user, wp, access):
    """"Access Rights" for a present page (no SMEP/SMAP)."""
    flags = P | (RW if rw else 0) | (US if us else 0) | (XD if xd else 0)
    m, lin, _ = four_level(flags, upper_flags=P | RW | US)
    if access == FETCH:
        ok = not xd and (us or not user)
    elif access == WRITE:
        ok = (us and rw) if user else (rw or not wp)
    else:
        ok = us or not user
    try:
        PG.translate(ctx(wp=wp), lin, access, user, m)
        assert ok
    except PageFault as e:
        assert not ok
        expected = 1 | (2 if access == WRITE else 0) | (4 if user else 0) | (0x10 if access == FETCH else 0)
        assert e.error_code == expected


def test_invlpg_makes_a_changed_mapping_visible_and_tlb_keeps_stale_ones():
    import mhelpers as H
    e = H.Env()
    e.m.mem.write64(0x61000, 0xAAAA)
    e.m.mem.write64(0x62000, 0xBBBB)
    e.code(f"""
        mov rbx, 0x61000
        mov r10, [rbx]                  # maps linear 0x61000 -> 0x61000 (cached)
        mov rax, {H.pte(0x61)}
        mov qword ptr [rax], 0x62007    # now -> 0x62000, no invalidation yet
        mov r11, [rbx]                  # a TLB may still give the old translation
        invlpg [rbx]
        mov r12, [rbx]                  # after INVLPG: the new one
        cli; hlt""")
    e.m.run(time_budget=2)
    assert e.reg("R10") == 0xAAAA
    assert e.reg("R11") in (0xAAAA, 0xBBBB)
    assert e.reg("R12") == 0xBBBB

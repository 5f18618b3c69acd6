"""Linear-address translation: the paging modes of Intel SDM Vol. 3A chapter "Paging".

Pure functions over a paging-structure accessor, usable on any CR3 and mode (the
machine's TLB fill and Python-side accesses use them for the current state; the
VMX layer uses them on guest paging and to read PDPTEs).

Sections followed: "Paging Modes and Control Bits" (mode selection),
"32-Bit Paging", "PAE Paging" (PDPTE registers), "4-Level Paging and 5-Level
Paging", "Access Rights" (U/S, R/W, XD, CR0.WP, SMEP, SMAP, implicit supervisor
accesses), "Accessed and Dirty Flags", "Page-Fault Exceptions" (error code),
"Reserved Bits" tables of each mode.

Not modelled (documented gaps): protection keys (the machine's CPUID reports no
PKU/PKS, so CR4.PKE/PKS cannot be set), HLAT, shadow-stack pages, memory types.
Accessed flags are set only when a translation succeeds.

`accessor` is an object with read32/read64/write32/write64(guest_physical,
[value]) for paging-structure entries; it may raise (e.g. a second-stage
refusal), which propagates unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from ..arch import msrs as M
from ..arch import registers as R

READ, WRITE, FETCH = 1, 2, 4          # access kinds (the same bits as EPT qualifications)

P, RW, US, PWT, PCD, A, D, PS, G = 1, 2, 4, 8, 0x10, 0x20, 0x40, 0x80, 0x100
XD = 1 << 63

# Page-fault error code bits ("Page-Fault Error Code").
PF_P, PF_W, PF_U, PF_RSVD, PF_I, PF_PK, PF_SS = 1, 2, 4, 8, 0x10, 0x20, 0x40

KIB4, MIB2, MIB4, GIB1 = 1 << 12, 1 << 21, 1 << 22, 1 << 30


class Mode(IntEnum):
    NONE = 0          # CR0.PG = 0: linear = physical
    BITS32 = 1        # 32-bit paging
    PAE = 2
    LEVEL4 = 3        # 4-level paging (IA-32e)
    LEVEL5 = 4        # 5-level paging (CR4.LA57)


def mode_of(cr0: int, cr4: int, efer: int) -> Mode:
    """"Paging Modes and Control Bits": CR0.PG, CR4.PAE, IA32_EFER.LME/LMA, CR4.LA57."""
    if not cr0 & R.CR0_PG:
        return Mode.NONE
    if not cr4 & R.CR4_PAE:
        return Mode.BITS32
    if not efer & M.EFER_LMA:
        return Mode.PAE
    return Mode.LEVEL5 if cr4 & R.CR4_LA57 else Mode.LEVEL4


class PageFault(Exception):
    """A #PF the translation raises: `linear` goes to CR2, `error_code` is pushed."""

    def __init__(self, linear: int, error_code: int, reason: str):
        super().__init__(f"#PF at {linear:#x}, error code {error_code:#x}: {reason}")
        self.linear = linear
        self.error_code = error_code
        self.reason = reason


class PdpteFault(Exception):
    """A PAE PDPTE with a reserved bit set: loading it raises #GP(0) ("PDPTE Registers")."""


@dataclass(slots=True)
class Context:
    """What a translation depends on besides the address."""
    mode: Mode
    cr3: int
    wp: bool = True
    pse: bool = False
    smep: bool = False
    smap: bool = False
    nxe: bool = False
    maxphyaddr: int = 46
    gbpages: bool = True                     # CPUID.80000001H:EDX.Page1GB
    pdptes: tuple[int, int, int, int] | None = None   # PAE: the four PDPTE registers

    @classmethod
    def from_registers(cls, cr0: int, cr3: int, cr4: int, efer: int, maxphyaddr: int,
                       gbpages: bool = True, pdptes=None) -> "Context":
        return cls(mode_of(cr0, cr4, efer), cr3, bool(cr0 & R.CR0_WP), bool(cr4 & R.CR4_PSE),
                   bool(cr4 & R.CR4_SMEP), bool(cr4 & R.CR4_SMAP), bool(efer & M.EFER_NXE),
                   maxphyaddr, gbpages, pdptes)


@dataclass(slots=True)
class Translation:
    linear: int
    physical: int              # guest-physical address of `linear`
    page_size: int
    user: bool                 # U/S = 1 at every level
    writable: bool             # R/W = 1 at every level
    executable: bool           # no XD at any level (or NXE = 0)
    dirty: bool                # D of the entry that maps the page (after this access)
    entries: tuple[tuple[int, int], ...]   # (guest-physical address, value) per level, top first


def _addr_mask(maxphyaddr: int) -> int:
    return ((1 << maxphyaddr) - 1) & ~0xFFF


def read_pdptes(accessor, cr3: int, maxphyaddr: int) -> tuple[int, int, int, int]:
    """Load the four PAE PDPTEs from the 32-byte table at CR3[31:5].

    Raises PdpteFault when a present PDPTE has a reserved bit set (bits 2:1, 8:5,
    63:MAXPHYADDR): MOV to CR0/CR3/CR4 then raises #GP(0) ("PDPTE Registers")."""
    base = cr3 & 0xFFFFFFE0
    out = []
    reserved = 0x1E6 | (((1 << 64) - 1) & ~((1 << maxphyaddr) - 1))
    for i in range(4):
        e = accessor.read64(base + 8 * i)
        if e & P and e & reserved:
            raise PdpteFault(f"PDPTE{i} {e:#x} has reserved bits {e & reserved:#x}")
        out.append(e)
    return tuple(out)  # type: ignore[return-value]


def _fault(linear: int, access: int, user: bool, ctx: Context, present: bool, rsvd: bool, why: str) -> PageFault:
    code = (PF_P if present or rsvd else 0) | (PF_W if access == WRITE else 0) | (PF_U if user else 0)
    if rsvd:
        code |= PF_RSVD
    # I/D: instruction fetch and (SMEP, or PAE/4-level/5-level paging with NXE).
    if access == FETCH and (ctx.smep or (ctx.mode >= Mode.PAE and ctx.nxe)):
        code |= PF_I
    return PageFault(linear, code, why)


def translate(ctx: Context, linear: int, access: int, user: bool, accessor,
              ac: bool = False, implicit: bool = False, set_ad: bool = True) -> Translation:
    """Translate `linear` for an access of kind READ/WRITE/FETCH.

    `user`: the access is a user-mode access (CPL 3 and not an implicit
    supervisor-mode access).  `implicit`: a supervisor-mode implicit access
    (descriptor tables, TSS, stack pushes of event delivery): SMAP then applies
    regardless of RFLAGS.AC.  `ac`: RFLAGS.AC for explicit supervisor accesses.
    Raises PageFault; sets accessed/dirty flags when the access is allowed.
    """
    mode = ctx.mode
    if mode == Mode.NONE:
        return Translation(linear, linear, KIB4, True, True, True, True, ())
    entries: list[tuple[int, int]] = []
    us_all = rw_all = True
    xd_any = False
    if mode == Mode.BITS32:
        linear &= 0xFFFFFFFF
        pde_addr = (ctx.cr3 & 0xFFFFF000) | ((linear >> 22) << 2)
        pde = accessor.read32(pde_addr)
        if not pde & P:
            raise _fault(linear, access, user, ctx, False, False, "PDE not present")
        entries.append((pde_addr, pde))
        us_all, rw_all = bool(pde & US), bool(pde & RW)
        if pde & PS and ctx.pse:
            high_bits = min(ctx.maxphyaddr, 40) - 32
            rsvd = (1 << 21) | sum(1 << b for b in range(13 + max(high_bits, 0), 21))
            if pde & rsvd:
                raise _fault(linear, access, user, ctx, True, True, f"PDE {pde:#x} reserved bits {pde & rsvd:#x}")
            physical = (pde & 0xFFC00000) | (((pde >> 13) & 0xFF) << 32) | (linear & 0x3FFFFF)
            size = MIB4
        else:
            pte_addr = (pde & 0xFFFFF000) | (((linear >> 12) & 0x3FF) << 2)
            pte = accessor.read32(pte_addr)
            if not pte & P:
                raise _fault(linear, access, user, ctx, False, False, "PTE not present")
            entries.append((pte_addr, pte))
            us_all &= bool(pte & US)
            rw_all &= bool(pte & RW)
            physical = (pte & 0xFFFFF000) | (linear & 0xFFF)
            size = KIB4
        wide = False
    else:
        amask = _addr_mask(ctx.maxphyaddr)
        high = ((1 << 64) - 1) & ~((1 << ctx.maxphyaddr) - 1)
        if mode == Mode.PAE:
            linear &= 0xFFFFFFFF
            high_rsvd = high & ~XD & ((1 << 63) - 1)        # bits 62:M
            pdptes = ctx.pdptes
            if pdptes is None:
                raise ValueError("PAE translation needs the PDPTE registers")
            pdpte = pdptes[linear >> 30]
            if not pdpte & P:
                raise _fault(linear, access, user, ctx, False, False, "PDPTE not present")
            table = pdpte & amask
            levels = (21, 12)
        else:
            high_rsvd = high & ((1 << 52) - 1)                # bits 51:M
            top = 48 if mode == Mode.LEVEL5 else 39
            table = ctx.cr3 & amask
            levels = tuple(range(top, 11, -9))
        xd_rsvd = 0 if ctx.nxe else XD
        physical = size = 0
        for shift in levels:
            addr = table | (((linear >> shift) & 0x1FF) << 3)
            e = accessor.read64(addr)
            if not e & P:
                raise _fault(linear, access, user, ctx, False, False, f"level-{shift} entry not present")
            entries.append((addr, e))
            rsvd = high_rsvd | xd_rsvd
            leaf = shift == 12 or (e & PS and shift in (21, 30))
            if e & PS and shift >= 39:
                rsvd |= PS
            if e & PS and shift == 30:
                if not ctx.gbpages:
                    rsvd |= PS
                else:
                    rsvd |= 0x3FFFE000            # bits 29:13
            if e & PS and shift == 21:
                rsvd |= 0x1FE000                  # bits 20:13
            if e & rsvd:
                raise _fault(linear, access, user, ctx, True, True,
                             f"level-{shift} entry {e:#x} reserved bits {e & rsvd:#x}")
            us_all &= bool(e & US)
            rw_all &= bool(e & RW)
            if ctx.nxe and e & XD:
                xd_any = True
            if leaf:
                size = 1 << shift
                physical = (e & amask & ~(size - 1)) | (linear & (size - 1))
                break
            table = e & amask
        wide = True
    # "Access Rights"
    executable = not xd_any
    sup_data_blocked = (not user) and ctx.smap and us_all and (implicit or not ac)
    if access == FETCH:
        if xd_any:
            raise _fault(linear, access, user, ctx, True, False, "fetch from an execute-disable page")
        if user and not us_all:
            raise _fault(linear, access, user, ctx, True, False, "user-mode fetch from a supervisor page")
        if not user and ctx.smep and us_all:
            raise _fault(linear, access, user, ctx, True, False, "SMEP: supervisor fetch from a user page")
    elif access == WRITE:
        if user and not (us_all and rw_all):
            raise _fault(linear, access, user, ctx, True, False,
                         "user-mode write to a supervisor or read-only page")
        if not user and ctx.wp and not rw_all:
            raise _fault(linear, access, user, ctx, True, False, "CR0.WP: supervisor write to a read-only page")
        if sup_data_blocked:
            raise _fault(linear, access, user, ctx, True, False, "SMAP: supervisor write to a user page")
    else:
        if user and not us_all:
            raise _fault(linear, access, user, ctx, True, False, "user-mode read of a supervisor page")
        if sup_data_blocked:
            raise _fault(linear, access, user, ctx, True, False, "SMAP: supervisor read of a user page")
    # "Accessed and Dirty Flags"
    leaf_addr, leaf_val = entries[-1]
    dirty = bool(leaf_val & D)
    if set_ad:
        last = len(entries) - 1
        for i, (addr, val) in enumerate(entries):
            new = val | A
            if i == last and access == WRITE:
                new |= D
            if new != val:
                if wide:
                    accessor.write64(addr, new)
                else:
                    accessor.write32(addr, new)
                entries[i] = (addr, new)
        if access == WRITE:
            dirty = True
    return Translation(linear, physical, size, us_all, rw_all, executable, dirty, tuple(entries))


def allowed(tr: Translation, ctx: Context, user: bool, ac: bool = False, implicit: bool = False) -> int:
    """Access kinds (READ|WRITE|FETCH bits) the rights of `tr` allow this kind of
    access (used for TLB entries).  WRITE is left out while the page is not dirty
    so that the first write comes back to set the dirty flag."""
    if ctx.mode == Mode.NONE:
        return READ | WRITE | FETCH
    out = 0
    sup_blocked = (not user) and ctx.smap and tr.user and (implicit or not ac)
    if (tr.user or not user) and not sup_blocked:
        out |= READ
        if tr.dirty and ((user and tr.writable) or (not user and (tr.writable or not ctx.wp))):
            out |= WRITE
    if tr.executable and ((user and tr.user) or (not user and not (ctx.smep and tr.user))):
        out |= FETCH
    return out

"""EPT translation of guest-physical addresses.

Source: Intel SDM Vol. 3C "The Extended Page Table Mechanism (EPT)":
"EPT Translation Mechanism" (4- and 5-level walks, entry formats, large pages),
"EPT-Induced VM Exits" ("EPT Misconfigurations", "EPT Violations"),
"Accessed and Dirty Flags for EPT", "EPT and Memory Typing".

Pure functions over a host-physical 8-byte reader/writer, so the VMX layer, the
tests and tools can use them without a processor.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..arch import ept as A

READ, WRITE, FETCH = 1, 2, 4   # access kinds, as in exit-qualification bits 2:0

_RESERVED_MEMTYPES = (2, 3, 7)
_ADDR_MASK_CACHE: dict[int, int] = {}


@dataclass(frozen=True, slots=True)
class EptTranslation:
    hpa: int
    page_size: int          # 4 KiB, 2 MiB or 1 GiB
    perms: int              # AND of R/W/X over the walk (bits 0-2), bit 10 XU with MBEC
    memory_type: int
    ignore_pat: bool
    dirty: bool = False     # the leaf's dirty flag after this access (EPT A/D)


class EptViolation(Exception):
    """An access the EPT paging structures do not allow (or a not-present entry).

    `qualification` holds bits 6:0 of the exit qualification ("Exit Qualification
    for EPT Violations"): the access (bits 2:0) and the AND of the R, W, X (and XU)
    bits of the entries walked (bits 6:3).  The caller adds bits 7, 8 (guest-linear
    address valid / translation vs paging-structure access) and 12.
    """

    def __init__(self, gpa: int, qualification: int):
        super().__init__(f"EPT violation at guest-physical {gpa:#x}, qualification {qualification:#x}")
        self.gpa = gpa
        self.qualification = qualification


class EptMisconfig(Exception):
    def __init__(self, gpa: int, entry: int, level: int, why: str):
        super().__init__(f"EPT misconfiguration at guest-physical {gpa:#x}: level-{level} entry {entry:#x} {why}")
        self.gpa = gpa
        self.entry = entry
        self.level = level
        self.why = why


def misconfiguration(entry: int, level: int, leaf: bool, maxphyaddr: int, execute_only: bool,
                     one_gb_pages: bool) -> str | None:
    """Why a present EPT entry is misconfigured ("EPT Misconfigurations"), or None.

    level 5..1 = PML5E, PML4E, PDPTE, PDE, PTE.
    """
    if entry & 0b011 == 0b010:
        return "is write-only (bit 1 set, bit 0 clear)"
    if not execute_only and entry & 0b101 == 0b100:
        return "is execute-only, which the processor does not support"
    reserved = ((1 << 52) - 1) & ~((1 << maxphyaddr) - 1)       # bits 51:MAXPHYADDR
    if level >= 4:
        reserved |= 0xF8                                        # bits 7:3
    elif not leaf:
        reserved |= 0x78                                        # bits 6:3 of non-leaf entries
    elif level == 3:
        reserved |= 0x3FFFF000                                  # bits 29:12 of a 1-GiB page
    elif level == 2:
        reserved |= 0x1FF000                                    # bits 20:12 of a 2-MiB page
    if level == 3 and leaf and not one_gb_pages:
        return "maps a 1-GiB page, which the processor does not support"
    if entry & reserved:
        return f"has reserved bits {entry & reserved:#x} set"
    if leaf and (entry >> 3) & 7 in _RESERVED_MEMTYPES:
        return f"has reserved memory type {(entry >> 3) & 7}"
    return None


class PmlFull(Exception):
    """An accessed or dirty flag must be set while the PML index is not in 0-511
    ("Page-Modification Logging"): a PML-full VM exit; no flag is set and the access
    does not happen."""

    def __init__(self, gpa: int):
        super().__init__(f"page-modification log full at guest-physical {gpa:#x}")
        self.gpa = gpa


def translate(eptp: int, gpa: int, access: int, read64: Callable[[int], int],
              write64: Callable[[int, int], None] | None, *, maxphyaddr: int,
              execute_only: bool = True, one_gb_pages: bool = True, mbec: bool = False,
              user: bool = False, paging_structure: bool = False,
              pml: Callable[[int, bool], None] | None = None) -> EptTranslation:
    """Translate a guest-physical address through the EPT paging structures.

    access: READ, WRITE or FETCH.  With mode-based execute control (mbec), a FETCH
    by user-mode linear addresses needs XU (bit 10) and a supervisor one X (bit 2).
    paging_structure: the access is to a guest paging-structure entry; with EPT A/D
    enabled such accesses count as writes ("Accessed and Dirty Flags for EPT").
    Raises EptViolation or EptMisconfig; sets A (and D on writes) when the EPTP
    enables accessed and dirty flags.  pml(gpa, sets_dirty): page-modification
    logging, called before any of these flags changes (it may raise PmlFull).
    """
    levels = ((eptp >> 3) & 7) + 1
    ad = bool(eptp & A.EPTP_AD)
    if ad and paging_structure:
        access = WRITE
    addr_mask = ((1 << maxphyaddr) - 1) & ~0xFFF
    table = eptp & addr_mask
    perms = 0b111 | (A.EPT_XU if mbec else 0)
    walked: list[tuple[int, int]] = []
    level = levels
    while True:
        shift = 12 + 9 * (level - 1)
        slot = table + ((gpa >> shift) & 0x1FF) * 8
        entry = read64(slot)
        present = entry & 0b111 or (mbec and entry & A.EPT_XU)
        if not present:
            raise EptViolation(gpa, access | _perm_bits(perms & entry, mbec))
        leaf = level == 1 or (level in (2, 3) and bool(entry & A.EPT_LARGE))
        why = misconfiguration(entry, level, leaf, maxphyaddr, execute_only, one_gb_pages)
        if why:
            raise EptMisconfig(gpa, entry, level, why)
        perms &= entry
        walked.append((slot, entry))
        if leaf:
            break
        table = entry & addr_mask
        level -= 1
    if access == READ:
        allowed = perms & A.EPT_R
    elif access == WRITE:
        allowed = perms & A.EPT_W
    else:
        allowed = perms & (A.EPT_XU if mbec and user else A.EPT_X)
    if not allowed:
        raise EptViolation(gpa, access | _perm_bits(perms, mbec))
    if ad and write64 is not None:
        updates = []
        for i, (slot, entry) in enumerate(walked):
            new = entry | A.EPT_A
            if access == WRITE and i == len(walked) - 1:
                new |= A.EPT_D
            if new != entry:
                updates.append((slot, new))
        if updates and pml is not None:
            pml(gpa, access == WRITE and not walked[-1][1] & A.EPT_D)
        for slot, new in updates:
            write64(slot, new)
    size_shift = 12 + 9 * (level - 1)
    leaf_entry = walked[-1][1]
    base = leaf_entry & addr_mask & ~((1 << size_shift) - 1)
    dirty = bool(leaf_entry & A.EPT_D) or (ad and access == WRITE)
    return EptTranslation(base | (gpa & ((1 << size_shift) - 1)), 1 << size_shift, perms,
                          (leaf_entry >> 3) & 7, bool(leaf_entry & A.EPT_IPAT), dirty)


def _perm_bits(perms: int, mbec: bool) -> int:
    """Exit-qualification bits 5:3 (R, W, X) and 6 (XU with MBEC) from entry bits."""
    q = (perms & 0b111) << 3
    if mbec and perms & A.EPT_XU:
        q |= 1 << 6
    return q


def identity_map(alloc: Callable[[], int], write64: Callable[[int, int], None], size: int,
                 memory_type: int = 6, use_2mb: bool = True, levels: int = 4) -> int:
    """Build an identity EPT over [0, size) and return its EPTP (write-back walk, RWX).

    `alloc()` returns the host-physical address of a zeroed 4-KiB page.  2-MiB
    pages where possible (what the seed enables EPT for but never builds: deviation D3
    of hypervisor/seed_setup.py), 4-KiB pages for a tail.
    """
    root = alloc()
    tables: dict[tuple[int, int], int] = {}

    def child(parent: int, parent_level: int, gpa: int) -> int:
        shift = 12 + 9 * (parent_level - 1)          # bytes one parent entry covers
        key = (parent_level - 1, gpa >> shift)
        table = tables.get(key)
        if table is None:
            table = tables[key] = alloc()
            write64(parent + ((gpa >> shift) & 0x1FF) * 8, table | 0b111)
        return table

    two_mb = 2 << 20
    addr = 0
    while addr < size:
        big = use_2mb and addr % two_mb == 0 and addr + two_mb <= size
        stop = 2 if big else 1
        table, level = root, levels
        while level > stop:
            table = child(table, level, addr)
            level -= 1
        slot = table + ((addr >> (12 + 9 * (stop - 1))) & 0x1FF) * 8
        write64(slot, addr | 0b111 | (memory_type << 3) | (A.EPT_LARGE if big else 0))
        addr += two_mb if big else 4096
    return A.eptp(root, levels, 6)

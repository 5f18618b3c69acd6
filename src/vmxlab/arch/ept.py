"""EPT pointer and EPT paging-structure entry formats.

Source: Intel SDM Vol. 3C "Extended-Page-Table Pointer (EPTP)" (Table "Format of
Extended-Page-Table Pointer"), "EPT Translation Mechanism" (formats of EPT PML5E,
PML4E, PDPTE, PDE, PTE), "EPT Misconfigurations".
"""
from __future__ import annotations

from .layout import Bits, Layout
from .registers import MEMORY_TYPES

EPTP = Layout("EPT pointer", (
    Bits("memory_type", 0, 2, values={0: "UC", 6: "WB"}),
    Bits("walk_length_minus_1", 3, 5),
    Bits("ad", 6, doc="accessed and dirty flags enabled"),
    Bits("sss", 7, doc="supervisor shadow-stack access rights enforced"),
    Bits("reserved_11_8", 8, 11),
    Bits("pml4_address", 12, 63, doc="physical address of the EPT PML4 (or PML5) table, bits N-1:12"),
), section="Extended-Page-Table Pointer (EPTP)")
EPTP_AD = 1 << 6


def eptp(root: int, levels: int = 4, memory_type: int = 6, ad: bool = False) -> int:
    return (root & ~0xFFF) | ((levels - 1) << 3) | memory_type | (EPTP_AD if ad else 0)


EPT_ENTRY = Layout("EPT paging-structure entry", (
    Bits("R", 0), Bits("W", 1), Bits("X", 2),
    Bits("memory_type", 3, 5, values=MEMORY_TYPES, doc="leaf entries only"),
    Bits("ignore_pat", 6, doc="leaf entries only"),
    Bits("large", 7, doc="maps a page (PDPTE: 1 GiB, PDE: 2 MiB)"),
    Bits("A", 8), Bits("D", 9, doc="leaf entries only"),
    Bits("XU", 10, doc="user-mode execute with mode-based execute control"),
    Bits("address", 12, 51),
    Bits("verify_guest_paging", 57),
    Bits("paging_write_access", 58),
    Bits("sss", 60),
    Bits("suppress_ve", 63),
), section="EPT Translation Mechanism")
EPT_R, EPT_W, EPT_X, EPT_LARGE, EPT_A, EPT_D, EPT_XU = 1, 2, 4, 0x80, 0x100, 0x200, 0x400
EPT_IPAT = 0x40

"""Checks on guest page-directory-pointer-table entries (Intel SDM Vol. 3C "Checks
on Guest Page-Directory-Pointer-Table Entries").  Failure: VM-entry failure, exit
reason 33, qualification 2.

A VM entry is to a guest that uses PAE paging when the guest CR0 field has PG = 1,
the CR4 field PAE = 1 and the "IA-32e mode guest" control is 0.  With "enable EPT"
0 the PDPTEs are read from the table the guest CR3 field references (32-byte
aligned, bits 31:5); with "enable EPT" 1 the four PDPTE fields of the VMCS are
checked.  The checks are those of MOV to CR3 under PAE paging: a present PDPTE
(bit 0 = 1) must have reserved bits 2:1, 8:5 and 63:MAXPHYADDR clear.  (The SDM
lets VM entry skip the memory check when PAE paging was already in use and CR3 is
unchanged; vmxlab always checks.)
"""
from __future__ import annotations

import struct

from ..arch import controls as C
from ..arch import fields as F
from ..arch import registers as R
from .registry import GUEST, QUAL_PDPTE, S_GUEST_PDPTE, add

_CR0, _CR3, _CR4 = F.GUEST_CR0, F.GUEST_CR3, F.GUEST_CR4
_PDPTR = (F.GUEST_PDPTR0, F.GUEST_PDPTR1, F.GUEST_PDPTR2, F.GUEST_PDPTR3)
_EPT = C.SECONDARY_EXEC_ENABLE_EPT
_PG, _PAE = R.CR0_PG, R.CR4_PAE


def _bad(entry: int, k) -> int:
    return entry & (0x6 | 0x1E0 | k.beyond_maxphy) if entry & 1 else 0


def _fields(v, k, e):
    if e.sec & _EPT and v[_CR0] & _PG and v[_CR4] & _PAE and not e.ia32e:
        for i, enc in enumerate(_PDPTR):
            bad = _bad(v[enc], k)
            if bad:
                return (f"GUEST_PDPTR{i}", v[enc],
                        f"a present PDPTE must have reserved bits 2:1, 8:5 and 63:{k.maxphyaddr} clear (set: {bad:#x})")
    return None


def _memory(v, k, e):
    if not e.sec & _EPT and v[_CR0] & _PG and v[_CR4] & _PAE and not e.ia32e:
        base = v[_CR3] & 0xFFFFFFE0
        entries = struct.unpack("<4Q", e.read(base, 32))
        for i, pdpte in enumerate(entries):
            bad = _bad(pdpte, k)
            if bad:
                return ("GUEST_CR3", v[_CR3],
                        f"PDPTE {i} at {base + 8 * i:#x} = {pdpte:#x}: a present PDPTE must have reserved bits 2:1, "
                        f"8:5 and 63:{k.maxphyaddr} clear (set: {bad:#x})")
    return None


def _pae_paging(v, e):
    return v[_CR0] & _PG and v[_CR4] & _PAE and not e.ia32e


_COMMON = ("GUEST_CR0", "GUEST_CR4", "VM_ENTRY_CONTROLS", "SECONDARY_VM_EXEC_CONTROL", "CPU_BASED_VM_EXEC_CONTROL")
add("guest.pdpte.memory", S_GUEST_PDPTE, GUEST, ("GUEST_CR3", *_COMMON), _memory, qualification=QUAL_PDPTE,
    memory=True, field="GUEST_CR3", guard=_pae_paging)
add("guest.pdpte.fields", S_GUEST_PDPTE, GUEST,
    ("GUEST_PDPTR0", "GUEST_PDPTR1", "GUEST_PDPTR2", "GUEST_PDPTR3", *_COMMON), _fields,
    qualification=QUAL_PDPTE, field="GUEST_PDPTR0", guard=_pae_paging)

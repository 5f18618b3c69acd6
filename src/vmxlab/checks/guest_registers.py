"""Checks on guest control registers, debug registers and MSRs (Intel SDM Vol. 3C
"Checks on Guest Control Registers, Debug Registers, and MSRs").  Any failure:
VM-entry failure, exit reason 33, qualification 0.
"""
from __future__ import annotations

from ..arch import controls as C
from ..arch import fields as F
from ..arch import registers as R
from .host import canonical_rule, fixed_bits_message, pat_message, _pat_ok
from .registry import GUEST, S_GUEST_CR, add

ENTRY, SEC, CPU = "VM_ENTRY_CONTROLS", "SECONDARY_VM_EXEC_CONTROL", "CPU_BASED_VM_EXEC_CONTROL"


def _g(id, fields, fn, **kw):
    add(id, S_GUEST_CR, GUEST, fields, fn, **kw)


_CR0, _CR3, _CR4 = F.GUEST_CR0, F.GUEST_CR3, F.GUEST_CR4
_NW_CD = R.CR0_NW | R.CR0_CD
_PE_PG = R.CR0_PE | R.CR0_PG


def _cr0(v, k, e):
    x = v[_CR0]
    skip = _NW_CD | (_PE_PG if e.ug else 0)
    if (k.cr0_fixed0 & ~x | x & ~k.cr0_fixed1) & ~skip:
        msg = fixed_bits_message("CR0", x, k.cr0_fixed0, k.cr0_fixed1, skip)
        return msg + (" (PE and PG not checked: unrestricted guest is 1)" if e.ug else "")
    return None


def _cr0_pg_pe(v, k, e):
    if v[_CR0] & _PE_PG == R.CR0_PG:
        return "CR0.PE (bit 0) must be 1 when CR0.PG (bit 31) is 1"
    return None


def _cr4(v, k, e):
    x = v[_CR4]
    if k.cr4_fixed0 & ~x or x & ~k.cr4_fixed1:
        return fixed_bits_message("CR4", x, k.cr4_fixed0, k.cr4_fixed1)
    return None


def _cet_wp(v, k, e):
    if v[_CR4] & R.CR4_CET and not v[_CR0] & R.CR0_WP:
        return "CR0.WP (bit 16) must be 1 when CR4.CET (bit 23) is 1 in the guest CR4 field"
    return None


_DEBUGCTL, _DR7 = F.GUEST_IA32_DEBUGCTL, F.GUEST_DR7
_LOAD_DBG = C.VM_ENTRY_LOAD_DEBUG_CONTROLS


def _debugctl(v, k, e):
    if e.entry & _LOAD_DBG and v[_DEBUGCTL] & k.debugctl_reserved:
        return f"reserved bits of IA32_DEBUGCTL must be 0 (set: {v[_DEBUGCTL] & k.debugctl_reserved:#x})"
    return None


def _ia32e_pg(v, k, e):
    if e.ia32e and not v[_CR0] & R.CR0_PG:
        return "CR0.PG (bit 31) must be 1 when IA-32e mode guest is 1"
    return None


def _ia32e_pae(v, k, e):
    if e.ia32e and not v[_CR4] & R.CR4_PAE:
        return "CR4.PAE (bit 5) must be 1 when IA-32e mode guest is 1"
    return None


def _pcide(v, k, e):
    if not e.ia32e and v[_CR4] & R.CR4_PCIDE:
        return "CR4.PCIDE (bit 17) must be 0 when IA-32e mode guest is 0"
    return None


def _cr3(v, k, e):
    if v[_CR3] & k.beyond_maxphy:
        return f"bits 63:{k.maxphyaddr} must be 0 (beyond the physical-address width)"
    return None


def _dr7(v, k, e):
    if e.entry & _LOAD_DBG and v[_DR7] >> 32:
        return "bits 63:32 of DR7 must be 0 when load debug controls is 1"
    return None


_g("guest.cr0.fixed_bits", ("GUEST_CR0", SEC, CPU), _cr0)
_g("guest.cr0.pg_needs_pe", ("GUEST_CR0",), _cr0_pg_pe)
_g("guest.cr4.fixed_bits", ("GUEST_CR4",), _cr4)
_g("guest.cr4.cet_needs_wp", ("GUEST_CR4", "GUEST_CR0"), _cet_wp, field="GUEST_CR0")
_g("guest.debugctl.reserved", ("GUEST_IA32_DEBUGCTL", ENTRY), _debugctl)
_g("guest.ia32e.cr0_pg", ("GUEST_CR0", ENTRY), _ia32e_pg)
_g("guest.ia32e.cr4_pae", ("GUEST_CR4", ENTRY), _ia32e_pae)
_g("guest.cr4.pcide_outside_ia32e", ("GUEST_CR4", ENTRY), _pcide)
_g("guest.cr3.width", ("GUEST_CR3",), _cr3)
_g("guest.dr7.upper", ("GUEST_DR7", ENTRY), _dr7)
canonical_rule("guest.sysenter_esp.canonical", S_GUEST_CR, GUEST, "GUEST_SYSENTER_ESP")
canonical_rule("guest.sysenter_eip.canonical", S_GUEST_CR, GUEST, "GUEST_SYSENTER_EIP")
_LOAD_CET = C.VM_ENTRY_LOAD_CET_STATE
# Guard of the guest MSR-field rules below: one of the VM-entry controls that load them is 1.
_ENTRY_LOADS = (C.VM_ENTRY_LOAD_CET_STATE | C.VM_ENTRY_LOAD_IA32_PERF_GLOBAL_CTRL | C.VM_ENTRY_LOAD_IA32_PAT
                | C.VM_ENTRY_LOAD_IA32_EFER | C.VM_ENTRY_LOAD_BNDCFGS | C.VM_ENTRY_LOAD_IA32_RTIT_CTL
                | C.VM_ENTRY_LOAD_IA32_LBR_CTL | C.VM_ENTRY_LOAD_IA32_PKRS | C.VM_ENTRY_LOAD_UINV)


def _entry_loads(v, e):
    return e.entry & _ENTRY_LOADS


_G = {"guard": _entry_loads}
canonical_rule("guest.s_cet.canonical", S_GUEST_CR, GUEST, "GUEST_S_CET", (ENTRY,), lambda v, e: e.entry & _LOAD_CET,
               **_G)
canonical_rule("guest.intr_ssp_table.canonical", S_GUEST_CR, GUEST, "GUEST_INTR_SSP_TABLE", (ENTRY,),
               lambda v, e: e.entry & _LOAD_CET, **_G)
_S_CET = F.GUEST_S_CET


def _s_cet_reserved(v, k, e):
    if e.entry & _LOAD_CET and v[_S_CET] & k.s_cet_reserved:
        return f"reserved bits of IA32_S_CET must be 0 (set: {v[_S_CET] & k.s_cet_reserved:#x})"
    return None


_g("guest.s_cet.reserved", ("GUEST_S_CET", ENTRY), _s_cet_reserved, **_G,
   note="No shipped profile supports CET; written as KVM's nested checks do it (reserved bits 9:6).")

_PERF, _PAT, _EFER = F.GUEST_IA32_PERF_GLOBAL_CTRL, F.GUEST_IA32_PAT, F.GUEST_IA32_EFER
_BND, _RTIT, _LBR, _PKRS, _UINV = (F.GUEST_BNDCFGS, F.GUEST_IA32_RTIT_CTL, F.GUEST_IA32_LBR_CTL,
                                   F.GUEST_IA32_PKRS, F.GUEST_UINV)


def _perf(v, k, e):
    if e.entry & C.VM_ENTRY_LOAD_IA32_PERF_GLOBAL_CTRL and v[_PERF] & k.perf_global_reserved:
        return f"reserved bits of IA32_PERF_GLOBAL_CTRL must be 0 (set: {v[_PERF] & k.perf_global_reserved:#x})"
    return None


def _pat(v, k, e):
    if e.entry & C.VM_ENTRY_LOAD_IA32_PAT and not _pat_ok(v[_PAT]):
        return pat_message(v[_PAT])
    return None


def _efer_reserved(v, k, e):
    if e.entry & C.VM_ENTRY_LOAD_IA32_EFER and v[_EFER] & k.efer_reserved:
        return f"reserved bits of IA32_EFER must be 0 (set: {v[_EFER] & k.efer_reserved:#x})"
    return None


def _efer_lma(v, k, e):
    if e.entry & C.VM_ENTRY_LOAD_IA32_EFER and bool(v[_EFER] & 0x400) != e.ia32e:
        return f"LMA (bit 10) must equal IA-32e mode guest ({int(e.ia32e)})"
    return None


def _efer_lme(v, k, e):
    if e.entry & C.VM_ENTRY_LOAD_IA32_EFER and v[_CR0] & R.CR0_PG:
        x = v[_EFER]
        if bool(x & 0x100) != bool(x & 0x400):
            return "LME (bit 8) must equal LMA (bit 10) when CR0.PG is 1 in the guest CR0 field"
    return None


def _bnd_reserved(v, k, e):
    if e.entry & C.VM_ENTRY_LOAD_BNDCFGS and v[_BND] & 0xFFC:
        return "reserved bits 11:2 of IA32_BNDCFGS must be 0"
    return None


def _bnd_canonical(v, k, e):
    if e.entry & C.VM_ENTRY_LOAD_BNDCFGS:
        top = v[_BND] >> (k.linear_bits - 1)
        if top and top != (1 << (65 - k.linear_bits)) - 1:
            return f"the base (bits 63:12) of IA32_BNDCFGS must be canonical ({k.linear_bits}-bit)"
    return None


def _rtit(v, k, e):
    if e.entry & C.VM_ENTRY_LOAD_IA32_RTIT_CTL and v[_RTIT] & k.rtit_ctl_reserved:
        return f"reserved bits of IA32_RTIT_CTL must be 0 (set: {v[_RTIT] & k.rtit_ctl_reserved:#x})"
    return None


def _lbr(v, k, e):
    if e.entry & C.VM_ENTRY_LOAD_IA32_LBR_CTL and v[_LBR] & k.lbr_ctl_reserved:
        return f"reserved bits of IA32_LBR_CTL must be 0 (set: {v[_LBR] & k.lbr_ctl_reserved:#x})"
    return None


def _pkrs(v, k, e):
    if e.entry & C.VM_ENTRY_LOAD_IA32_PKRS and v[_PKRS] >> 32:
        return "bits 63:32 of IA32_PKRS must be 0"
    return None


def _uinv(v, k, e):
    if e.entry & C.VM_ENTRY_LOAD_UINV and v[_UINV] & 0xFF00:
        return "bits 15:8 of the guest UINV field must be 0"
    return None


_g("guest.perf_global_ctrl.reserved", ("GUEST_IA32_PERF_GLOBAL_CTRL", ENTRY), _perf, **_G)
_g("guest.pat.memory_types", ("GUEST_IA32_PAT", ENTRY), _pat, **_G)
_g("guest.efer.reserved", ("GUEST_IA32_EFER", ENTRY), _efer_reserved, **_G)
_g("guest.efer.lma", ("GUEST_IA32_EFER", ENTRY), _efer_lma, **_G)
_g("guest.efer.lme", ("GUEST_IA32_EFER", "GUEST_CR0", ENTRY), _efer_lme, **_G)
_g("guest.bndcfgs.reserved", ("GUEST_BNDCFGS", ENTRY), _bnd_reserved, **_G)
_g("guest.bndcfgs.canonical", ("GUEST_BNDCFGS", ENTRY), _bnd_canonical, **_G)
_g("guest.rtit_ctl.reserved", ("GUEST_IA32_RTIT_CTL", ENTRY), _rtit, **_G)
_g("guest.lbr_ctl.reserved", ("GUEST_IA32_LBR_CTL", ENTRY), _lbr, **_G)
_g("guest.pkrs.reserved", ("GUEST_IA32_PKRS", ENTRY), _pkrs, **_G)
_g("guest.uinv.reserved", ("GUEST_UINV", ENTRY), _uinv, **_G)

"""Checks on guest descriptor-table registers, RIP/RFLAGS/SSP and non-register state
(Intel SDM Vol. 3C "Checks on Guest Descriptor-Table Registers", "Checks on Guest
RIP, RFLAGS, and SSP", "Checks on Guest Non-Register State").  Failures: VM-entry
failure, exit reason 33; qualification 4 for the VMCS link pointer, else 0.
"""
from __future__ import annotations

import struct

from ..arch import controls as C
from ..arch import fields as F
from ..arch import registers as R
from .host import canonical_rule
from .registry import GUEST, QUAL_LINK_POINTER, S_GUEST_DTR, S_GUEST_NONREG, S_GUEST_RIP, add

ENTRY, SEC, CPU, PIN = ("VM_ENTRY_CONTROLS", "SECONDARY_VM_EXEC_CONTROL", "CPU_BASED_VM_EXEC_CONTROL",
                        "PIN_BASED_VM_EXEC_CONTROL")
INFO, RFLAGS, INTR, ACT, PDE = ("VM_ENTRY_INTR_INFO_FIELD", "GUEST_RFLAGS", "GUEST_INTERRUPTIBILITY_INFO",
                                "GUEST_ACTIVITY_STATE", "GUEST_PENDING_DBG_EXCEPTIONS")


def _g(id, section, fields, fn, **kw):
    add(id, section, GUEST, fields, fn, **kw)


# ---- descriptor-table registers -------------------------------------------------------------
canonical_rule("guest.gdtr.base_canonical", S_GUEST_DTR, GUEST, "GUEST_GDTR_BASE")
canonical_rule("guest.idtr.base_canonical", S_GUEST_DTR, GUEST, "GUEST_IDTR_BASE")


def _limit_rule(reg: str):
    enc = F.by_name(f"GUEST_{reg}_LIMIT").encoding

    def fn(v, k, e):
        return "bits 31:16 of the limit must be 0" if v[enc] & 0xFFFF0000 else None
    _g(f"guest.{reg.lower()}.limit_upper", S_GUEST_DTR, (f"GUEST_{reg}_LIMIT",), fn)


_limit_rule("GDTR")
_limit_rule("IDTR")

# ---- RIP, RFLAGS, SSP -----------------------------------------------------------------------------
_RIP, _RFLAGS, _CS_AR, _CR0, _INFO = F.GUEST_RIP, F.GUEST_RFLAGS, F.GUEST_CS_AR_BYTES, F.GUEST_CR0, F.VM_ENTRY_INTR_INFO_FIELD
_L = 1 << 13


def _rip_upper(v, k, e):
    if not (e.ia32e and v[_CS_AR] & _L) and v[_RIP] >> 32:
        return "bits 63:32 must be 0 unless IA-32e mode guest is 1 and CS.L is 1"
    return None


def _rip_linear(v, k, e):
    if e.ia32e and v[_CS_AR] & _L:
        n = k.linear_bits
        top = v[_RIP] >> n
        if top and top != (1 << (64 - n)) - 1:
            return f"bits 63:{n} must be identical (the processor supports {n} linear-address bits)"
    return None


def _rflags_reserved(v, k, e):
    bad = v[_RFLAGS] & R.RFLAGS_RESERVED
    if bad:
        return f"reserved {_bits(bad)} must be 0 (bits 63:22, 15, 5 and 3)"
    return None


def _bits(mask: int) -> str:
    from .words import bit_list
    return bit_list(mask)


def _rflags_bit1(v, k, e):
    if not v[_RFLAGS] & 2:
        return "reserved bit 1 must be 1"
    return None


def _rflags_vm(v, k, e):
    if v[_RFLAGS] & R.RFLAGS_VM and (e.ia32e or not v[_CR0] & 1):
        why = "IA-32e mode guest is 1" if e.ia32e else "CR0.PE is 0 in the guest CR0 field"
        return f"the VM flag (bit 17) must be 0: {why}"
    return None


def _rflags_if(v, k, e):
    info = v[_INFO]
    if info >> 31 and info >> 8 & 7 == 0 and not v[_RFLAGS] & R.RFLAGS_IF:
        return "the IF flag (bit 9) must be 1: VM entry injects an external interrupt"
    return None


_g("guest.rip.upper", S_GUEST_RIP, ("GUEST_RIP", "GUEST_CS_AR_BYTES", ENTRY), _rip_upper)
_g("guest.rip.linear_bits", S_GUEST_RIP, ("GUEST_RIP", "GUEST_CS_AR_BYTES", ENTRY), _rip_linear,
   note="The SDM requires bits 63:N identical (N = linear-address bits), which is weaker than canonical: "
        "a RIP with only bit N-1 different passes VM entry and faults on the first fetch.")
_g("guest.rflags.reserved", S_GUEST_RIP, (RFLAGS,), _rflags_reserved)
_g("guest.rflags.reserved_bit1", S_GUEST_RIP, (RFLAGS,), _rflags_bit1)
_g("guest.rflags.vm", S_GUEST_RIP, (RFLAGS, "GUEST_CR0", ENTRY), _rflags_vm)
_g("guest.rflags.if_for_ext_intr", S_GUEST_RIP, (RFLAGS, INFO), _rflags_if)

_SSP = F.GUEST_SSP
_LOAD_CET = C.VM_ENTRY_LOAD_CET_STATE


def _ssp(v, k, e):
    if e.entry & _LOAD_CET:
        x = v[_SSP]
        if x & 3:
            return "bits 1:0 of SSP must be 0"
        if not e.ia32e:
            if x >> 32:
                return "bits 63:32 of SSP must be 0 when IA-32e mode guest is 0"
        else:
            top = x >> (k.linear_bits - 1)
            if top and top != (1 << (65 - k.linear_bits)) - 1:
                return f"SSP must be canonical ({k.linear_bits}-bit) when IA-32e mode guest is 1"
    return None


_g("guest.ssp.load_cet_state", S_GUEST_RIP, ("GUEST_SSP", ENTRY), _ssp,
   note="CET-era SDM text as recalled; no profile shipped supports CET.")

# ---- activity state --------------------------------------------------------------------------------
_ACT, _INTR, _PDE, _SS_AR, _DEBUGCTL = (F.GUEST_ACTIVITY_STATE, F.GUEST_INTERRUPTIBILITY_INFO,
                                        F.GUEST_PENDING_DBG_EXCEPTIONS, F.GUEST_SS_AR_BYTES, F.GUEST_IA32_DEBUGCTL)
_STATES = {0: "active", 1: "HLT", 2: "shutdown", 3: "wait-for-SIPI"}


def _act_range(v, k, e):
    if v[_ACT] > 3:
        return "the activity state must be 0 (active), 1 (HLT), 2 (shutdown) or 3 (wait-for-SIPI)"
    return None


def _act_supported(v, k, e):
    a = v[_ACT]
    if 0 < a <= 3 and not k.activity_ok[a]:
        return f"activity state {a} ({_STATES[a]}) is not supported by the processor (IA32_VMX_MISC bits 8:6)"
    return None


def _act_hlt_dpl(v, k, e):
    if v[_ACT] == 1 and v[_SS_AR] & 0x60:
        return "the activity state cannot be HLT when the DPL of SS is not 0"
    return None


def _act_blocking(v, k, e):
    if v[_ACT] and v[_INTR] & 3:
        return "the activity state must be active when the interruptibility state shows blocking by STI or MOV SS"
    return None


def _act_injection(v, k, e):
    info = v[_INFO]
    a = v[_ACT]
    if info >> 31 and a:
        t, vec = info >> 8 & 7, info & 0xFF
        if a == 1:
            ok = t in (0, 2) or (t == 3 and vec in (1, 18)) or (t == 7 and vec == 0)
        elif a == 2:
            ok = t == 2 or (t == 3 and vec == 18)
        elif a == 3:
            ok = False
        else:
            return None
        if not ok:
            return (f"the event injected (type {t}, vector {vec}) would be blocked in the {_STATES[a]} state "
                    "(HLT: external interrupt, NMI, #DB, #MC, pending MTF; shutdown: NMI, #MC; wait-for-SIPI: none)")
    return None


def _act_sipi_smm(v, k, e):
    if v[_ACT] == 3 and e.entry & C.VM_ENTRY_SMM:
        return "the activity state cannot be wait-for-SIPI when entry to SMM is 1"
    return None


def _inactive(v, e):
    """Guard of the activity-state rules: every one needs a state other than active."""
    return v[_ACT]


_GA = {"guard": _inactive}
_g("guest.activity.range", S_GUEST_NONREG, (ACT,), _act_range, **_GA)
_g("guest.activity.supported", S_GUEST_NONREG, (ACT,), _act_supported, **_GA)
_g("guest.activity.hlt_needs_ss_dpl0", S_GUEST_NONREG, (ACT, "GUEST_SS_AR_BYTES"), _act_hlt_dpl, **_GA)
_g("guest.activity.active_when_blocking", S_GUEST_NONREG, (ACT, INTR), _act_blocking, **_GA)
_g("guest.activity.injection", S_GUEST_NONREG, (ACT, INFO), _act_injection, **_GA)
_g("guest.activity.wait_sipi_entry_smm", S_GUEST_NONREG, (ACT, ENTRY), _act_sipi_smm, **_GA)


# ---- interruptibility state -------------------------------------------------------------------------
def _intr_reserved(v, k, e):
    return "reserved bits 31:5 must be 0" if v[_INTR] & 0xFFFFFFE0 else None


def _intr_sti_movss(v, k, e):
    return "blocking by STI and by MOV SS (bits 0 and 1) cannot both be 1" if v[_INTR] & 3 == 3 else None


def _intr_sti_if(v, k, e):
    if v[_INTR] & 1 and not v[_RFLAGS] & R.RFLAGS_IF:
        return "blocking by STI (bit 0) must be 0 when RFLAGS.IF is 0"
    return None


def _intr_ext(v, k, e):
    info = v[_INFO]
    if info >> 31 and info >> 8 & 7 == 0 and v[_INTR] & 3:
        return "bits 0 and 1 (blocking by STI, MOV SS) must be 0: VM entry injects an external interrupt"
    return None


def _intr_nmi_movss(v, k, e):
    info = v[_INFO]
    if info >> 31 and info >> 8 & 7 == 2 and v[_INTR] & 2:
        return "bit 1 (blocking by MOV SS) must be 0: VM entry injects an NMI"
    return None


def _intr_smi(v, k, e):
    return "bit 2 (blocking by SMI) must be 0: the processor is not in SMM" if v[_INTR] & 4 else None


def _intr_smi_entry(v, k, e):
    if e.entry & C.VM_ENTRY_SMM and not v[_INTR] & 4:
        return "bit 2 (blocking by SMI) must be 1 when entry to SMM is 1"
    return None


def _intr_vnmi(v, k, e):
    info = v[_INFO]
    if e.pin & C.PIN_BASED_VIRTUAL_NMIS and info >> 31 and info >> 8 & 7 == 2 and v[_INTR] & 8:
        return "bit 3 (blocking by NMI) must be 0: virtual NMIs is 1 and VM entry injects an NMI"
    return None


def _intr_enclave(v, k, e):
    x = v[_INTR]
    if x & 0x10:
        if x & 2:
            return "bit 1 (blocking by MOV SS) must be 0 when bit 4 (enclave interruption) is 1"
        if not k.sgx:
            return "bit 4 (enclave interruption) must be 0: the processor does not support SGX (CPUID.(EAX=07H,ECX=0):EBX[2])"
    return None


def _blocking(v, e):
    """Guard of the interruptibility rules that need some bit of the field set."""
    return v[_INTR]


_GI = {"guard": _blocking}
_g("guest.interruptibility.reserved", S_GUEST_NONREG, (INTR,), _intr_reserved, **_GI)
_g("guest.interruptibility.sti_and_mov_ss", S_GUEST_NONREG, (INTR,), _intr_sti_movss, **_GI)
_g("guest.interruptibility.sti_needs_if", S_GUEST_NONREG, (INTR, RFLAGS), _intr_sti_if, **_GI)
_g("guest.interruptibility.ext_intr_injection", S_GUEST_NONREG, (INTR, INFO), _intr_ext, **_GI)
_g("guest.interruptibility.nmi_injection_mov_ss", S_GUEST_NONREG, (INTR, INFO), _intr_nmi_movss, **_GI,
   note="The SDM lets processors accept NMI injection with blocking by STI; only MOV SS blocking is checked.")
_g("guest.interruptibility.smi_outside_smm", S_GUEST_NONREG, (INTR,), _intr_smi, **_GI)
_g("guest.interruptibility.smi_entry_to_smm", S_GUEST_NONREG, (INTR, ENTRY), _intr_smi_entry)
_g("guest.interruptibility.nmi_virtual_nmis", S_GUEST_NONREG, (INTR, INFO, PIN), _intr_vnmi, **_GI)
_g("guest.interruptibility.enclave", S_GUEST_NONREG, (INTR,), _intr_enclave, **_GI)


# ---- pending debug exceptions -------------------------------------------------------------------------
_PDE_RESERVED = 0xFF0 | (1 << 13) | (1 << 15) | ((1 << 64) - 1 & ~((1 << 17) - 1))
_BS, _RTM = 1 << 14, 1 << 16


def _pde_reserved(v, k, e):
    bad = v[_PDE] & _PDE_RESERVED
    return f"reserved bits 11:4, 13, 15 and 63:17 must be 0 (set: {bad:#x})" if bad else None


def _pde_bs(v, k, e):
    if v[_INTR] & 3 or v[_ACT] == 1:
        tf = v[_RFLAGS] & R.RFLAGS_TF
        btf = v[_DEBUGCTL] & 2
        bs = v[_PDE] & _BS
        if tf and not btf and not bs:
            return "BS (bit 14) must be 1: RFLAGS.TF is 1 and IA32_DEBUGCTL.BTF is 0 (blocking by STI/MOV SS or HLT)"
        if (not tf or btf) and bs:
            return "BS (bit 14) must be 0: RFLAGS.TF is 0 or IA32_DEBUGCTL.BTF is 1 (blocking by STI/MOV SS or HLT)"
    return None


def _pde_rtm(v, k, e):
    x = v[_PDE]
    if x & _RTM:
        if x & (0xFFF | 0xE000 | (((1 << 64) - 1) & ~((1 << 17) - 1))) or not x & 0x1000:
            return "with RTM (bit 16) set, bits 11:0, 15:13 and 63:17 must be 0 and bit 12 must be 1"
        if not k.rtm:
            return "RTM (bit 16) must be 0: the processor does not support RTM (CPUID.(EAX=07H,ECX=0):EBX[11])"
        if v[_INTR] & 2:
            return ("GUEST_INTERRUPTIBILITY_INFO", v[_INTR], "blocking by MOV SS must be 0 when pending debug RTM (bit 16) is 1")
    return None


_g("guest.pending_dbg.reserved", S_GUEST_NONREG, (PDE,), _pde_reserved)
_g("guest.pending_dbg.bs", S_GUEST_NONREG, (PDE, INTR, ACT, RFLAGS, "GUEST_IA32_DEBUGCTL"), _pde_bs)
_g("guest.pending_dbg.rtm", S_GUEST_NONREG, (PDE, INTR), _pde_rtm)

# ---- VMCS link pointer (qualification 4) --------------------------------------------------------------
_LINK = F.VMCS_LINK_POINTER
_ALL1 = (1 << 64) - 1
_SHADOW = C.SECONDARY_EXEC_SHADOW_VMCS
LINK = "VMCS_LINK_POINTER"


def _link_aligned(v, k, e):
    x = v[_LINK]
    if x != _ALL1 and x & 0xFFF:
        return "bits 11:0 must be 0 (a VMCS link pointer other than FFFFFFFF_FFFFFFFFH)"
    return None


def _link_width(v, k, e):
    x = v[_LINK]
    if x != _ALL1 and x & k.beyond_phys:
        return f"must not set bits beyond the physical-address width ({k.addr_width} bits), or be FFFFFFFF_FFFFFFFFH"
    return None


def _link_revision(v, k, e):
    x = v[_LINK]
    if x != _ALL1:
        word = struct.unpack("<I", e.read(x, 4))[0]
        if word & 0x7FFFFFFF != k.revision_id:
            return (f"the referenced VMCS has revision identifier {word & 0x7FFFFFFF:#x}; bits 30:0 of its first "
                    f"4 bytes must be the processor's ({k.revision_id:#x})")
    return None


def _link_shadow(v, k, e):
    x = v[_LINK]
    if x != _ALL1:
        word = struct.unpack("<I", e.read(x, 4))[0]
        want = 1 if e.sec & _SHADOW else 0
        if word >> 31 != want:
            return f"bit 31 of the referenced VMCS's first 4 bytes must be {want}, the VMCS-shadowing control"
    return None


def _link_current(v, k, e):
    x = v[_LINK]
    if x != _ALL1:
        if e.vmcs_pointer is None:
            from .registry import Unknown
            raise Unknown("the current-VMCS pointer")
        if x == e.vmcs_pointer:
            return "must not be the current-VMCS pointer"
    return None


def _link_used(v, e):
    return v[_LINK] != _ALL1


_q4 = {"qualification": QUAL_LINK_POINTER, "guard": _link_used}
_g("guest.link_pointer.aligned", S_GUEST_NONREG, (LINK,), _link_aligned, **_q4)
_g("guest.link_pointer.width", S_GUEST_NONREG, (LINK,), _link_width, **_q4)
_g("guest.link_pointer.revision", S_GUEST_NONREG, (LINK,), _link_revision, memory=True, **_q4)
_g("guest.link_pointer.shadow_bit", S_GUEST_NONREG, (LINK, SEC, CPU), _link_shadow, memory=True, **_q4)
_g("guest.link_pointer.not_current", S_GUEST_NONREG, (LINK,), _link_current, **_q4,
   note="Needs the current-VMCS pointer (check(..., vmcs_pointer=...)); not checked without it.")

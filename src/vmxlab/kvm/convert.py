"""Processor-state snapshots (machine/state.py) <-> the KVM vCPU structures.

Pure functions, no /dev/kvm needed.  Where each snapshot key lives in KVM:

  RAX..R15, GUEST_RSP, GUEST_RIP, GUEST_RFLAGS        struct kvm_regs       (KVM_GET/SET_REGS)
  GUEST_<seg>_SELECTOR/BASE/LIMIT/AR_BYTES,            struct kvm_sregs      (KVM_GET/SET_SREGS)
    GUEST_GDTR/IDTR_BASE/LIMIT, GUEST_CR0/3/4, CR2,
    CR8, GUEST_IA32_EFER
  DR0..DR3, DR6, GUEST_DR7                             struct kvm_debugregs  (KVM_GET/SET_DEBUGREGS)
  GUEST_IA32_DEBUGCTL, GUEST_SYSENTER_CS/ESP/EIP,      struct kvm_msrs       (KVM_GET/SET_MSRS)
    GUEST_IA32_PAT, KERNEL_GS_BASE, STAR, LSTAR,
    CSTAR, FMASK, TSC_AUX
  XCR0                                                 struct kvm_xcrs       (KVM_GET/SET_XCRS)
  GUEST_INTERRUPTIBILITY_INFO                          struct kvm_vcpu_events (interrupt.shadow,
                                                        nmi.masked)
  GUEST_ACTIVITY_STATE                                 struct kvm_mp_state
  GUEST_PENDING_DBG_EXCEPTIONS                         nowhere: KVM has no user-space view of it

Access rights: the VMCS format (SDM Vol. 3C "Guest Register State": bits 3:0 type,
4 S, 6:5 DPL, 7 P, 12 AVL, 13 L, 14 D/B, 15 G, 16 unusable; layout in
arch/segments.py) maps bit for bit onto the kvm_segment bytes type, s, dpl,
present, avl, l, db, g, unusable.  Limits are byte-granular on both sides.
"""
from __future__ import annotations

from ..arch import fields as F
from ..arch import msrs as M
from ..arch.events import (INTERRUPTIBILITY_MOV_SS, INTERRUPTIBILITY_NMI, INTERRUPTIBILITY_STI,
                           ACTIVITY_STATES)
from ..arch.registers import CR0_CD, CR0_NW, CR0_PE, CR0_PG, CR4_PAE, GPRS64
from ..arch.segments import AR, AR_RESERVED
from ..errors import BadInput
from ..machine import state as S
from . import abi

# ---- which key lives where ------------------------------------------------------------
GPR_KEYS = tuple(r for r in GPRS64 if r != "RSP")
REGS_KEYS = GPR_KEYS + ("GUEST_RSP", "GUEST_RIP", "GUEST_RFLAGS")
_REGS_FIELD = {**{k: k.lower() for k in GPR_KEYS},
               "GUEST_RSP": "rsp", "GUEST_RIP": "rip", "GUEST_RFLAGS": "rflags"}

# snapshot segment name -> kvm_sregs member
SEGMENT_FIELDS = {"ES": "es", "CS": "cs", "SS": "ss", "DS": "ds", "FS": "fs", "GS": "gs",
                  "LDTR": "ldt", "TR": "tr"}
_SEG_PARTS = ("SELECTOR", "BASE", "LIMIT", "AR_BYTES")
SEGMENT_KEYS = tuple(f"GUEST_{s}_{p}" for s in SEGMENT_FIELDS for p in _SEG_PARTS)
SREGS_KEYS = SEGMENT_KEYS + (
    "GUEST_GDTR_BASE", "GUEST_GDTR_LIMIT", "GUEST_IDTR_BASE", "GUEST_IDTR_LIMIT",
    "GUEST_CR0", "GUEST_CR3", "GUEST_CR4", "CR2", "CR8", "GUEST_IA32_EFER")
_SREGS_SCALAR = {"GUEST_CR0": "cr0", "GUEST_CR3": "cr3", "GUEST_CR4": "cr4", "CR2": "cr2",
                 "CR8": "cr8", "GUEST_IA32_EFER": "efer"}

DEBUGREGS_KEYS = ("DR0", "DR1", "DR2", "DR3", "DR6", "GUEST_DR7")

# snapshot key -> MSR index (arch/msrs.py is the source of the indices)
MSR_KEYS: dict[str, int] = {
    "GUEST_IA32_DEBUGCTL": M.IA32_DEBUGCTL,
    "GUEST_SYSENTER_CS": M.IA32_SYSENTER_CS,
    "GUEST_SYSENTER_ESP": M.IA32_SYSENTER_ESP,
    "GUEST_SYSENTER_EIP": M.IA32_SYSENTER_EIP,
    "GUEST_IA32_PAT": M.IA32_PAT,
    "KERNEL_GS_BASE": M.IA32_KERNEL_GS_BASE,
    "STAR": M.IA32_STAR,
    "LSTAR": M.IA32_LSTAR,
    "CSTAR": M.IA32_CSTAR,
    "FMASK": M.IA32_FMASK,
    "TSC_AUX": M.IA32_TSC_AUX,
}
XCR_KEYS = ("XCR0",)
EVENTS_KEYS = ("GUEST_INTERRUPTIBILITY_INFO",)
MP_KEYS = ("GUEST_ACTIVITY_STATE",)
UNHELD_KEYS = ("GUEST_PENDING_DBG_EXCEPTIONS",)

_GROUPED = REGS_KEYS + SREGS_KEYS + DEBUGREGS_KEYS + tuple(MSR_KEYS) + XCR_KEYS + EVENTS_KEYS \
    + MP_KEYS + UNHELD_KEYS
assert sorted(_GROUPED) == sorted(S.KEYS), set(_GROUPED) ^ set(S.KEYS)

# Interruptibility bits KVM holds (kvm_vcpu_events): blocking by STI and by MOV SS
# (interrupt.shadow) and blocking by NMI (nmi.masked).  Blocking by SMI and
# enclave interruption have no place in the user-space API.
INTERRUPTIBILITY_KEPT = INTERRUPTIBILITY_STI | INTERRUPTIBILITY_MOV_SS | INTERRUPTIBILITY_NMI


def _width(key: str) -> int:
    f = F.lookup(key) if key.startswith("GUEST_") else None
    return f.bits if f is not None else 64


WIDTHS = {k: _width(k) for k in S.KEYS}


# ---- validation ------------------------------------------------------------------------
def check_state(state: dict) -> None:
    """BadInput (one line naming the key and value) unless every item of `state` is a
    snapshot key with an integer value that fits its field and that KVM can hold."""
    if not isinstance(state, dict):
        raise BadInput(f"a processor state is a dict of register name -> int, not {type(state).__name__}")
    for key, value in state.items():
        width = WIDTHS.get(key)
        if width is None:
            raise BadInput(f"{key!r} is not a processor-state key (machine/state.py KEYS)")
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadInput(f"{key}: value {value!r} is not an integer")
        if value < 0 or value >> width:
            raise BadInput(f"{key}: value {value:#x} does not fit in {width} bits")
        if key.endswith("_AR_BYTES") and value & AR_RESERVED:
            raise BadInput(f"{key}: access rights {value:#x} set reserved bits "
                           f"{value & AR_RESERVED:#x} (11:8, 31:17), which kvm_segment cannot hold")
        if key in ("GUEST_GDTR_LIMIT", "GUEST_IDTR_LIMIT") and value > 0xFFFF:
            raise BadInput(f"{key}: limit {value:#x} is wider than the 16 bits of kvm_dtable.limit")
        if key == "GUEST_INTERRUPTIBILITY_INFO" and value & ~INTERRUPTIBILITY_KEPT:
            raise BadInput(f"{key}: {value:#x} sets bits {value & ~INTERRUPTIBILITY_KEPT:#x}; KVM holds only "
                           "blocking by STI, by MOV SS and by NMI (kvm_vcpu_events)")
        if key == "GUEST_ACTIVITY_STATE" and value != 0:
            name = ACTIVITY_STATES.get(value, "reserved")
            raise BadInput(f"{key}: {value} ({name}) cannot be loaded: KVM without an in-kernel "
                           "interrupt controller runs a vCPU only in the active state (0)")
        if key == "TSC_AUX" and value >> 32:
            raise BadInput(f"{key}: {value:#x} sets bits 63:32, which are reserved in IA32_TSC_AUX "
                           "(KVM would drop them)")
        if key == "GUEST_PENDING_DBG_EXCEPTIONS" and value != 0:
            raise BadInput(f"{key}: {value:#x} cannot be loaded: KVM has no user-space view of "
                           "pending debug exceptions (only 0 is accepted)")


def check_sregs(sregs: abi.kvm_sregs) -> str | None:
    """Why KVM_SET_SREGS would refuse these values, or None.

    The rules of kvm_is_valid_sregs(), kvm_is_valid_cr0() and the CR3 check in
    arch/x86/kvm/x86.c, as measured here (../shared/notes/kvm.md "Bad state"); CR4
    reserved bits depend on the vCPU's CPUID and are left to KVM.
    """
    cr0, cr4, efer = sregs.cr0, sregs.cr4, sregs.efer
    lme, lma = efer & M.EFER_LME, efer & M.EFER_LMA
    if cr0 >> 32:
        return f"GUEST_CR0={cr0:#x}: bits 63:32 are reserved"
    if cr0 & CR0_NW and not cr0 & CR0_CD:
        return f"GUEST_CR0={cr0:#x}: NW=1 with CD=0"
    if cr0 & CR0_PG and not cr0 & CR0_PE:
        return f"GUEST_CR0={cr0:#x}: PG=1 with PE=0"
    if lme and cr0 & CR0_PG:
        if not cr4 & CR4_PAE:
            return f"GUEST_IA32_EFER={efer:#x} with CR0.PG=1 (IA-32e mode) needs CR4.PAE=1 (GUEST_CR4={cr4:#x})"
        if not lma:
            return f"GUEST_IA32_EFER={efer:#x}: LME=1 and CR0.PG=1 need LMA=1"
        if sregs.cr3 >> 52:
            return f"GUEST_CR3={sregs.cr3:#x} sets bits beyond the physical-address width"
    else:
        if lma:
            return f"GUEST_IA32_EFER={efer:#x}: LMA=1 needs LME=1 and CR0.PG=1 (GUEST_CR0={cr0:#x})"
        if sregs.cs.l:
            return (f"GUEST_CS_AR_BYTES: L=1 outside IA-32e mode (GUEST_IA32_EFER={efer:#x}, "
                    f"GUEST_CR0={cr0:#x}: IA-32e mode needs EFER.LME=1 and CR0.PG=1)")
    return None


# ---- segments ----------------------------------------------------------------------------
_AR_TYPE, _AR_S, _AR_DPL, _AR_P = AR["type"], AR["S"], AR["DPL"], AR["P"]
_AR_AVL, _AR_L, _AR_DB, _AR_G, _AR_UNUSABLE = AR["AVL"], AR["L"], AR["DB"], AR["G"], AR["unusable"]


def ar_from_kvm(seg: abi.kvm_segment) -> int:
    """VMCS access rights of a kvm_segment."""
    return ((seg.type << _AR_TYPE.lo) | (seg.s << _AR_S.lo) | (seg.dpl << _AR_DPL.lo)
            | (seg.present << _AR_P.lo) | (seg.avl << _AR_AVL.lo) | (seg.l << _AR_L.lo)
            | (seg.db << _AR_DB.lo) | (seg.g << _AR_G.lo) | (seg.unusable << _AR_UNUSABLE.lo))


def ar_to_kvm(seg: abi.kvm_segment, ar: int) -> None:
    """Store VMCS access rights into the attribute bytes of a kvm_segment."""
    seg.type = _AR_TYPE.get(ar)
    seg.s = _AR_S.get(ar)
    seg.dpl = _AR_DPL.get(ar)
    seg.present = _AR_P.get(ar)
    seg.avl = _AR_AVL.get(ar)
    seg.l = _AR_L.get(ar)
    seg.db = _AR_DB.get(ar)
    seg.g = _AR_G.get(ar)
    seg.unusable = _AR_UNUSABLE.get(ar)
    seg.padding = 0


# ---- struct <-> snapshot -------------------------------------------------------------------
def regs_to_state(regs: abi.kvm_regs, out: dict) -> None:
    for key, name in _REGS_FIELD.items():
        out[key] = getattr(regs, name)


def regs_from_state(regs: abi.kvm_regs, state: dict) -> None:
    for key, name in _REGS_FIELD.items():
        if key in state:
            setattr(regs, name, state[key])


def sregs_to_state(sregs: abi.kvm_sregs, out: dict) -> None:
    for seg_name, member in SEGMENT_FIELDS.items():
        seg = getattr(sregs, member)
        out[f"GUEST_{seg_name}_SELECTOR"] = seg.selector
        out[f"GUEST_{seg_name}_BASE"] = seg.base
        out[f"GUEST_{seg_name}_LIMIT"] = seg.limit
        out[f"GUEST_{seg_name}_AR_BYTES"] = ar_from_kvm(seg)
    out["GUEST_GDTR_BASE"], out["GUEST_GDTR_LIMIT"] = sregs.gdt.base, sregs.gdt.limit
    out["GUEST_IDTR_BASE"], out["GUEST_IDTR_LIMIT"] = sregs.idt.base, sregs.idt.limit
    for key, name in _SREGS_SCALAR.items():
        out[key] = getattr(sregs, name)


def sregs_from_state(sregs: abi.kvm_sregs, state: dict) -> None:
    for seg_name, member in SEGMENT_FIELDS.items():
        seg = getattr(sregs, member)
        prefix = f"GUEST_{seg_name}_"
        if prefix + "SELECTOR" in state:
            seg.selector = state[prefix + "SELECTOR"]
        if prefix + "BASE" in state:
            seg.base = state[prefix + "BASE"]
        if prefix + "LIMIT" in state:
            seg.limit = state[prefix + "LIMIT"]
        if prefix + "AR_BYTES" in state:
            ar_to_kvm(seg, state[prefix + "AR_BYTES"])
    for key, table, part in (("GUEST_GDTR_BASE", "gdt", "base"), ("GUEST_GDTR_LIMIT", "gdt", "limit"),
                             ("GUEST_IDTR_BASE", "idt", "base"), ("GUEST_IDTR_LIMIT", "idt", "limit")):
        if key in state:
            setattr(getattr(sregs, table), part, state[key])
    for key, name in _SREGS_SCALAR.items():
        if key in state:
            setattr(sregs, name, state[key])


def debugregs_to_state(dr: abi.kvm_debugregs, out: dict) -> None:
    for i in range(4):
        out[f"DR{i}"] = dr.db[i]
    out["DR6"], out["GUEST_DR7"] = dr.dr6, dr.dr7


def debugregs_from_state(dr: abi.kvm_debugregs, state: dict) -> None:
    for i in range(4):
        if f"DR{i}" in state:
            dr.db[i] = state[f"DR{i}"]
    if "DR6" in state:
        dr.dr6 = state["DR6"]
    if "GUEST_DR7" in state:
        dr.dr7 = state["GUEST_DR7"]


def interruptibility_from_events(ev: abi.kvm_vcpu_events) -> int:
    value = 0
    if ev.interrupt.shadow & abi.KVM_X86_SHADOW_INT_STI:
        value |= INTERRUPTIBILITY_STI
    if ev.interrupt.shadow & abi.KVM_X86_SHADOW_INT_MOV_SS:
        value |= INTERRUPTIBILITY_MOV_SS
    if ev.nmi.masked:
        value |= INTERRUPTIBILITY_NMI
    return value


def interruptibility_to_events(ev: abi.kvm_vcpu_events, value: int) -> None:
    ev.interrupt.shadow = ((abi.KVM_X86_SHADOW_INT_STI if value & INTERRUPTIBILITY_STI else 0)
                           | (abi.KVM_X86_SHADOW_INT_MOV_SS if value & INTERRUPTIBILITY_MOV_SS else 0))
    ev.nmi.masked = 1 if value & INTERRUPTIBILITY_NMI else 0
    ev.flags |= abi.KVM_VCPUEVENT_VALID_SHADOW


# GUEST_ACTIVITY_STATE for each kvm_mp_state (SDM "Guest Non-Register State":
# 0 active, 1 HLT, 2 shutdown, 3 wait-for-SIPI).
ACTIVITY_OF_MP_STATE = {abi.KVM_MP_STATE_RUNNABLE: 0, abi.KVM_MP_STATE_HALTED: 1,
                        abi.KVM_MP_STATE_INIT_RECEIVED: 3, abi.KVM_MP_STATE_UNINITIALIZED: 3,
                        abi.KVM_MP_STATE_SIPI_RECEIVED: 3}

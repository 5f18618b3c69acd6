"""Processor state <-> VMCS on VM entry and VM exit, as pure functions.

The processor state is the snapshot dict of machine/state.py (VMCS guest-field
names + EXTRA_KEYS); the VMCS is `Vmcs.values` (encoding -> int).

Sources (Intel SDM Vol. 3C):
- "Loading Guest State": "Loading Guest Control Registers, Debug Registers, and
  MSRs", "Loading Guest Segment Registers and Descriptor-Table Registers",
  "Loading Guest RIP, RSP, and RFLAGS", "Loading Page-Directory-Pointer-Table
  Entries", "Updating Non-Register State";
- "Saving Guest State": "Saving Control Registers, Debug Registers, and MSRs",
  "Saving Segment Registers and Descriptor-Table Registers", "Saving RIP, RSP, and
  RFLAGS", "Saving Non-Register State";
- "Loading Host State": "Loading Host Control Registers, Debug Registers, MSRs",
  "Loading Host Segment and Descriptor-Table Registers", "Loading Host RIP, RSP,
  RFLAGS, and SSP", "Updating Non-Register State".

Where the SDM leaves a value undefined (e.g. the base of an unusable DS after VM
entry), vmxlab loads the field's value: a defined choice within "undefined".
"""
from __future__ import annotations

from operator import and_

from ..arch import controls as C
from ..arch import fields as F
from ..arch import msr_switch as MS
from ..arch import msrs as M
from ..arch import segments as S
from ..machine.state import SEGMENTS

# CR0 bits VM entry and VM exit never modify: ET (4), reserved 15:6, 17, 28:19,
# NW (29), CD (30), and (VM exit) bits 63:32.
CR0_KEEP = (1 << 4) | 0xFFC0 | (1 << 17) | 0x1FF80000 | (1 << 29) | (1 << 30)
CR0_KEEP_ON_EXIT = CR0_KEEP | (0xFFFFFFFF << 32)

_SEG_ENC = {s: tuple(F.by_name(f"GUEST_{s}_{p}").encoding for p in ("SELECTOR", "BASE", "LIMIT", "AR_BYTES"))
            for s in SEGMENTS}
_AR_SAVE_MASK = 0xF0FF   # bits 7:0 and 15:12 (the rest cleared, bit 16 = unusable)
# (snapshot keys, VMCS encodings) of each segment: selector, base, limit, access rights
_SEG_KEYS = tuple((tuple(f"GUEST_{s}_{p}" for p in ("SELECTOR", "BASE", "LIMIT", "AR_BYTES")), _SEG_ENC[s])
                  for s in SEGMENTS)
_HOST_SEG = tuple((seg, F.by_name(f"HOST_{seg}_SELECTOR").encoding,
                   tuple(f"GUEST_{seg}_{p}" for p in ("SELECTOR", "BASE", "LIMIT", "AR_BYTES")))
                  for seg in ("ES", "CS", "SS", "DS", "FS", "GS", "TR"))

# Guest-state fields copied to and from the snapshot unchanged (the snapshot keys
# are the field names).
_PLAIN = ("GUEST_CR3", "GUEST_CR4", "GUEST_RSP", "GUEST_RIP", "GUEST_RFLAGS",
          "GUEST_GDTR_BASE", "GUEST_GDTR_LIMIT", "GUEST_IDTR_BASE", "GUEST_IDTR_LIMIT",
          "GUEST_SYSENTER_CS", "GUEST_SYSENTER_ESP", "GUEST_SYSENTER_EIP",
          "GUEST_INTERRUPTIBILITY_INFO", "GUEST_ACTIVITY_STATE", "GUEST_PENDING_DBG_EXCEPTIONS")
_PLAIN_ENC = tuple((k, F.by_name(k).encoding) for k in _PLAIN)
# the same with the selector, base and limit of every segment, as parallel tuples
# (copied with C-level map/zip on the exit and entry hot paths)
_COPY_KEYS = _PLAIN + tuple(k for keys, _ in _SEG_KEYS for k in keys[:3])
_COPY_ENCS = tuple(e for _, e in _PLAIN_ENC) + tuple(e for _, encs in _SEG_KEYS for e in encs[:3])
_COPY_ZEROS = (0,) * len(_COPY_KEYS)
_AR_KEYS = tuple((keys[3], encs[3]) for keys, encs in _SEG_KEYS)
# the same as parallel tuples, with the mask both directions apply (C-level map/zip)
_AR_NAMES = tuple(k for k, _ in _AR_KEYS)
_AR_ENCS = tuple(e for _, e in _AR_KEYS)
_AR_MASKS = (_AR_SAVE_MASK | S.AR_UNUSABLE,) * len(_AR_KEYS)
_AR_ZEROS = (0,) * len(_AR_KEYS)
_AR_UNUSABLES = (S.AR_UNUSABLE,) * len(_AR_KEYS)


def load_guest(v: dict[int, int], state: dict[str, int]) -> dict[str, int]:
    """The processor state after "Loading Guest State", from VMCS values `v` and the
    state before VM entry.  Returns a new snapshot dict."""
    g = dict(state)
    entry = v.get(F.VM_ENTRY_CONTROLS, 0)
    g["GUEST_CR0"] = (state.get("GUEST_CR0", 0) & CR0_KEEP) | (v.get(F.GUEST_CR0, 0) & ~CR0_KEEP)
    g.update(zip(_COPY_KEYS, map(v.get, _COPY_ENCS, _COPY_ZEROS)))
    g["GUEST_SYSENTER_CS"] &= 0xFFFFFFFF
    if entry & C.VM_ENTRY_LOAD_DEBUG_CONTROLS:
        g["GUEST_DR7"] = (v.get(F.GUEST_DR7, 0) & ~0xD000) | 0x400   # bits 12, 15:14 clear, 10 set
        g["GUEST_IA32_DEBUGCTL"] = v.get(F.GUEST_IA32_DEBUGCTL, 0)
    ia32e = bool(entry & C.VM_ENTRY_IA32E_MODE)
    if entry & C.VM_ENTRY_LOAD_IA32_EFER:
        g["GUEST_IA32_EFER"] = v.get(F.GUEST_IA32_EFER, 0)
    else:
        efer = state.get("GUEST_IA32_EFER", 0) & ~M.EFER_LMA
        if ia32e:
            efer |= M.EFER_LMA
        if g["GUEST_CR0"] & (1 << 31):        # with CR0.PG, LME follows the control too
            efer = (efer & ~M.EFER_LME) | (M.EFER_LME if ia32e else 0)
        g["GUEST_IA32_EFER"] = efer
    if entry & C.VM_ENTRY_LOAD_IA32_PAT:
        g["GUEST_IA32_PAT"] = v.get(F.GUEST_IA32_PAT, 0)
    g.update(zip(_AR_NAMES, map(and_, map(v.get, _AR_ENCS, _AR_ZEROS), _AR_MASKS)))
    return g


def save_guest(state: dict[str, int], v: dict[int, int], exit_controls: int,
               store_lma: bool = True) -> None:
    """Write the guest-state area from the processor state ("Saving Guest State").

    RIP, interruptibility, activity and pending debug exceptions are saved from the
    snapshot as given: the VM-exit logic sets them for the exit's cause first.
    `store_lma`: IA32_VMX_MISC bit 5 (VM exits store EFER.LMA into the "IA-32e mode
    guest" VM-entry control).
    """
    v[F.GUEST_CR0] = state["GUEST_CR0"]
    v.update(zip(_COPY_ENCS, map(state.get, _COPY_KEYS, _COPY_ZEROS)))
    v[F.GUEST_SYSENTER_CS] &= 0xFFFFFFFF
    if exit_controls & C.VM_EXIT_SAVE_DEBUG_CONTROLS:
        v[F.GUEST_DR7] = state.get("GUEST_DR7", 0x400)
        v[F.GUEST_IA32_DEBUGCTL] = state.get("GUEST_IA32_DEBUGCTL", 0)
    if exit_controls & C.VM_EXIT_SAVE_IA32_PAT:
        v[F.GUEST_IA32_PAT] = state.get("GUEST_IA32_PAT", 0)
    if exit_controls & C.VM_EXIT_SAVE_IA32_EFER:
        v[F.GUEST_IA32_EFER] = state.get("GUEST_IA32_EFER", 0)
    v.update(zip(_AR_ENCS, map(and_, map(state.get, _AR_NAMES, _AR_UNUSABLES), _AR_MASKS)))
    if store_lma:
        entry = v.get(F.VM_ENTRY_CONTROLS, 0) & ~C.VM_ENTRY_IA32E_MODE
        if state.get("GUEST_IA32_EFER", 0) & M.EFER_LMA:
            entry |= C.VM_ENTRY_IA32E_MODE
        v[F.VM_ENTRY_CONTROLS] = entry


def host_segment_ar(selector: int, code: bool, long_mode: bool) -> int:
    """Access rights VM exit gives a host segment ("Loading Host Segment and
    Descriptor-Table Registers")."""
    if code:   # type 11, S, DPL 0, P, L = host address-space size, D/B = !L, G
        return 0xB | S.AR_S | S.AR_P | S.AR_G | (S.AR_L if long_mode else S.AR_DB)
    if selector == 0:
        return S.AR_UNUSABLE
    return 0x3 | S.AR_S | S.AR_P | S.AR_DB | S.AR_G        # type 3, S, DPL 0, P, D/B, G


def _host_segments(v: dict[int, int], long_mode: bool) -> tuple[tuple[str, int], ...]:
    """The snapshot items of ES..GS and TR after "Loading Host State"."""
    h = {}
    for seg, enc, (ksel, kbase, klimit, kar) in _HOST_SEG:
        sel = v.get(enc, 0)
        h[ksel] = sel
        if seg == "TR":
            h[kbase], h[klimit] = v.get(F.HOST_TR_BASE, 0), 0x67
            h[kar] = S.TYPE_TSS_BUSY | S.AR_P                  # busy TSS, S = 0, DPL 0, P
            continue
        h[kar] = host_segment_ar(sel, seg == "CS", long_mode)
        h[klimit] = 0xFFFFFFFF
        if seg in ("FS", "GS"):
            h[kbase] = v.get(F.HOST_FS_BASE if seg == "FS" else F.HOST_GS_BASE, 0)
        else:
            h[kbase] = 0
    return tuple(h.items())


# the fields _host_items reads (an exit loads the same host state each time: memoized by them)
_HOST_INPUT = (F.VM_EXIT_CONTROLS, F.HOST_CR3, F.HOST_CR4, F.HOST_IA32_SYSENTER_CS, F.HOST_IA32_SYSENTER_ESP,
               F.HOST_IA32_SYSENTER_EIP, F.HOST_IA32_PAT, *(enc for _s, enc, _k in _HOST_SEG), F.HOST_TR_BASE,
               F.HOST_FS_BASE, F.HOST_GS_BASE, F.HOST_GDTR_BASE, F.HOST_IDTR_BASE, F.HOST_RIP, F.HOST_RSP)
_HOST_ZEROS = (0,) * len(_HOST_INPUT)
_HOST_MEMO: dict[tuple, tuple] = {}


def load_host(v: dict[int, int], state: dict[str, int], maxphyaddr: int) -> dict[str, int]:
    """The processor state after "Loading Host State" (before the VM-exit MSR-load area)."""
    h = dict(state)
    exit_ctl = v.get(F.VM_EXIT_CONTROLS, 0)
    long_mode = bool(exit_ctl & C.VM_EXIT_HOST_ADDR_SPACE_SIZE)
    h["GUEST_CR0"] = (state.get("GUEST_CR0", 0) & CR0_KEEP_ON_EXIT) | (v.get(F.HOST_CR0, 0) & ~CR0_KEEP_ON_EXIT)
    if exit_ctl & C.VM_EXIT_LOAD_IA32_EFER:
        h["GUEST_IA32_EFER"] = v.get(F.HOST_IA32_EFER, 0)
    else:
        efer = state.get("GUEST_IA32_EFER", 0) & ~(M.EFER_LMA | M.EFER_LME)
        h["GUEST_IA32_EFER"] = efer | ((M.EFER_LMA | M.EFER_LME) if long_mode else 0)
    # the rest depends on the host-state fields and the exit controls only: the same
    # items at every exit of a VMCS (memoized by their values)
    key = (maxphyaddr, *map(v.get, _HOST_INPUT, _HOST_ZEROS))
    items = _HOST_MEMO.get(key)
    if items is None:
        if len(_HOST_MEMO) > 64:
            _HOST_MEMO.clear()
        items = _HOST_MEMO[key] = _host_items(v, exit_ctl, long_mode, maxphyaddr)
    h.update(items)
    return h


def _host_items(v: dict[int, int], exit_ctl: int, long_mode: bool, maxphyaddr: int) -> tuple[tuple[str, int], ...]:
    """The snapshot items "Loading Host State" sets from the host-state area alone."""
    cr4 = v.get(F.HOST_CR4, 0)
    if long_mode:
        cr4 |= 1 << 5                                        # CR4.PAE
    h = {"GUEST_CR3": v.get(F.HOST_CR3, 0) & ((1 << maxphyaddr) - 1), "GUEST_CR4": cr4,
         "GUEST_DR7": 0x400, "GUEST_IA32_DEBUGCTL": 0,
         "GUEST_SYSENTER_CS": v.get(F.HOST_IA32_SYSENTER_CS, 0),
         "GUEST_SYSENTER_ESP": v.get(F.HOST_IA32_SYSENTER_ESP, 0),
         "GUEST_SYSENTER_EIP": v.get(F.HOST_IA32_SYSENTER_EIP, 0)}
    if exit_ctl & C.VM_EXIT_LOAD_IA32_PAT:
        h["GUEST_IA32_PAT"] = v.get(F.HOST_IA32_PAT, 0)
    h.update(_host_segments(v, long_mode))
    h["GUEST_LDTR_SELECTOR"], h["GUEST_LDTR_BASE"], h["GUEST_LDTR_LIMIT"] = 0, 0, 0
    h["GUEST_LDTR_AR_BYTES"] = S.AR_UNUSABLE
    h["GUEST_GDTR_BASE"], h["GUEST_GDTR_LIMIT"] = v.get(F.HOST_GDTR_BASE, 0), 0xFFFF
    h["GUEST_IDTR_BASE"], h["GUEST_IDTR_LIMIT"] = v.get(F.HOST_IDTR_BASE, 0), 0xFFFF
    h["GUEST_RIP"] = v.get(F.HOST_RIP, 0)
    h["GUEST_RSP"] = v.get(F.HOST_RSP, 0)
    h["GUEST_RFLAGS"] = 0x2
    h["GUEST_ACTIVITY_STATE"] = 0
    h["GUEST_PENDING_DBG_EXCEPTIONS"] = 0
    h["GUEST_INTERRUPTIBILITY_INFO"] = 0
    return tuple(h.items())


# ---- MSRs switched under controls (arch.msr_switch) -------------------------------------------
def load_guest_msrs(v: dict[int, int], write) -> None:
    """"Loading Guest Control Registers, Debug Registers, and MSRs": each MSR whose
    VM-entry "load" control is 1 from its guest-state field (the checks tested the
    values); `write(msr, value)`."""
    entry = v.get(F.VM_ENTRY_CONTROLS, 0)
    if entry & MS.ENTRY_CONTROLS:
        for s in MS.SWITCHED:
            if entry & s.entry_load:
                write(s.msr, v.get(s.guest_field, 0))


def saved_msrs(entry_allowed1: int, exit_allowed1: int) -> tuple[MS.SwitchedMsr, ...]:
    """The switched MSRs every VM exit saves on a processor with these allowed-1
    settings ("Saving Control Registers, Debug Registers, and MSRs")."""
    return tuple(s for s in MS.SWITCHED if s.saved_if[0] & entry_allowed1 or s.saved_if[1] & exit_allowed1)


def save_guest_msrs(v: dict[int, int], always: tuple, read) -> None:
    """Save into the guest-state area the MSRs of `always` (saved_msrs) and those
    whose VM-exit "save" control is 1; `read(msr)`."""
    for s in always:
        v[s.guest_field] = read(s.msr)
    exit_ctl = v.get(F.VM_EXIT_CONTROLS, 0)
    if exit_ctl & MS.EXIT_CONTROLS:
        for s in MS.SWITCHED:
            if exit_ctl & s.save_control:
                v[s.guest_field] = read(s.msr)


def load_host_msrs(v: dict[int, int], write) -> None:
    """"Loading Host Control Registers, Debug Registers, MSRs": each MSR whose VM-exit
    "load" control is 1 from its host-state field, or cleared by its "clear" control."""
    exit_ctl = v.get(F.VM_EXIT_CONTROLS, 0)
    if exit_ctl & MS.EXIT_CONTROLS:
        for s in MS.SWITCHED:
            if exit_ctl & s.exit_control:
                write(s.msr, v.get(s.host_field, 0) if s.host_field is not None else 0)

"""A VMCS filled from a processor-state snapshot: the blue-pill setup in one call.

Guest state = the snapshot (its keys are the guest-state field names); host state
= the same processor (selectors with RPL and TI cleared, bases from the segment
caches, descriptor-table bases, CR0/CR3/CR4, SYSENTER MSRs); controls wanted by
the caller, adjusted through the capability MSRs (caps.adjust).  Sources: Intel
SDM Vol. 3C "Guest-State Area", "Host-State Area", "Algorithms for Determining VMX
Capabilities".  The seed's step-by-step setup (hypervisor/) does the same through
the processor's instructions; this is for tests and tools.
"""
from __future__ import annotations

from ..arch import controls as C
from ..arch import fields as F
from ..arch.segments import host_selector
from ..caps import adjust
from ..machine.state import VMCS_ENCODINGS, VMCS_KEYS

DEFAULT_CONTROLS = {
    "PIN_BASED_VM_EXEC_CONTROL": 0,
    "CPU_BASED_VM_EXEC_CONTROL": C.CPU_BASED_ACTIVATE_SECONDARY_CONTROLS,
    "SECONDARY_VM_EXEC_CONTROL": 0,
    "VM_EXIT_CONTROLS": C.VM_EXIT_HOST_ADDR_SPACE_SIZE | C.VM_EXIT_SAVE_IA32_EFER | C.VM_EXIT_LOAD_IA32_EFER
    | C.VM_EXIT_SAVE_IA32_PAT | C.VM_EXIT_LOAD_IA32_PAT,
    "VM_ENTRY_CONTROLS": C.VM_ENTRY_IA32E_MODE | C.VM_ENTRY_LOAD_IA32_EFER | C.VM_ENTRY_LOAD_IA32_PAT,
}


def fields_from_state(state: dict[str, int], profile, *, host_rip: int, host_rsp: int,
                      controls: dict[str, int] | None = None) -> dict[int, int]:
    """VMCS values (encoding -> value) for entering the processor of `state` as a
    guest, with the same processor as host."""
    v: dict[int, int] = {}
    for key, enc in zip(VMCS_KEYS, VMCS_ENCODINGS):
        v[enc] = state[key]
    for seg in ("ES", "CS", "SS", "DS", "FS", "GS", "TR"):
        v[F.by_name(f"HOST_{seg}_SELECTOR").encoding] = host_selector(state[f"GUEST_{seg}_SELECTOR"])
    v.update({
        F.HOST_CR0: state["GUEST_CR0"], F.HOST_CR3: state["GUEST_CR3"], F.HOST_CR4: state["GUEST_CR4"],
        F.HOST_FS_BASE: state["GUEST_FS_BASE"], F.HOST_GS_BASE: state["GUEST_GS_BASE"],
        F.HOST_TR_BASE: state["GUEST_TR_BASE"], F.HOST_GDTR_BASE: state["GUEST_GDTR_BASE"],
        F.HOST_IDTR_BASE: state["GUEST_IDTR_BASE"], F.HOST_IA32_SYSENTER_CS: state["GUEST_SYSENTER_CS"],
        F.HOST_IA32_SYSENTER_ESP: state["GUEST_SYSENTER_ESP"],
        F.HOST_IA32_SYSENTER_EIP: state["GUEST_SYSENTER_EIP"],
        F.HOST_IA32_EFER: state["GUEST_IA32_EFER"], F.HOST_IA32_PAT: state["GUEST_IA32_PAT"],
        F.HOST_RIP: host_rip, F.HOST_RSP: host_rsp,
        F.VMCS_LINK_POINTER: (1 << 64) - 1,
    })
    wanted = dict(DEFAULT_CONTROLS)
    wanted.update(controls or {})
    for name, value in wanted.items():
        v[F.by_name(name).encoding] = adjust(profile, name, value).value
    return v

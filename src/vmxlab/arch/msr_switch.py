"""MSRs that VM entries and VM exits switch under their controls (beyond EFER, PAT
and DEBUGCTL, which travel with the processor-state snapshot).

Sources (Intel SDM Vol. 3C): "Loading Guest Control Registers, Debug Registers, and
MSRs" (the VM-entry "load" controls), "Saving Control Registers, Debug Registers,
and MSRs" (what a VM exit saves into the guest-state area, and when), "Loading Host
Control Registers, Debug Registers, MSRs" (the VM-exit "load" and "clear" controls).
"""
from __future__ import annotations

from dataclasses import dataclass

from . import controls as C
from . import fields as F
from . import msrs as M


@dataclass(frozen=True)
class SwitchedMsr:
    msr: int
    guest_field: int
    entry_load: int               # VM-entry control that loads the MSR from guest_field
    exit_control: int             # VM-exit control that loads host_field, or clears the MSR
    host_field: int | None        # None: the exit control clears the MSR to 0
    save_control: int             # VM-exit control that saves it into guest_field, or 0:
    saved_if: tuple[int, int] = (0, 0)   # saved on every exit when the processor supports the
    #                                      1-setting of one of these (VM-entry, VM-exit) controls


SWITCHED: tuple[SwitchedMsr, ...] = (
    SwitchedMsr(M.IA32_PERF_GLOBAL_CTRL, F.GUEST_IA32_PERF_GLOBAL_CTRL, C.VM_ENTRY_LOAD_IA32_PERF_GLOBAL_CTRL,
                C.VM_EXIT_LOAD_IA32_PERF_GLOBAL_CTRL, F.HOST_IA32_PERF_GLOBAL_CTRL,
                C.VM_EXIT_SAVE_IA32_PERF_GLOBAL_CTRL),
    SwitchedMsr(M.IA32_BNDCFGS, F.GUEST_BNDCFGS, C.VM_ENTRY_LOAD_BNDCFGS, C.VM_EXIT_CLEAR_BNDCFGS, None, 0,
                (C.VM_ENTRY_LOAD_BNDCFGS, C.VM_EXIT_CLEAR_BNDCFGS)),
    SwitchedMsr(M.IA32_RTIT_CTL, F.GUEST_IA32_RTIT_CTL, C.VM_ENTRY_LOAD_IA32_RTIT_CTL,
                C.VM_EXIT_CLEAR_IA32_RTIT_CTL, None, 0, (C.VM_ENTRY_LOAD_IA32_RTIT_CTL, C.VM_EXIT_CLEAR_IA32_RTIT_CTL)),
    SwitchedMsr(M.IA32_LBR_CTL, F.GUEST_IA32_LBR_CTL, C.VM_ENTRY_LOAD_IA32_LBR_CTL,
                C.VM_EXIT_CLEAR_IA32_LBR_CTL, None, 0, (C.VM_ENTRY_LOAD_IA32_LBR_CTL, C.VM_EXIT_CLEAR_IA32_LBR_CTL)),
    SwitchedMsr(M.IA32_PKRS, F.GUEST_IA32_PKRS, C.VM_ENTRY_LOAD_IA32_PKRS, C.VM_EXIT_LOAD_IA32_PKRS,
                F.HOST_IA32_PKRS, 0, (C.VM_ENTRY_LOAD_IA32_PKRS, 0)),
)
ENTRY_CONTROLS = 0              # VM-entry controls that load one of them
EXIT_CHANGES = 0                # VM-exit controls that load or clear one
EXIT_SAVES = 0                  # VM-exit controls that save one
for _s in SWITCHED:
    ENTRY_CONTROLS |= _s.entry_load
    EXIT_CHANGES |= _s.exit_control
    EXIT_SAVES |= _s.save_control
EXIT_CONTROLS = EXIT_CHANGES | EXIT_SAVES
GUEST_FIELDS = tuple(s.guest_field for s in SWITCHED)

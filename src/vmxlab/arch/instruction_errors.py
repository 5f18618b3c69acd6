"""VM-instruction error numbers.

Source: Intel SDM Vol. 3C "VM Instruction Error Numbers" (Table 31-1).  Names
follow Linux's enum vm_instruction_error_number; numbers Linux does not name are
reserved in the SDM.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VmError:
    number: int
    name: str
    meaning: str


_TABLE = [
    (1, "VMXERR_VMCALL_IN_VMX_ROOT_OPERATION", "VMCALL executed in VMX root operation"),
    (2, "VMXERR_VMCLEAR_INVALID_ADDRESS", "VMCLEAR with invalid physical address"),
    (3, "VMXERR_VMCLEAR_VMXON_POINTER", "VMCLEAR with VMXON pointer"),
    (4, "VMXERR_VMLAUNCH_NONCLEAR_VMCS", "VMLAUNCH with non-clear VMCS"),
    (5, "VMXERR_VMRESUME_NONLAUNCHED_VMCS", "VMRESUME with non-launched VMCS"),
    (6, "VMXERR_VMRESUME_AFTER_VMXOFF", "VMRESUME after VMXOFF (VMXOFF and VMXON between VMLAUNCH and VMRESUME)"),
    (7, "VMXERR_ENTRY_INVALID_CONTROL_FIELD", "VM entry with invalid control field(s)"),
    (8, "VMXERR_ENTRY_INVALID_HOST_STATE_FIELD", "VM entry with invalid host-state field(s)"),
    (9, "VMXERR_VMPTRLD_INVALID_ADDRESS", "VMPTRLD with invalid physical address"),
    (10, "VMXERR_VMPTRLD_VMXON_POINTER", "VMPTRLD with VMXON pointer"),
    (11, "VMXERR_VMPTRLD_INCORRECT_VMCS_REVISION_ID", "VMPTRLD with incorrect VMCS revision identifier"),
    (12, "VMXERR_UNSUPPORTED_VMCS_COMPONENT", "VMREAD/VMWRITE from/to unsupported VMCS component"),
    (13, "VMXERR_VMWRITE_READ_ONLY_VMCS_COMPONENT", "VMWRITE to read-only VMCS component"),
    (14, "VMXERR_RESERVED_14", "Reserved"),
    (15, "VMXERR_VMXON_IN_VMX_ROOT_OPERATION", "VMXON executed in VMX root operation"),
    (16, "VMXERR_ENTRY_INVALID_EXECUTIVE_VMCS_POINTER", "VM entry with invalid executive-VMCS pointer"),
    (17, "VMXERR_ENTRY_NONLAUNCHED_EXECUTIVE_VMCS", "VM entry with non-launched executive VMCS"),
    (18, "VMXERR_ENTRY_EXECUTIVE_VMCS_POINTER_NOT_VMXON_POINTER",
     "VM entry with executive-VMCS pointer not VMXON pointer (when attempting to deactivate the dual-monitor treatment of SMIs and SMM)"),
    (19, "VMXERR_VMCALL_NONCLEAR_VMCS", "VMCALL with non-clear VMCS (when attempting to activate the dual-monitor treatment of SMIs and SMM)"),
    (20, "VMXERR_VMCALL_INVALID_VM_EXIT_CONTROL_FIELDS", "VMCALL with invalid VM-exit control fields"),
    (21, "VMXERR_RESERVED_21", "Reserved"),
    (22, "VMXERR_VMCALL_INCORRECT_MSEG_REVISION_ID", "VMCALL with incorrect MSEG revision identifier"),
    (23, "VMXERR_VMXOFF_UNDER_DUAL_MONITOR_TREATMENT_OF_SMIS_AND_SMM", "VMXOFF under dual-monitor treatment of SMIs and SMM"),
    (24, "VMXERR_VMCALL_INVALID_SMM_MONITOR_FEATURES", "VMCALL with invalid SMM-monitor features"),
    (25, "VMXERR_ENTRY_INVALID_VM_EXECUTION_CONTROL_FIELDS_IN_EXECUTIVE_VMCS",
     "VM entry with invalid VM-execution control fields in executive VMCS (when attempting to return from SMM)"),
    (26, "VMXERR_ENTRY_EVENTS_BLOCKED_BY_MOV_SS", "VM entry with events blocked by MOV SS"),
    (27, "VMXERR_RESERVED_27", "Reserved"),
    (28, "VMXERR_INVALID_OPERAND_TO_INVEPT_INVVPID", "Invalid operand to INVEPT/INVVPID"),
]

ERRORS: dict[int, VmError] = {n: VmError(n, name, meaning) for n, name, meaning in _TABLE}
globals().update({e.name: e.number for e in ERRORS.values()})


def lookup(key: int | str) -> VmError | None:
    if isinstance(key, int):
        return ERRORS.get(key)
    text = key.strip().upper()
    try:
        return ERRORS.get(int(text, 0))
    except ValueError:
        for e in ERRORS.values():
            if text in (e.name, e.name.removeprefix("VMXERR_")):
                return e
    return None

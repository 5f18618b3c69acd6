"""VMX controls the simulated processor does not model.

A VM entry with one of them set passes the checks when the profile allows its
1-setting; running the guest as if it were 0 would be a silent lie.  The entry
raises MachineNotImplemented naming the control instead (before any guest state is
loaded: the processor stays in VMX root operation as before the instruction).

Controls that only change Intel PT trace output (conceal VMX from PT, PT uses
guest-physical addresses) are accepted: no trace output is modelled, so there is
nothing for them to change.
"""
from __future__ import annotations

from ..arch import controls as C
from ..arch import fields as F
from ..machine.events import MachineNotImplemented

_BY_FIELD = {
    "PIN_BASED_VM_EXEC_CONTROL": ("PIN_BASED_POSTED_INTR",),
    "SECONDARY_VM_EXEC_CONTROL": (
        "SECONDARY_EXEC_APIC_REGISTER_VIRT", "SECONDARY_EXEC_VIRTUAL_INTR_DELIVERY",
        "SECONDARY_EXEC_ENCLS_EXITING",
        "SECONDARY_EXEC_PASID_TRANSLATION", "SECONDARY_EXEC_ENABLE_SPP",
        "SECONDARY_EXEC_ENABLE_USR_WAIT_PAUSE", "SECONDARY_EXEC_ENABLE_PCONFIG", "SECONDARY_EXEC_ENCLV_EXITING",
        "SECONDARY_EXEC_EPC_VIRT_EXTENSIONS", "SECONDARY_EXEC_BUS_LOCK_DETECTION",
        "SECONDARY_EXEC_NOTIFY_VM_EXITING"),
    "TERTIARY_VM_EXEC_CONTROL": tuple(c.name for c in C.bits_of("TERTIARY_VM_EXEC_CONTROL")),
    "VM_ENTRY_CONTROLS": ("VM_ENTRY_LOAD_UINV", "VM_ENTRY_LOAD_CET_STATE", "VM_ENTRY_LOAD_IA32_FRED"),
    "VM_EXIT_CONTROLS": ("VM_EXIT_CLEAR_UINV", "VM_EXIT_LOAD_CET_STATE"),
    "SECONDARY_VM_EXIT_CONTROLS": tuple(c.name for c in C.bits_of("SECONDARY_VM_EXIT_CONTROLS")),
}


def _check(field: str, names: tuple[str, ...]) -> tuple[int, int, int, int, str]:
    """(field encoding, mask of its unmodelled bits, encoding and bit of the control
    that activates the field -- 0, 0 for a field always in effect, field name)."""
    gate = C.CONTROL_FIELDS[field].enabled_by
    gate_bit = C.by_name(gate) if gate else None
    return (F.by_name(field).encoding, C.mask_of(*names),
            F.by_name(gate_bit.field).encoding if gate_bit else 0, gate_bit.mask if gate_bit else 0, field)


_CHECKS = tuple(_check(field, names) for field, names in _BY_FIELD.items())


def refuse(v: dict[int, int]) -> None:
    """Raise MachineNotImplemented if the VMCS values `v` set a control the
    simulator does not model (a field counts only when its activating control is 1)."""
    for enc, mask, gate_enc, gate_bit, field in _CHECKS:
        bits = v.get(enc, 0) & mask
        if bits and (not gate_bit or v.get(gate_enc, 0) & gate_bit):
            names = ", ".join(C.names_of(field, bits))
            raise MachineNotImplemented(f"VM entry with {names} = 1: not modelled by vmxlab's simulated "
                                        "processor (see docs/vmx.md)")

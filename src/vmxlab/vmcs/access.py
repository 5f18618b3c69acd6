"""VMREAD and VMWRITE data semantics.

Source: Intel SDM Vol. 3C "VMREAD-Read Field from Virtual-Machine Control
Structure" and "VMWRITE-Write Field to Virtual-Machine Control Structure"
(Operation sections), and "VMREAD, VMWRITE, and Encodings of VMCS Fields":

- an encoding that corresponds to no field of the processor: VMfailValid(12);
- VMWRITE to a VM-exit information field without IA32_VMX_MISC[29]: VMfailValid(13);
- a field narrower than the operand: VMREAD zero-extends, VMWRITE ignores the
  high source bits; a field wider than the operand: VMREAD returns the low bits,
  VMWRITE clears the high bits of the field;
- access type HIGH (bit 0 = 1) is allowed for 64-bit fields only and reads or
  writes bits 63:32 as a 32-bit quantity (the low half is kept on VMWRITE).

`profile` is any object with `field_supported(field) -> bool` and
`vmwrite_any_field: bool` (the caps layer's Profile).
"""
from __future__ import annotations

from ..arch import fields as F
from ..arch.instruction_errors import (VMXERR_UNSUPPORTED_VMCS_COMPONENT,
                                       VMXERR_VMWRITE_READ_ONLY_VMCS_COMPONENT)
from .store import Vmcs


class VmInstructionError(Exception):
    """The instruction ends in VMfailValid(number)."""

    def __init__(self, number: int, detail: str = ""):
        super().__init__(detail or f"VM-instruction error {number}")
        self.number = number


def field_for(encoding: int, profile) -> tuple[F.Field, bool]:
    """(field, high-access?) for an encoding, or VMfailValid(12)."""
    high = bool(encoding & 1)
    field = F.BY_ENCODING.get(encoding & ~1) if 0 <= encoding <= 0xFFFFFFFF else None
    if field is None or (high and field.width != "64") or not profile.field_supported(field):
        raise VmInstructionError(VMXERR_UNSUPPORTED_VMCS_COMPONENT,
                                 f"VMCS encoding {encoding:#x} is not supported")
    return field, high


def vmread(vmcs: Vmcs, encoding: int, profile, operand_bits: int = 64) -> int:
    field, high = field_for(encoding, profile)
    value = vmcs[field.encoding]
    if high:
        value >>= 32
    return value & ((1 << operand_bits) - 1)


def vmwrite(vmcs: Vmcs, encoding: int, value: int, profile, operand_bits: int = 64) -> None:
    field, high = field_for(encoding, profile)
    if field.read_only and not profile.vmwrite_any_field:
        raise VmInstructionError(VMXERR_VMWRITE_READ_ONLY_VMCS_COMPONENT,
                                 f"{field.name} is read-only")
    value &= (1 << operand_bits) - 1
    if high:
        old = vmcs.values.get(field.encoding, 0) or 0
        vmcs.values[field.encoding] = (old & 0xFFFFFFFF) | ((value & 0xFFFFFFFF) << 32)
    else:
        vmcs.values[field.encoding] = value & field.mask

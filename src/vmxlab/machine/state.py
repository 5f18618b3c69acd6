"""The processor-state snapshot shared by the simulated machine, the VMX layer and
the KVM backend: a dict of register name -> integer.

Keys of the VMCS guest-state shape are the Linux VMCS field names (GUEST_CR0,
GUEST_CS_SELECTOR, GUEST_CS_AR_BYTES, GUEST_IA32_EFER, GUEST_ACTIVITY_STATE ...),
so that VM entry loads from a snapshot and VM exit saves into one field by field.
State the VMCS does not hold uses the plain register names in EXTRA_KEYS.

Values follow the VMCS conventions: access rights in VMCS format (bit 16 =
unusable), byte-granular segment limits, CR0/CR4 as the processor holds them
(not read shadows).
"""
from __future__ import annotations

from ..arch import fields as F
from ..arch.registers import GPRS64

SEGMENTS = ("ES", "CS", "SS", "DS", "FS", "GS", "LDTR", "TR")

# VMCS guest-state fields every snapshot carries.
VMCS_KEYS: tuple[str, ...] = (
    "GUEST_CR0", "GUEST_CR3", "GUEST_CR4", "GUEST_DR7",
    "GUEST_RSP", "GUEST_RIP", "GUEST_RFLAGS",
    *(f"GUEST_{s}_{part}" for s in SEGMENTS for part in ("SELECTOR", "BASE", "LIMIT", "AR_BYTES")),
    "GUEST_GDTR_BASE", "GUEST_GDTR_LIMIT", "GUEST_IDTR_BASE", "GUEST_IDTR_LIMIT",
    "GUEST_IA32_DEBUGCTL", "GUEST_SYSENTER_CS", "GUEST_SYSENTER_ESP", "GUEST_SYSENTER_EIP",
    "GUEST_IA32_EFER", "GUEST_IA32_PAT",
    "GUEST_INTERRUPTIBILITY_INFO", "GUEST_ACTIVITY_STATE", "GUEST_PENDING_DBG_EXCEPTIONS",
)
# Architectural state outside the VMCS guest-state area (GPRs other than RSP, CR2,
# CR8, debug registers, XCR0 and the MSRs VM entry/exit do not switch).
EXTRA_KEYS: tuple[str, ...] = (
    *(r for r in GPRS64 if r != "RSP"),
    "CR2", "CR8", "DR0", "DR1", "DR2", "DR3", "DR6", "XCR0",
    "KERNEL_GS_BASE", "STAR", "LSTAR", "CSTAR", "FMASK", "TSC_AUX",
)
KEYS = VMCS_KEYS + EXTRA_KEYS

# Encodings of VMCS_KEYS, in the same order (for the VM-entry/exit hot paths).
VMCS_ENCODINGS: tuple[int, ...] = tuple(F.by_name(k).encoding for k in VMCS_KEYS)

"""Loading MSRs (Intel SDM Vol. 3C "Loading MSRs"): the entries of the VM-entry
MSR-load area, processed in order after the guest state is loaded.  The first
entry that fails makes VM entry fail with exit reason 34 and the entry's index
(1-based) as exit qualification.

An entry is 16 bytes: bits 31:0 the MSR index, bits 63:32 reserved, bits 127:64
the data.  Each rule here is a function of one entry:
fn(index, reserved_high, data, facts, entry) -> None or what is wrong.
"""
from __future__ import annotations

import struct

from ..arch import fields as F
from ..arch import msrs as M
from ..caps.msrmodel import wrmsr_fault
from .registry import MSR_LOAD, S_MSR_LOAD, add

_COUNT, _ADDR = F.VM_ENTRY_MSR_LOAD_COUNT, F.VM_ENTRY_MSR_LOAD_ADDR
FIELDS = ("VM_ENTRY_MSR_LOAD_COUNT", "VM_ENTRY_MSR_LOAD_ADDR")


def entries(v, e, limit: int):
    """(index, MSR index, bits 63:32, data) of each entry, read one by one as the
    processor processes them; at most `limit` entries.  Reading an entry whose
    bytes the memory reader does not have raises Unknown."""
    count = min(v[_COUNT], limit)
    base = v[_ADDR]
    for i in range(count):
        lo, hi, data = struct.unpack("<IIQ", e.read(base + 16 * i, 16))
        yield i + 1, lo, hi, data


def recommended_max(misc: int) -> int:
    """512 * (N + 1), N = IA32_VMX_MISC bits 27:25 ("Miscellaneous Data"): beyond this
    number of entries the processor's behavior is undefined."""
    return 512 * ((misc >> 25 & 7) + 1)


def _m(id, fn, **kw):
    add(id, S_MSR_LOAD, MSR_LOAD, FIELDS, fn, field="VM_ENTRY_MSR_LOAD_ADDR", memory=True, **kw)


def _fs_gs(index, high, data, k, e):
    if index in (M.IA32_FS_BASE, M.IA32_GS_BASE):
        return f"{M.name_of(index)} ({index:#x}) cannot be loaded from the MSR-load area"
    return None


def _x2apic(index, high, data, k, e):
    if index >> 8 == 0x8:
        return f"MSR {index:#x} is an x2APIC MSR (bits 31:8 = 000008H), which the MSR-load area cannot load"
    return None


def _smm(index, high, data, k, e):
    if index == M.IA32_SMM_MONITOR_CTL:
        return f"IA32_SMM_MONITOR_CTL ({index:#x}) can be written only in SMM; VM entry did not commence in SMM"
    return None


_MODEL_SPECIFIC = {0x79: "IA32_BIOS_UPDT_TRIG", 0x8B: "IA32_BIOS_SIGN_ID"}


def _model(index, high, data, k, e):
    name = _MODEL_SPECIFIC.get(index)
    if name:
        return f"{name} ({index:#x}) cannot be loaded on VM entry (model-specific)"
    return None


def _reserved(index, high, data, k, e):
    if high:
        return f"bits 63:32 of the entry must be 0 (they are {high:#x})"
    return None


def _gp(index, high, data, k, e):
    why = wrmsr_fault(k.profile, index, data)
    if why:
        return f"WRMSR of {data:#x} to {M.name_of(index)} would cause #GP at CPL 0: {why}"
    return None


_m("msr_load.fs_gs_base", _fs_gs)
_m("msr_load.x2apic", _x2apic,
   note="The SDM rejects indices 800H-8FFH unconditionally; KVM's nested checks reject them only when the "
        "vCPU's APIC is in x2APIC mode.")
_m("msr_load.smm_only", _smm)
_m("msr_load.model_specific", _model,
   note="The SDM leaves the list to Vol. 4 ('cannot be loaded for model-specific reasons'); vmxlab refuses the "
        "microcode-update MSRs 79H and 8BH, as KVM's nested checks do.")
_m("msr_load.reserved_bits", _reserved)
_m("msr_load.wrmsr_gp", _gp, note="#GP conditions from caps.msrmodel.wrmsr_fault (the processor's MSR model).")

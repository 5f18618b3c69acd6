"""The VMCS: field store, VMREAD/VMWRITE semantics, region layout, formats, diff."""
from .access import VmInstructionError, vmread, vmwrite
from .document import VmcsDocument, load
from .store import UnknownField, Vmcs

__all__ = ["Vmcs", "UnknownField", "VmcsDocument", "load", "vmread", "vmwrite", "VmInstructionError"]

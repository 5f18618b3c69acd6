"""A VMCS with what travels with it in a file: the processor profile it was meant
for, its launch state and the physical memory the checks read."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from .store import Vmcs


@dataclass
class VmcsDocument:
    vmcs: Vmcs
    cpu: str | None = None                      # profile name or path
    memory: dict[int, bytes] = field(default_factory=dict)  # physical address -> bytes
    source: str = "json"                        # "json" or "dump_vmcs"
    notes: list[str] = field(default_factory=list)  # what the reader saw but did not map to fields

    def read_memory(self, address: int, size: int) -> bytes | None:
        """Bytes at a physical address if the document holds all of them, else None."""
        for base, data in self.memory.items():
            if base <= address and address + size <= base + len(data):
                off = address - base
                return data[off:off + size]
        return None


def load(text: str, name: str = "-") -> VmcsDocument:
    """Read a vmxlab JSON document or a Linux dump_vmcs text (detected by content)."""
    from . import dumpfmt, jsonfmt
    stripped = text.lstrip()
    if stripped.startswith("{"):
        return jsonfmt.loads(text, name)
    if stripped.startswith("["):   # a JSON array, or a kernel log line "[ 12.345] ..."
        try:
            return jsonfmt.from_dict(json.loads(text), name)
        except json.JSONDecodeError:
            pass
    return dumpfmt.loads(text, name)

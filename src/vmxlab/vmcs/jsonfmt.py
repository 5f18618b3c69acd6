"""The vmxlab JSON VMCS document (`vmxlab-vmcs/1`, see DESIGN.md "Formats").

    {"format": "vmxlab-vmcs/1", "cpu": "skylake-client", "launch_state": "clear",
     "fields": {"GUEST_CR0": "0x80050033", "PIN_BASED_VM_EXEC_CONTROL": 22},
     "memory": [{"address": "0x5000", "hex": "00112233"}]}

Field names are Linux names, aliases or SDM names; values are integers or
strings in Python integer syntax ("0x1f", "31", "0b11").  Fields the document
does not give read as 0.  Unknown names, values wider than their field,
malformed memory entries: BadInput naming the file and the item.
"""
from __future__ import annotations

import json

from ..arch import fields as F
from ..errors import BadInput
from .document import VmcsDocument
from .store import Vmcs, fit

FORMAT = "vmxlab-vmcs/1"
_KEYS = {"format", "cpu", "launch_state", "fields", "memory", "comment"}


def parse_int(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise BadInput(f"{what}: {value!r} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip().replace("_", ""), 0)
        except ValueError:
            pass
    raise BadInput(f"{what}: {value!r} is not an integer")


def from_dict(doc: object, name: str = "-") -> VmcsDocument:
    if not isinstance(doc, dict):
        raise BadInput(f"{name}: a VMCS document is a JSON object")
    fmt = doc.get("format", FORMAT)
    if fmt != FORMAT:
        raise BadInput(f"{name}: format {fmt!r} is not {FORMAT}")
    extra = set(doc) - _KEYS
    if extra:
        raise BadInput(f"{name}: unknown key {sorted(extra)[0]!r}")
    launch = doc.get("launch_state", "clear")
    if launch not in ("clear", "launched"):
        raise BadInput(f"{name}: launch_state {launch!r} is neither 'clear' nor 'launched'")
    cpu = doc.get("cpu")
    if cpu is not None and not isinstance(cpu, str):
        raise BadInput(f"{name}: cpu {cpu!r} is not a profile name or path")
    raw_fields = doc.get("fields", {})
    if not isinstance(raw_fields, dict):
        raise BadInput(f"{name}: 'fields' is an object of name: value")
    vmcs = Vmcs(launch_state=launch)
    for key, raw in raw_fields.items():
        field = F.lookup(key)
        if field is None:
            raise BadInput(f"{name}: unknown VMCS field {key!r}")
        try:
            vmcs.values[field.encoding] = fit(field, parse_int(raw, f"{name}: {field.name}"))
        except BadInput as e:
            msg = str(e)
            raise BadInput(msg if msg.startswith(name) else f"{name}: {msg}") from None
    memory: dict[int, bytes] = {}
    raw_mem = doc.get("memory", [])
    if not isinstance(raw_mem, list):
        raise BadInput(f"{name}: 'memory' is a list of {{address, hex}} objects")
    for i, item in enumerate(raw_mem):
        if not isinstance(item, dict) or set(item) - {"address", "hex"} or "address" not in item:
            raise BadInput(f"{name}: memory[{i}] is not an {{address, hex}} object")
        addr = parse_int(item["address"], f"{name}: memory[{i}].address")
        if addr < 0 or addr >= 1 << 52:
            raise BadInput(f"{name}: memory[{i}].address {addr:#x} is not a physical address")
        text = item.get("hex", "")
        try:
            data = bytes.fromhex(text) if isinstance(text, str) else None
        except ValueError:
            data = None
        if data is None:
            raise BadInput(f"{name}: memory[{i}].hex is not a hex byte string")
        memory[addr] = data
    return VmcsDocument(vmcs, cpu=cpu, memory=memory, source="json")


def loads(text: str, name: str = "-") -> VmcsDocument:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadInput(f"{name}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    return from_dict(doc, name)


def to_dict(document: VmcsDocument, only_written: bool = True) -> dict:
    vmcs = document.vmcs
    items = vmcs.written() if only_written else vmcs.fields()
    out: dict = {"format": FORMAT}
    if document.cpu:
        out["cpu"] = document.cpu
    out["launch_state"] = vmcs.launch_state
    out["fields"] = {f.name: f"{v:#x}" for f, v in items}
    if document.memory:
        out["memory"] = [{"address": f"{a:#x}", "hex": d.hex()} for a, d in sorted(document.memory.items())]
    return out


def dumps(document: VmcsDocument, only_written: bool = True) -> str:
    return json.dumps(to_dict(document, only_written), indent=2) + "\n"

"""The report of `vmxlab run`: text for people, one JSON document (`vmxlab-run/1`,
docs/run.md) for tools."""
from __future__ import annotations

from collections import Counter

from ..arch import fields as F
from ..arch.instruction_errors import ERRORS
from .run import OUTCOMES, RunResult

_BACKEND = {"sim": "the simulated processor", "kvm": "/dev/kvm (after VM entry on the simulated processor)"}
_HEX_FIELDS = ("qualification", "guest_rip", "instruction_info", "guest_linear_address", "guest_physical_address",
               "intr_info", "intr_error_code", "idt_vectoring_info", "idt_vectoring_error_code", "exit_reason")


def _field_hex(name: str, value: int) -> str:
    digits = {"16": 4, "32": 8}.get(F.by_name(name).width, 16)
    return f"{value:#0{digits + 2}x}"


def _edit_line(name: str, op: str, value: int, result: int) -> str:
    sym = {"set": "= ", "or": "|= ", "andnot": "&= ~"}[op]
    return f"{name} {sym}{value:#x}  ->  {_field_hex(name, result)}"


def text(r: RunResult, trace: bool = False) -> str:
    out: list[str] = []
    where = f"entry {r.entry:#x}" + (f", {len(r.segments)} segment(s)" if r.segments else "")
    out.append(f"vmxlab run: {r.image} ({r.kind}, {where}) on {_BACKEND[r.backend]}, profile {r.profile}")
    for name, op, value, result in r.edits:
        out.append(f"  VMCS edit before VMLAUNCH: {_edit_line(name, op, value, result)}")
    out.append("")
    if r.launch:
        out.append(f"VMLAUNCH: {r.launch}")
    if r.check is not None and not r.check.ok:
        out.append(f"  VM-entry checks: {r.check.headline()}; every violation:")
        for v in r.check.violations:
            value = "" if v.value is None else f" = {v.value:#x}"
            out.append(f"    {v.id}  [{v.section}]")
            out.append(f"      {v.field}{value}: {v.message}")
    if r.launch_error is not None:
        e = ERRORS.get(r.launch_error)
        out.append(f"  VM-instruction error {r.launch_error}: {e.name if e else '?'}")
    out.append("")
    out.append("console (UART 0x3F8):")
    if r.console:
        out.extend(f"  | {line}" for line in r.console.rstrip("\n").splitlines())
    else:
        out.append("  (nothing)")
    out.append("")
    counts = Counter(e["name"] + (" (entry failure)" if e["entry_failure"] else "") for e in r.exits)
    summary = ", ".join(f"{name} {n}" for name, n in counts.most_common())
    out.append(f"VM exits: {len(r.exits)}" + (f" ({summary})" if summary else ""))
    if trace:
        out.extend(f"  {line}" for line in r.trace)
    out.append("")
    out.append(f"outcome: {r.outcome}" + (f" -- {r.detail}" if r.detail else ""))
    if r.registers:
        regs = r.registers
        names = list(regs)
        for i in range(0, len(names), 6):
            out.append("  " + "  ".join(f"{n}={regs[n]:#x}" for n in names[i:i + 6]))
    for note in r.notes:
        out.append(f"note: {note}")
    return "\n".join(out) + "\n"


def _exit_doc(e: dict) -> dict:
    d = {}
    for k, v in e.items():
        d[k] = f"{v:#x}" if k in _HEX_FIELDS and v is not None else v
    return d


def document(r: RunResult) -> dict:
    return {
        "format": "vmxlab-run/1",
        "image": {"name": r.image, "kind": r.kind, "entry": f"{r.entry:#x}",
                  "segments": [{"address": f"{a:#x}", "file_bytes": n, "memory_bytes": m} for a, n, m in r.segments]},
        "backend": r.backend,
        "profile": r.profile,
        "edits": [{"field": name, "op": op, "value": f"{value:#x}", "result": f"{result:#x}"}
                  for name, op, value, result in r.edits],
        "check": r.check.to_dict() if r.check is not None else None,
        "launch": r.launch,
        "launch_error": r.launch_error,
        "launch_error_name": ERRORS[r.launch_error].name if r.launch_error in ERRORS else None,
        "console": r.console,
        "exits": [_exit_doc(e) for e in r.exits],
        "outcome": r.outcome,
        "outcome_meaning": OUTCOMES.get(r.outcome, ""),
        "detail": r.detail,
        "registers": {k: f"{v:#x}" for k, v in r.registers.items()},
        "notes": r.notes,
        "budget": {"max_exits": r.max_exits, "timeout": r.timeout},
        "seconds": round(r.seconds, 6),
    }


"""Differences between two VMCSs, field by field, in encoding order."""
from __future__ import annotations

from dataclasses import dataclass

from ..arch import fields as F
from .store import Vmcs


@dataclass(frozen=True)
class FieldDiff:
    field: F.Field
    a: int | None    # None: unknown in that VMCS
    b: int | None


def diff(a: Vmcs, b: Vmcs, include_unknown: bool = False) -> list[FieldDiff]:
    """Fields whose values differ.  A field known in one VMCS and unknown in the
    other is listed only with include_unknown (a dump simply did not print it)."""
    out = []
    for field in F.FIELDS:
        va = a.values.get(field.encoding, a.default)
        vb = b.values.get(field.encoding, b.default)
        if va == vb:
            continue
        if (va is None or vb is None) and not include_unknown:
            continue
        out.append(FieldDiff(field, va, vb))
    return out


def format_diff(diffs: list[FieldDiff], names: tuple[str, str] = ("a", "b")) -> str:
    def show(v: int | None) -> str:
        return "unknown" if v is None else f"{v:#x}"
    width = max((len(d.field.name) for d in diffs), default=0)
    lines = [f"{d.field.name:<{width}}  {names[0]}={show(d.a)}  {names[1]}={show(d.b)}" for d in diffs]
    return "\n".join(lines)

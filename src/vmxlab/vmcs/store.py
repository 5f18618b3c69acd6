"""The VMCS as a field store keyed by encoding.

Two ways in:
- item access (`vmcs["GUEST_RIP"] = 0x1000`, `vmcs[0x681E]`) for documents and tools:
  names or encodings, values must fit the field's width (BadInput otherwise);
- `vmread`/`vmwrite` in vmcs.access, with the data semantics of the instructions
  (truncation, HIGH access of 64-bit fields, error numbers 12 and 13).

A field can be *unknown*: a VMCS read from a Linux dump_vmcs text knows only the
fields the dump printed.  Reading an unknown field raises UnknownField; it never
reads as 0.  A VMCS built from scratch (or from a vmxlab JSON document) reads
unwritten fields as 0, as a VMCS region cleared to zero would.
"""
from __future__ import annotations

from typing import Iterator

from ..arch import fields as F
from ..errors import BadInput


class UnknownField(LookupError):
    """The value of a field is not known (e.g. a dump did not print it)."""

    def __init__(self, field: F.Field):
        super().__init__(f"{field.name} is not known")
        self.field = field


def resolve(key: str | int) -> F.Field:
    """The field a name, alias or encoding designates; BadInput for anything else."""
    field = F.lookup(key)
    if field is None:
        what = f"{key:#x}" if isinstance(key, int) else repr(key)
        raise BadInput(f"unknown VMCS field {what}")
    return field


def fit(field: F.Field, value: int) -> int:
    """A value for a field: within its width, or a negative number whose two's
    complement fits (so -1 means all ones, as `vmwrite VMCS_LINK_POINTER, -1`)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInput(f"{field.name}: value {value!r} is not an integer")
    if value < 0:
        if value < -(1 << (field.bits - 1)):
            raise BadInput(f"{field.name}: value {value} is wider than the {field.width}-bit field")
        return value & field.mask
    if value > field.mask:
        raise BadInput(f"{field.name}: value {value:#x} is wider than the {field.width}"
                       f"{'' if field.width == 'natural' else '-bit'} field")
    return value


class Vmcs:
    """Field values by full-access encoding.

    `values` is a plain dict {encoding: int}; the checker and the VMX layer read it
    directly on their hot paths.  `default` is what an absent field reads as: 0,
    or None for "unknown".
    """
    __slots__ = ("values", "default", "launch_state")

    def __init__(self, values: dict[int, int] | None = None, default: int | None = 0,
                 launch_state: str = "clear"):
        self.values: dict[int, int] = dict(values or {})
        self.default = default
        self.launch_state = launch_state

    # -- item access by name or encoding, width-checked ----------------------------
    def __getitem__(self, key: str | int) -> int:
        field = resolve(key)
        value = self.values.get(field.encoding, self.default)
        if value is None:
            raise UnknownField(field)
        return value

    def __setitem__(self, key: str | int, value: int) -> None:
        field = resolve(key)
        self.values[field.encoding] = fit(field, value)

    def __contains__(self, key: str | int) -> bool:
        return self.known(resolve(key).encoding)

    def get(self, key: str | int, default: int | None = None) -> int | None:
        field = resolve(key)
        value = self.values.get(field.encoding, self.default)
        return default if value is None else value

    def known(self, encoding: int) -> bool:
        return encoding in self.values or self.default is not None

    def update(self, items: dict) -> None:
        for k, v in items.items():
            self[k] = v

    def fields(self) -> Iterator[tuple[F.Field, int]]:
        """Known fields in encoding order (unwritten ones only if they read as 0)."""
        for field in F.FIELDS:
            value = self.values.get(field.encoding, self.default)
            if value is not None:
                yield field, value

    def written(self) -> Iterator[tuple[F.Field, int]]:
        """Fields explicitly set, in encoding order."""
        for field in F.FIELDS:
            if field.encoding in self.values:
                yield field, self.values[field.encoding]

    def copy(self) -> "Vmcs":
        return Vmcs(self.values, self.default, self.launch_state)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Vmcs) and dict(self.fields()) == dict(other.fields())
                and self.launch_state == other.launch_state)

    def __repr__(self) -> str:
        return f"<Vmcs {len(self.values)} fields set, {self.launch_state}>"

"""Bit layouts: named bit ranges of a register, field or qualification.

A Layout is data (the SDM's table of a format) plus decode/encode; every format
in arch/ (exit qualifications, instruction information, capability MSRs, control
registers ...) is one Layout.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping


@dataclass(frozen=True)
class Bits:
    name: str
    lo: int
    hi: int | None = None             # None: a single bit
    values: Mapping[int, str] | None = None  # meaning of each value, when enumerated
    doc: str = ""

    @property
    def top(self) -> int:
        return self.lo if self.hi is None else self.hi

    @property
    def width(self) -> int:
        return self.top - self.lo + 1

    @property
    def mask(self) -> int:
        return ((1 << self.width) - 1) << self.lo

    def get(self, value: int) -> int:
        return (value >> self.lo) & ((1 << self.width) - 1)

    def put(self, value: int, part: int) -> int:
        if part >> self.width:
            raise ValueError(f"{self.name}: {part:#x} does not fit in {self.width} bits")
        return (value & ~self.mask) | (part << self.lo)

    def describe(self, value: int) -> str:
        part = self.get(value)
        if self.values is not None:
            return self.values.get(part, f"reserved ({part})")
        return str(part) if self.width == 1 else hex(part)


@dataclass(frozen=True)
class Layout:
    name: str
    parts: tuple[Bits, ...]
    section: str = ""                 # SDM section title the format comes from
    _index: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._index.update({b.name: b for b in self.parts})

    def __getitem__(self, name: str) -> Bits:
        return self._index[name]

    @property
    def defined_mask(self) -> int:
        m = 0
        for b in self.parts:
            m |= b.mask
        return m

    def decode(self, value: int) -> dict[str, int]:
        return {b.name: b.get(value) for b in self.parts}

    def encode(self, **parts: int) -> int:
        value = 0
        for name, part in parts.items():
            value = self[name].put(value, part)
        return value

    def describe(self, value: int, skip_zero: bool = False) -> list[tuple[str, str]]:
        """(name, meaning) for each part, e.g. [('access', 'MOV to CR'), ...]."""
        return [(b.name, b.describe(value)) for b in self.parts
                if not (skip_zero and b.get(value) == 0 and b.values is None)]

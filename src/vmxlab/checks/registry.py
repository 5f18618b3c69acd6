"""The rule registry: every VM-entry check as a named rule, in SDM order.

A rule is a small function `fn(v, k, e)` over
  v  the VMCS field values, a dict keyed by encoding (absent fields read as 0 for
     a VMCS that knows every field; for a dump_vmcs VMCS reading an absent field
     raises Unknown and the rule is reported "not checked"),
  k  the profile's facts (checks.facts.Facts: constants computed once per profile),
  e  the entry environment (checks.engine.Entry: instruction, processor state at
     VMLAUNCH/VMRESUME, the physical-memory reader).
It returns None when the check passes, else a message saying what is required
(a string), or (field name, value, message) when the failing field is not the
rule's own, or -- for MSR-load rules -- (entry index, field name, value, message).

Each rule carries its SDM section title (Intel SDM Vol. 3C, chapter "VM Entries"),
its outcome class and the fields it reads (for the catalogue and for dumps).
Rules are registered in the order of the SDM's text; modules register in the order
basic, controls, host, guest, MSR loading (checks/__init__.py imports them so).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..arch import fields as F

# Outcome classes, in the order the processor reports them.
BASIC = "basic"                  # VMfailInvalid / VMfailValid 4, 5, 26 (error set per rule)
CONTROLS = "controls"            # VMfailValid 7
HOST = "host"                    # VMfailValid 8
GUEST = "guest"                  # VM-entry failure, exit reason 33 (qualification per rule)
MSR_LOAD = "msr_load"            # VM-entry failure, exit reason 34 (qualification: entry index)
CLASS_ORDER = (BASIC, CONTROLS, HOST, GUEST, MSR_LOAD)

# Section titles (Intel SDM Vol. 3C, "VM Entries").
S_BASIC = "Basic VM-Entry Checks"
S_EXEC = "VM-Execution Control Fields"
S_EXIT = "VM-Exit Control Fields"
S_ENTRY = "VM-Entry Control Fields"
S_HOST_CR = "Checks on Host Control Registers, MSRs, and SSP"
S_HOST_SEG = "Checks on Host Segment and Descriptor-Table Registers"
S_ADDR_SIZE = "Checks Related to Address-Space Size"
S_GUEST_CR = "Checks on Guest Control Registers, Debug Registers, and MSRs"
S_GUEST_SEG = "Checks on Guest Segment Registers"
S_GUEST_DTR = "Checks on Guest Descriptor-Table Registers"
S_GUEST_RIP = "Checks on Guest RIP, RFLAGS, and SSP"
S_GUEST_NONREG = "Checks on Guest Non-Register State"
S_GUEST_PDPTE = "Checks on Guest Page-Directory-Pointer-Table Entries"
S_MSR_LOAD = "Loading MSRs"

# Exit qualifications of exit reason 33 ("VM-Entry Failures During or After Loading
# Guest State"): 0 default, 2 PDPTE loading, 4 invalid VMCS link pointer.
QUAL_DEFAULT, QUAL_PDPTE, QUAL_LINK_POINTER = 0, 2, 4


class Unknown(LookupError):
    """A value the rule needs is not known (a field a dump did not print, or
    physical memory the document does not hold)."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


@dataclass(frozen=True)
class Rule:
    id: str
    section: str
    klass: str
    fn: Callable
    fields: tuple[str, ...]        # Linux names of the fields the rule reads
    field: str                     # the field a violation names by default
    error: int | None = None       # VM-instruction error (basic, controls, host)
    qualification: int = 0         # exit qualification (guest class)
    memory: bool = False           # reads physical memory
    note: str = ""                 # where the rule departs from a reference implementation, or why
    guard: Callable | None = None  # guard(v, e) false => the rule passes (lets the engine skip a run of rules)

    @property
    def outcome(self) -> str:
        """The outcome as the catalogue prints it."""
        if self.klass == BASIC:
            return "VMfailInvalid" if self.error is None else f"VMfailValid {self.error}"
        if self.klass in (CONTROLS, HOST):
            return f"VMfailValid {self.error}"
        if self.klass == GUEST:
            return f"exit reason 33, qualification {self.qualification}"
        return "exit reason 34, qualification = entry index"


RULES: list[Rule] = []
_IDS: set[str] = set()
_ERRORS = {CONTROLS: 7, HOST: 8}


def _encodings(names: tuple[str, ...]) -> None:
    for n in names:
        if F.lookup(n) is None:
            raise AssertionError(f"unknown VMCS field {n}")


def add(id: str, section: str, klass: str, fields: tuple[str, ...], fn: Callable, *,
        field: str | None = None, error: int | None = None, qualification: int = 0,
        memory: bool = False, note: str = "", guard: Callable | None = None) -> Rule:
    """Register a rule (in SDM order: call order is catalogue order)."""
    if id in _IDS:
        raise AssertionError(f"duplicate rule id {id}")
    _encodings(fields)
    if error is None:
        error = _ERRORS.get(klass)
    r = Rule(id, section, klass, fn, tuple(fields), field or (fields[0] if fields else ""),
             error, qualification, memory, note, guard)
    RULES.append(r)
    _IDS.add(id)
    return r


def rule(id: str, section: str, klass: str, fields: tuple[str, ...], **kw):
    """Decorator form of add()."""
    def wrap(fn: Callable) -> Callable:
        add(id, section, klass, fields, fn, **kw)
        return fn
    return wrap


def by_id(id: str) -> Rule:
    for r in RULES:
        if r.id == id:
            return r
    raise KeyError(id)

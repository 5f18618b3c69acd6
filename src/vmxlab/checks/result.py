"""The result of a VM-entry check, as the processor would report it.

Formats: to_dict() is DESIGN.md's check-result JSON (plus "not_checked");
lines() is the human text `vmxlab check` prints.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..arch import exits as X
from ..arch import instruction_errors as E
from . import registry as REG


@dataclass(frozen=True)
class Violation:
    rule: REG.Rule
    field: str
    value: int | None
    message: str
    index: int | None = None        # MSR-load entry (1-based), for exit reason 34

    @property
    def id(self) -> str:
        return self.rule.id

    @property
    def section(self) -> str:
        return self.rule.section

    def to_dict(self) -> dict:
        d = {"rule": self.rule.id, "section": self.rule.section, "field": self.field,
             "value": None if self.value is None else f"{self.value:#x}", "message": self.message}
        if self.index is not None:
            d["entry"] = self.index
        return d


@dataclass(frozen=True)
class NotChecked:
    rule: REG.Rule
    missing: str                     # the field or memory the rule needed

    def to_dict(self) -> dict:
        return {"rule": self.rule.id, "section": self.rule.section, "missing": self.missing}


@dataclass
class Result:
    outcome: str                     # success | vmfail_invalid | vmfail_valid | entry_failure
    cpu: str
    instruction: str
    error: int | None = None
    exit_reason: int | None = None   # basic exit reason (33 or 34); the exit-reason field also has bit 31 set
    qualification: int | None = None
    violations: list[Violation] = field(default_factory=list)
    not_checked: list[NotChecked] = field(default_factory=list)

    # -- construction -----------------------------------------------------------------
    @classmethod
    def vmfail_invalid(cls, cpu: str, instruction: str) -> "Result":
        return cls("vmfail_invalid", cpu, instruction)

    @classmethod
    def from_violations(cls, cpu: str, instruction: str, violations: list[Violation],
                        not_checked: list[NotChecked]) -> "Result":
        if not violations:
            return cls("success", cpu, instruction, not_checked=not_checked)
        first = violations[0]
        r = first.rule
        res = cls("vmfail_valid", cpu, instruction, violations=violations, not_checked=not_checked)
        if r.klass in (REG.BASIC, REG.CONTROLS, REG.HOST):
            res.error = r.error
        elif r.klass == REG.GUEST:
            res.outcome, res.exit_reason, res.qualification = "entry_failure", 33, r.qualification
        else:
            res.outcome, res.exit_reason, res.qualification = "entry_failure", 34, first.index
        return res

    # -- views ---------------------------------------------------------------------------
    @property
    def ok(self) -> bool:
        return self.outcome == "success"

    @property
    def error_name(self) -> str | None:
        return E.ERRORS[self.error].name if self.error is not None else None

    @property
    def exit_reason_field(self) -> int | None:
        """The exit-reason field as the processor writes it (bit 31: VM-entry failure)."""
        return None if self.exit_reason is None else self.exit_reason | 1 << 31

    @property
    def rule(self) -> str | None:
        return self.violations[0].rule.id if self.violations else None

    def headline(self) -> str:
        if self.outcome == "success":
            return "VM entry succeeds" if not self.not_checked else \
                f"VM entry succeeds as far as checked ({len(self.not_checked)} rules not checked)"
        if self.outcome == "vmfail_invalid":
            return f"VMfailInvalid ({self.instruction.upper()} with no current VMCS)"
        if self.outcome == "vmfail_valid":
            return f"VMfailValid {self.error} ({self.error_name})"
        name = X.lookup(self.exit_reason).name
        return f"VM-entry failure, exit reason {self.exit_reason} ({name}), qualification {self.qualification}"

    def lines(self) -> list[str]:
        out = [self.headline()]
        for v in self.violations:
            value = "unknown" if v.value is None else f"{v.value:#x}"
            out.append(f"  {v.rule.id}  [{v.rule.section}]")
            out.append(f"    {v.field} = {value}: {v.message}")
        if self.not_checked:
            out.append("not checked (the input does not give what they read):")
            for n in self.not_checked:
                out.append(f"  {n.rule.id}  [{n.rule.section}]: {n.missing} unknown")
        return out

    def to_dict(self) -> dict:
        return {
            "outcome": self.outcome,
            "cpu": self.cpu,
            "instruction": self.instruction,
            "error": self.error,
            "error_name": self.error_name,
            "exit_reason": self.exit_reason,
            "qualification": self.qualification,
            "violations": [v.to_dict() for v in self.violations],
            "not_checked": [n.to_dict() for n in self.not_checked],
        }

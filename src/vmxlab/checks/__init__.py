"""VM-entry consistency checks: every check of the Intel SDM chapter "VM Entries"
as a named rule, in the SDM's order; check() gives the outcome the processor would
give (VMfailInvalid, VMfailValid 4/5/7/8/26, VM-entry failure with exit reason 33
or 34) and the violations.  One implementation for `vmxlab check` and for the
simulated VMLAUNCH/VMRESUME.
"""
from . import basic, controls, host, guest_registers, guest_segments, guest_state, guest_pdpte, msr_load  # noqa: F401  (SDM order)
from .engine import check, check_changed, finalize
from .registry import RULES, Rule, by_id
from .result import NotChecked, Result, Violation

finalize()

__all__ = ["check", "check_changed", "RULES", "Rule", "by_id", "Result", "Violation", "NotChecked"]

"""Is an EPTP valid?  The VM-entry rules on the EPT-pointer field ("Checks on
VM-Execution Control Fields", EPTP items) applied to one value, for INVEPT
single-context and the EPTP-switching VM function, which use the same test."""
from __future__ import annotations

from ..arch import controls as C
from ..vmcs import Vmcs
from .engine import check


def eptp_problems(eptp: int, profile) -> list[str]:
    """Messages of the EPTP rules this value violates (empty: the EPTP is valid)."""
    v = Vmcs()
    v["CPU_BASED_VM_EXEC_CONTROL"] = C.CPU_BASED_ACTIVATE_SECONDARY_CONTROLS
    v["SECONDARY_VM_EXEC_CONTROL"] = C.SECONDARY_EXEC_ENABLE_EPT
    v["EPT_POINTER"] = eptp & ((1 << 64) - 1)
    result = check(v, profile, all=True)
    return [x.message for x in result.violations if x.id.startswith("ctrl.eptp.")]

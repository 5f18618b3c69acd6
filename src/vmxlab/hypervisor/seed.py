"""Facts of the seed tutorial (../shared/seed): the control values it asks for.

Each value is what the chapter ORs together before adjusting (steps 8-12 of its
VMCS setup); see docs/ for the walkthrough.
"""
from __future__ import annotations

from ..arch import controls as C

SEED_CONTROLS: dict[str, int] = {
    # step 8: use MSR bitmap + activate secondary controls (through TRUE_PROCBASED_CTLS)
    "CPU_BASED_VM_EXEC_CONTROL": C.CPU_BASED_USE_MSR_BITMAPS | C.CPU_BASED_ACTIVATE_SECONDARY_CONTROLS,
    # step 9: RDTSCP, INVPCID, XSAVES/XRSTORS, EPT, VPID (through PROCBASED_CTLS2)
    "SECONDARY_VM_EXEC_CONTROL": (C.SECONDARY_EXEC_ENABLE_RDTSCP | C.SECONDARY_EXEC_ENABLE_INVPCID
                                  | C.SECONDARY_EXEC_ENABLE_XSAVES | C.SECONDARY_EXEC_ENABLE_EPT
                                  | C.SECONDARY_EXEC_ENABLE_VPID),
    # step 10: written as 0 without adjustment (a seed bug)
    "PIN_BASED_VM_EXEC_CONTROL": 0,
    # step 11: host address-space size + acknowledge interrupt on exit (TRUE_EXIT_CTLS)
    "VM_EXIT_CONTROLS": C.VM_EXIT_HOST_ADDR_SPACE_SIZE | C.VM_EXIT_ACK_INTR_ON_EXIT,
    # step 12: IA-32e mode guest (TRUE_ENTRY_CTLS)
    "VM_ENTRY_CONTROLS": C.VM_ENTRY_IA32E_MODE,
}

"""Events: exception vectors, interruption information, guest non-register state.

Sources: Intel SDM Vol. 3A "Exception and Interrupt Reference" (vectors, classes,
error codes); Vol. 3C "VM-Entry Controls for Event Injection" (interruption-
information format), "Guest Non-Register State" (activity state, interruptibility
state, pending debug exceptions).
"""
from __future__ import annotations

from .layout import Bits, Layout

# vector: (mnemonic, pushes an error code, class) -- class per "Exception classes"
# in "Conditions for Generating a Double Fault": benign, contributory, page fault.
EXCEPTIONS: dict[int, tuple[str, bool, str]] = {
    0: ("#DE", False, "contributory"),
    1: ("#DB", False, "benign"),
    2: ("NMI", False, "benign"),
    3: ("#BP", False, "benign"),
    4: ("#OF", False, "benign"),
    5: ("#BR", False, "benign"),
    6: ("#UD", False, "benign"),
    7: ("#NM", False, "benign"),
    8: ("#DF", True, "double fault"),
    9: ("CSO", False, "benign"),
    10: ("#TS", True, "contributory"),
    11: ("#NP", True, "contributory"),
    12: ("#SS", True, "contributory"),
    13: ("#GP", True, "contributory"),
    14: ("#PF", True, "page fault"),
    16: ("#MF", False, "benign"),
    17: ("#AC", True, "benign"),
    18: ("#MC", False, "benign"),
    19: ("#XM", False, "benign"),
    20: ("#VE", False, "benign"),
    21: ("#CP", True, "contributory"),
}
DE, DB, NMI, BP, OF, BR, UD, NM, DF = 0, 1, 2, 3, 4, 5, 6, 7, 8
TS, NP, SS, GP, PF, MF, AC, MC, XM, VE, CP = 10, 11, 12, 13, 14, 16, 17, 18, 19, 20, 21

# Vectors for which delivery pushes an error code (hardware exceptions only).
ERROR_CODE_VECTORS = frozenset(v for v, (_, ec, _) in EXCEPTIONS.items() if ec)


def exception_name(vector: int) -> str:
    e = EXCEPTIONS.get(vector)
    return e[0] if e else f"vector {vector}"


INTR_TYPES = {
    0: "external interrupt", 1: "reserved", 2: "NMI", 3: "hardware exception",
    4: "software interrupt", 5: "privileged software exception",
    6: "software exception", 7: "other event",
}
INTR_TYPE_EXT_INTR, INTR_TYPE_NMI, INTR_TYPE_HARD_EXCEPTION = 0, 2, 3
INTR_TYPE_SOFT_INTR, INTR_TYPE_PRIV_SW_EXCEPTION, INTR_TYPE_SOFT_EXCEPTION, INTR_TYPE_OTHER_EVENT = 4, 5, 6, 7

INTR_INFO = Layout("Interruption information", (
    Bits("vector", 0, 7),
    Bits("type", 8, 10, values=INTR_TYPES),
    Bits("error_code_valid", 11),
    Bits("nmi_unblocking", 12, doc="NMI unblocking due to IRET (VM-exit information only)"),
    Bits("nested", 13, doc="nested exception (FRED)"),
    Bits("valid", 31),
), section="VM-Entry Controls for Event Injection")
INTR_INFO_VALID = 1 << 31
INTR_INFO_DELIVER_CODE = 1 << 11


def intr_info(vector: int, itype: int, error_code: bool = False) -> int:
    return INTR_INFO_VALID | (itype << 8) | vector | (INTR_INFO_DELIVER_CODE if error_code else 0)


ACTIVITY_STATES = {0: "active", 1: "HLT", 2: "shutdown", 3: "wait-for-SIPI"}
ACTIVITY_ACTIVE, ACTIVITY_HLT, ACTIVITY_SHUTDOWN, ACTIVITY_WAIT_SIPI = 0, 1, 2, 3

INTERRUPTIBILITY = Layout("Interruptibility state", (
    Bits("sti", 0, doc="blocking by STI"),
    Bits("mov_ss", 1, doc="blocking by MOV SS"),
    Bits("smi", 2, doc="blocking by SMI"),
    Bits("nmi", 3, doc="blocking by NMI"),
    Bits("enclave", 4, doc="enclave interruption"),
), section="Guest Non-Register State")
INTERRUPTIBILITY_STI, INTERRUPTIBILITY_MOV_SS, INTERRUPTIBILITY_SMI = 1, 2, 4
INTERRUPTIBILITY_NMI, INTERRUPTIBILITY_ENCLAVE = 8, 0x10

PENDING_DEBUG = Layout("Pending debug exceptions", (
    Bits("B0", 0), Bits("B1", 1), Bits("B2", 2), Bits("B3", 3),
    Bits("BLD", 11),
    Bits("enabled_breakpoint", 12),
    Bits("BS", 14),
    Bits("RTM", 16),
), section="Guest Non-Register State")
PENDING_DEBUG_BS, PENDING_DEBUG_ENABLED_BP, PENDING_DEBUG_RTM = 1 << 14, 1 << 12, 1 << 16

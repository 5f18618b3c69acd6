"""The MSR file: RDMSR/WRMSR in Python on caps.msrmodel.

Intel SDM Vol. 2B "RDMSR"/"WRMSR": #GP(0) for an MSR the processor does not
implement, a write to a read-only MSR, reserved bits or a non-canonical
address.  Which MSRs exist and their reserved bits come from caps.msrmodel (one
place); this module holds the values.

Where the values live:
- MSRs native instructions use are kept inside unicorn (IA32_EFER, STAR, LSTAR,
  CSTAR, FMASK, FS/GS/KERNEL_GS base, SYSENTER_*): SWAPGS, segment bases and
  paging read them there;
- the TSC and IA32_TSC_ADJUST are the virtual TSC (tsc.py);
- every other MSR is a Python value, reset from msrmodel.reset_value
  (IA32_VMX_* are the profile's values, read-only).

IA32_FEATURE_CONTROL: "once the lock bit is set, WRMSR to it raises #GP until a
reset" ("Enabling and Entering VMX Operation").  Its reset value is 0 (unlocked,
VMX off), as after a hardware reset; firmware or the guest enables and locks it.
IA32_EFER's architectural rules beyond reserved bits (LME with paging on, LMA
read-only) are applied by the machine's WRMSR (machine.py), which knows CR0.
"""
from __future__ import annotations

from ..arch import msrs as M
from ..caps import msrmodel
from ..caps.profile import Profile
from .tsc import VirtualTsc


class MsrFault(Exception):
    """RDMSR/WRMSR raises #GP(0); `reason` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


UNICORN_BACKED = frozenset({
    M.IA32_EFER, M.IA32_STAR, M.IA32_LSTAR, M.IA32_CSTAR, M.IA32_FMASK, M.IA32_FS_BASE,
    M.IA32_GS_BASE, M.IA32_KERNEL_GS_BASE, M.IA32_SYSENTER_CS, M.IA32_SYSENTER_ESP,
    M.IA32_SYSENTER_EIP,
})
# the MSRs whose values are not in MsrFile.values
_NOT_HELD = UNICORN_BACKED | {M.IA32_TIME_STAMP_COUNTER, M.IA32_TSC_ADJUST}


class MsrFile:
    def __init__(self, profile: Profile, tsc: VirtualTsc, engine):
        self.profile = profile
        self.tsc = tsc
        self.engine = engine
        self.values: dict[int, int] = {}
        self.reset()

    def reset(self) -> None:
        self.values = {i: msrmodel.reset_value(self.profile, i) for i in msrmodel.implemented(self.profile)
                       if i not in UNICORN_BACKED}
        for i in UNICORN_BACKED:
            if msrmodel.exists(self.profile, i):
                self.engine.msr_write(i, msrmodel.reset_value(self.profile, i))

    def exists(self, index: int) -> bool:
        return msrmodel.exists(self.profile, index)

    def read(self, index: int) -> int:
        """RDMSR: the value, or MsrFault."""
        why = msrmodel.rdmsr_fault(self.profile, index)
        if why:
            raise MsrFault(why)
        return self.peek(index)

    def peek(self, index: int) -> int:
        """The current value without the access checks (for state snapshots)."""
        if index not in _NOT_HELD:                 # (most are held here: one test for them)
            return self.values.get(index, 0)
        if index == M.IA32_TIME_STAMP_COUNTER:
            return self.tsc.read()
        if index == M.IA32_TSC_ADJUST:
            return self.tsc.adjust
        if index in UNICORN_BACKED:
            return self.engine.msr_read(index)
        return self.values.get(index, 0)

    def write(self, index: int, value: int) -> None:
        """WRMSR: store `value` or raise MsrFault (no side effects on failure)."""
        why = msrmodel.wrmsr_fault(self.profile, index, value, self.values.get(index))
        if why:
            raise MsrFault(why)
        self.poke(index, value)

    def poke(self, index: int, value: int) -> None:
        """Store without the access checks (state loads, VM entry/exit MSR loading
        after their own checks)."""
        value &= 0xFFFFFFFFFFFFFFFF
        if index == M.IA32_TIME_STAMP_COUNTER:
            self.tsc.write(value)
        elif index == M.IA32_TSC_ADJUST:
            self.tsc.write_adjust(value)
        elif index in UNICORN_BACKED:
            self.engine.msr_write(index, value)
        else:
            self.values[index] = value

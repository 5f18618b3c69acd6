"""Basic VM-entry checks (Intel SDM Vol. 3C "Basic VM-Entry Checks"; VMLAUNCH/VMRESUME
"Operation"): after "no current VMCS" (VMfailInvalid, handled by check() itself),
blocking by MOV SS, then the launch state.

Not modelled: the #UD/#GP/VM-exit conditions that come first (not in VMX operation,
CPL > 0, VMX non-root operation) and "the current VMCS is a shadow VMCS"
(VMfailInvalid): a VMCS here carries no shadow-VMCS indicator.
"""
from __future__ import annotations

from .registry import BASIC, S_BASIC, Unknown, add


def _mov_ss(v, k, e):
    if e.mov_ss_blocking:
        return ("(processor state)", None,
                "events are blocked by MOV SS on the processor executing the instruction; "
                "VM entry requires no MOV-SS blocking")
    return None


def _launch_state(v, k, e):
    if e.launch_state is None:
        raise Unknown("the launch state")
    if e.instruction == "vmlaunch" and e.launch_state != "clear":
        return ("(launch state)", None, f"VMLAUNCH needs a VMCS whose launch state is clear; it is {e.launch_state}")
    return None


def _resume_state(v, k, e):
    if e.launch_state is None:
        raise Unknown("the launch state")
    if e.instruction == "vmresume" and e.launch_state != "launched":
        return ("(launch state)", None, f"VMRESUME needs a VMCS whose launch state is launched; it is {e.launch_state}")
    return None


add("basic.mov_ss_blocking", S_BASIC, BASIC, (), _mov_ss, field="(processor state)", error=26)
add("basic.vmlaunch.launch_state", S_BASIC, BASIC, (), _launch_state, field="(launch state)", error=4)
add("basic.vmresume.launch_state", S_BASIC, BASIC, (), _resume_state, field="(launch state)", error=5)

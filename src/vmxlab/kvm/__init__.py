"""The /dev/kvm backend: KVM's ioctls from pure Python (abi.py, system.py), a
machine with the processor-state interface of machine/state.py (machine.py), and
KVM exits as VMX exits (exits.py).  See machine.py for the interface."""
from .exits import Exit, IoExit, KvmReport, MmioExit, MsrExit
from .machine import DEFAULT_TIMEOUT, KvmMachine
from .system import KvmError, KvmUnavailable, unavailable_reason

__all__ = ["DEFAULT_TIMEOUT", "Exit", "IoExit", "KvmError", "KvmMachine", "KvmReport", "KvmUnavailable",
           "MmioExit", "MsrExit", "unavailable_reason"]

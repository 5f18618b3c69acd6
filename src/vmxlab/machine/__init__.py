"""The simulated x86-64 processor and platform on unicorn (see machine.py)."""
from .events import EventInfo, Fault, MachineNotImplemented
from .intercepts import Action, Event, Kind
from .linear import SecondStageRefusal
from .machine import Machine
from .memory import NonexistentMemory
from .paging import FETCH, READ, WRITE, PageFault
from .runloop import Stop, StopReason

__all__ = ["Machine", "Stop", "StopReason", "Event", "Kind", "Action", "EventInfo", "Fault",
           "SecondStageRefusal", "MachineNotImplemented", "NonexistentMemory", "PageFault",
           "READ", "WRITE", "FETCH"]

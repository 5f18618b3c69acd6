"""The watchdog that bounds every KVM_RUN.

Some guest instructions livelock inside the kernel on these hosts (`vmcall` at
CPL0, a selector load from a GDT without a memslot: ../shared/notes/kvm.md), so
KVM_RUN may never return by itself.  The kernel's way out (Documentation/virt/kvm/
api.rst, KVM_RUN and `immediate_exit`): set kvm_run->immediate_exit, then send the
vCPU thread a signal.  A vCPU thread that has not entered KVM_RUN yet sees
immediate_exit and returns -EINTR at once; one inside it has a signal pending and
returns -EINTR at its next check.  No window is left open between the two.

One daemon thread serves every machine: it wakes every PERIOD seconds, and for
each armed slot whose deadline has passed it sets immediate_exit and sends
WATCHDOG_SIGNAL to the thread that armed it (again at each wake-up until the run
ends).  Arming and disarming are a few attribute stores (no lock, no system call):
the generation number tells an expiry of this run from a late kick meant for the
previous one, which the caller treats as spurious and retries.

WATCHDOG_SIGNAL gets a do-nothing Python handler (installed from the main thread,
the only place Python allows it) so that it interrupts the ioctl without killing
the process; fcntl.ioctl then raises OSError(EINTR).
"""
from __future__ import annotations

import signal
import threading
import time
import weakref

from . import abi

WATCHDOG_SIGNAL = signal.SIGUSR2
PERIOD = 0.01


def _kick_handler(signum, frame) -> None:   # interrupts KVM_RUN; nothing else to do
    pass


class Slot:
    """The watchdog state of one vCPU."""

    __slots__ = ("run_mm", "deadline", "generation", "tid", "fired", "__weakref__")

    def __init__(self, run_mm):
        self.run_mm = run_mm
        self.deadline = 0.0          # 0: not armed
        self.generation = 0
        self.tid = 0
        self.fired = -1              # generation the watchdog last fired for

    def arm(self, deadline: float) -> int:
        """Before KVM_RUN (KvmMachine.run() does the same inline); after it the caller
        sets deadline = 0.0, and an EINTR is the watchdog's when fired == generation."""
        self.run_mm[abi.RUN_IMMEDIATE_EXIT] = 0
        self.tid = threading.get_ident()
        self.generation += 1
        self.deadline = deadline
        return self.generation


class _Watchdog:
    def __init__(self):
        self.slots: weakref.WeakSet[Slot] = weakref.WeakSet()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def register(self, slot: Slot) -> None:
        _install_handler()
        with self.lock:
            self.slots.add(slot)
            if self.thread is None:
                self.thread = threading.Thread(target=self._loop, name="vmxlab-kvm-watchdog", daemon=True)
                self.thread.start()

    def unregister(self, slot: Slot) -> None:
        with self.lock:
            self.slots.discard(slot)

    def _loop(self) -> None:
        while True:
            time.sleep(PERIOD)
            now = time.monotonic()
            with self.lock:
                slots = list(self.slots)
            for slot in slots:
                # arm() stores the generation before the deadline and disarm() clears the
                # deadline before the next arm(): an unchanged generation around the
                # reads means deadline and tid belong to it.
                generation = slot.generation
                deadline, tid = slot.deadline, slot.tid
                if generation != slot.generation:
                    continue
                if deadline and now >= deadline:
                    slot.fired = generation
                    try:
                        slot.run_mm[abi.RUN_IMMEDIATE_EXIT] = 1
                        signal.pthread_kill(tid, WATCHDOG_SIGNAL)
                    except (ValueError, ProcessLookupError, OSError):
                        pass         # mmap closed or thread gone: the run is over anyway


WATCHDOG = _Watchdog()


def _install_handler() -> None:
    current = signal.getsignal(WATCHDOG_SIGNAL)
    if current is _kick_handler:
        return
    if current not in (signal.SIG_DFL, None):
        from .system import KvmUnavailable
        raise KvmUnavailable(f"signal {WATCHDOG_SIGNAL.name} already has a handler; the KVM run watchdog "
                             "needs it (set vmxlab.kvm.watchdog.WATCHDOG_SIGNAL to a free signal)")
    if threading.current_thread() is not threading.main_thread():
        from .system import KvmUnavailable
        raise KvmUnavailable("the KVM run watchdog installs its signal handler from the main thread: "
                             "create the first KvmMachine there")
    signal.signal(WATCHDOG_SIGNAL, _kick_handler)

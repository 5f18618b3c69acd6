"""The virtual time-stamp counter.

"Time-Stamp Counter" (Intel SDM Vol. 3B): the TSC counts up at a constant rate
("invariant TSC"), WRMSR to IA32_TIME_STAMP_COUNTER sets it, RDTSC/RDTSCP read
it, and IA32_TSC_ADJUST tracks writes ("Time-Stamp Counter Adjustment": a write
to the TSC adds the same difference to TSC_ADJUST; a write to TSC_ADJUST adds the
difference to the TSC).

vmxlab's TSC follows the host's monotonic clock scaled to `hz` while guest code
runs (inside `uc_emu_start`: `resume()` / `pause()` bracket each run segment),
stands still while the machine works between segments (so simulator overhead
does not look like guest time: a periodic timer cannot livelock the guest
because event delivery in Python is slower than its period), and jumps over time
the machine skips (a halted processor waiting for a timer is fast-forwarded to
the timer's deadline instead of sleeping).  Between writes it never goes
backwards.
"""
from __future__ import annotations

import time

DEFAULT_HZ = 2_000_000_000


class VirtualTsc:
    def __init__(self, hz: int = DEFAULT_HZ, clock=time.perf_counter_ns):
        if hz <= 0:
            raise ValueError("TSC frequency must be positive")
        self.hz = hz
        self._clock = clock
        self._origin = clock()
        self._offset = 0          # TSC value at _origin (or now, when paused)
        self._running = False
        self.adjust = 0           # IA32_TSC_ADJUST

    def _elapsed_ticks(self, now_ns: int) -> int:
        return (now_ns - self._origin) * self.hz // 1_000_000_000

    def read(self) -> int:
        if not self._running:
            return self._offset & 0xFFFFFFFFFFFFFFFF
        return (self._offset + self._elapsed_ticks(self._clock())) & 0xFFFFFFFFFFFFFFFF

    def resume(self) -> None:
        """Guest code starts running: the TSC counts."""
        if not self._running:
            self._origin = self._clock()
            self._running = True

    def pause(self) -> None:
        """Guest code stops: the TSC stands still."""
        if self._running:           # (_elapsed_ticks written out: every intercept pauses and resumes)
            self._offset += (self._clock() - self._origin) * self.hz // 1_000_000_000
            self._running = False

    def write(self, value: int) -> None:
        """WRMSR IA32_TIME_STAMP_COUNTER."""
        old = self.read()
        self._origin = self._clock()
        self._offset = value & 0xFFFFFFFFFFFFFFFF
        self.adjust = (self.adjust + (self._offset - old)) & 0xFFFFFFFFFFFFFFFF

    def write_adjust(self, value: int) -> None:
        """WRMSR IA32_TSC_ADJUST: the TSC moves by the same difference."""
        delta = (value - self.adjust) & 0xFFFFFFFFFFFFFFFF
        self.adjust = value & 0xFFFFFFFFFFFFFFFF
        self._offset = (self._offset + delta) & 0xFFFFFFFFFFFFFFFF

    def advance(self, ticks: int) -> None:
        """Skip `ticks` of virtual time (used while the processor is halted)."""
        if ticks > 0:
            self._offset += ticks

    def seconds_until(self, value: int) -> float:
        """Host seconds until the TSC reaches `value` (0 when already there)."""
        delta = value - self.read()
        return max(delta, 0) / self.hz

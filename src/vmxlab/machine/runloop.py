"""Run control: `run()` until a stop reason, the unicorn hooks, event dispatch to
the client, interrupt windows, timers and budgets.

A run executes guest code in `uc_emu_start` segments.  Control comes back to
Python (a) inside hooks - intercept sites (UC_HOOK_CODE on single addresses),
exceptions QEMU raises (UC_HOOK_INTR), #UD-class instructions
(UC_HOOK_INSN_INVALID), TLB fills, SYSCALL, and I/O that missed a site - and
(b) between segments, at an instruction boundary.  Hooks do what can be done
there (NATIVE emulation that touches only registers and memory, exception
delivery in the interrupt hook) and otherwise stop the segment precisely
(before the instruction executes) and leave a pending item for the boundary.

At every boundary, in this order: pending items from hooks (client events,
faults to deliver), self-modifying-code rechecks, the timer, the TSC deadline,
NMI, NMI window, external interrupts, interrupt window ("Interrupt Priorities"
order for the asynchronous events: NMI before maskable interrupts).

Windows: an external interrupt is deliverable when RFLAGS.IF = 1 and no STI or
MOV SS shadow blocks it ("Masking Maskable Hardware Interrupts", "Interrupt
Shadows"); NMI when not blocked by NMI (until the next IRET) or MOV SS.  When
something waits for a window that is closed, the machine single-steps the
guest with RFLAGS.TF (unicorn's #DB after each instruction reaches the
interrupt hook) until the window opens, so the interrupt is delivered at the
first open boundary: after `sti; X` it arrives after X.  While stepping, a
PUSHF would store TF = 1: the machine clears that bit in the pushed image.

HLT: unicorn ends `uc_emu_start` after executing HLT; the machine then enters
the HLT activity state (RIP after HLT).  A halted processor wakes on an NMI or
on an external interrupt with RFLAGS.IF = 1; while halted the virtual TSC is
fast-forwarded to the next timer or TSC deadline.  When nothing can wake it the
run ends with StopReason.HALTED.

Budgets: `run(time_budget=seconds)` uses a watchdog thread that calls
uc_emu_stop at the deadline (unicorn's own timeout creates a thread per call,
about 120 us).  `run(instruction_budget=n)` counts instructions with a code hook
on every instruction: exact but about 150x slower; meant for tests.
A runaway guest ends at the budget with StopReason.BUDGET at an instruction
boundary; the next run() continues exactly there.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from enum import Enum

from ..arch import events as EV
from ..arch import registers as AR
from . import context_blob as CB
from . import emulate as EMU
from . import registers as REG
from . import unicorn_ffi as ffi
from .events import EventInfo, Fault, MachineNotImplemented
from .intercepts import Action, Event, Kind, kind_of
from .linear import FillFault, SecondStageRefusal, _NonCanonical, fault_of_fill
from .memory import NonexistentMemory
from .paging import PF_W, PageFault
from .paging import FETCH as PG_FETCH
from .paging import READ as PG_READ
from .paging import WRITE as PG_WRITE


class StopReason(Enum):
    __hash__ = object.__hash__       # (as intercepts.Action)
    HALTED = "halted"                        # HLT and nothing can wake the processor
    SHUTDOWN = "shutdown"                    # triple fault
    EVENT = "event"                          # the client answered STOP (or a window/deadline request fired)
    BUDGET = "budget"                        # time or instruction budget used up
    BREAKPOINT = "breakpoint"
    SECOND_STAGE = "second-stage"            # the second-stage translator refused an access
    NONEXISTENT_MEMORY = "nonexistent-memory"  # an access translated beyond physical memory


@dataclass
class Stop:
    reason: StopReason
    rip: int
    event: Event | None = None
    detail: str = ""

    def __str__(self) -> str:
        s = f"{self.reason.value} at {self.rip:#x}"
        if self.event is not None:
            s += f" ({self.event.kind.value})"
        return s + (f": {self.detail}" if self.detail else "")


class MachineError(RuntimeError):
    """Unicorn reported an error the machine cannot map to an architectural event."""


_SOFT_INT_TYPES = (EV.INTR_TYPE_SOFT_INTR, EV.INTR_TYPE_SOFT_EXCEPTION, EV.INTR_TYPE_PRIV_SW_EXCEPTION)
# (Enum members read on every intercept: module constants, see machine._K_CPUID)
_DONE, _STOP = Action.DONE, Action.STOP
_HF_CS = CB.HF_CS64 | CB.HF_CS32   # the hflags bits that select the decoding mode
_FROM_MTF = 1                 # _on_code's user-data argument when _on_mtf_code calls it


class _Watchdog:
    """Calls uc_emu_stop when a host deadline passes during a run segment.

    One thread per machine, started on the first armed deadline and ending after
    a second without one (so that dropped machines are not kept alive).  It sleeps
    until the deadline (or until re-armed) instead of polling: a thread that wakes
    up often takes the GIL from the running machine at every ctypes call and hook."""

    IDLE_EXIT = 1.0

    def __init__(self, engine: ffi.Engine):
        self.engine = engine
        self.deadline: float | None = None
        self.running = False
        self.fired = False
        self._thread: threading.Thread | None = None
        self._cond = threading.Condition()

    def _loop(self) -> None:
        cond = self._cond
        with cond:
            while True:
                if not self.running or self.deadline is None:
                    if not cond.wait(self.IDLE_EXIT) and not self.running:
                        self._thread = None
                        return
                    continue
                delay = self.deadline - time.perf_counter()
                if delay > 0:
                    cond.wait(delay)
                    continue
                self.fired = True
                self.engine.stop()
                cond.wait(0.0002)            # stop again while the segment still runs

    def arm(self, deadline: float | None) -> None:
        with self._cond:
            self.deadline = deadline
            self.running = deadline is not None
            self.fired = False
            start = deadline is not None and self._thread is None
            if start:
                self._thread = threading.Thread(target=self._loop, daemon=True, name="vmxlab-watchdog")
                self._thread.start()
            self._cond.notify()

    def disarm(self) -> bool:
        with self._cond:
            self.running = False
            self.deadline = None
            fired, self.fired = self.fired, False
            self._cond.notify()
        return fired


class RunControl:
    """Mixin of Machine: run(), hooks, dispatch."""

    fast_client = None      # the client's fast path for #UD-class instructions (_fast_client)

    # -- public -------------------------------------------------------------------------------
    def run(self, time_budget: float | None = None, instruction_budget: int | None = None) -> Stop:
        """Run until a stop reason (see StopReason); resumable."""
        host_deadline = time.perf_counter() + time_budget if time_budget is not None else None
        counting = instruction_budget is not None
        if counting:
            self._start_counting(instruction_budget)
        try:
            while True:
                stop = self._service()
                if stop is not None:
                    return stop
                if self.activity == EV.ACTIVITY_SHUTDOWN:
                    return Stop(StopReason.SHUTDOWN, self.rip, detail="processor in shutdown")
                if self.activity == EV.ACTIVITY_WAIT_SIPI:
                    # only a SIPI leaves wait-for-SIPI ("Wait-for-SIPI" activity state, SDM Vol. 3C
                    # "Guest Non-Register State"): one processor, nothing sends one
                    return Stop(StopReason.HALTED, self.rip, detail="wait-for-SIPI, and no other processor sends a SIPI")
                if self.activity == EV.ACTIVITY_HLT:
                    stop = self._halted(host_deadline)
                    if stop is not None:
                        return stop
                    continue
                if counting and self._count_left <= 0:
                    return Stop(StopReason.BUDGET, self.rip, detail="instruction budget used up")
                if host_deadline is not None and time.perf_counter() >= host_deadline:
                    return Stop(StopReason.BUDGET, self.rip, detail="time budget used up")
                stop = self._segment(host_deadline)
                if stop is not None:
                    return stop
        finally:
            self._end_stepping()
            if counting:
                self._stop_counting()

    @property
    def rip(self) -> int:
        return self.gprs.read()[REG.RIP]

    # -- one uc_emu_start ---------------------------------------------------------------------
    def _segment(self, host_deadline: float | None) -> Stop | None:
        deadline = host_deadline
        t1, t2 = self.timer.deadline, self._tsc_deadline
        if t1 is not None or t2 is not None:
            target = t1 if t2 is None else (t2 if t1 is None else min(t1, t2))
            d = time.perf_counter() + self.tsc.seconds_until(target)
            deadline = d if deadline is None else min(deadline, d)
        if self._window_waits() and self._needs_stepping():
            self._begin_stepping()
        wd = self._watchdog
        if deadline is not None:
            wd.arm(deadline)
        self._hook_stop = False
        self._fill_fault = None
        rip = self.gprs.read()[REG.RIP]
        g = self.gprs.values
        self.tsc.resume()
        try:
            err = self.engine.start(rip)
        finally:
            self.tsc.pause()
            fired = wd.disarm() if deadline is not None else False
        self.segments += 1
        if self._stepping:
            self._end_stepping()
        grew = self._grow_tlb
        if grew:
            # QEMU resizes its softmmu TLB (doubling it while more than 70% of the
            # entries were used) only when it is flushed: a working set larger than
            # the TLB refills forever through the Python fill.  Flushing unicorn's
            # TLB (not the machine's software TLB, which stays valid) lets it grow.
            self._grow_tlb = False
            self._fills_since_flush = 0
            self._grow_at *= 2
            self.engine.flush_tlb()
        if err == ffi.UC.UC_ERR_OK:
            if not (self._hook_stop or fired or self._pending or self._smc_pending or grew):
                self._native_hlt()
            return None
        if err == ffi.UC.UC_ERR_EXCEPTION and self._fill_fault is not None:
            return self._on_fill_fault(self._fill_fault)
        if err == ffi.UC.UC_ERR_EXCEPTION and self._pending:
            return None
        raise MachineError(f"unicorn error {err} ({ffi.UcError(err)}) at RIP {g[REG.RIP]:#x}")

    # -- boundary ---------------------------------------------------------------------------------
    def _service(self) -> Stop | None:
        if self._tb_flush_pending:
            self._tb_flush_pending = False
            self.engine.flush_tb()
        while self._pending:
            item = self._pending.pop(0)
            stop = self._handle_pending(item)
            if stop is not None:
                self._pending.clear()
                return stop
        if self._smc_pending:
            self._smc_pending = False
            self.sites.recheck()
            self.flush_tlb()
        if self._mtf == 1 and self._resume_native is None and self._bp_skip is None \
                and self.gprs.read()[REG.RIP] != self._mtf_rip:
            # the started instruction completed here (emulated, or HLT), or an event was
            # delivered: MTF comes before timers, NMIs and interrupts at this boundary
            stop = self._mtf_event()
            if stop is not None:
                return stop
        now = self.tsc.read()
        self.timer.expire(now)
        if self._tsc_deadline is not None and now >= self._tsc_deadline:
            self._tsc_deadline = None
            stop = self._request_event(Event(Kind.TSC_DEADLINE, self.rip))
            if stop is not None:
                return stop
        if not self._window_waits():
            return None
        blob = self.blob.load()
        shadow = bool(blob.hflags & CB.HF_INHIBIT_IRQ)
        nmi_blocked = bool(blob.hflags2 & CB.HF2_NMI)
        rflags = self.gprs.read()[REG.RFLAGS]
        if self._nmi_pending and not shadow and not nmi_blocked:
            if self.subs.wants(Kind.NMI) and self.client is not None:
                ev = Event(Kind.NMI, self.rip, vector=EV.NMI, event_type=EV.INTR_TYPE_NMI)
                stop = self._dispatch_async(ev)
                if stop is not None:
                    return stop
            else:
                self._nmi_pending = False
                stop = self._deliver_event(EventInfo(EV.NMI, EV.INTR_TYPE_NMI))
                if stop is not None:
                    return stop
                return self._service()
        if self._window_nmi and not shadow and not nmi_blocked:
            self._window_nmi = False
            stop = self._request_event(Event(Kind.NMI_WINDOW, self.rip))
            if stop is not None:
                return stop
        open_irq = bool(rflags & AR.RFLAGS_IF) and not shadow
        if self._irr:
            vector = self._irr.bit_length() - 1
            if self.subs.wants(Kind.EXTERNAL_INTERRUPT) and self.client is not None and not shadow:
                stop = self._dispatch_async(Event(Kind.EXTERNAL_INTERRUPT, self.rip, vector=vector,
                                                  event_type=EV.INTR_TYPE_EXT_INTR))
                if stop is not None:
                    return stop
            elif open_irq:
                self._irr &= ~(1 << vector)
                stop = self._deliver_event(EventInfo(vector, EV.INTR_TYPE_EXT_INTR))
                if stop is not None:
                    return stop
                return self._service()
        if self._window_irq and open_irq:
            self._window_irq = False
            stop = self._request_event(Event(Kind.INTERRUPT_WINDOW, self.rip))
            if stop is not None:
                return stop
        return None

    def _window_waits(self) -> bool:
        """An interrupt or NMI waits for its window, or a window exit is requested."""
        return bool(self._nmi_pending or self._irr or self._window_irq or self._window_nmi)

    def _needs_stepping(self) -> bool:
        """Something waits for an interrupt or NMI window that is closed now."""
        irq_wait = (self._irr and not self.subs.wants(Kind.EXTERNAL_INTERRUPT)) or self._window_irq
        nmi_wait = self._nmi_pending or self._window_nmi
        if not (irq_wait or nmi_wait):
            return False
        return True

    def _window_open_now(self, blob, rflags: int) -> bool:
        shadow = bool(blob.hflags & CB.HF_INHIBIT_IRQ)
        irq_wait = (self._irr and not self.subs.wants(Kind.EXTERNAL_INTERRUPT)) or self._window_irq
        if irq_wait and rflags & AR.RFLAGS_IF and not shadow:
            return True
        if (self._nmi_pending or self._window_nmi) and not shadow and not blob.hflags2 & CB.HF2_NMI:
            return True
        if self._irr and self.subs.wants(Kind.EXTERNAL_INTERRUPT) and not shadow:
            return True
        return False

    # -- single-stepping for windows -----------------------------------------------------------------
    def _begin_stepping(self) -> None:
        g = self.gprs.read()
        self._guest_tf = bool(g[REG.RFLAGS] & AR.RFLAGS_TF)
        self._saved_dr6 = self.ctrl.read()[REG.DR6]
        g[REG.RFLAGS] |= AR.RFLAGS_TF
        self.gprs.write()
        self._stepping = True
        self._step_prev = g[REG.RIP]

    def _end_stepping(self) -> None:
        if not self._stepping:
            return
        self._stepping = False
        if not self._guest_tf:
            g = self.gprs.read()
            g[REG.RFLAGS] &= ~AR.RFLAGS_TF
            self.gprs.write()

    def _on_step(self, blob, g) -> None:
        """#DB after one stepped instruction (inside the interrupt hook)."""
        c = self.ctrl.read()
        c[REG.DR6] = self._saved_dr6
        self.ctrl.write()
        prev = self._step_prev
        self._step_prev = g[REG.RIP]
        head = self.fetch_bytes(prev, 3)
        stripped = head.lstrip(b"\x66\x48\x40")
        if stripped[:1] == b"\x9c":                       # PUSHF stored our TF
            try:
                word = int.from_bytes(self.read_linear(g[REG.RSP], 2), "little")
                self.write_linear(g[REG.RSP], (word & ~AR.RFLAGS_TF).to_bytes(2, "little"))
            except (PageFault, SecondStageRefusal, NonexistentMemory):
                pass
        if self._window_open_now(blob, g[REG.RFLAGS]):
            self._hook_stop = True
            self.engine.stop()

    # -- monitor trap flag ----------------------------------------------------------------------
    def _on_mtf_code(self, uc, address: int, size: int, ud) -> None:
        """Every instruction boundary while an MTF step is armed.  The first one starts
        the step; a later one in the same run segment, or at another address, ends it
        (a REP string iteration re-enters its own address in the segment).  The same
        address in a new segment is the started instruction run again after a stop
        before it (a site handed back to unicorn, a breakpoint)."""
        mtf = self._mtf
        if self._hook_stop:
            return
        if mtf == 0:
            self._mtf, self._mtf_rip, self._mtf_seg = 1, address, self.segments
        elif mtf == 1 and (self._mtf_seg == self.segments or address != self._mtf_rip) \
                and not (address == self._mtf_rip and self._rep_done(address)):
            self._pending.append(("mtf",))
            self._hook_stop = True
            self.engine.stop()
            return
        # unicorn may skip the hooks after one that wrote RIP: while this hook exists,
        # it runs the address's own hook (sites, breakpoints, counting) after the above
        if self._counting or address in self._code_hooks:
            self._on_code(uc, address, size, _FROM_MTF)

    def _rep_done(self, address: int) -> bool:
        """A REP string instruction re-entered after its last iteration (QEMU jumps back
        to the instruction, which then finds the count 0 and ends): not a boundary."""
        insn = self.decode_at(address)
        if not (insn.has_rep_prefix or insn.has_repe_prefix or insn.has_repne_prefix) \
                or not insn.is_string_instruction:
            return False
        width = _COUNT_WIDTH.get(insn.memory_base) or _COUNT_WIDTH.get(insn.op0_register) or 64
        return self.gprs.read()[REG.RCX] & ((1 << width) - 1) == 0

    def _mtf_event(self) -> Stop | None:
        self._mtf = 0                             # one-shot: the client re-arms (or a VM exit ends it)
        return self._request_event(Event(Kind.MTF, self.rip))

    # -- hooks -------------------------------------------------------------------------------
    def _on_code(self, uc, address: int, size: int, ud) -> None:
        """The code hook of sites, breakpoints and counting (user data None: hooks
        are added without), and the body _on_mtf_code runs (ud _FROM_MTF)."""
        if self._hook_stop or ud is None and self._mtf_hook:     # (with an MTF hook, _on_mtf_code calls)
            return
        if self._counting:
            if self._count_left <= 0:
                self._hook_stop = True
                self.engine.stop()
                return
            self._count_left -= 1
        bp = self._breakpoints
        if bp and address in bp:
            if self._bp_skip == address:
                self._bp_skip = None
            else:
                self._pending.append(("breakpoint", address))
                self._hook_stop = True
                self.engine.stop()
                return
        site = self.sites.sites.get(address)
        if site is None:
            return
        if self.mem.view[site.hpa:site.end] != site.raw:
            self._smc_pending = True                      # stale scan: recheck before running on
            self.sites.written.add(site.hpa & ~0xFFF)
            self._hook_stop = True
            self.engine.stop()
            return
        kind = site.kind
        if self._resume_native == address:
            self._resume_native = None
            wanted = False
        else:
            self._resume_native = None
            wanted = kind in self.subs.kinds and self.client is not None
        if wanted:
            if self.inline_clients and not (self._stepping or self._counting or self._pending):
                self._client_inline(site)
                return
            self._pending.append(("site", site))
            self._hook_stop = True
            self.engine.stop()
            return
        fn = EMU.PYTHON_NATIVE.get(kind)
        if fn is None:
            if kind == Kind.INVLPG:
                self._stlbs.clear()                       # unicorn's INVLPG drops only its own entry
                self._stlb = self._stlbs.setdefault(self._ctx_key, {})
            return                                        # unicorn executes it
        if kind not in EMU.INLINE_SAFE and not (kind == Kind.WRMSR and EMU.wrmsr_inline_safe(self)):
            self._pending.append(("native", site))
            self._hook_stop = True
            self.engine.stop()
            return
        try:
            fn(self, site.insn, address)
            self.emulated += 1
            if self._end_shadow():
                self._hook_stop = True
                self.engine.stop()
        except Fault as f:
            self._pending.append(("fault", f, site.insn))
            self._hook_stop = True
            self.engine.stop()
        except (SecondStageRefusal, NonexistentMemory) as e:
            self._pending.append(("stop", self.memory_stop(e, address)))
            self._hook_stop = True
            self.engine.stop()

    def _client_inline(self, site) -> None:
        """Hand an intercepted instruction to the client inside the code or #UD hook,
        without ending the run segment (stopping and restarting unicorn costs more
        than most clients).  Everything a client does takes effect inside these
        hooks once RIP is written (a RIP write ends the translated block; the next
        one is looked up with the new state: notes/unicorn.md, probe in
        tests/machine/test_inline.py), except flushing translated code, which
        waits for the boundary.  The virtual TSC stands still while the client
        works, as between segments.  What only the boundary does (pending events,
        interrupt and NMI windows, deadlines, HLT, a STOP) ends the segment."""
        ev = self._instruction_event(site.kind, site.insn, site.address)
        tsc = self.tsc
        tsc.pause()
        timer = self.timer.deadline
        gprs = self.gprs
        pc_writes = gprs.pc_writes
        shadow_writes = self.shadow_writes
        self._in_client = True
        try:
            action = self.client(self, ev)
        finally:
            self._in_client = False
            tsc.resume()
        if action is _DONE:
            self._after_done(timer, shadow_writes)
            if gprs.pc_writes == pc_writes:   # end the block: what the client changed applies from here
                gprs.read()
                gprs.write_pc()
            return
        self._hook_stop = True
        self.engine.stop()
        if action is _STOP:
            self._resume_native = site.address
            self._pending.append(("stop", Stop(StopReason.EVENT, site.address, ev)))
        else:
            self._pending.append(("native", site))

    def _after_done(self, timer, shadow_writes: int) -> None:
        """A client did an instruction inside a hook: what it left for the boundary
        (pending events, interrupt and NMI windows, deadlines, HLT, a code flush)
        ends the segment -- and the interrupt shadow, unless the client loaded the
        interruptibility itself (_end_shadow)."""
        if (self._pending or self._tb_flush_pending or self._smc_pending or self._irr or self._nmi_pending
                or self._window_irq or self._window_nmi or self._tsc_deadline is not None
                or self.activity != EV.ACTIVITY_ACTIVE or self.timer.deadline != timer):
            if self.shadow_writes == shadow_writes:
                self._end_shadow()
            self._hook_stop = True
            self.engine.stop()

    def _on_intr(self, uc, intno: int, ud) -> None:
        blob = self.blob.load()
        error_code = blob.error_code
        is_int = blob.exception_is_int
        blob.clear_exception_in_flight()
        g = self.gprs.read()
        if is_int or self._stepping or self.subs.exception_bitmap >> intno & 1 and self.client is not None:
            blob.store()
            blob = None                           # stored: the paths below reload it
        if intno == EV.DB and not is_int and self._stepping:
            self._on_step(self.blob, g)
            if not self._guest_tf:
                return
        if self._stepping:
            self._stepping = False
            if not self._guest_tf:
                g[REG.RFLAGS] &= ~AR.RFLAGS_TF
                self.gprs.write()
        rip = g[REG.RIP]
        if is_int:
            ev, start = self._classify_software(intno, rip)
        else:
            has_code = intno in EV.ERROR_CODE_VECTORS
            ev = EventInfo(intno, EV.INTR_TYPE_HARD_EXCEPTION, error_code if has_code else None)
            start = rip
        self._exception(ev, start, in_hook=True, blob=blob, g=g)

    def _classify_software(self, vector: int, rip_after: int) -> tuple[EventInfo, int]:
        """INT n (CD ib), INT3 (CC), INTO (CE): type and length from the bytes
        before the return address."""
        before = self.fetch_bytes(rip_after - 2, 2) if rip_after >= 2 else b""
        if vector == EV.BP and before[-1:] == b"\xcc":
            return EventInfo(vector, EV.INTR_TYPE_SOFT_EXCEPTION, None, 1), rip_after - 1
        if vector == EV.OF and before[-1:] == b"\xce":
            return EventInfo(vector, EV.INTR_TYPE_SOFT_EXCEPTION, None, 1), rip_after - 1
        return EventInfo(vector, EV.INTR_TYPE_SOFT_INTR, None, 2), rip_after - 2

    def _exception(self, ev: EventInfo, start: int, in_hook: bool, blob=None, g=None) -> None:
        """An exception raised by QEMU or by emulation, at instruction `start`
        (software interrupts: RIP is rewound to the INT instruction; delivery
        pushes RIP + length)."""
        if g is None:
            g = self.gprs.read()
        if g[REG.RIP] != start:
            g[REG.RIP] = start
            self.gprs.write()
        if self.subs.wants_exception(ev.vector) and self.client is not None:
            self._pending.append(("exception", ev, start))
            if in_hook:
                self._hook_stop = True
                self.engine.stop()
            return
        if in_hook:
            result = self._deliver(ev, blob, g)
            if result is not None:
                self._pending.append(("result", result))
                self._hook_stop = True
                self.engine.stop()
        else:
            self._pending.append(("deliver", ev))

    def _on_invalid(self, uc, ud) -> bool:
        g = self.gprs.read()
        rip = g[REG.RIP]
        if self._stepping:
            self._end_stepping()
            g = self.gprs.read()
        blob = self.blob.load()
        hf = blob.hflags
        memo = self._ud_memo.get(rip)
        # the instruction decode_at would give, without its paging-context and TLB
        # lookups: the same code bytes, through the same software-TLB entry (a TLB
        # dictionary only gains entries; a flush or context switch replaces it), of
        # the live paging registers (read from the blob just loaded), in the same mode
        if memo is not None and memo[0] == hf & _HF_CS and memo[1] is self._stlb \
                and (*blob.paging_regs(), self._efer, self.pdptes, self._s2_tag) == self._ctx_key \
                and self.mem.view[memo[2]:memo[3]] == memo[4]:
            insn, kind = memo[5], memo[6]
        else:
            insn = self.decode_at(rip, 64 if hf & CB.HF_CS64 else (32 if hf & CB.HF_CS32 else 16))
            if insn.code == _I.Code.INVALID or not insn.len:
                self._exception(EventInfo(EV.UD, EV.INTR_TYPE_HARD_EXCEPTION), rip, True)
                return True
            if insn.mnemonic == _INT1:
                self._exception_int1(rip)
                return True
            kind = kind_of(insn)
            self._remember_ud(rip, hf, insn, kind)
        if kind is not None and kind in self.subs.kinds and self.client is not None \
                and self._resume_native != rip:
            if self.inline_clients and not (self._counting or self._pending):
                if self.fast_client is not None and self._fast_client(rip, insn, kind, hf):
                    return True
                self._client_inline(_Ephemeral(rip, kind, insn))
                return True
            site = _Ephemeral(rip, kind, insn)
            self._pending.append(("site", site))
            self._hook_stop = True
            self.engine.stop()
            return True
        self._resume_native = None
        fn = EMU.PYTHON_NATIVE.get(kind) if kind is not None else None
        try:
            if fn is None:
                raise Fault(EV.UD, None, reason=f"{insn} is undefined here")
            fn(self, insn, rip)
            if self._end_shadow():
                self._hook_stop = True
                self.engine.stop()
        except Fault as f:
            self._exception(EventInfo(f.vector, EV.INTR_TYPE_HARD_EXCEPTION, f.error_code, cr2=f.cr2), rip, True)
        except MachineNotImplemented as e:
            self._pending.append(("raise", e))
            self._hook_stop = True
            self.engine.stop()
        except (SecondStageRefusal, NonexistentMemory) as e:
            self._pending.append(("stop", self.memory_stop(e, rip)))
            self._hook_stop = True
            self.engine.stop()
        return True

    def _remember_ud(self, rip: int, hf: int, insn, kind) -> None:
        """Keep what _on_invalid decoded at `rip` for the next time (see there), when
        decode_at read it through the software TLB's fetch entry of CPL < 3 (the one
        _code_hpa looks up first); decode_at has just selected the live context's TLB."""
        if (rip & 0xFFF) > 0x1000 - 15:
            return
        entry = self._stlb.get((rip >> 12, PG_FETCH, False, False, False))
        if entry is None:
            return
        hpa = entry[1] | (rip & 0xFFF)
        end = hpa + insn.len
        memo = self._ud_memo
        if len(memo) > 1024:
            memo.clear()
        memo[rip] = (hf & _HF_CS, self._stlb, hpa, end, bytes(self.mem.view[hpa:end]), insn, kind)

    def _fast_client(self, rip: int, insn, kind: Kind, hflags: int) -> bool:
        """The client's fast path for a #UD-class instruction it intercepts, inside the
        hook as _client_inline, without building the Event: `fast_client(rip, insn,
        kind, hflags)` (QEMU's hflags: CPL, CS.L/D; `gprs.values` hold the registers)
        does the instruction, or does nothing and returns False (then the client gets
        the event).  Done, it returns True when it changed registers and its own state
        only (nothing for the boundary: no memory writes, events, deadlines, timers or
        activity changes); Action.DONE when it may have left something for the boundary
        (checked as after an inline client); or a Stop to end the run with (as an inline
        client's STOP).  It is taken only when nothing waits for the boundary.  (The
        virtual TSC is not paused for it: the instruction costs time as any other,
        unless the fast client pauses it.)"""
        if (self._tb_flush_pending or self._smc_pending or self._irr or self._nmi_pending or self._window_irq
                or self._window_nmi or self._tsc_deadline is not None or self.activity != EV.ACTIVITY_ACTIVE):
            return False
        gprs = self.gprs
        pc_writes = gprs.pc_writes
        shadow_writes = self.shadow_writes
        timer = self.timer.deadline
        self._in_client = True
        try:
            done = self.fast_client(rip, insn, kind, hflags)
        finally:
            self._in_client = False
        if not done:
            return False
        if done is not True:
            if done is _DONE:
                self._after_done(timer, shadow_writes)
            else:                           # a Stop
                self._hook_stop = True
                self.engine.stop()
                self._resume_native = rip
                self._pending.append(("stop", done))
                return True
        if gprs.pc_writes == pc_writes:   # end the block: what the client changed applies from here
            gprs.read()
            gprs.write_pc()
        return True

    def _exception_int1(self, rip: int) -> None:
        """ICEBP (F1): privileged software exception #DB, a trap (return after it)."""
        self._exception(EventInfo(EV.DB, EV.INTR_TYPE_PRIV_SW_EXCEPTION, None, 1), rip, True)

    def _on_in(self, uc, port: int, size: int, ud) -> int:
        self.missed_io += 1
        return self.io.read(port, size)

    def _on_out(self, uc, port: int, size: int, value: int, ud) -> None:
        self.missed_io += 1
        self.io.write(port, size, value)

    def _on_syscall(self, uc, ud) -> None:
        self._pending.append(("syscall",))
        self._hook_stop = True
        self.engine.stop()

    # -- faults from TLB fills -------------------------------------------------------------------
    def _on_fill_fault(self, ff: FillFault) -> Stop | None:
        exc = ff.exc
        rip = self.rip
        if self._stepping:
            self._end_stepping()
        linear, rmw = self.exact_access(ff.linear & ~0xFFF, ff.access)
        # unicorn fills the read of a read-modify-write operand first; the processor
        # makes that access as a write: #PF error code W=1 ("Page-Fault Error Code"
        # -- an access right the read has is not checked apart), EPT qualification
        # bit 1 ("Exit Qualification for EPT Violations": "a read-modify-write
        # operation sets bit 1 (data write)")
        rmw = rmw and ff.access == PG_READ
        ff.linear = linear
        if isinstance(exc, PageFault):
            exc.linear = linear
            if rmw:
                exc.error_code |= PF_W
        elif isinstance(exc, SecondStageRefusal):
            if exc.linear is not None and not exc.paging_entry:
                if exc.gpa is not None:
                    exc.gpa = (exc.gpa & ~0xFFF) | (linear & 0xFFF)
                exc.linear = linear
                if rmw:
                    exc.access = PG_WRITE
        elif isinstance(exc, _NonCanonical):
            exc.linear = linear
        elif isinstance(exc, NonexistentMemory):
            exc.address = (exc.address & ~0xFFF) | (linear & 0xFFF)
            exc.write = exc.write or rmw
            exc.args = (f"{'write' if exc.write else 'read'} at physical {exc.address:#x} "
                        f"(linear {linear:#x}): no memory there",)
        if isinstance(exc, (SecondStageRefusal, NonexistentMemory)):
            return self.memory_stop(exc, rip, ff.linear)
        stack = isinstance(exc, _NonCanonical) and self._stack_access(rip)
        vector, code, cr2 = fault_of_fill(exc, stack)
        self._exception(EventInfo(vector, EV.INTR_TYPE_HARD_EXCEPTION, code, cr2=cr2), rip, False)
        return None

    def _stack_access(self, rip: int) -> bool:
        insn = self.decode_at(rip)
        if insn.is_stack_instruction:
            return True
        return insn.memory_base in _STACK_BASES

    # -- pending items at the boundary ---------------------------------------------------------------
    def _handle_pending(self, item) -> Stop | None:
        tag = item[0]
        if tag == "site":
            return self._site_event(item[1])
        if tag == "native":
            site = item[1]
            return self._run_native(site.kind, site.insn, site.address)
        if tag == "fault":
            f = item[1]
            self._exception(EventInfo(f.vector, EV.INTR_TYPE_HARD_EXCEPTION, f.error_code, cr2=f.cr2),
                            self.rip, False)
            return None
        if tag == "exception":
            ev, start = item[1], item[2]
            return self._exception_event(ev, start)
        if tag == "deliver":
            return self._deliver_event(item[1])
        if tag == "result":
            return self._result_stop(item[1])
        if tag == "stop":
            return item[1]
        if tag == "breakpoint":
            self._bp_skip = item[1]
            return Stop(StopReason.BREAKPOINT, item[1])
        if tag == "syscall":
            return self._syscall()
        if tag == "mtf":
            return self._mtf_event() if self._mtf is not None else None
        if tag == "raise":
            raise item[1]
        raise AssertionError(tag)

    def _site_event(self, site) -> Stop | None:
        ev = self._instruction_event(site.kind, site.insn, site.address)
        shadow_writes = self.shadow_writes
        action = self.client(self, ev)
        if action == Action.STOP:
            self._resume_native = site.address
            return Stop(StopReason.EVENT, site.address, ev)
        if action == Action.DONE:
            if self.shadow_writes == shadow_writes:
                self._end_shadow()
            return None
        return self._run_native(site.kind, site.insn, site.address)

    def _run_native(self, kind: Kind, insn, address: int) -> Stop | None:
        fn = EMU.PYTHON_NATIVE.get(kind)
        if kind == Kind.INVLPG:
            self.flush_tlb()
        if fn is None and kind in _VMX_UD:
            fn = EMU.undefined
        if fn is None:
            self._resume_native = address            # let unicorn execute it once
            return None
        try:
            fn(self, insn, address)
            self.emulated += 1
        except Fault as f:
            self._exception(EventInfo(f.vector, EV.INTR_TYPE_HARD_EXCEPTION, f.error_code, cr2=f.cr2),
                            address, False)
        except (SecondStageRefusal, NonexistentMemory) as e:
            return self.memory_stop(e, address)
        else:
            self._end_shadow()
        return None

    def _end_shadow(self) -> bool:
        """An instruction completed in Python: the interrupt shadow of the one before
        it (STI, MOV SS: "Interrupt Shadows", blocking lasts until the next instruction
        completes) is over.  QEMU ends it only after an instruction it executes, so it
        would last one more (and hold back a pending interrupt until then).  Only
        where something waits for the shadow (reading it costs a context save); True
        then (inside a hook: end the segment, the boundary delivers)."""
        if self._window_waits():
            blob = self.blob.load()
            if blob.hflags & CB.HF_INHIBIT_IRQ:
                blob.hflags = blob.hflags & ~CB.HF_INHIBIT_IRQ
                blob.store()
            return True
        return False

    def memory_stop(self, e: Exception, rip: int, linear: int | None = None) -> Stop:
        """The stop for the instruction at `rip` whose access the second stage refused
        (SECOND_STAGE) or that touched physical memory that does not exist
        (NONEXISTENT_MEMORY), from a TLB fill or from an instruction executed in
        Python: nothing of the instruction done, RIP at it."""
        g = self.gprs.read()
        if g[REG.RIP] != rip:
            g[REG.RIP] = rip
            self.gprs.write()
        if isinstance(e, SecondStageRefusal):
            self._resume_native = None
            return Stop(StopReason.SECOND_STAGE, rip,
                        Event(Kind.SECOND_STAGE, rip, detail=e, address=e.linear if linear is None else linear), str(e))
        return Stop(StopReason.NONEXISTENT_MEMORY, rip, Event(Kind.NONEXISTENT_MEMORY, rip, detail=e, address=linear),
                    str(e))

    def _exception_event(self, ev: EventInfo, start: int) -> Stop | None:
        event = Event(Kind.EXCEPTION, start, ev.length, vector=ev.vector, event_type=ev.type,
                      error_code=ev.error_code, cr2=ev.cr2, vectoring=ev.vectoring)
        if ev.type in _SOFT_INT_TYPES:
            event.insn = self.decode_at(start)
        action = self.client(self, event)
        if action == Action.STOP:
            return Stop(StopReason.EVENT, start, event)
        if action == Action.DONE:
            return None
        # NATIVE: deliver now (software events return after the instruction)
        return self._deliver_event(ev)

    def _dispatch_async(self, event: Event) -> Stop | None:
        action = self.client(self, event)
        if action == Action.STOP:
            return Stop(StopReason.EVENT, event.rip, event)
        if action == Action.NATIVE:
            if event.kind == Kind.NMI:
                self._nmi_pending = False
                return self._deliver_event(EventInfo(EV.NMI, EV.INTR_TYPE_NMI))
        return None

    def _request_event(self, event: Event) -> Stop | None:
        """A window or deadline the client asked for."""
        if self.client is None:
            return Stop(StopReason.EVENT, event.rip, event)
        action = self.client(self, event)
        if action == Action.STOP:
            return Stop(StopReason.EVENT, event.rip, event)
        return None

    # -- delivery -------------------------------------------------------------------------------------
    def _deliver_event(self, ev: EventInfo) -> Stop | None:
        result = self._deliver(ev)
        return self._result_stop(result) if result is not None else None

    def _result_stop(self, result) -> Stop | None:
        """Turn what _deliver returned (an Event for the client or a stop) into a Stop."""
        if isinstance(result, Stop):
            return result
        event: Event = result
        if event.kind == Kind.EXCEPTION:
            info = EventInfo(event.vector, event.event_type, event.error_code, event.length, event.cr2,
                             event.vectoring)
            return self._exception_event(info, event.rip)
        if event.kind == Kind.TRIPLE_FAULT:
            if self.subs.wants(Kind.TRIPLE_FAULT) and self.client is not None:
                action = self.client(self, event)
                if action == Action.STOP:
                    return Stop(StopReason.EVENT, event.rip, event)
                if action == Action.DONE:
                    return None
            self.activity = EV.ACTIVITY_SHUTDOWN
            return Stop(StopReason.SHUTDOWN, event.rip, event, "triple fault")
        if event.kind == Kind.SECOND_STAGE:
            return Stop(StopReason.SECOND_STAGE, event.rip, event, str(event.detail))
        if event.kind == Kind.NONEXISTENT_MEMORY:
            return Stop(StopReason.NONEXISTENT_MEMORY, event.rip, event, str(event.detail))
        raise AssertionError(event.kind)

    # -- HLT ----------------------------------------------------------------------------------------
    def _native_hlt(self) -> None:
        g = self.gprs.read()
        after = g[REG.RIP]
        if self._mtf is not None:
            # unicorn calls no code hook for HLT: the MTF boundaries around it are found here
            if self._mtf == 1 and self._mtf_rip != after - 1:
                g[REG.RIP] = after - 1                # the step ended before the HLT
                self.gprs.write()
                self._pending.append(("mtf",))
                return
            self._mtf, self._mtf_rip = 1, after - 1   # the HLT is the step's instruction
        if self.subs.wants(Kind.HLT) and self.client is not None and self._resume_native != after - 1:
            g[REG.RIP] = after - 1
            self.gprs.write()
            self._pending.append(("site", _Ephemeral(after - 1, Kind.HLT, self.decode_at(after - 1))))
            return
        self._resume_native = None
        self.activity = EV.ACTIVITY_HLT

    def enter_hlt(self) -> None:
        """The HLT state: activity HLT, the interrupt shadow is over."""
        blob = self.blob.load()
        if blob.hflags & CB.HF_INHIBIT_IRQ:
            blob.hflags = blob.hflags & ~CB.HF_INHIBIT_IRQ
            blob.store()
        self.activity = EV.ACTIVITY_HLT

    def _halted(self, host_deadline: float | None) -> Stop | None:
        blob = self.blob.load()
        rflags = self.gprs.read()[REG.RFLAGS]
        if self._nmi_pending or (self._irr and rflags & AR.RFLAGS_IF):
            self.activity = EV.ACTIVITY_ACTIVE
            return None
        if self._irr and self.subs.wants(Kind.EXTERNAL_INTERRUPT) and self.client is not None:
            self.activity = EV.ACTIVITY_ACTIVE
            return None
        targets = [t for t in (self.timer.deadline if rflags & AR.RFLAGS_IF or
                               self.subs.wants(Kind.EXTERNAL_INTERRUPT) else None, self._tsc_deadline)
                   if t is not None]
        if not targets:
            return Stop(StopReason.HALTED, self.rip, detail="HLT with nothing that can wake the processor")
        if host_deadline is not None and time.perf_counter() >= host_deadline:
            return Stop(StopReason.BUDGET, self.rip, detail="time budget used up (halted)")
        self.tsc.advance(min(targets) - self.tsc.read())
        del blob
        return None

    # -- SYSCALL ------------------------------------------------------------------------------------
    def _syscall(self) -> Stop | None:
        """unicorn runs no SYSCALL semantics ("SYSCALL without a hook does nothing");
        the machine does what Vol. 2 "SYSCALL" says in 64-bit mode."""
        return self.emulate_syscall()

    # -- instruction budget -----------------------------------------------------------------------
    def _start_counting(self, n: int) -> None:
        self._counting = True
        self._count_left = n
        self._count_hook = self.engine.add_hook(ffi.UC.UC_HOOK_CODE, self._code_cb, 1, 0)
        self.engine.flush_tb()

    def _stop_counting(self) -> None:
        self._counting = False
        if self._count_hook:
            self.engine.del_hook(self._count_hook)
            self._count_hook = 0
        self.engine.flush_tb()


class _Ephemeral:
    """A site found at run time (#UD hook, HLT): same fields as sites.Site."""
    __slots__ = ("address", "kind", "insn")

    def __init__(self, address: int, kind: Kind, insn):
        self.address, self.kind, self.insn = address, kind, insn


import iced_x86 as _I  # noqa: E402

_INT1 = _I.Mnemonic.INT1
_STACK_BASES = frozenset({_I.Register.RSP, _I.Register.RBP, _I.Register.ESP, _I.Register.EBP,
                          _I.Register.SP, _I.Register.BP})
from .intercepts import VMX_KINDS as _VMX_UD  # noqa: E402
# the count register's width of a string instruction, by the address register it uses
_COUNT_WIDTH = {_I.Register.RSI: 64, _I.Register.RDI: 64, _I.Register.ESI: 32, _I.Register.EDI: 32,
                _I.Register.SI: 16, _I.Register.DI: 16}

"""The simulated x86-64 processor and its platform.

    m = Machine("skylake-client", memory_size=64 << 20)
    m.write_host(0x8000, code)            # RAM is host-physical [0, memory_size)
    m.reset(entry=(0, 0x8000))            # real mode, CS:IP = 0000:8000
    stop = m.run(time_budget=1.0)         # -> Stop(reason, rip, event)
    m.uart.text(), m.console.text()

Public interface (details in the modules named):
- state: get_state() / set_state(dict) in the state.py shape (cpu_state.py);
  fast register access: `m.gprs` (RegBatch of RAX..R15, RIP, RFLAGS: `read()`
  returns the preallocated array, `write()` sends it back, about 1 us each) and
  `m.ctrl` (CR0, CR2, CR3, CR4, DR0-3, DR6, DR7); `m.cpl()`, `m.segment(name)`,
  `m.cr8`, `m.activity`, `m.pdptes`.
- memory: `m.mem` (host-physical RAM), read_phys/write_phys (guest-physical,
  through the second stage), read_linear/write_linear/translate (current paging,
  with A/D flags and #PF reasons), walk() (any context, no side effects by
  default), paging_context(), flush_tlb(), `m.second_stage` (linear.py).
- events: deliver(vector, type, error_code=None, instruction_length=0) (events.py);
  raise_interrupt(vector), raise_nmi(), acknowledge_interrupt().
- intercepts: `m.client = fn(machine, event) -> Action`; intercept(*kinds),
  intercept_exceptions(bitmap); request_interrupt_window(), request_nmi_window(),
  set_tsc_deadline(tsc) (intercepts.py, runloop.py); operand helpers in operands.py.
- MSRs/CPUID/TSC: `m.msrs` (msr_file.py), `m.cpuid` (cpuid.py), `m.tsc` (tsc.py);
  VMX fixed-bit enforcement for MOV to CR0/CR4: `m.cr0_fixed` / `m.cr4_fixed`
  = (fixed0, fixed1) or None (set by the VMX layer in VMX operation).
- platform: `m.io` (port bus), `m.console` (port 0xE9), `m.uart` (0x3F8),
  `m.timer` (0x4C0) (devices.py).
- run control: run(time_budget=, instruction_budget=) -> Stop; add_breakpoint(),
  remove_breakpoint() (runloop.py).

The unicorn engine runs in UC_TLB_VIRTUAL mode: every translation goes through
the machine's own page walk (paging.py) and the second-stage plug point.
"""
from __future__ import annotations

import iced_x86 as I

from ..arch import cpuid as CPUIDF
from ..arch import events as EV
from ..arch import msrs as M
from ..arch import registers as AR
from ..caps import msrmodel
from ..caps import profile as caps_profile
from ..caps.profile import Profile
from . import context_blob as CB
from . import paging as PG
from . import registers as REG
from . import unicorn_ffi as ffi
from .context_blob import ContextBlob
from .cpu_state import StateAccess
from .cpuid import CpuidModel
from . import emulate as EMU
from . import operands as OP
from .devices import DebugConsole, IoBus, Timer, Uart16550
from .events import Delivery, EventInfo, Fault, MachineNotImplemented, TripleFault, escalate
from .intercepts import Event, Kind, Subscriptions
from .linear import MemoryAccess, SecondStageRefusal, _PagingAccessor
from .memory import NonexistentMemory, PhysicalMemory
from .msr_file import MsrFile
from .runloop import RunControl, Stop, StopReason, _Watchdog
from .sites import SiteRegistry
from .state import KEYS
from .tsc import DEFAULT_HZ, VirtualTsc

CPU_MODEL = ffi.X.UC_CPU_X86_SKYLAKE_SERVER     # SMAP-aware QEMU TLB indexes, AVX, XSAVE
_MEM = I.OpKind.MEMORY
# Enum members as module constants where every intercept passes (an Enum class
# attribute costs ~100 ns in CPython 3.11: EnumType's __getattr__ defeats the cache)
_K_CPUID, _K_RDMSR, _K_WRMSR, _K_IO = Kind.CPUID, Kind.RDMSR, Kind.WRMSR, Kind.IO
_K_MOV_TO_CR, _K_MOV_FROM_CR, _K_MOV_DR, _K_LMSW = Kind.MOV_TO_CR, Kind.MOV_FROM_CR, Kind.MOV_DR, Kind.LMSW
_MEMORY_OPERAND_KINDS = frozenset(Kind) - {Kind.CPUID, Kind.RDMSR, Kind.WRMSR, Kind.IO, Kind.MOV_TO_CR,
                                           Kind.MOV_FROM_CR, Kind.MOV_DR, Kind.HLT, Kind.PAUSE, Kind.RDTSC,
                                           Kind.RDTSCP, Kind.CLTS, Kind.WBINVD, Kind.INVD}


class Machine(StateAccess, MemoryAccess, RunControl):
    def __init__(self, profile: Profile | str | None = None, memory_size: int = 64 << 20, *,
                 tsc_hz: int = DEFAULT_HZ):
        self.profile = profile if isinstance(profile, Profile) else caps_profile.load(profile)
        self.engine = ffi.Engine(CPU_MODEL)
        self.blob = ContextBlob(self.engine, CB.layout(CPU_MODEL))
        self.mem = PhysicalMemory(memory_size)
        self.engine.map_host(0, memory_size, self.mem.host_address)
        h = self.engine.handle
        self.gprs = ffi.RegBatch(h, REG.GPRS_IDS)
        self.ctrl = ffi.RegBatch(h, REG.CONTROL_IDS, read_only=REG.PAGING_IDS)
        self._fillregs = ffi.RegBatch(h, REG.FILL_IDS)
        self.tsc = VirtualTsc(tsc_hz)
        self.cpuid = CpuidModel(self.profile, tsc_hz)
        self.msrs = MsrFile(self.profile, self.tsc, self.engine)

        # platform
        self.io = IoBus()
        self.console = DebugConsole()
        self.uart = Uart16550()
        self.timer = Timer(self.tsc.read, self.raise_interrupt)
        self.io.claim(DebugConsole.PORT, DebugConsole.PORT, self.console)
        self.io.claim(Uart16550.BASE, Uart16550.BASE + 7, self.uart)
        self.io.claim(Timer.BASE, Timer.BASE + 0xF, self.timer)
        # event machinery
        self.delivery = Delivery(self)
        self.subs = Subscriptions()
        self.client = None
        self._second_stage = None
        self._s2_tag = None                       # names the second stage's translations (linear.py)
        self._decoded: dict = {}                  # (linear, hpa, bitness) -> (bytes, instruction)
        self.cr0_fixed: tuple[int, int] | None = None
        self.cr4_fixed: tuple[int, int] | None = None
        # run-loop state
        self._pending: list = []
        self._hook_stop = False
        self._fill_fault = None
        self._smc_pending = False
        self._tb_flush_pending = False            # a code write by an inline client (flushed at the boundary)
        self.inline_clients = True                # hand intercepted instructions to the client inside the hook
        self._in_client = False
        # explicit interruptibility writes (set_state, a VM entry's): a client that made one
        # owns the interrupt shadow; otherwise DONE ends it (runloop._end_shadow)
        self.shadow_writes = 0
        self._resume_native: int | None = None
        self._breakpoints: dict[int, bool] = {}
        self._bp_skip: int | None = None
        self._stepping = False
        self._guest_tf = False
        self._saved_dr6 = AR.DR6_INIT
        self._step_prev = 0
        self._counting = False
        self._count_left = 0
        self._count_hook = 0
        self._irr = 0
        self._nmi_pending = False
        self._window_irq = False
        self._window_nmi = False
        self._tsc_deadline: int | None = None
        # monitor trap flag (request_mtf): None off; 0 armed; 1 an instruction started
        # at _mtf_rip in segment _mtf_seg, or an event was delivered (_mtf_rip None)
        self._mtf: int | None = None
        self._mtf_rip: int | None = None
        self._mtf_seg = -1
        self._mtf_hook = 0
        self._watchdog = _Watchdog(self.engine)
        self._ctx_key = None
        self._ctx = None
        self._ptacc = _PagingAccessor(self)
        self._stlbs: dict = {}                    # software TLB per translation context (linear.py)
        self._stlb: dict = {}
        self._ud_memo: dict = {}                  # RIP -> a decoded #UD-class instruction (runloop)
        self._fills_since_flush = 0
        self._grow_at = 1024
        self._grow_tlb = False
        self._efer = 0
        self.pdptes: tuple[int, int, int, int] | None = None
        self.cr8 = 0
        self.activity = EV.ACTIVITY_ACTIVE
        self.pending_debug = 0
        self.monitor_address: int | None = None
        # statistics
        self.tlb_fills = self.segments = self.emulated = self.delivered = self.missed_io = 0
        # hooks
        g = self.engine.guard
        self._code_cb = ffi.CODE_CB(g(self._on_code))
        self._count_cb = ffi.CODE_CB(g(self._on_count))
        self._mtf_cb = ffi.CODE_CB(g(self._on_mtf_code))
        self._cbs = [
            (ffi.UC.UC_HOOK_INTR, ffi.INTR_CB(g(self._on_intr)), None),
            (ffi.UC.UC_HOOK_INSN_INVALID, ffi.INSN_INVALID_CB(g(self._on_invalid, True)), None),
            (ffi.UC.UC_HOOK_TLB_FILL, ffi.TLB_FILL_CB(g(self._on_fill, False)), None),
            (ffi.UC.UC_HOOK_INSN, ffi.IN_CB(g(self._on_in, 0)), ffi.X.UC_X86_INS_IN),
            (ffi.UC.UC_HOOK_INSN, ffi.OUT_CB(g(self._on_out)), ffi.X.UC_X86_INS_OUT),
            (ffi.UC.UC_HOOK_INSN, ffi.SYSCALL_CB(g(self._on_syscall)), ffi.X.UC_X86_INS_SYSCALL),
        ]
        for htype, cb, insn in self._cbs:
            self.engine.add_hook(htype, cb, 1, 0, insn)
        self._code_hooks: dict[int, list] = {}          # address -> [handle, refcount]
        self.sites = SiteRegistry(self._hook_address, self._unhook_address, self.mem)
        self.reset()

    # -- code hooks on single addresses (sites and breakpoints share one per address) ------------
    def _hook_address(self, address: int) -> None:
        entry = self._code_hooks.get(address)
        if entry is None:
            handle = self.engine.add_hook(ffi.UC.UC_HOOK_CODE, self._code_cb, address, address)
            self._code_hooks[address] = [handle, 1]
        else:
            entry[1] += 1

    def _unhook_address(self, address: int) -> None:
        entry = self._code_hooks.get(address)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.engine.del_hook(entry[0])
            del self._code_hooks[address]

    def _on_count(self, uc, address: int, size: int, ud) -> None:
        if self._count_left <= 0:
            self._hook_stop = True
            self.engine.stop()
        else:
            self._count_left -= 1

    def add_breakpoint(self, address: int) -> None:
        """Stop with StopReason.BREAKPOINT before executing the instruction at linear
        `address` (the next run() executes it)."""
        if address not in self._breakpoints:
            self._breakpoints[address] = True
            self._hook_address(address)
            self.engine.remove_tb(address, address + 1)

    def remove_breakpoint(self, address: int) -> None:
        if self._breakpoints.pop(address, None):
            self._unhook_address(address)

    # -- reset ----------------------------------------------------------------------------------
    def reset(self, entry: tuple[int, int] | None = None) -> None:
        """The processor state after power-up/RESET (Intel SDM Vol. 3A "Processor
        State Following Power-up, Reset, or INIT", Table "IA-32 and Intel 64
        Processor States Following Power-up, Reset, or INIT"): real-address mode,
        CS = F000H with base FFFF0000H, IP = FFF0H, EDX = CPUID.1:EAX, RFLAGS = 2,
        CR0 = 60000010H, segments with limit FFFFH, IDTR limit FFFFH, DR6 =
        FFFF0FF0H, DR7 = 400H, EFER = 0, XCR0 = 1, TSC = 0, IA32_FEATURE_CONTROL = 0.

        There is no firmware at FFFFFFF0H (RAM starts at 0): `entry = (cs, ip)`
        starts instead at CS:IP with CS base = cs * 16, as a boot loader's far jump
        would (e.g. (0, 0x8000))."""
        cs_sel, ip = entry if entry is not None else (0xF000, 0xFFF0)
        cs_base = cs_sel << 4 if entry is not None else 0xFFFF0000
        s = {k: 0 for k in KEYS}
        s.update({
            "GUEST_RIP": ip, "GUEST_RFLAGS": 2, "GUEST_CR0": 0x60000010, "GUEST_DR7": 0x400,
            "DR6": AR.DR6_INIT, "RDX": self.cpuid.signature, "XCR0": 1,
            "GUEST_CS_SELECTOR": cs_sel, "GUEST_CS_BASE": cs_base, "GUEST_CS_LIMIT": 0xFFFF,
            "GUEST_CS_AR_BYTES": 0x9B, "GUEST_GDTR_LIMIT": 0xFFFF, "GUEST_IDTR_LIMIT": 0xFFFF,
            "GUEST_LDTR_LIMIT": 0xFFFF, "GUEST_LDTR_AR_BYTES": 0x82, "GUEST_TR_LIMIT": 0xFFFF,
            "GUEST_TR_AR_BYTES": 0x8B, "GUEST_IA32_PAT": msrmodel.reset_value(self.profile, M.IA32_PAT),
        })
        for seg in ("SS", "DS", "ES", "FS", "GS"):
            s[f"GUEST_{seg}_LIMIT"] = 0xFFFF
            s[f"GUEST_{seg}_AR_BYTES"] = 0x93
        self.msrs.reset()
        self.tsc.write(0)
        self.tsc.adjust = 0
        self._irr = 0
        self._nmi_pending = False
        self._window_irq = self._window_nmi = False
        self._tsc_deadline = None
        self.timer.stop()
        self.set_state(s)

    def load(self, address: int, data: bytes) -> None:
        """Copy bytes into host-physical memory (a loader)."""
        self.write_host(address, data)

    @property
    def linear_bits(self) -> int:
        """Linear-address width of the current paging mode: 57 with 5-level paging, else 48
        ("Canonical Addressing")."""
        c = self.ctrl.read()
        return 57 if c[REG.CR4] & AR.CR4_LA57 and self._efer & M.EFER_LMA else 48

    # -- features ---------------------------------------------------------------------------------
    def profile_has(self, feature: str) -> bool:
        """Does the machine's CPUID report `feature` (arch.cpuid.FEATURES)?"""
        leaf, sub, reg, bit = CPUIDF.FEATURES[feature]
        return bool(self.cpuid.query(leaf, sub, 0)[reg] >> bit & 1)

    def fast_cpl(self) -> int:
        """CPL from CS.RPL (0 in real mode, 3 in virtual-8086 mode): one batch read."""
        v = self._fillregs.read()
        if not v[0] & AR.CR0_PE:
            return 0
        if v[3] & AR.RFLAGS_VM:
            return 3
        return v[4] & 3

    # -- subscriptions and requests --------------------------------------------------------------
    def intercept(self, *kinds: Kind, exceptions: int | None = None) -> None:
        """Hand events of these kinds to the client (replaces the set); `exceptions`
        replaces the exception bitmap (bit n = vector n)."""
        self.subs.kinds = set(kinds)
        if exceptions is not None:
            self.subs.exception_bitmap = exceptions

    def intercept_exceptions(self, bitmap: int) -> None:
        self.subs.exception_bitmap = bitmap & 0xFFFFFFFF

    def request_interrupt_window(self, on: bool = True) -> None:
        """An INTERRUPT_WINDOW event at the first boundary with RFLAGS.IF = 1 and no
        STI / MOV SS blocking (one-shot)."""
        self._window_irq = on

    def request_mtf(self, on: bool = True, pending: bool = False) -> None:
        """An MTF event at the instruction boundary after the next instruction, or
        after the next event delivery, whichever comes first (the boundaries of the
        SDM's "Monitor Trap Flag"; one-shot: request again after each event).
        `pending`: at the very next boundary (VM entry injecting a pending MTF VM
        exit).  A REP string instruction ends at each iteration."""
        if not on:
            self._mtf = None
            if self._mtf_hook:
                self.engine.del_hook(self._mtf_hook)
                self._mtf_hook = 0
            return
        self._mtf, self._mtf_rip = (1, None) if pending else (0, None)
        if not self._mtf_hook:
            # every instruction boundary is seen by a code hook; translated blocks without
            # it are dropped
            self._mtf_hook = self.engine.add_hook(ffi.UC.UC_HOOK_CODE, self._mtf_cb, 1, 0)
            self.flush_translated_code()

    def request_nmi_window(self, on: bool = True) -> None:
        """An NMI_WINDOW event at the first boundary without NMI or MOV SS blocking."""
        self._window_nmi = on

    def set_tsc_deadline(self, tsc: int | None) -> None:
        """A TSC_DEADLINE event at the first boundary where the virtual TSC >= tsc."""
        self._tsc_deadline = tsc

    def raise_interrupt(self, vector: int) -> None:
        """An external interrupt request (delivered at the first open window)."""
        if not 0 <= vector <= 255:
            raise ValueError(f"vector {vector}")
        self._irr |= 1 << vector

    def acknowledge_interrupt(self) -> int | None:
        """Take the highest pending external interrupt (what "acknowledge interrupt
        on exit" does), or None."""
        if not self._irr:
            return None
        v = self._irr.bit_length() - 1
        self._irr &= ~(1 << v)
        return v

    @property
    def pending_interrupts(self) -> list[int]:
        return [v for v in range(256) if self._irr >> v & 1]

    def raise_nmi(self) -> None:
        self._nmi_pending = True

    # -- event delivery ---------------------------------------------------------------------------
    def deliver(self, vector: int, type: int, error_code: int | None = None,
                instruction_length: int = 0) -> Event | None:
        """Deliver an event now, at the current instruction boundary, as VM-entry
        event injection does: types are arch.events INTR_TYPE_* (external
        interrupt, NMI, hardware exception, software interrupt, privileged
        software exception, software exception); for software types the return
        address is RIP + instruction_length.

        Returns None when the event was delivered (or converted to #DF and that was
        delivered).  When delivery raised an exception the client intercepts, or a
        second-stage refusal, or a triple fault, returns that Event with
        `vectoring` = the event being delivered (nothing of it was delivered; a
        triple fault not intercepted also puts the processor in shutdown)."""
        self._end_stepping()
        self._resume_native = None
        result = self._deliver(EventInfo(vector, type, error_code, instruction_length))
        if result is None:
            return None
        if isinstance(result, Event) and result.kind == Kind.TRIPLE_FAULT and \
                not (self.subs.wants(Kind.TRIPLE_FAULT) and self.client is not None):
            self.activity = EV.ACTIVITY_SHUTDOWN
        return result

    def _deliver(self, ev: EventInfo, blob=None, g=None):
        """Deliver with escalation; None, or the Event the caller must hand on.
        `blob`, `g`: the context blob and GPR batch already read by the caller and
        unchanged since (saves copies)."""
        result = self._deliver_chain(ev, blob, g)
        if result is not None:
            b = self.blob.load()                 # not delivered: QEMU's exception-in-flight
            b.clear_exception_in_flight()        # marker must still be cleared
            b.store()
        return result

    def _deliver_chain(self, ev: EventInfo, blob, g):
        current = ev
        rip = (g if g is not None else self.gprs.read())[REG.RIP]
        while True:
            try:
                self.delivery.deliver(current, blob, g)
                blob = g = None
                self.delivered += 1
                if self._mtf is not None:         # the boundary after a delivery ends an MTF step
                    self._mtf, self._mtf_rip = 1, None
                return None
            except Fault as f:
                try:
                    nxt = escalate(current, f)
                except TripleFault:
                    return Event(Kind.TRIPLE_FAULT, rip, vectoring=current)
                if self.subs.wants_exception(nxt.vector) and self.client is not None:
                    if nxt.vector == EV.DF and f.cr2 is not None:
                        self._set_cr2(f.cr2)
                    return Event(Kind.EXCEPTION, rip, vector=nxt.vector, event_type=nxt.type,
                                 error_code=nxt.error_code, cr2=nxt.cr2, vectoring=current)
                if f.cr2 is not None and nxt.vector == EV.DF:
                    self._set_cr2(f.cr2)
                current = nxt
                blob = g = None
            except SecondStageRefusal as r:
                return Event(Kind.SECOND_STAGE, rip, detail=r, vectoring=current,
                             address=r.linear)
            except NonexistentMemory as n:
                return Event(Kind.NONEXISTENT_MEMORY, rip, detail=n, vectoring=current)

    def _set_cr2(self, value: int) -> None:
        c = self.ctrl.read()
        c[REG.CR2] = value
        self.ctrl.write()

    def _cpu_view(self, blob=None, g=None):
        if g is None:
            g = self.gprs.read()
        c = self.ctrl.read()
        ctx = self.paging_context(c[REG.CR0], c[REG.CR3], c[REG.CR4])
        return g, c[REG.CR0], c[REG.CR4], self._efer, blob if blob is not None else self.blob.load(), ctx

    def _commit_delivery(self, frame, ev: EventInfo, blob) -> None:
        cr0 = self.ctrl.values[REG.CR0]
        ctx = self.delivery.ctx
        writes = []
        try:
            for linear, data, cpl, implicit in frame.writes:
                writes.append((self._linear_chunks(linear, len(data), PG.WRITE, cpl, implicit, ctx), data))
            if frame.gdt_accessed is not None:
                lin, val = frame.gdt_accessed
                writes.append((self._linear_chunks(lin, 1, PG.WRITE, 0, True, ctx), bytes([val])))
        except PG.PageFault as pf:
            raise Fault.from_page_fault(pf) from None
        for chunks, data in writes:
            off = 0
            for hpa, n in chunks:
                self._write_host(hpa, data[off:off + n])
                off += n
        blob.set_cache(CB.CS, *frame.cs)
        if frame.ss is not None:
            blob.set_cache(CB.SS, *frame.ss)
        blob.recompute_segment_hflags(cr0, frame.rflags)
        blob.hflags = blob.hflags & ~CB.HF_INHIBIT_IRQ
        if ev.type == EV.INTR_TYPE_NMI:
            blob.hflags2 = blob.hflags2 | CB.HF2_NMI
        blob.clear_exception_in_flight()
        blob.store()
        g = self.gprs.values
        g[REG.RSP] = frame.rsp
        g[REG.RIP] = frame.rip
        g[REG.RFLAGS] = frame.rflags
        self.gprs.write()
        if ev.vector == EV.PF and ev.type == EV.INTR_TYPE_HARD_EXCEPTION and ev.cr2 is not None:
            self._set_cr2(ev.cr2)
        self.activity = EV.ACTIVITY_ACTIVE

    # -- instruction events ----------------------------------------------------------------------
    def _instruction_event(self, kind: Kind, insn, rip: int) -> Event:
        ev = Event(kind, rip, insn.len, insn)
        g = self.gprs.read()
        if kind is _K_CPUID:
            ev.leaf, ev.subleaf = g[REG.RAX] & 0xFFFFFFFF, g[REG.RCX] & 0xFFFFFFFF
            return ev
        elif kind is _K_RDMSR or kind is _K_WRMSR:
            ev.msr = g[REG.RCX] & 0xFFFFFFFF
            if kind is _K_WRMSR:
                ev.value = ((g[REG.RDX] & 0xFFFFFFFF) << 32) | (g[REG.RAX] & 0xFFFFFFFF)
        elif kind is _K_IO:
            is_in, string, size, _dx = EMU.io_decode(insn)
            ev.port, ev.size, ev.is_in, ev.string = EMU.io_port(self, insn, g), size, is_in, string
            ev.rep = string and (insn.has_rep_prefix or insn.has_repe_prefix or insn.has_repne_prefix)
            if not is_in and not string:
                ev.value = g[REG.RAX] & ((1 << (8 * size)) - 1)
        elif kind is _K_MOV_TO_CR or kind is _K_MOV_FROM_CR:
            cr, reg = EMU._cr_operands(insn)
            ev.cr, ev.gpr = cr, REG.ICED_GPR[reg][0]
            if kind is _K_MOV_TO_CR:
                ev.value = OP.gpr_value(self, reg, g)
        elif kind is _K_MOV_DR:
            to_dr = insn.op0_register in REG.ICED_DR
            dr_reg, gpr = (insn.op0_register, insn.op1_register) if to_dr else (insn.op1_register, insn.op0_register)
            ev.dr, ev.gpr, ev.write = REG.ICED_DR[dr_reg], REG.ICED_GPR[gpr][0], to_dr
        if kind is _K_LMSW:
            ev.value = OP.read_operand(self, insn, 0, 2) if insn.op0_kind != _MEM else None
        if kind in _MEMORY_OPERAND_KINDS and any(insn.op_kind(i) == _MEM for i in range(insn.op_count)):
            try:
                ev.address = OP.operand_address(self, insn)
            except ValueError:
                pass
            if kind is _K_LMSW:
                try:
                    ev.value = OP.read_operand(self, insn, 0, 2)
                except (PG.PageFault, SecondStageRefusal, NonexistentMemory):
                    ev.value = None
        return ev

    # -- control registers ("MOV-Move to/from Control Registers") --------------------------------
    def _in_64bit_mode(self) -> bool:
        return bool(self.blob.load().hflags & CB.HF_CS64)

    def _pae_paging(self, cr0: int, cr4: int, efer: int) -> bool:
        return bool(cr0 & AR.CR0_PG and cr4 & AR.CR4_PAE and not efer & M.EFER_LMA)

    def _load_pdptes(self, cr3: int) -> tuple[int, int, int, int]:
        try:
            return PG.read_pdptes(self._ptacc, cr3, self.profile.maxphyaddr)
        except PG.PdpteFault as e:
            raise Fault(EV.GP, 0, reason=str(e)) from None

    def write_cr0(self, value: int) -> None:
        """MOV to CR0 with its #GP(0) checks; raises Fault."""
        c = self.ctrl.read()
        old, cr3, cr4 = c[REG.CR0], c[REG.CR3], c[REG.CR4]
        if value >> 32:
            raise Fault(EV.GP, 0, reason=f"CR0 bits 63:32 set in {value:#x}")
        value |= AR.CR0_ET
        if value & AR.CR0_PG and not value & AR.CR0_PE:
            raise Fault(EV.GP, 0, reason="CR0.PG = 1 with CR0.PE = 0")
        if value & AR.CR0_NW and not value & AR.CR0_CD:
            raise Fault(EV.GP, 0, reason="CR0.NW = 1 with CR0.CD = 0")
        if self.cr0_fixed is not None:
            f0, f1 = self.cr0_fixed
            if (value & f0) != f0 or value & ~f1 & 0xFFFFFFFF:
                raise Fault(EV.GP, 0, reason=f"CR0 {value:#x} violates the VMX fixed bits")
        efer = self._efer
        if value & AR.CR0_PG and not old & AR.CR0_PG and efer & M.EFER_LME and not cr4 & AR.CR4_PAE:
            raise Fault(EV.GP, 0, reason="enabling paging with EFER.LME = 1 and CR4.PAE = 0")
        if old & AR.CR0_PG and not value & AR.CR0_PG and efer & M.EFER_LMA and self._in_64bit_mode():
            raise Fault(EV.GP, 0, reason="clearing CR0.PG in 64-bit mode")
        new_lma = bool(value & AR.CR0_PG and efer & M.EFER_LME)
        new_efer = (efer | M.EFER_LMA) if new_lma else (efer & ~M.EFER_LMA)
        pdptes = self.pdptes
        if self._pae_paging(value, cr4, new_efer) and (value ^ old) & (AR.CR0_PG | AR.CR0_CD | AR.CR0_NW):
            pdptes = self._load_pdptes(cr3)
        self.engine.reg_write(REG.X.UC_X86_REG_CR0, value)
        self._efer = self.engine.msr_read(M.IA32_EFER)
        self.pdptes = pdptes
        self.flush_tlb()

    def write_cr3(self, value: int) -> None:
        c = self.ctrl.read()
        cr0, cr4 = c[REG.CR0], c[REG.CR4]
        efer = self._efer
        if efer & M.EFER_LMA:
            if cr4 & AR.CR4_PCIDE:
                value &= ~(1 << 63)            # bit 63: no-flush hint, not written
            reserved = ((1 << 64) - 1) & ~((1 << self.profile.maxphyaddr) - 1)
            if value & reserved:
                raise Fault(EV.GP, 0, reason=f"CR3 {value:#x} sets bits beyond MAXPHYADDR")
        else:
            value &= 0xFFFFFFFF
        pdptes = self.pdptes
        if self._pae_paging(cr0, cr4, efer):
            pdptes = self._load_pdptes(value)
        self.engine.reg_write(REG.X.UC_X86_REG_CR3, value)
        self.pdptes = pdptes
        self.flush_tlb()

    def cr4_reserved(self) -> int:
        """CR4 bits this processor does not support (MOV to CR4 setting one: #GP(0))."""
        ok = 0x7FF | AR.CR4_VMXE     # VME .. OSXMMEXCPT, VMXE
        for feature, bit in (("UMIP", 11), ("LA57", 12), ("SMX", 14), ("FSGSBASE", 16), ("PCID", 17),
                             ("XSAVE", 18), ("SMEP", 20), ("SMAP", 21), ("PKU", 22), ("CET_SS", 23),
                             ("PKS", 24)):
            if self.profile_has(feature):
                ok |= 1 << bit
        return ((1 << 64) - 1) & ~ok

    def write_cr4(self, value: int) -> None:
        c = self.ctrl.read()
        cr0, cr3, old = c[REG.CR0], c[REG.CR3], c[REG.CR4]
        efer = self._efer
        if value & self.cr4_reserved():
            raise Fault(EV.GP, 0, reason=f"CR4 {value:#x} sets reserved bits {value & self.cr4_reserved():#x}")
        if efer & M.EFER_LMA and not value & AR.CR4_PAE:
            raise Fault(EV.GP, 0, reason="clearing CR4.PAE in IA-32e mode")
        if efer & M.EFER_LMA and (value ^ old) & AR.CR4_LA57:
            raise Fault(EV.GP, 0, reason="changing CR4.LA57 in IA-32e mode")
        if value & AR.CR4_PCIDE and not old & AR.CR4_PCIDE and (not efer & M.EFER_LMA or cr3 & 0xFFF):
            raise Fault(EV.GP, 0, reason="setting CR4.PCIDE outside IA-32e mode or with CR3[11:0] != 0")
        if self.cr4_fixed is not None:
            f0, f1 = self.cr4_fixed
            if (value & f0) != f0 or value & ~f1:
                raise Fault(EV.GP, 0, reason=f"CR4 {value:#x} violates the VMX fixed bits")
        pdptes = self.pdptes
        if self._pae_paging(cr0, value, efer) and (value ^ old) & (AR.CR4_PAE | AR.CR4_PSE | AR.CR4_PGE |
                                                                   AR.CR4_SMEP | AR.CR4_SMAP):
            pdptes = self._load_pdptes(cr3)
        self.engine.reg_write(REG.X.UC_X86_REG_CR4, value)
        self.pdptes = pdptes
        self.flush_tlb()

    def write_efer(self, value: int) -> None:
        """WRMSR IA32_EFER: reserved bits (msrmodel), LME cannot change while
        CR0.PG = 1 ("Initializing IA-32e Mode"), LMA is not written."""
        why = msrmodel.wrmsr_fault(self.profile, M.IA32_EFER, value)
        if why:
            raise Fault(EV.GP, 0, reason=why)
        old = self._efer
        cr0 = self.ctrl.read()[REG.CR0]
        if (value ^ old) & M.EFER_LME and cr0 & AR.CR0_PG:
            raise Fault(EV.GP, 0, reason="changing IA32_EFER.LME while paging is enabled")
        new = (value & ~M.EFER_LMA) | (old & M.EFER_LMA)
        self.engine.msr_write(M.IA32_EFER, new)
        self._efer = new
        if (new ^ old) & M.EFER_NXE:
            self.flush_tlb()

    # -- SYSCALL ----------------------------------------------------------------------------------
    def emulate_syscall(self):
        """Vol. 2 "SYSCALL-Fast System Call" in 64-bit mode (unicorn skips it; RIP is
        already past the instruction when the hook returns)."""
        g = self.gprs.read()
        next_rip = g[REG.RIP]
        if not self._efer & M.EFER_SCE or not (self._efer & M.EFER_LMA and self._in_64bit_mode()):
            g[REG.RIP] = next_rip - 2
            self.gprs.write()
            self._exception(EventInfo(EV.UD, EV.INTR_TYPE_HARD_EXCEPTION), next_rip - 2, False)
            return None
        star = self.msrs.peek(M.IA32_STAR)
        lstar = self.msrs.peek(M.IA32_LSTAR)
        fmask = self.msrs.peek(M.IA32_FMASK)
        g[REG.RCX] = next_rip
        g[11] = g[REG.RFLAGS] & ~AR.RFLAGS_RF          # R11
        g[REG.RFLAGS] = (g[REG.RFLAGS] & ~fmask & ~AR.RFLAGS_RF) | 2
        g[REG.RIP] = lstar
        sel = (star >> 32) & 0xFFFF
        blob = self.blob.load()
        blob.set_cache(CB.CS, sel & 0xFFFC, 0, 0xFFFFFFFF, CB.ar_to_flags(0xA09B))
        blob.set_cache(CB.SS, (sel + 8) & 0xFFFC, 0, 0xFFFFFFFF, CB.ar_to_flags(0xC093))
        blob.recompute_segment_hflags(self.ctrl.read()[REG.CR0], g[REG.RFLAGS])
        blob.store()
        self.gprs.write()
        return None

    # -- misc -------------------------------------------------------------------------------------
    def _state_changed(self, paging_changed: bool = True) -> None:
        self._resume_native = None
        self._bp_skip = None
        c = self.ctrl.values                      # read by set_state
        if c[REG.CR0] & AR.CR0_PG and c[REG.CR4] & AR.CR4_PAE and not self._efer & M.EFER_LMA:   # (_pae_paging)
            try:
                self.pdptes = PG.read_pdptes(self._ptacc, c[REG.CR3], self.profile.maxphyaddr)
            except (PG.PdpteFault, NonexistentMemory, SecondStageRefusal):
                self.pdptes = None
        else:
            self.pdptes = None
        if paging_changed:
            self.engine.flush_tlb()               # unicorn's TLB is not tagged by address space

    def stats(self) -> dict[str, int]:
        return {"tlb_fills": self.tlb_fills, "segments": self.segments, "emulated": self.emulated,
                "delivered": self.delivered, "sites": self.sites.hook_count(),
                "page_scans": self.sites.scan_count, "missed_io": self.missed_io}


__all__ = ["Machine", "Stop", "StopReason", "Event", "Kind", "SecondStageRefusal", "MachineNotImplemented",
           "NonexistentMemory"]

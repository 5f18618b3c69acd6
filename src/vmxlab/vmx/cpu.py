"""VMX operation on the simulated machine: the processor's VMX unit.

    cpu = VmxCpu(machine)
    cpu.vmxon(0x1000); cpu.vmclear(0x2000); cpu.vmptrld(0x2000)
    cpu.vmwrite("GUEST_RIP", ...) ...; cpu.register_host(HOST_RIP, handler)
    cpu.vmlaunch(); stop = cpu.run(...)

One implementation, two callers: these Python methods and machine code executing
VMXON .. VMFUNC in the simulator (the machine hands each such instruction to
this class as an intercept event, operands decoded with iced-x86) both end in
vmx.instructions.VmxState and in the same VM-entry and VM-exit procedures here.

Sources (Intel SDM Vol. 3C): "VMX Instruction Reference"; "VM Entries" (checks:
checks/, one implementation; "Loading Guest State", "Loading MSRs", "Event
Injection", "Special Features of VM Entry", "VM-Entry Failures During or After
Loading Guest State"); "VM Exits" ("Architectural State Before a VM Exit",
"Recording VM-Exit Information and Updating VM-Entry Control Fields", "Saving
Guest State", "Saving MSRs", "Loading Host State", "Loading MSRs"); "VMX Non-Root
Operation" ("Instructions That Cause VM Exits Unconditionally / Conditionally",
"Other Causes of VM Exits", "Changes to Instruction Behavior in VMX Non-Root
Operation"); "EPT"; "VPID".

HOST_RIP is machine code (the machine continues there in VMX root operation) or
an address registered with register_host(): then the Python function is called
as the host code at that address.  It sees the exit through `cpu.exit` and the
VMCS through vmread/vmwrite, the guest's general registers through `cpu.gpr`
(VM exits do not change them), and ends with vmresume() -- or with vmxoff() and
devirtualize(), or by returning, which leaves the processor in VMX root operation
at HOST_RIP with the host state loaded.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from itertools import compress
from operator import ne
from typing import Callable

import iced_x86 as I

from ..arch import controls as C
from ..arch import events as EV
from ..arch import exits as X
from ..arch import fields as F
from ..arch import msr_switch as MS
from ..arch import registers as AR
from ..arch.instruction_errors import VMXERR_ENTRY_EVENTS_BLOCKED_BY_MOV_SS
from ..caps import msrmodel
from ..checks import check
from ..checks.engine import entry_context, first_failure_changed, steady_runner
from ..checks.facts import facts
from ..checks.result import Result
from ..machine import paging as PG
from ..machine import registers as REG
from ..machine import context_blob as CB
from ..machine.intercepts import Action, Event, Kind, VMX_KINDS
from ..machine.linear import SecondStageRefusal
from ..machine.events import MachineNotImplemented
from ..machine.memory import NonexistentMemory
from ..machine.operands import operand_address, read_operand, segment_base, set_gpr, write_operand
from ..machine.runloop import Stop, StopReason
from ..machine.state import VMCS_ENCODINGS, VMCS_KEYS
from ..vmcs import UnknownField, Vmcs
from . import ept as EPT
from . import exit_info as XI
from . import transfer as T
from .unmodelled import refuse as refuse_unmodelled
from .bitmaps import io_exits, msr_exits
from .instructions import INVALID_POINTER, SUCCEED, Context, Outcome, VmxState

_OK = I.OpKind
_VALID = EV.INTR_INFO_VALID
_PASSED = Result.from_violations("", "vmresume", [], [])   # (its outcome: "success")
_NOT_STATUS = SUCCEED.rflags((1 << 64) - 1)      # the RFLAGS bits VMsucceed keeps

# Exit reasons of the VMX instructions in VMX non-root operation.
_VMX_EXIT = {Kind.VMXON: X.VMON, Kind.VMXOFF: X.VMOFF, Kind.VMCLEAR: X.VMCLEAR, Kind.VMPTRLD: X.VMPTRLD,
             Kind.VMPTRST: X.VMPTRST, Kind.VMREAD: X.VMREAD, Kind.VMWRITE: X.VMWRITE,
             Kind.VMLAUNCH: X.VMLAUNCH, Kind.VMRESUME: X.VMRESUME, Kind.INVEPT: X.INVEPT,
             Kind.INVVPID: X.INVVPID, Kind.VMCALL: X.VMCALL, Kind.VMFUNC: X.VMFUNC}


_CONTROL_FIELDS = frozenset(f.encoding for f in F.FIELDS if f.type == "control")
_HOST_FIELDS = frozenset(f.encoding for f in F.FIELDS if f.type == "host")
# what saving guest state can change: the guest area, the IA-32e mode guest control
# (IA32_VMX_MISC[5]), the PDPTEs, the preemption timer
_SAVED_FIELDS = tuple(dict.fromkeys((*VMCS_ENCODINGS, F.VM_ENTRY_CONTROLS, F.GUEST_PDPTR0, F.GUEST_PDPTR1,
                                     F.GUEST_PDPTR2, F.GUEST_PDPTR3, F.VMX_PREEMPTION_TIMER_VALUE,
                                     *MS.GUEST_FIELDS)))
_UNCONDITIONAL = {Kind.CPUID: X.CPUID, Kind.INVD: X.INVD, Kind.XSETBV: X.XSETBV, Kind.VMCALL: X.VMCALL}
# (Enum members on the exit path: module constants, see machine._K_CPUID)
_DONE, _STOP = Action.DONE, Action.STOP
_K_VMRESUME = Kind.VMRESUME
_RIP, _RFLAGS = REG.RIP, REG.RFLAGS
_HF_CS64_CPL = CB.HF_CS64 | CB.HF_CPL_MASK
# the exit-information fields every VM exit writes, in _exit's order
_EXIT_INFO_FIELDS = (F.VM_EXIT_REASON, F.EXIT_QUALIFICATION, F.VM_EXIT_INSTRUCTION_LEN, F.VMX_INSTRUCTION_INFO,
                     F.VM_EXIT_INTR_INFO, F.VM_EXIT_INTR_ERROR_CODE, F.IDT_VECTORING_INFO_FIELD,
                     F.IDT_VECTORING_ERROR_CODE)
# the fields _nonroot_subscription reads
_SUBSCRIPTION_INPUT = (F.CPU_BASED_VM_EXEC_CONTROL, F.SECONDARY_VM_EXEC_CONTROL, F.PIN_BASED_VM_EXEC_CONTROL,
                       F.CR0_GUEST_HOST_MASK, F.CR4_GUEST_HOST_MASK, F.EXCEPTION_BITMAP,
                       F.PAGE_FAULT_ERROR_CODE_MASK, F.PAGE_FAULT_ERROR_CODE_MATCH)
_SUBSCRIPTION_ZEROS = (0,) * len(_SUBSCRIPTION_INPUT)
# the fields _subscribe_nonroot reads (its plan is memoized by their values)
_NONROOT_INPUT = _SUBSCRIPTION_INPUT + (F.VM_EXIT_CONTROLS, F.VM_EXIT_MSR_STORE_COUNT, F.VM_EXIT_MSR_LOAD_COUNT,
                                        F.APIC_ACCESS_ADDR, F.EPT_POINTER)
_NONROOT_ZEROS = (0,) * len(_NONROOT_INPUT)


class VmxFail(Exception):
    """A VMX instruction called from Python ended in VMfailInvalid (error None) or
    VMfailValid(error)."""

    def __init__(self, error: int | None):
        super().__init__("VMfailInvalid" if error is None else f"VMfailValid({error})")
        self.error = error


class VmxFault(Exception):
    """A VMX instruction called from Python raised an exception (#UD, #GP(0))."""

    def __init__(self, vector: int, error_code: int | None = None):
        super().__init__(f"{EV.exception_name(vector)}" + (f"({error_code})" if error_code is not None else ""))
        self.vector = vector
        self.error_code = error_code


class VmxAbort(Exception):
    """A VMX abort ("VMX Aborts"): the processor is in shutdown."""


@dataclass(slots=True)
class ExitInfo:
    """The VM-exit information of the last exit (what the host reads with VMREAD)."""
    reason: int                  # exit-reason field (basic reason in bits 15:0)
    qualification: int = 0
    guest_rip: int = 0
    instruction_length: int = 0
    instruction_info: int = 0
    guest_linear: int | None = None
    guest_physical: int | None = None
    intr_info: int = 0
    intr_error_code: int = 0
    idt_vectoring_info: int = 0
    idt_vectoring_error_code: int = 0

    @property
    def basic(self) -> int:
        return self.reason & 0xFFFF

    @property
    def name(self) -> str:
        return X.name_of(self.reason)

    @property
    def entry_failure(self) -> bool:
        return bool(self.reason & X.VM_ENTRY_FAILURE)


_GUEST_TYPE = "guest"
_FAST_GUEST = {F.GUEST_RIP: REG.RIP, F.GUEST_RSP: REG.RSP, F.GUEST_RFLAGS: REG.RFLAGS}
_RIP_ONLY, _RIP_LIST = frozenset((F.GUEST_RIP,)), [F.GUEST_RIP]


def _round_trip_keeps(exit_ctl: int, entry_ctl: int) -> bool:
    """Does a VM exit followed by a VM entry leave DR7, IA32_DEBUGCTL, IA32_EFER and
    IA32_PAT as they were?  ("Saving Guest State", "Loading Host State", "Loading
    Guest State": each is saved by the exit and loaded back by the entry, or
    neither loaded by the exit nor by the entry -- EFER only the former, since the
    host address-space size and "IA-32e mode guest" rewrite LMA/LME otherwise.)"""
    debug = bool(entry_ctl & C.VM_ENTRY_LOAD_DEBUG_CONTROLS and exit_ctl & C.VM_EXIT_SAVE_DEBUG_CONTROLS)
    efer = bool(entry_ctl & C.VM_ENTRY_LOAD_IA32_EFER and exit_ctl & C.VM_EXIT_SAVE_IA32_EFER)
    load_pat, save_pat = entry_ctl & C.VM_ENTRY_LOAD_IA32_PAT, exit_ctl & C.VM_EXIT_SAVE_IA32_PAT
    pat = bool(load_pat and save_pat) or not (load_pat or exit_ctl & C.VM_EXIT_LOAD_IA32_PAT)
    return debug and efer and pat


@dataclass(slots=True)
class _Lazy:
    """A VM exit to Python host code whose guest-state saving and host-state loading
    are deferred: the machine still holds the guest's state.  Python host code
    cannot tell: VMREAD of a guest field reads the live value (what the exit would
    have saved), VMWRITE records the field, and VMRESUME applies only what changed
    -- the same final state as saving, loading the host and loading the guest.
    Anything that needs the VMCS or the host state in full (VMCLEAR, VMPTRLD,
    VMXOFF, a failing entry, a handler that returns) materializes the exit first."""
    guest_rip: int
    written: set                 # fields current in the VMCS since the exit (-1: the whole guest area)
    vmcs: Vmcs                   # the current VMCS (VMPTRLD/VMCLEAR materialize first)
    v: dict                      # its values


class ApicAccess(Exception):
    """An access to the APIC-access page (a second-stage refusal's payload)."""

    def __init__(self, gpa: int):
        super().__init__(f"APIC-access page access at {gpa:#x}")
        self.gpa = gpa


class VmxCpu:
    def __init__(self, machine):
        self.m = machine
        self.profile = machine.profile
        self.vmx = VmxState(self.profile, machine.mem.read, machine.mem.write, on_flush=self._flush)
        self.hosts: dict[int, Callable[["VmxCpu"], None]] = {}
        self._last_exit: ExitInfo | tuple | None = None    # a tuple until read (the exit path is hot)
        self.exit_count = 0
        self.observers: list[Callable[["VmxCpu", ExitInfo], None]] = []
        self._stop_request: str | None = None
        self._pending_stop: Stop | None = None
        self._ept = None                       # (eptp, mbec) when EPT is on in non-root operation
        self._pml = None                       # _pml_log while "enable PML" is 1
        self._apic_page: int | None = None      # the APIC-access page while "virtualize APIC accesses" is 1
        self._in_host = False
        self._lazy: _Lazy | None = None
        self._plan = None                      # (VMCS, checks Entry) reused by quick re-entries
        self._quick = None                     # _quick_resume's answer for the current lazy round trips
        self._entry_plan = None                # (VMCS, (host LMA, VMCS pointer), Entry): _enter_from's
        self._vpid = False
        self._rearm_needed = False
        self._lazy_ok = False
        self._ple_last: int | None = None       # TSC of the last PAUSE at CPL 0 (PAUSE-loop exiting)
        self._ple_first = 0                      # TSC of the first PAUSE of the current loop
        self._hctx: Context | None = None       # host context of the current VMCS (cache)
        self._kept = (None, False)               # ((exit, entry controls), _round_trip_keeps of them)
        self._vmrw_plans: dict[int, tuple] = {}   # RIP -> VMREAD/VMWRITE operand plan (_vmrw_fast)
        self._subscriptions: dict[tuple, tuple] = {}   # _nonroot_plan by its inputs
        self._fast_contexts: dict[tuple, Context] = {}  # _fast_resume's contexts by their inputs
        # switched MSRs every VM exit saves on this processor (arch.msr_switch)
        self._saved_msrs = T.saved_msrs(self.profile.allowed("VM_ENTRY_CONTROLS")[1],
                                        self.profile.allowed("VM_EXIT_CONTROLS")[1])
        # full-access encodings the processor supports -> width mask (VMREAD fast path)
        self._supported = {f.encoding: f.mask for f in F.FIELDS if self.profile.field_supported(f)}
        self._writable = {enc: mask for enc, mask in self._supported.items()
                          if not (enc & 0xC00) == 0x400 or self.profile.vmwrite_any_field}
        # Fields changed since the current VMCS passed every check at its last entry
        # (None: unknown -> the next entry runs every check): VM entry then runs only
        # the rules that read one of them (checks.check_changed).
        self._dirty: set[int] | None = None
        self._dirty_key = None                 # (VMCS, host LMA) the dirty set belongs to
        p = self.profile                       # CR0/CR4 fixed bits in VMX root operation
        self._root_fixed = ((p.cr0_fixed0, p.cr0_fixed1), (p.cr4_fixed0, p.cr4_fixed1))
        self._host_lma_of_entry = True
        self.full_checks = self.quick_checks = 0
        m = machine
        m.client = self._client
        m.fast_client = self._fast_instruction
        self._subscribe_root()

    @property
    def exit(self) -> ExitInfo | None:
        """The exit information of the last VM exit (None before the first)."""
        e = self._last_exit
        if e.__class__ is tuple:
            e = self._last_exit = ExitInfo(*e)
        return e

    # ---- processor context for the instructions ------------------------------------------
    def context(self) -> Context:
        m = self.m
        rflags = m.gprs.read()[REG.RFLAGS]
        c = m.ctrl.read()
        blob = m.blob.load()                      # one context save: CPL, CS.L, interrupt shadow
        hf = blob.hflags
        mov_ss = bool(hf & CB.HF_INHIBIT_IRQ) and not rflags & AR.RFLAGS_IF
        return Context(cpl=hf & CB.HF_CPL_MASK, cr0=c[REG.CR0], cr4=c[REG.CR4], efer_lma=bool(m._efer & 0x400),
                       cs_l=bool(blob.cache(CB.CS)[3] & CB.DESC_L), v8086=bool(rflags & AR.RFLAGS_VM),
                       feature_control=m.msrs.peek(0x3A), mov_ss_blocking=mov_ss)

    # ---- the Python API ------------------------------------------------------------------
    def _py(self, out: Outcome) -> Outcome:
        if out.kind == "exception":
            raise VmxFault(out.vector, out.error_code)
        if out.kind == "exit":
            raise VmxFault(EV.UD)      # Python host code never runs in VMX non-root operation
        if self._lazy is None:         # (after a lazy exit the machine's RFLAGS are the guest's)
            g = self.m.gprs.read()
            g[REG.RFLAGS] = out.rflags(g[REG.RFLAGS])
            self.m.gprs.write()
        if out.kind == "fail_invalid":
            raise VmxFail(None)
        if out.kind == "fail_valid":
            raise VmxFail(out.error)
        return out

    def _ctx(self) -> Context:
        if self._lazy is None:
            return self.context()
        if self._hctx is None:
            self._hctx = self._host_context()
        return self._hctx

    def _host_context(self) -> Context:
        """The processor context right after a VM exit, from the host-state area
        ("Loading Host State"): CPL 0, host CR0/CR4, 64-bit mode per the host
        address-space size."""
        v = self.vmx.current_vmcs.values
        long = bool(v.get(F.VM_EXIT_CONTROLS, 0) & C.VM_EXIT_HOST_ADDR_SPACE_SIZE)
        return Context(cpl=0, cr0=v.get(F.HOST_CR0, 0), cr4=v.get(F.HOST_CR4, 0), efer_lma=long, cs_l=long,
                       feature_control=self.m.msrs.peek(0x3A))

    def vmxon(self, address: int) -> None:
        self._py(self.vmx.vmxon(self._ctx(), address))
        self._after_vmx_change()

    def vmxoff(self) -> None:
        self.materialize()
        self._py(self.vmx.vmxoff(self.context()))
        self._after_vmx_change()

    def vmclear(self, address: int) -> None:
        self.materialize()
        self._py(self.vmx.vmclear(self.context(), address))
        self._dirty = None

    def vmptrld(self, address: int) -> None:
        self.materialize()
        cur = self.vmx.current
        self._py(self.vmx.vmptrld(self.context(), address))
        if self.vmx.current != cur:
            self._dirty = None

    def vmptrst(self) -> int:
        return self._py(self.vmx.vmptrst(self._ctx())).value

    def vmread(self, field: str | int) -> int:
        lazy = self._lazy
        if lazy is not None and field.__class__ is int:
            f = self._supported.get(field)        # right after an exit: CPL 0, a current VMCS
            if f is not None:                     # (a full-access encoding: even)
                if (field & 0xC00) == 0x800 and field not in lazy.written:    # a guest-state field
                    self._lazy_guest_field(field)
                return lazy.v.get(field, 0) & f
        if field.__class__ is not int:
            return self.vmread(F.by_name(field).encoding)
        return self._py(self.vmx.vmread(self._ctx(), field)).value

    def vmwrite(self, field: str | int, value: int) -> None:
        lazy = self._lazy
        if lazy is not None and field.__class__ is int:
            mask = self._writable.get(field)      # right after an exit: CPL 0, a current VMCS
            if mask is not None:
                lazy.v[field] = value & mask
                lazy.written.add(field)
                dirty = self._dirty
                if dirty is not None:
                    dirty.add(field)
                return
        if field.__class__ is not int:
            self.vmwrite(F.by_name(field).encoding, value)
            return
        full = field & ~1                         # (a HIGH access encoding names its 64-bit field)
        if lazy is not None and (field & 0xC00) == 0x800 and full not in lazy.written:
            self._lazy_guest_field(full)          # HIGH writes keep the low half: fill it first
        self._py(self.vmx.vmwrite(self._ctx(), field, value))
        if lazy is not None:
            lazy.written.add(full)
        if self._dirty is not None:
            self._dirty.add(full)

    def invept(self, itype: int, eptp: int = 0) -> None:
        self._py(self.vmx.invept(self.context(), itype, struct.pack("<QQ", eptp, 0)))

    def invvpid(self, itype: int, vpid: int = 0, linear: int = 0) -> None:
        self._py(self.vmx.invvpid(self.context(), itype, struct.pack("<QQ", vpid, linear)))

    def vmlaunch(self) -> None:
        self.materialize()
        self._enter_from(self.context(), launch=True, python=True)

    def vmresume(self) -> None:
        if self._lazy is not None:
            self._lazy_resume()
            return
        self._enter_from(self.context(), launch=False, python=True)

    def register_host(self, address: int, handler: Callable[["VmxCpu"], None]) -> None:
        """Python host code at `address`: called when a VM exit loads HOST_RIP = address."""
        self.hosts[address] = handler

    def stop(self, why: str = "stop requested") -> None:
        """From host code: end the current run() after this exit (the processor stays
        in the state the handler left it in)."""
        self._stop_request = why

    # general registers for Python host code (VM exits do not change them)
    def gpr(self, name: str) -> int:
        return self.m.gprs.read()[REG.GPR_INDEX[name.upper()]]

    def set_gpr(self, name: str, value: int) -> None:
        g = self.m.gprs.read()
        g[REG.GPR_INDEX[name.upper()]] = value & ((1 << 64) - 1)
        self.m.gprs.write()

    # ---- running ---------------------------------------------------------------------------
    def run(self, time_budget: float | None = None, instruction_budget: int | None = None) -> Stop:
        """Run the processor (guest, VM exits, host code) until a stop reason."""
        while True:
            if self._pending_stop is not None:
                stop, self._pending_stop = self._pending_stop, None
                return stop
            stop = self.m.run(time_budget=time_budget, instruction_budget=instruction_budget)
            if stop.reason == StopReason.SECOND_STAGE and self.vmx.non_root:
                self._ept_exit(stop)
                if self._take_stop_request():
                    return Stop(StopReason.EVENT, self.m.rip, detail=self._last_stop_detail)
                continue
            if stop.reason == StopReason.EVENT and stop.event is not None and stop.event.detail == "vmx-stop":
                return Stop(StopReason.EVENT, self.m.rip, stop.event, self._last_stop_detail)
            return stop

    _last_stop_detail = ""

    def _take_stop_request(self) -> bool:
        if self._stop_request is None:
            return False
        self._last_stop_detail, self._stop_request = self._stop_request, None
        return True

    # ---- the machine client -----------------------------------------------------------------
    def _client(self, m, ev: Event) -> Action:
        if self.vmx.non_root:
            reason = _UNCONDITIONAL.get(ev.kind)
            if reason is not None:                # CPUID, INVD, XSETBV, VMCALL: always exit
                action = self._exit(reason, 0, ev.rip, length=ev.length)
            else:
                action = self._nonroot(ev)
        else:
            action = self._root(ev)
        if self._stop_request is not None and action is _DONE:
            self._take_stop_request()
            ev.detail = "vmx-stop"
            return _STOP
        return action

    # ---- VMX root operation (and outside VMX operation) -------------------------------------------
    def _subscribe_root(self) -> None:
        m = self.m
        self._quick = None
        m.second_stage = None
        m.request_interrupt_window(False)
        m.request_nmi_window(False)
        m.request_mtf(False)
        m.set_tsc_deadline(None)
        if self.vmx.in_vmx:
            m.intercept(*VMX_KINDS, exceptions=0)
            m.cr0_fixed, m.cr4_fixed = self._root_fixed
        else:
            m.intercept(Kind.VMXON, exceptions=0)
            m.cr0_fixed = m.cr4_fixed = None

    def _after_vmx_change(self) -> None:
        if not self.vmx.non_root:
            self._subscribe_root()

    def _root(self, ev: Event) -> Action:
        k = ev.kind
        if k not in VMX_KINDS:
            return Action.NATIVE
        if k == Kind.VMFUNC:
            return Action.NATIVE                      # #UD outside non-root operation
        if (k is Kind.VMREAD or k is Kind.VMWRITE) and self._vmrw_fast(ev):
            return Action.DONE
        ctx = self.context()
        insn = ev.insn
        if k is not Kind.VMXON:
            early = self.vmx._common(ctx)             # #UD, #GP before any memory operand is read
            if early is not None:
                return self._finish_insn(early, ev)
        # (VMXON: only past its #UD conditions, which come first)
        if k is not Kind.VMXON or (ctx.cr4 & AR.CR4_VMXE and ctx.cr0 & AR.CR0_PE):
            bad = self._noncanonical_operand(insn, ctx)
            if bad is not None:
                return self._finish_insn(bad, ev)
        try:
            out = self._execute(k, ctx, insn)
        except PG.PageFault as pf:                    # a memory operand that cannot be accessed
            return self._operand_fault(pf, ev)
        except NonexistentMemory as e:
            self.stop(f"{insn} at {ev.rip:#x}: {e}")
            return Action.DONE
        if out is None:                               # VM entry performed (or failed into host)
            return Action.DONE
        return self._finish_insn(out, ev)

    def _shadow_vmrw(self, ev: Event, v: dict[int, int]) -> Action | None:
        """VMREAD/VMWRITE in non-root operation with "VMCS shadowing" ("VMREAD",
        "VMWRITE" Operation; "VMCS Shadowing"): a VM exit (None) if the encoding sets a
        bit in 63:15 or its bit (bits 14:0) in the VMREAD/VMWRITE bitmap is 1; else the
        instruction runs on the VMCS the link pointer references."""
        m = self.m
        insn = ev.insn
        ctx = self.context()
        if ctx.ud_mode:
            return None                                # (#UD conditions: the general path)
        read = ev.kind is Kind.VMREAD
        bits = self._operand_bits(ctx)
        if ctx.cpl == 0:
            bad = self._noncanonical_operand(insn, ctx)
            if bad is not None:
                return self._finish_insn(bad, ev)
        try:
            enc = read_operand(m, insn, 1 if read else 0, bits // 8)
            bitmap = v.get(F.VMREAD_BITMAP if read else F.VMWRITE_BITMAP, 0)
            if enc >> 15 or m.mem.read(bitmap + ((enc & 0x7FFF) >> 3), 1)[0] >> (enc & 7) & 1:
                return None
            link = v.get(F.VMCS_LINK_POINTER, INVALID_POINTER)
            if read:
                out = self.vmx.vmread_shadow(ctx, link, enc, bits)
                if out.kind == "succeed":
                    write_operand(m, insn, 0, out.value, bits // 8)
            else:
                out = self.vmx.vmwrite_shadow(ctx, link, enc, read_operand(m, insn, 1, bits // 8), bits)
        except PG.PageFault as pf:
            return self._operand_fault(pf, ev)
        except SecondStageRefusal as r:                # EPT refuses the memory operand
            self._ept_exit(self.m.memory_stop(r, ev.rip))
            return Action.DONE
        return self._finish_insn(out, ev)

    def _noncanonical_operand(self, insn, ctx: Context) -> Outcome | None:
        """64-bit mode: a memory operand at a non-canonical address is #GP(0), or
        #SS(0) through SS (the VMX instructions' "64-Bit Mode Exceptions")."""
        if not (ctx.efer_lma and ctx.cs_l) or insn is None or not XI.has_memory_operand(insn):
            return None
        address = operand_address(self.m, insn)
        if AR.canonical(address, self.m.linear_bits):
            return None
        stack = insn.memory_segment == I.Register.SS
        return Outcome("exception", vector=EV.SS if stack else EV.GP, error_code=0)

    def _operand_fault(self, pf: PG.PageFault, ev: Event) -> Action:
        """#PF for a VMX instruction's memory operand: in VMX non-root operation as any
        guest exception (_raise); in root operation delivered (CR2 = the address)."""
        if self.vmx.non_root:
            return self._raise(EV.PF, pf.error_code, ev.rip, cr2=pf.linear)
        self.m._set_cr2(pf.linear)
        self.m.deliver(EV.PF, EV.INTR_TYPE_HARD_EXCEPTION, pf.error_code)
        return Action.DONE

    def _vmrw_fast(self, ev: Event) -> bool:
        return self._fast_instruction(ev.rip, ev.insn, ev.kind, self.m.blob.load().hflags, self.m.gprs.read())

    def _fast_instruction(self, rip: int, insn, kind: Kind, hf: int, g=None) -> bool:
        """VMREAD r64, r64 / VMWRITE r64, r64 in 64-bit mode at CPL 0 in VMX root
        operation with a current VMCS and a supported field: the usual case of the
        VMREAD/VMWRITE operation, done here without the general path's context,
        operand and outcome objects.  Machine.fast_client (straight from the #UD
        hook; `g` None: the machine's gprs.values are current) and _root's fast path.
        `hf`: QEMU's hflags.  False (nothing done) for anything else: the general
        path decides."""
        if kind is _K_VMRESUME:
            return self._fast_resume(rip, insn, hf)
        plan = self._vmrw_plans.get(rip)
        if plan is None or plan[0] is not insn:          # decode_at returns the same object for the same bytes
            if kind is not Kind.VMREAD and kind is not Kind.VMWRITE:
                return False
            plan = self._vmrw_plan(rip, insn, kind)
        if plan[1] is None or self._lazy is not None or self._stop_request is not None or self.vmx.non_root:
            return False
        vmx, m = self.vmx, self.m
        cur = vmx.vmcs.get(vmx.current)                  # (current_vmcs: INVALID_POINTER is never a key)
        if cur is None or not vmx.in_vmx:
            return False
        if hf & _HF_CS64_CPL != CB.HF_CS64:              # #UD outside 64-bit mode, #GP at CPL > 0
            return False
        _insn, reading, a, b = plan
        if g is None:
            g = m.gprs.values
        enc = g[b] if reading else g[a]
        if reading:                                      # VMREAD r/m64 (a), r64 (b)
            if self._supported.get(enc) is None:
                return False
            value = cur.values.get(enc, cur.default)
            if value is None:
                return False
            g[a] = value & 0xFFFFFFFFFFFFFFFF
        else:                                            # VMWRITE r64 (a), r/m64 (b)
            mask = self._writable.get(enc)
            if mask is None:
                return False
            cur.values[enc] = g[b] & mask
            if self._dirty is not None:
                self._dirty.add(enc)
        g[_RFLAGS] &= _NOT_STATUS                         # VMsucceed
        g[_RIP] = (rip + insn.len) & 0xFFFFFFFFFFFFFFFF
        m.gprs.write()
        return True

    def _fast_resume(self, rip: int, insn, hf: int):
        """VMRESUME from machine code in VMX root operation (Machine.fast_client): what
        _client and _root do for it, without building the Event.  Returns False (the
        general path decides: #UD, #GP, a lazy exit), Action.DONE (the entry leaves
        requests for the boundary: windows, MTF, deadlines, injected events), or the
        Stop a stop request made during it ends the run with.  (Its #UD and #GP
        conditions cannot hold in 64-bit mode at CPL 0: _enter_from checks them.)"""
        vmx = self.vmx
        if self._lazy is not None or self._stop_request is not None or vmx.non_root or not vmx.in_vmx \
                or not hf & CB.HF_CS64 or hf & CB.HF_CPL_MASK:
            return False
        m = self.m
        tsc = m.tsc
        tsc.pause()                                      # (as for an inline client)
        try:
            # context() without its blob load: in 64-bit mode (hflags CS64: EFER.LMA and
            # CS.L, as QEMU derives it) at CPL 0; a frozen Context, kept by its inputs
            c = m.ctrl.read()
            rflags = m.gprs.values[_RFLAGS]
            mov_ss = bool(hf & CB.HF_INHIBIT_IRQ) and not rflags & AR.RFLAGS_IF
            key = (c[REG.CR0], c[REG.CR4], m._efer & 0x400, rflags & AR.RFLAGS_VM, m.msrs.peek(0x3A), mov_ss)
            ctx = self._fast_contexts.get(key)
            if ctx is None:
                if len(self._fast_contexts) > 16:
                    self._fast_contexts.clear()
                ctx = self._fast_contexts[key] = Context(
                    cpl=0, cr0=key[0], cr4=key[1], efer_lma=bool(key[2]), cs_l=True, v8086=bool(key[3]),
                    feature_control=key[4], mov_ss_blocking=mov_ss)
            try:
                self._enter_from(ctx, launch=False, python=False, insn_length=insn.len)
            except PG.PageFault as pf:
                self._operand_fault(pf, Event(Kind.VMRESUME, rip, insn.len, insn))
            except NonexistentMemory as e:
                self.stop(f"{insn} at {rip:#x}: {e}")
        finally:
            tsc.resume()
        if self._stop_request is not None:
            self._take_stop_request()
            return Stop(StopReason.EVENT, rip, Event(Kind.VMRESUME, rip, insn.len, insn, detail="vmx-stop"))
        return _DONE

    def _vmrw_plan(self, rip: int, insn, kind: Kind):
        """(insn, reading, operand 0 GPR index, operand 1 GPR index) of a VMREAD/VMWRITE
        with two 64-bit register operands, else (insn, None, 0, 0)."""
        plan = (insn, None, 0, 0)
        if insn.op_count == 2 and insn.op0_kind == _OK.REGISTER and insn.op1_kind == _OK.REGISTER:
            r0, r1 = REG.ICED_GPR.get(insn.op0_register), REG.ICED_GPR.get(insn.op1_register)
            if r0 is not None and r1 is not None and r0[1:] == (8, 0) and r1[1:] == (8, 0):
                plan = (insn, kind is Kind.VMREAD, r0[0], r1[0])
        if len(self._vmrw_plans) > 1024:
            self._vmrw_plans.clear()
        self._vmrw_plans[rip] = plan
        return plan

    def _execute(self, k: Kind, ctx: Context, insn) -> Outcome | None:
        m = self.m
        v = self.vmx
        mem_op = XI.has_memory_operand(insn) if insn is not None else False
        if k == Kind.VMXON:
            out = v.vmxon(ctx, self._qword(insn) if mem_op else 0, register_operand=not mem_op)
            self._after_vmx_change()
            return out
        if k == Kind.VMXOFF:
            out = v.vmxoff(ctx)
            self._after_vmx_change()
            return out
        if k == Kind.VMCLEAR:
            self._dirty = None
            return v.vmclear(ctx, self._qword(insn) if mem_op else 0, register_operand=not mem_op)
        if k == Kind.VMPTRLD:
            self._dirty = None
            return v.vmptrld(ctx, self._qword(insn) if mem_op else 0, register_operand=not mem_op)
        if k == Kind.VMPTRST:
            out = v.vmptrst(ctx, register_operand=not mem_op)
            if out.kind == "succeed":
                write_operand(m, insn, 0, out.value, 8)
            return out
        bits = self._operand_bits(ctx)
        if k == Kind.VMREAD:                          # VMREAD r/m, r
            enc = read_operand(m, insn, 1, bits // 8)
            out = v.vmread(ctx, enc, bits)
            if out.kind == "succeed":
                write_operand(m, insn, 0, out.value, bits // 8)
            return out
        if k == Kind.VMWRITE:                         # VMWRITE r, r/m
            enc = read_operand(m, insn, 0, bits // 8)
            value = read_operand(m, insn, 1, bits // 8)
            out = v.vmwrite(ctx, enc, value, bits)
            if self._dirty is not None:
                self._dirty.add(enc & ~1)
            return out
        if k in (Kind.INVEPT, Kind.INVVPID):
            itype = read_operand(m, insn, 0, bits // 8)
            desc = m.read_linear(operand_address(m, insn, 1), 16)
            return (v.invept if k == Kind.INVEPT else v.invvpid)(ctx, itype, desc)
        if k == Kind.VMCALL:
            return v.vmcall(ctx)
        if k in (Kind.VMLAUNCH, Kind.VMRESUME):
            self._enter_from(ctx, launch=k == Kind.VMLAUNCH, python=False, insn_length=insn.len)
            return None
        raise AssertionError(k)

    def _operand_bits(self, ctx: Context) -> int:
        return 64 if ctx.efer_lma and ctx.cs_l else 32

    def _qword(self, insn) -> int:
        return int.from_bytes(self.m.read_linear(operand_address(self.m, insn), 8), "little")

    def _finish_insn(self, out: Outcome, ev: Event) -> Action:
        m = self.m
        if out.kind == "exception":
            m.deliver(out.vector, EV.INTR_TYPE_HARD_EXCEPTION, out.error_code)
            return Action.DONE
        g = m.gprs.read()
        g[REG.RFLAGS] = out.rflags(g[REG.RFLAGS])
        g[REG.RIP] = (ev.rip + ev.length) & ((1 << 64) - 1)
        m.gprs.write()
        return Action.DONE

    # ---- VM entry ------------------------------------------------------------------------------
    def _enter_from(self, ctx: Context, launch: bool, python: bool, insn_length: int = 0) -> None:
        """VMLAUNCH/VMRESUME: the instruction's checks, the VM-entry checks, then entry."""
        v = self.vmx
        out = v.vmlaunch(ctx, resume=not launch)
        if out.kind != "entry":
            self._instruction_result(out, python, insn_length)
            return
        vmcs = v.current_vmcs
        instruction = "vmlaunch" if launch else "vmresume"
        dirty = self._dirty
        controls_checked = False
        if dirty is not None and not launch and self._dirty_key == (id(vmcs), ctx.efer_lma) \
                and vmcs.launch_state == "launched" and not ctx.mov_ss_blocking:
            self.quick_checks += 1
            # the last entry with this VMCS succeeded: unchanged controls were refused nothing
            controls_checked = dirty.isdisjoint(_CONTROL_FIELDS)
            # the checks' Entry (effective controls, host LMA, VMCS pointer) is kept while
            # the controls do not change
            plan = self._entry_plan
            where = (ctx.efer_lma, v.current)
            if not controls_checked or plan is None or plan[0] is not vmcs or plan[1] != where:
                plan = self._entry_plan = (vmcs, where, entry_context(vmcs, self.profile, "vmresume", *where))
            result = first_failure_changed(vmcs, self.profile, dirty, self._read_host_or_none, "vmresume",
                                           ctx.efer_lma, False, v.current, plan[2]) or _PASSED
        else:
            self.full_checks += 1
            result = check(vmcs, self.profile, memory=self._read_host_or_none, instruction=instruction,
                           host_lma=ctx.efer_lma, mov_ss_blocking=ctx.mov_ss_blocking, vmcs_pointer=v.current)
        self._dirty = None
        if result.outcome == "vmfail_invalid":
            self._instruction_result(Outcome("fail_invalid"), python, insn_length)
            return
        if result.outcome == "vmfail_valid":
            self._instruction_result(v.fail(result.error), python, insn_length)
            return
        if result.outcome == "entry_failure":
            self.last_check = result
            self._entry_failure(result.exit_reason, result.qualification)
            return
        self._host_lma_of_entry = ctx.efer_lma
        self._load_guest_and_enter(vmcs, launch, controls_checked)

    def _instruction_result(self, out: Outcome, python: bool, insn_length: int) -> None:
        if python:
            self._py(out)
            return
        m = self.m
        if out.kind == "exception":
            m.deliver(out.vector, EV.INTR_TYPE_HARD_EXCEPTION, out.error_code)
            return
        g = m.gprs.read()
        g[REG.RFLAGS] = out.rflags(g[REG.RFLAGS])
        g[REG.RIP] = (g[REG.RIP] + insn_length) & ((1 << 64) - 1)
        m.gprs.write()

    def _read_host_or_none(self, address: int, size: int) -> bytes | None:
        mem = self.m.mem
        return mem.read(address, size) if mem.contains(address, size) else None

    def _load_guest_and_enter(self, vmcs: Vmcs, launch: bool, controls_checked: bool = False) -> None:
        m, v = self.m, vmcs.values
        if not controls_checked:
            refuse_unmodelled(v)
        if len(v) < len(F.FIELDS):                # every encoding present: the checker's fast path
            for f in F.FIELDS:
                v.setdefault(f.encoding, 0)
        # what "Loading Guest State" keeps from the processor (under the entry controls);
        # every other guest-state key comes from the VMCS
        c = m.ctrl.read()
        kept = {"GUEST_CR0": c[REG.CR0], "GUEST_IA32_EFER": m._efer, "GUEST_DR7": c[REG.DR7],
                "GUEST_IA32_DEBUGCTL": m.msrs.peek(0x1D9), "GUEST_IA32_PAT": m.msrs.peek(0x277)}
        m.set_vmcs_state(T.load_guest(v, kept))
        T.load_guest_msrs(v, m.msrs.poke)
        entry_ctl = v.get(F.VM_ENTRY_CONTROLS, 0)
        # "Loading MSRs": the VM-entry MSR-load area, in order (the checker has tested each entry)
        count = v.get(F.VM_ENTRY_MSR_LOAD_COUNT, 0)
        for index, (msr, value) in enumerate(self._msr_area(v.get(F.VM_ENTRY_MSR_LOAD_ADDR, 0), count)
                                             if count else (), 1):
            why = msrmodel.wrmsr_fault(self.profile, msr, value, m.msrs.peek(msr) if m.msrs.exists(msr) else None)
            if why:
                self._entry_failure(X.MSR_LOAD_FAIL, index)
                return
            m.msrs.write(msr, value)
        if launch:
            vmcs.launch_state = "launched"
        self._dirty = set()
        self._dirty_key = (id(vmcs), self._host_lma_of_entry)
        self.vmx.non_root = True
        self._subscribe_nonroot(v)
        if not self._vpid:                      # (set by _subscribe_nonroot from these controls)
            m.flush_tlb()                       # without VPID, entries invalidate linear mappings
        self._inject(v)

    def _inject(self, v: dict[int, int]) -> None:
        """"Event Injection" from the VM-entry interruption-information field."""
        m = self.m
        info = v.get(F.VM_ENTRY_INTR_INFO_FIELD, 0)
        if info & _VALID:
            vector, itype = info & 0xFF, (info >> 8) & 7
            code = v.get(F.VM_ENTRY_EXCEPTION_ERROR_CODE, 0) if info & EV.INTR_INFO_DELIVER_CODE else None
            length = v.get(F.VM_ENTRY_INSTRUCTION_LEN, 0) if itype in (4, 5, 6) else 0
            if itype == EV.INTR_TYPE_OTHER_EVENT:
                # vector 0: a pending MTF VM exit, "on the instruction boundary before the first
                # instruction following the VM entry" -- even with the MTF control 0
                m.request_mtf(True, pending=True)
            else:
                if m.activity == EV.ACTIVITY_HLT:
                    m.activity = EV.ACTIVITY_ACTIVE
                problem = m.deliver(vector, itype, code, length)
                if problem is not None:
                    self._event_exit(problem)

    def _entry_failure(self, reason: int, qualification: int) -> None:
        """"VM-Entry Failures During or After Loading Guest State": exit reason with
        bit 31, the qualification, host state loaded, VM-exit MSR-load area loaded;
        no guest state is saved."""
        vmcs = self.vmx.current_vmcs
        v = vmcs.values
        v[F.VM_EXIT_REASON] = X.VM_ENTRY_FAILURE | reason
        v[F.EXIT_QUALIFICATION] = qualification
        v[F.VM_ENTRY_INTR_INFO_FIELD] = v.get(F.VM_ENTRY_INTR_INFO_FIELD, 0) & ~_VALID
        self._last_exit = ExitInfo(X.VM_ENTRY_FAILURE | reason, qualification,
                              guest_rip=v.get(F.GUEST_RIP, 0))
        self._to_host(v, save_guest=False)

    # ---- VMX non-root operation ---------------------------------------------------------------
    @staticmethod
    def _controls(v: dict[int, int]) -> tuple[int, int, int, int]:
        cpu = v.get(F.CPU_BASED_VM_EXEC_CONTROL, 0)
        sec = v.get(F.SECONDARY_VM_EXEC_CONTROL, 0) if cpu & C.CPU_BASED_ACTIVATE_SECONDARY_CONTROLS else 0
        return cpu, sec, v.get(F.PIN_BASED_VM_EXEC_CONTROL, 0), v.get(F.VM_EXIT_CONTROLS, 0)

    def _subscribe_nonroot(self, v: dict[int, int]) -> None:
        """Intercepts follow the controls: the kinds that can exit, or that behave
        differently in non-root operation, go to _nonroot; the rest run natively."""
        m = self.m
        self._quick = None
        key = tuple(map(v.get, _NONROOT_INPUT, _NONROOT_ZEROS))
        plan = self._subscriptions.get(key)
        if plan is None:
            if len(self._subscriptions) > 64:
                self._subscriptions.clear()
            plan = self._subscriptions[key] = self._nonroot_plan(v)
        self._vpid, self._lazy_ok, self._rearm_needed, kinds, bitmap, apic, ept, pml, cr0_fixed, cr4_fixed = plan
        self._hctx = None
        m.intercept(*kinds, exceptions=bitmap)
        if self._rearm_needed or m._window_irq or m._window_nmi or m._mtf is not None or m._mtf_hook \
                or m._tsc_deadline is not None:
            self._rearm(v)
        else:
            self._ple_last = None                 # (all _rearm does when no control asks and nothing is armed)
        self._apic_page = apic
        self._ept = ept
        if ept is not None:
            self._pml = self._pml_log if pml else None
            m.set_second_stage(self._second_stage, tag=ept if apic is None else (ept, apic))
        elif apic is not None:                    # guest-physical = physical, but the APIC-access page
            m.set_second_stage(self._apic_stage, tag=("apic", apic))
        else:
            m.second_stage = None
        m.cr0_fixed = cr0_fixed
        m.cr4_fixed = cr4_fixed

    def _nonroot_plan(self, v: dict[int, int]) -> tuple:
        """What _subscribe_nonroot applies, from the _NONROOT_INPUT fields (memoized)."""
        cpu, sec, pin, _ = self._controls(v)
        # exits to Python host code can be lazy when the exit has no MSR-store/load
        # area, does not save the preemption timer and switches no MSR by a control
        # (their effects need the full path: host code may read the MSRs)
        lazy_ok = not (v.get(F.VM_EXIT_MSR_STORE_COUNT, 0) or v.get(F.VM_EXIT_MSR_LOAD_COUNT, 0)
                       or v.get(F.VM_EXIT_CONTROLS, 0) & (C.VM_EXIT_SAVE_VMX_PREEMPTION_TIMER | MS.EXIT_CHANGES))
        rearm_needed = bool(cpu & (C.CPU_BASED_INTR_WINDOW_EXITING | C.CPU_BASED_NMI_WINDOW_EXITING
                                   | C.CPU_BASED_MONITOR_TRAP_FLAG)
                            or pin & C.PIN_BASED_VMX_PREEMPTION_TIMER
                            or sec & C.SECONDARY_EXEC_PAUSE_LOOP_EXITING)
        kinds, bitmap = self._nonroot_subscription(v, cpu, sec, pin)
        apic = v.get(F.APIC_ACCESS_ADDR, 0) & ~0xFFF if sec & C.SECONDARY_EXEC_VIRTUALIZE_APIC_ACCESSES else None
        ept = None
        if sec & C.SECONDARY_EXEC_ENABLE_EPT:
            ept = (v.get(F.EPT_POINTER, 0), bool(sec & C.SECONDARY_EXEC_MODE_BASED_EPT_EXEC))
        # In VMX non-root operation CR0/CR4 fixed bits apply to the guest's values
        # ("Changes to Instruction Behavior": unrestricted guest relaxes PE and PG).
        f0 = self.profile.cr0_fixed0
        if sec & C.SECONDARY_EXEC_UNRESTRICTED_GUEST:
            f0 &= ~(AR.CR0_PE | AR.CR0_PG)
        return (bool(sec & C.SECONDARY_EXEC_ENABLE_VPID), lazy_ok, rearm_needed, kinds, bitmap, apic, ept,
                bool(sec & C.SECONDARY_EXEC_ENABLE_PML), (f0, self.profile.cr0_fixed1),
                (self.profile.cr4_fixed0, self.profile.cr4_fixed1))

    def _nonroot_subscription(self, v: dict[int, int], cpu: int, sec: int, pin: int) -> tuple[tuple, int]:
        """(kinds, exception bitmap) to intercept in non-root operation under these
        controls (a function of the _SUBSCRIPTION_INPUT fields: memoized)."""
        kinds = {Kind.CPUID, Kind.INVD, Kind.XSETBV, Kind.GETSEC, Kind.TRIPLE_FAULT, *VMX_KINDS}
        kinds |= {Kind.RDMSR, Kind.WRMSR}          # exit or not per MSR: the bitmaps decide
        if cpu & (C.CPU_BASED_UNCOND_IO_EXITING | C.CPU_BASED_USE_IO_BITMAPS):
            kinds.add(Kind.IO)
        if v.get(F.CR0_GUEST_HOST_MASK, 0) or v.get(F.CR4_GUEST_HOST_MASK, 0) or \
                cpu & (C.CPU_BASED_CR3_LOAD_EXITING | C.CPU_BASED_CR3_STORE_EXITING |
                       C.CPU_BASED_CR8_LOAD_EXITING | C.CPU_BASED_CR8_STORE_EXITING | C.CPU_BASED_TPR_SHADOW):
            kinds |= {Kind.MOV_TO_CR, Kind.MOV_FROM_CR, Kind.CLTS, Kind.LMSW}
        if cpu & C.CPU_BASED_MOV_DR_EXITING:
            kinds.add(Kind.MOV_DR)
        for control, kind in ((C.CPU_BASED_HLT_EXITING, Kind.HLT), (C.CPU_BASED_INVLPG_EXITING, Kind.INVLPG),
                              (C.CPU_BASED_RDPMC_EXITING, Kind.RDPMC), (C.CPU_BASED_PAUSE_EXITING, Kind.PAUSE),
                              (C.CPU_BASED_MONITOR_EXITING, Kind.MONITOR), (C.CPU_BASED_MWAIT_EXITING, Kind.MWAIT)):
            if cpu & control:
                kinds.add(kind)
        if sec & C.SECONDARY_EXEC_PAUSE_LOOP_EXITING:
            kinds.add(Kind.PAUSE)
        if cpu & (C.CPU_BASED_RDTSC_EXITING | C.CPU_BASED_USE_TSC_OFFSETTING):
            kinds |= {Kind.RDTSC, Kind.RDTSCP}
        kinds |= {Kind.RDTSCP, Kind.INVPCID, Kind.XSAVES, Kind.XRSTORS}   # #UD unless enabled
        for control, kind in ((C.SECONDARY_EXEC_WBINVD_EXITING, Kind.WBINVD),
                              (C.SECONDARY_EXEC_RDRAND_EXITING, Kind.RDRAND),
                              (C.SECONDARY_EXEC_RDSEED_EXITING, Kind.RDSEED)):
            if sec & control:
                kinds.add(kind)
        if sec & C.SECONDARY_EXEC_DESC:
            kinds |= {Kind.GDTR_IDTR, Kind.LDTR_TR}
        if pin & C.PIN_BASED_EXT_INTR_MASK:
            kinds.add(Kind.EXTERNAL_INTERRUPT)
        if pin & C.PIN_BASED_NMI_EXITING:
            kinds.add(Kind.NMI)
        kinds |= {Kind.INTERRUPT_WINDOW, Kind.NMI_WINDOW, Kind.TSC_DEADLINE, Kind.MTF}
        bitmap = v.get(F.EXCEPTION_BITMAP, 0)
        if not bitmap >> 14 & 1 and (v.get(F.PAGE_FAULT_ERROR_CODE_MASK, 0) or v.get(F.PAGE_FAULT_ERROR_CODE_MATCH, 0)):
            bitmap |= 1 << 14                     # #PF may exit through the error-code mask/match
        return tuple(kinds), bitmap

    def _nonroot(self, ev: Event) -> Action:
        """An intercepted event in VMX non-root operation (the unconditional exits
        are _client's): a VM exit, a virtualized behaviour, or native execution."""
        k = ev.kind
        v = self.vmx.current_vmcs.values
        cpu, sec, pin, _ = self._controls(v)
        m = self.m
        if k in (Kind.RDMSR, Kind.WRMSR):
            bitmap = v.get(F.MSR_BITMAP, 0) if cpu & C.CPU_BASED_USE_MSR_BITMAPS else None
            if msr_exits(bitmap, ev.msr, k == Kind.WRMSR, self._host_byte):
                return self._instruction_exit(ev, X.MSR_READ if k == Kind.RDMSR else X.MSR_WRITE)
            if ev.msr == 0x808 and sec & C.SECONDARY_EXEC_VIRTUALIZE_X2APIC_MODE:
                return self._x2apic_tpr(ev, v)
            return Action.NATIVE
        if k == Kind.IO:
            maps = (v.get(F.IO_BITMAP_A, 0), v.get(F.IO_BITMAP_B, 0)) if cpu & C.CPU_BASED_USE_IO_BITMAPS else None
            if io_exits(ev.port, ev.size, bool(cpu & C.CPU_BASED_UNCOND_IO_EXITING), maps, self._host_byte):
                return self._io_exit(ev)
            return Action.NATIVE
        if k in (Kind.MOV_TO_CR, Kind.MOV_FROM_CR, Kind.CLTS, Kind.LMSW):
            return self._cr_access(ev, v, cpu)
        if k == Kind.MOV_DR:
            return self._instruction_exit(ev, X.DR_ACCESS, XI.dr_access_qualification(ev.insn))
        if k == Kind.HLT:
            return self._instruction_exit(ev, X.HLT)
        if k == Kind.INVLPG:
            return self._instruction_exit(ev, X.INVLPG, ev.address or 0)
        if k == Kind.INVPCID:
            if not sec & C.SECONDARY_EXEC_ENABLE_INVPCID:
                return self._raise(EV.UD)
            if cpu & C.CPU_BASED_INVLPG_EXITING:
                return self._instruction_exit(ev, X.INVPCID, XI.displacement(ev.insn), info=True)
            return Action.NATIVE
        if k == Kind.PAUSE and not cpu & C.CPU_BASED_PAUSE_EXITING:
            return self._pause_loop(ev, v)
        if k in (Kind.RDPMC, Kind.PAUSE, Kind.MONITOR, Kind.MWAIT, Kind.WBINVD, Kind.RDRAND, Kind.RDSEED):
            reason = {Kind.RDPMC: X.RDPMC, Kind.PAUSE: X.PAUSE_INSTRUCTION, Kind.MONITOR: X.MONITOR_INSTRUCTION,
                      Kind.MWAIT: X.MWAIT_INSTRUCTION, Kind.WBINVD: X.WBINVD, Kind.RDRAND: X.RDRAND,
                      Kind.RDSEED: X.RDSEED}[k]
            return self._instruction_exit(ev, reason, info=k in (Kind.RDRAND, Kind.RDSEED))
        if k in (Kind.RDTSC, Kind.RDTSCP):
            if k == Kind.RDTSCP and not sec & C.SECONDARY_EXEC_ENABLE_RDTSCP:
                return self._raise(EV.UD)
            if cpu & C.CPU_BASED_RDTSC_EXITING:
                return self._instruction_exit(ev, X.RDTSC if k == Kind.RDTSC else X.RDTSCP)
            if cpu & C.CPU_BASED_USE_TSC_OFFSETTING:
                return self._rdtsc_offset(ev, v, sec)
            return Action.NATIVE
        if k in (Kind.GDTR_IDTR, Kind.LDTR_TR):
            reason = X.GDTR_IDTR if k == Kind.GDTR_IDTR else X.LDTR_TR
            qual = XI.displacement(ev.insn) if XI.has_memory_operand(ev.insn) else 0
            return self._instruction_exit(ev, reason, qual, info=True)
        if k in (Kind.XSAVES, Kind.XRSTORS):
            if not sec & C.SECONDARY_EXEC_ENABLE_XSAVES:
                return self._raise(EV.UD)
            g = m.gprs.read()
            rfbm = ((g[REG.RDX] & 0xFFFFFFFF) << 32) | (g[REG.RAX] & 0xFFFFFFFF)
            if v.get(F.XSS_EXIT_BITMAP, 0) & m.msrs.peek(0xDA0) & rfbm if m.msrs.exists(0xDA0) else 0:
                return self._instruction_exit(ev, X.XSAVES if k == Kind.XSAVES else X.XRSTORS,
                                              XI.displacement(ev.insn), info=True)
            return Action.NATIVE
        if k == Kind.GETSEC:
            return self._instruction_exit(ev, X.GETSEC)
        if k in VMX_KINDS:
            if k == Kind.VMFUNC:
                return self._vmfunc(ev, v, sec)
            if (k is Kind.VMREAD or k is Kind.VMWRITE) and sec & C.SECONDARY_EXEC_SHADOW_VMCS:
                action = self._shadow_vmrw(ev, v)
                if action is not None:
                    return action
            mem = XI.has_memory_operand(ev.insn)
            return self._instruction_exit(ev, _VMX_EXIT[k], XI.displacement(ev.insn) if mem else 0,
                                          info=_VMX_EXIT[k] in X.INSTRUCTION_INFO)
        if k == Kind.EXCEPTION:
            return self._exception(ev, v)
        if k == Kind.EXTERNAL_INTERRUPT:
            return self._external_interrupt(ev, v)
        if k == Kind.NMI:
            return self._exit(X.EXCEPTION_NMI, 0, ev.rip, intr_info=EV.intr_info(2, EV.INTR_TYPE_NMI))
        if k == Kind.TRIPLE_FAULT:
            return self._exit(X.TRIPLE_FAULT, 0, ev.rip, vectoring=ev.vectoring)
        if k == Kind.INTERRUPT_WINDOW:
            return self._exit(X.INTERRUPT_WINDOW, 0, ev.rip)
        if k == Kind.NMI_WINDOW:
            return self._exit(X.NMI_WINDOW, 0, ev.rip)
        if k == Kind.TSC_DEADLINE:
            return self._exit(X.PREEMPTION_TIMER, 0, ev.rip, timer_expired=True)
        if k == Kind.MTF:
            # "Monitor Trap Flag": qualification 0; the boundary the machine found
            return self._exit(X.MONITOR_TRAP_FLAG, 0, ev.rip)
        return Action.NATIVE

    # -- helpers of _nonroot ------------------------------------------------------------------
    def _host_byte(self, address: int) -> int:
        return self.m.mem.read(address, 1)[0] if self.m.mem.contains(address, 1) else 0xFF

    def _raise(self, vector: int, error_code: int | None = None, rip: int | None = None,
               cr2: int | None = None) -> Action:
        """An exception raised by a guest instruction in non-root operation: a VM exit
        if the exception bitmap says so (a #PF's address as the qualification, CR2
        unchanged), else delivered through the guest's IDT (CR2 = `cr2` for a #PF)."""
        rip = self.m.rip if rip is None else rip
        ev = Event(Kind.EXCEPTION, rip, vector=vector, event_type=EV.INTR_TYPE_HARD_EXCEPTION,
                   error_code=error_code, cr2=cr2)
        action = self._exception(ev, self.vmx.current_vmcs.values)
        if action != Action.NATIVE:
            return action
        if cr2 is not None:
            self.m._set_cr2(cr2)
        problem = self.m.deliver(vector, EV.INTR_TYPE_HARD_EXCEPTION, error_code)
        if problem is not None:
            return self._event_exit(problem)
        return Action.DONE

    def _instruction_exit(self, ev: Event, reason: int, qualification: int = 0, info: bool = False) -> Action:
        insn_info = 0
        if info and ev.insn is not None:
            insn_info = XI.instruction_information(reason, ev.insn, self._bitness())
        gla = None
        if info and ev.insn is not None and XI.has_memory_operand(ev.insn):
            gla = ev.address
        return self._exit(reason, qualification, ev.rip, length=ev.length, insn_info=insn_info, gla=gla)

    def _bitness(self) -> int:
        ctx_l = self.m.segment("CS")[3]
        if self.m._efer & 0x400 and ctx_l & (1 << 13):
            return 64
        return 32 if ctx_l & (1 << 14) else 16

    def _io_exit(self, ev: Event) -> Action:
        imm = ev.insn is not None and ev.insn.op_count and any(
            ev.insn.op_kind(i) in (_OK.IMMEDIATE8,) for i in range(ev.insn.op_count))
        qual = XI.io_qualification(ev.port, ev.size, ev.is_in, ev.string, ev.rep, bool(imm))
        info = 0
        gla = None
        if ev.string:
            if self.profile.basic >> 54 & 1:      # INS/OUTS instruction information (BASIC bit 54)
                info = XI.instruction_information(X.IO_INSTRUCTION, ev.insn, self._bitness())
            gla = self._string_io_address(ev)
        return self._exit(X.IO_INSTRUCTION, qual, ev.rip, length=ev.length, insn_info=info, gla=gla)

    _STRING_OPS = {_OK.MEMORY_SEG_RSI: (REG.RSI, 8), _OK.MEMORY_SEG_ESI: (REG.RSI, 4), _OK.MEMORY_SEG_SI: (REG.RSI, 2),
                   _OK.MEMORY_ESRDI: (REG.RDI, 8), _OK.MEMORY_ESEDI: (REG.RDI, 4), _OK.MEMORY_ESDI: (REG.RDI, 2)}

    def _string_io_address(self, ev: Event) -> int:
        """Linear address of the memory operand of INS (ES:rDI) or OUTS (DS:rSI, or
        the segment override), for the guest-linear-address field."""
        insn = ev.insn
        for i in range(insn.op_count):
            spec = self._STRING_OPS.get(insn.op_kind(i))
            if spec is not None:
                reg, size = spec
                bitness = self._bitness()
                offset = self.m.gprs.read()[reg] & ((1 << (8 * size)) - 1)
                return (segment_base(self.m, insn.memory_segment, bitness) + offset) & ((1 << 64) - 1)
        return 0

    def _cr_access(self, ev: Event, v: dict[int, int], cpu: int) -> Action:
        m = self.m
        k = ev.kind
        qual = XI.cr_access_qualification(ev.insn)
        if k == Kind.MOV_TO_CR:
            n, value = ev.cr, ev.value
            if n in (0, 4):
                mask = v.get(F.CR0_GUEST_HOST_MASK if n == 0 else F.CR4_GUEST_HOST_MASK, 0)
                shadow = v.get(F.CR0_READ_SHADOW if n == 0 else F.CR4_READ_SHADOW, 0)
                if (value ^ shadow) & mask:
                    return self._instruction_exit(ev, X.CR_ACCESS, qual)
                if not mask:
                    return Action.NATIVE
                cur = m.ctrl.read()[REG.CR0 if n == 0 else REG.CR4]
                new = (cur & mask) | (value & ~mask)          # host-owned bits are not modified
                (m.write_cr0 if n == 0 else m.write_cr4)(new)
                return self._advance(ev)
            if n == 3:
                if cpu & C.CPU_BASED_CR3_LOAD_EXITING:
                    count = v.get(F.CR3_TARGET_COUNT, 0)
                    targets = [v.get(F.CR3_TARGET_VALUE0 + 2 * i, 0) for i in range(min(count, 4))]
                    if value not in targets:
                        return self._instruction_exit(ev, X.CR_ACCESS, qual)
                return Action.NATIVE
            if n == 8 and cpu & C.CPU_BASED_CR8_LOAD_EXITING:
                return self._instruction_exit(ev, X.CR_ACCESS, qual)
            if n == 8 and cpu & C.CPU_BASED_TPR_SHADOW:
                return self._mov_to_vtpr(ev, v, value)
            return Action.NATIVE
        if k == Kind.MOV_FROM_CR:
            n = ev.cr
            if n in (0, 4):
                mask = v.get(F.CR0_GUEST_HOST_MASK if n == 0 else F.CR4_GUEST_HOST_MASK, 0)
                if not mask:
                    return Action.NATIVE
                shadow = v.get(F.CR0_READ_SHADOW if n == 0 else F.CR4_READ_SHADOW, 0)
                cur = m.ctrl.read()[REG.CR0 if n == 0 else REG.CR4]
                set_gpr(m, ev.insn.op_register(0), (cur & ~mask) | (shadow & mask))
                return self._advance(ev)
            if (n == 3 and cpu & C.CPU_BASED_CR3_STORE_EXITING) or (n == 8 and cpu & C.CPU_BASED_CR8_STORE_EXITING):
                return self._instruction_exit(ev, X.CR_ACCESS, qual)
            if n == 8 and cpu & C.CPU_BASED_TPR_SHADOW:
                # "Virtualizing MOV from CR8": bits 3:0 <- VTPR[7:4], bits 63:4 cleared
                vtpr = self.m.mem.read(self._vtpr(v), 1)[0]
                set_gpr(m, ev.insn.op_register(0), vtpr >> 4)
                return self._advance(ev)
            return Action.NATIVE
        mask = v.get(F.CR0_GUEST_HOST_MASK, 0)
        shadow = v.get(F.CR0_READ_SHADOW, 0)
        if k == Kind.CLTS:
            if mask & AR.CR0_TS and shadow & AR.CR0_TS:
                return self._instruction_exit(ev, X.CR_ACCESS, qual)
            if mask & AR.CR0_TS:
                return self._advance(ev)                       # TS is host-owned: unchanged
            return Action.NATIVE
        # LMSW ("Instructions That Cause VM Exits Conditionally"): exits if it would set PE
        # where the mask owns PE and the shadow has it clear, or change a host-owned bit 3:1.
        src = ev.value & 0xFFFF
        if mask & src & ~shadow & AR.CR0_PE or mask & 0xE & (src ^ shadow):
            return self._exit(X.CR_ACCESS, qual | (src << 16), ev.rip, length=ev.length, gla=ev.address)
        if not mask & 0xF:
            return Action.NATIVE
        cur = m.ctrl.read()[REG.CR0]
        new = (cur & ~0xF) | (src & 0xE) | ((cur | src) & AR.CR0_PE)   # LMSW never clears PE
        m.write_cr0((cur & mask) | (new & ~mask))                      # host-owned bits unchanged
        return self._advance(ev)

    def _pause_loop(self, ev: Event, v: dict[int, int]) -> Action:
        """PAUSE with "PAUSE-loop exiting" ("Instructions That Cause VM Exits
        Conditionally", PAUSE): at CPL 0, a PAUSE more than PLE_Gap TSC ticks after
        the previous one (or the first after VM entry) starts a loop; one more than
        PLE_Window ticks after the start of its loop exits.  Ticks of the virtual TSC,
        which stands still while Python code handles an instruction."""
        m = self.m
        if m.fast_cpl():
            return Action.NATIVE
        now = m.tsc.read()
        last, self._ple_last = self._ple_last, now
        if last is None or now - last > v.get(F.PLE_GAP, 0):
            self._ple_first = now
            return Action.NATIVE
        if now - self._ple_first > v.get(F.PLE_WINDOW, 0):
            return self._instruction_exit(ev, X.PAUSE_INSTRUCTION)
        return Action.NATIVE

    @staticmethod
    def _vtpr(v: dict[int, int]) -> int:
        """The physical address of VTPR: offset 80H of the virtual-APIC page."""
        return v.get(F.VIRTUAL_APIC_PAGE_ADDR, 0) + 0x80

    def _write_vtpr(self, v: dict[int, int], data: bytes, next_rip: int) -> Action:
        """A virtualized TPR write: `data` at VTPR, the instruction completed, then "TPR
        Virtualization" (virtual-interrupt delivery is not modelled, so 0): VTPR[7:4]
        below TPR threshold[3:0] is a trap-like VM exit "TPR below threshold"."""
        m = self.m
        m.mem.write(self._vtpr(v), data)
        g = m.gprs.read()
        g[REG.RIP] = next_rip
        m.gprs.write()
        if data[0] >> 4 < v.get(F.TPR_THRESHOLD, 0) & 0xF:
            return self._exit(X.TPR_BELOW_THRESHOLD, 0, next_rip)
        return Action.DONE

    def _x2apic_tpr(self, ev: Event, v: dict[int, int]) -> Action:
        """RDMSR/WRMSR of the x2APIC TPR (808H) with "virtualize x2APIC mode" and
        APIC-register virtualization 0 ("Virtualizing MSR-Based APIC Accesses"): RDMSR
        reads bytes 87H:80H of the virtual-APIC page into EDX:EAX; WRMSR with EDX:EAX
        bits 63:8 clear writes them there, then TPR virtualization; bits 63:8 set: #GP(0)."""
        m = self.m
        g = m.gprs.read()
        if ev.kind == Kind.RDMSR:
            value = m.mem.read64(self._vtpr(v))
            g[REG.RAX], g[REG.RDX] = value & 0xFFFFFFFF, value >> 32
            g[REG.RIP] = ev.rip + ev.length
            m.gprs.write()
            return Action.DONE
        value = ((g[REG.RDX] & 0xFFFFFFFF) << 32) | (g[REG.RAX] & 0xFFFFFFFF)
        if value >> 8:
            return self._raise(EV.GP, 0, ev.rip)
        return self._write_vtpr(v, value.to_bytes(8, "little"), ev.rip + ev.length)

    def _mov_to_vtpr(self, ev: Event, v: dict[int, int], value: int) -> Action:
        """MOV to CR8 with "use TPR shadow" ("Virtualizing MOV to CR8"): #GP(0) for bits
        63:4 set; VTPR[7:4] <- bits 3:0, VTPR[3:0] and bytes 81H-83H of the virtual-APIC
        page <- 0; then TPR virtualization."""
        if value >> 4:
            return self._raise(EV.GP, 0, ev.rip)
        return self._write_vtpr(v, ((value & 0xF) << 4).to_bytes(4, "little"), ev.rip + ev.length)

    def _advance(self, ev: Event) -> Action:
        g = self.m.gprs.read()
        g[REG.RIP] = ev.rip + ev.length
        self.m.gprs.write()
        return Action.DONE

    def _rdtsc_offset(self, ev: Event, v: dict[int, int], sec: int) -> Action:
        """RDTSC/RDTSCP with "use TSC offsetting" (and TSC scaling): the value read is
        (TSC * multiplier >> 48) + offset ("Changes to Instruction Behavior")."""
        m = self.m
        tsc = m.tsc.read()
        if sec & C.SECONDARY_EXEC_TSC_SCALING:
            tsc = (tsc * v.get(F.TSC_MULTIPLIER, 0)) >> 48
        value = (tsc + v.get(F.TSC_OFFSET, 0)) & ((1 << 64) - 1)
        g = m.gprs.read()
        g[REG.RAX], g[REG.RDX] = value & 0xFFFFFFFF, value >> 32
        if ev.kind == Kind.RDTSCP:
            g[REG.RCX] = m.msrs.peek(0xC0000103) & 0xFFFFFFFF
        g[REG.RIP] = ev.rip + ev.length
        m.gprs.write()
        return Action.DONE

    def _vmfunc(self, ev: Event, v: dict[int, int], sec: int) -> Action:
        """VMFUNC in non-root operation ("VM Functions"): EPTP switching (function 0)."""
        g = self.m.gprs.read()
        func, index = g[REG.RAX] & 0xFFFFFFFF, g[REG.RCX] & 0xFFFFFFFF
        enabled = sec & C.SECONDARY_EXEC_ENABLE_VMFUNC and func < 64 and v.get(F.VM_FUNCTION_CONTROL, 0) >> func & 1
        if not enabled or func != 0 or index >= 512:
            return self._instruction_exit(ev, X.VMFUNC)
        from ..checks.eptp import eptp_problems
        new = int.from_bytes(self.m.mem.read(v.get(F.EPTP_LIST_ADDRESS, 0) + 8 * index, 8), "little")
        if eptp_problems(new, self.profile):
            return self._instruction_exit(ev, X.VMFUNC)
        v[F.EPT_POINTER] = new
        if sec & C.SECONDARY_EXEC_EPT_VIOLATION_VE:
            v[F.EPTP_INDEX] = index
        self._ept = (new, self._ept[1] if self._ept else False)
        self.m.flush_tlb()
        return self._advance(ev)

    def _exception(self, ev: Event, v: dict[int, int]) -> Action:
        """Exceptions through the exception bitmap ("Exceptions": #PF uses the error-code
        mask and match)."""
        vector, itype = ev.vector, ev.event_type
        if itype == EV.INTR_TYPE_SOFT_INTR:
            return Action.NATIVE                          # INT n never exits through the bitmap
        bitmap = v.get(F.EXCEPTION_BITMAP, 0)
        if vector == EV.PF:
            match = (ev.error_code & v.get(F.PAGE_FAULT_ERROR_CODE_MASK, 0)) == v.get(F.PAGE_FAULT_ERROR_CODE_MATCH, 0)
            exits = bool(bitmap >> 14 & 1) == match
        else:
            exits = bool(bitmap >> vector & 1)
        if not exits:
            return Action.NATIVE
        code = ev.error_code
        info = EV.intr_info(vector, itype, code is not None)
        qual = 0
        if vector == EV.PF:
            qual = ev.cr2 or 0
        length = ev.length if itype in (EV.INTR_TYPE_SOFT_EXCEPTION, EV.INTR_TYPE_PRIV_SW_EXCEPTION) else 0
        return self._exit(X.EXCEPTION_NMI, qual, ev.rip, length=length, intr_info=info,
                          intr_error=code or 0, vectoring=ev.vectoring)

    def _external_interrupt(self, ev: Event, v: dict[int, int]) -> Action:
        info = 0
        if v.get(F.VM_EXIT_CONTROLS, 0) & C.VM_EXIT_ACK_INTR_ON_EXIT:
            vector = self.m.acknowledge_interrupt()
            info = EV.intr_info(vector, EV.INTR_TYPE_EXT_INTR)
        return self._exit(X.EXTERNAL_INTERRUPT, 0, ev.rip, intr_info=info)

    def _event_exit(self, problem: Event) -> Action:
        """An event raised while delivering another (injection or native delivery)."""
        if problem.kind == Kind.TRIPLE_FAULT:
            return self._exit(X.TRIPLE_FAULT, 0, problem.rip, vectoring=problem.vectoring)
        if problem.kind == Kind.EXCEPTION:
            return self._exception(problem, self.vmx.current_vmcs.values)
        return Action.DONE

    # ---- EPT ----------------------------------------------------------------------------------------
    def _second_stage(self, gpa: int, access: int, linear, paging_entry: bool):
        eptp, mbec = self._ept
        mem = self.m.mem
        kind = {PG.READ: EPT.READ, PG.WRITE: EPT.WRITE, PG.FETCH: EPT.FETCH}[access]
        try:
            t = EPT.translate(eptp, gpa, kind, mem.read64, mem.write64, maxphyaddr=self.profile.maxphyaddr,
                              execute_only=self.profile.ept_cap("ept_execute_only"),
                              one_gb_pages=self.profile.ept_cap("ept_1gb"), mbec=mbec,
                              user=mbec and self.m.fast_cpl() == 3, paging_structure=paging_entry,
                              pml=self._pml)
        except (EPT.EptViolation, EPT.EptMisconfig, EPT.PmlFull) as e:
            raise SecondStageRefusal(e) from None
        if self._apic_page is not None and t.hpa & ~0xFFF == self._apic_page:
            raise SecondStageRefusal(ApicAccess(gpa))
        allowed = (PG.READ if t.perms & 1 else 0) | (PG.WRITE if t.perms & 2 else 0) \
            | (PG.FETCH if t.perms & 4 else 0)
        if eptp & 0x40 and not t.dirty:
            # With EPT A/D the first write must set the leaf's dirty flag: grant writes only
            # once it is set (a later write comes back through a new fill).
            allowed &= ~PG.WRITE
        return t.hpa, allowed

    def _apic_stage(self, gpa: int, access: int, linear, paging_entry: bool):
        """Without EPT, "virtualize APIC accesses" still singles out one physical page."""
        if gpa & ~0xFFF == self._apic_page:
            raise SecondStageRefusal(ApicAccess(gpa))
        return gpa, PG.READ | PG.WRITE | PG.FETCH

    def _apic_access(self, stop: Stop, refusal, gpa: int) -> None:
        """An access to the APIC-access page ("Virtualizing Memory-Mapped APIC Accesses";
        APIC-register virtualization and virtual-interrupt delivery are not modelled, so
        both are 0): with "use TPR shadow", a 32-bit MOV reading or writing offset 80H is
        virtualized on VTPR; anything else is an APIC-access VM exit, fault-like, with
        the offset and access type ("Exit Qualification for APIC-Access VM Exits")."""
        v = self.vmx.current_vmcs.values
        ev = stop.event
        offset = gpa & 0xFFF
        vectoring = ev.vectoring if ev is not None else None
        if refusal.paging_entry:
            kind = 10 if vectoring is not None else 15            # guest-physical access
        elif vectoring is not None:
            kind = 3                                              # linear access during event delivery
        elif refusal.access == PG.FETCH:
            kind = 2
        else:
            kind = 1 if refusal.access == PG.WRITE else 0
            if 0x80 <= offset < 0x84 and self._controls(v)[0] & C.CPU_BASED_TPR_SHADOW:
                self._virtual_tpr_access(stop.rip, offset, v)
                return
        self._exit(X.APIC_ACCESS, offset | kind << 12, stop.rip, vectoring=vectoring)

    def _virtual_tpr_access(self, rip: int, offset: int, v: dict[int, int]) -> None:
        """MOV r32, [80H] reads VTPR; MOV [80H], r32/imm32 writes it, then "TPR
        Virtualization" (a trap-like TPR-below-threshold exit when VTPR[7:4] drops below
        TPR threshold[3:0]).  Other accesses to 80H-83H are not modelled."""
        m = self.m
        insn = m.decode_at(rip)
        code = insn.code
        if offset == 0x80 and code == I.Code.MOV_R32_RM32:
            set_gpr(m, insn.op0_register, int.from_bytes(m.mem.read(self._vtpr(v), 4), "little"))
            g = m.gprs.read()
            g[REG.RIP] = rip + insn.len
            m.gprs.write()
        elif offset == 0x80 and code in (I.Code.MOV_RM32_R32, I.Code.MOV_RM32_IMM32):
            self._write_vtpr(v, read_operand(m, insn, 1, 4).to_bytes(4, "little"), rip + insn.len)
        else:
            raise MachineNotImplemented(f"{insn} at {rip:#x}: this access to VTPR through the APIC-access page "
                                        "is not modelled (32-bit MOV to or from offset 80H is)")

    def _pml_log(self, gpa: int, sets_dirty: bool) -> None:
        """"Page-Modification Logging": with the PML index outside 0-511 the access
        is a PML-full VM exit; a dirty flag set from 0 to 1 writes the 4-KByte aligned
        guest-physical address at PML address + 8 * index and decrements the index."""
        v = self.vmx.current_vmcs.values
        index = v.get(F.GUEST_PML_INDEX, 0)
        if index > 511:
            raise EPT.PmlFull(gpa)
        if sets_dirty:
            self.m.mem.write64(v.get(F.PML_ADDRESS, 0) + 8 * index, gpa & ~0xFFF)
            v[F.GUEST_PML_INDEX] = (index - 1) & 0xFFFF
            if self._dirty is not None:
                self._dirty.add(F.GUEST_PML_INDEX)

    def _ept_exit(self, stop: Stop) -> None:
        refusal = stop.event.detail if stop.event is not None else None
        payload = getattr(refusal, "payload", None)
        ev = stop.event
        gpa = refusal.gpa if getattr(refusal, "gpa", None) is not None else payload.gpa   # the exact address
        if isinstance(payload, EPT.EptMisconfig):
            self._exit(X.EPT_MISCONFIG, 0, stop.rip, gpa=gpa)
            return
        if isinstance(payload, ApicAccess):
            self._apic_access(stop, refusal, gpa)
            return
        if isinstance(payload, EPT.PmlFull):
            self._exit(X.PML_FULL, 0, stop.rip, vectoring=ev.vectoring if ev is not None else None)
            return
        assert isinstance(payload, EPT.EptViolation), stop
        qual = payload.qualification
        if refusal.access == PG.WRITE and not refusal.paging_entry:
            # a read-modify-write refused at its read: "sets bit 1 (data write). Whether
            # it also sets bit 0 (data read) is implementation-specific" -- both here
            qual |= 0b10
        gla = refusal.linear
        if gla is not None:
            qual |= 1 << 7
            if not refusal.paging_entry:
                qual |= 1 << 8
        self._exit(X.EPT_VIOLATION, qual, stop.rip, gla=gla, gpa=gpa,
                   vectoring=ev.vectoring if ev is not None else None)

    # ---- VM exit ----------------------------------------------------------------------------------------
    def _exit(self, reason: int, qualification: int, guest_rip: int, *, length: int = 0, insn_info: int = 0,
              gla: int | None = None, gpa: int | None = None, intr_info: int = 0, intr_error: int = 0,
              vectoring=None, timer_expired: bool = False) -> Action:
        """A VM exit ("VM Exits"): exit information, guest state saved, MSRs
        stored, host state and MSRs loaded; then host code at HOST_RIP."""
        vmx = self.vmx
        vmcs = vmx.vmcs[vmx.current]              # (VMX non-root operation: there is a current VMCS)
        v = vmcs.values
        if vectoring is None:
            idt_info = idt_err = 0
        else:
            idt_info = EV.intr_info(vectoring.vector, vectoring.type, vectoring.error_code is not None)
            idt_err = vectoring.error_code or 0
        v.update(zip(_EXIT_INFO_FIELDS, (reason, qualification & ((1 << 64) - 1), length, insn_info, intr_info,
                                         intr_error, idt_info, idt_err)))
        if gla is not None:
            v[F.GUEST_LINEAR_ADDRESS] = gla & ((1 << 64) - 1)
        if gpa is not None:
            v[F.GUEST_PHYSICAL_ADDRESS] = gpa
        # "the valid bit of the VM-entry interruption-information field is cleared"
        entry_info = v.get(F.VM_ENTRY_INTR_INFO_FIELD, 0)
        if entry_info & _VALID:
            v[F.VM_ENTRY_INTR_INFO_FIELD] = entry_info & ~_VALID
            if self._dirty is not None:
                self._dirty.add(F.VM_ENTRY_INTR_INFO_FIELD)
        self._last_exit = (reason, qualification, guest_rip, length, insn_info, gla, gpa, intr_info, intr_error,
                      idt_info, idt_err)
        self.exit_count += 1
        if self._lazy_ok:
            handler = self.hosts.get(v.get(F.HOST_RIP, 0))
            if handler is not None:
                return self._lazy_exit(handler, guest_rip, vmcs)
        exit_ctl = v.get(F.VM_EXIT_CONTROLS, 0)
        state = self.m.get_state()
        state["GUEST_RIP"] = guest_rip
        if exit_ctl & C.VM_EXIT_SAVE_VMX_PREEMPTION_TIMER:
            deadline = self.m._tsc_deadline
            left = 0 if timer_expired or deadline is None else max(0, deadline - self.m.tsc.read())
            v[F.VMX_PREEMPTION_TIMER_VALUE] = left >> (self.profile.misc & 0x1F)
        self._save_state_into(state, v)
        # "Saving MSRs": the VM-exit MSR-store area
        store = v.get(F.VM_EXIT_MSR_STORE_ADDR, 0)
        for i in range(v.get(F.VM_EXIT_MSR_STORE_COUNT, 0)):
            entry = store + 16 * i
            msr = int.from_bytes(self.m.mem.read(entry, 4), "little")
            why = msrmodel.rdmsr_fault(self.profile, msr)
            if why or msr >> 8 == 0x8:
                self._vmx_abort(1)
                return Action.STOP
            self.m.mem.write(entry + 8, self.m.msrs.read(msr).to_bytes(8, "little"))
        self._to_host(v, save_guest=True, state=state)
        return Action.DONE

    # ---- the lazy exit to Python host code ------------------------------------------------------
    def _lazy_exit(self, handler, guest_rip: int, vmcs: Vmcs) -> Action:
        v = vmcs.values
        v[F.GUEST_RIP] = guest_rip               # saved at once (every handler reads it); the rest when read
        dirty = self._dirty
        if dirty is not None:
            dirty.add(F.GUEST_RIP)
        self._lazy = _Lazy(guest_rip, {F.GUEST_RIP}, vmcs, v)
        self.vmx.non_root = False
        if self.observers:
            for fn in self.observers:
                fn(self, self.exit)
        self._in_host = True
        try:
            handler(self)
        except (VmxFail, VmxFault) as e:
            self.materialize()
            self.stop(f"host code at {self.vmx.current_vmcs.values.get(F.HOST_RIP, 0):#x} raised {e}")
        finally:
            self._in_host = False
        if self._lazy is not None:                 # returned without VMRESUME
            self.materialize()
            if self._stop_request is None:
                self.stop(f"host code at {self.vmx.current_vmcs.values.get(F.HOST_RIP, 0):#x} returned "
                          "without VMRESUME: the processor is in VMX root operation at HOST_RIP")
        return _DONE

    def _lazy_guest_field(self, enc: int) -> None:
        """Make the VMCS hold the value the exit saved for guest field `enc`."""
        lazy = self._lazy
        if enc in lazy.written:
            return
        v = lazy.v
        if enc in _FAST_GUEST:
            v[enc] = self.m.gprs.read()[_FAST_GUEST[enc]]
        else:
            self._save_guest_now(v)
            return
        lazy.written.add(enc)            # now current in the VMCS (not re-read)

    def _save_guest_now(self, v: dict[int, int]) -> None:
        """"Saving Guest State" from the live machine into the VMCS, keeping fields
        the host code has written since the exit."""
        lazy = self._lazy
        keep = {enc: v[enc] for enc in lazy.written if enc in v}
        state = self.m.get_state()
        state["GUEST_RIP"] = lazy.guest_rip
        self._save_state_into(state, v)
        v.update(keep)
        lazy.written |= {enc for enc, _ in zip(VMCS_ENCODINGS, VMCS_KEYS)}
        lazy.written.add(-1)             # marker: the guest area is complete

    def _save_state_into(self, state: dict[str, int], v: dict[int, int]) -> None:
        """"Saving Guest State" into the VMCS; the fields whose values change join the
        dirty set (the next VM entry re-runs the checks that read them)."""
        before = list(map(v.get, _SAVED_FIELDS))
        T.save_guest(state, v, v.get(F.VM_EXIT_CONTROLS, 0), store_lma=bool(self.profile.misc >> 5 & 1))
        T.save_guest_msrs(v, self._saved_msrs, self.m.msrs.peek)
        if self._ept is not None and self.m.pdptes is not None:
            for i, pdpte in enumerate(self.m.pdptes):
                v[F.GUEST_PDPTR0 + 2 * i] = pdpte
        dirty = self._dirty
        if dirty is not None:
            after = list(map(v.get, _SAVED_FIELDS))
            if after != before:
                # (the encodings whose values differ, C-level over the ~60 fields)
                dirty.update(compress(_SAVED_FIELDS, map(ne, after, before)))

    def materialize(self) -> None:
        """Finish a lazy exit: save the guest state into the VMCS and load the host
        state into the machine, as the exit would have done at once."""
        lazy = self._lazy
        if lazy is None:
            return
        self._quick = None
        vmcs = self.vmx.current_vmcs
        v = vmcs.values
        if -1 not in lazy.written:
            self._save_guest_now(v)
        self._lazy = None
        self._load_host_state(v, self.m.get_state())
        self._subscribe_root()
        if not self._controls(v)[1] & C.SECONDARY_EXEC_ENABLE_VPID:
            self.m.flush_tlb()

    def _lazy_resume(self) -> None:
        """VMRESUME from Python host code after a lazy exit: the VMRESUME checks of
        the instruction (a current VMCS, launched), the VM-entry checks that read a
        field written since the last entry (checks.first_failure_changed; every
        other check gives the answer it gave then), then only what the round trip
        changes."""
        lazy = self._lazy
        vmcs, v, written = lazy.vmcs, lazy.v, lazy.written
        q = self._quick
        if q is not None and written == _RIP_ONLY and q[0] is vmcs and self._dirty_key is q[1] \
                and self._dirty == _RIP_ONLY:
            # the usual round trip: the same VMCS entered as at the last lazy resume, only
            # GUEST_RIP changed (what _fast_reentry and the rest below do in that case)
            self.quick_checks += 1
            if q[2](v, q[3], q[4]) < 0 and (q[5] is None or self._compose_round_trip(v, *q[5])):
                gprs = self.m.gprs
                gprs.values[REG.RIP] = v[F.GUEST_RIP]
                gprs.write_pc()
                self._lazy_entered(v, False)
                return
        ctx = self._hctx or self._ctx()
        dirty = self._dirty
        key = (id(vmcs), ctx.efer_lma)
        if dirty is not None and self._dirty_key == key and vmcs.launch_state == "launched":
            self.quick_checks += 1
            plan = self._plan
            if plan is None or plan[0] is not vmcs:
                plan = self._plan = (vmcs, entry_context(vmcs, self.profile, "vmresume", ctx.efer_lma,
                                                          self.vmx.current))
            ok = first_failure_changed(vmcs, self.profile, dirty, self._read_host_or_none, "vmresume",
                                       ctx.efer_lma, False, self.vmx.current,
                                       None if dirty & _CONTROL_FIELDS else plan[1]) is None
        else:
            out = self.vmx.vmlaunch(ctx, resume=True)
            if out.kind != "entry":
                self.materialize()
                self._py(out)
                return
            self.full_checks += 1
            ok = check(vmcs, self.profile, memory=self._read_host_or_none, instruction="vmresume",
                       host_lma=ctx.efer_lma, vmcs_pointer=self.vmx.current).outcome == "success"
        if ok and not written.isdisjoint(_CONTROL_FIELDS):
            try:
                refuse_unmodelled(v)
            except Exception:
                self.materialize()
                raise
        if not ok or not self._fast_reentry(v, written):
            self.materialize()
            self._enter_from(self._host_context(), launch=False, python=True)
            return
        self._dirty_key = key
        if not written.isdisjoint(_HOST_FIELDS):
            self._hctx = None
        self._lazy_entered(v, not written.isdisjoint(_CONTROL_FIELDS))
        if v.get(F.VM_ENTRY_INTR_INFO_FIELD, 0) & _VALID:
            self._inject(v)
        else:
            self._quick = self._quick_resume(vmcs, v, key)

    def _lazy_entered(self, v: dict[int, int], controls_written: bool) -> None:
        """The end of a lazy VMRESUME that succeeded (both paths of _lazy_resume): VMX
        non-root operation with the guest's state as the machine holds it (its
        interruptibility stands), intercepts following the controls when the host
        wrote one, else what every entry re-arms, and without VPID a TLB flush."""
        self._lazy = None
        self._dirty = set()
        self.vmx.non_root = True
        self.m.shadow_writes += 1
        if controls_written:
            self._plan = None
            self._subscribe_nonroot(v)
        elif self._rearm_needed:
            self._rearm(v)
        if not self._vpid:
            self.m.flush_tlb()

    def _quick_resume(self, vmcs: Vmcs, v: dict[int, int], key: tuple) -> tuple | None:
        """What the next lazy VMRESUME that changed only GUEST_RIP needs, when this
        VMCS's controls let it skip the rest of _lazy_resume: (VMCS, dirty key, the
        VM-entry checks whose answer a new GUEST_RIP can change as one function
        (checks.steady_runner), its arguments, the exit and entry controls when
        _compose_round_trip must run)."""
        exit_ctl, entry_ctl = v.get(F.VM_EXIT_CONTROLS, 0), v.get(F.VM_ENTRY_CONTROLS, 0)
        if self._kept[0] != (exit_ctl, entry_ctl) or v.get(F.VM_ENTRY_MSR_LOAD_COUNT, 0) \
                or entry_ctl & MS.ENTRY_CONTROLS or exit_ctl & MS.EXIT_CHANGES or len(v) < len(F.FIELDS):
            return None
        plan = self._plan
        if plan is None or plan[0] is not vmcs:
            plan = self._plan = (vmcs, entry_context(vmcs, self.profile, "vmresume", key[1], self.vmx.current))
        entry = plan[1]
        entry.memory = self._read_host_or_none
        compose = None if self._kept[1] else (exit_ctl, entry_ctl)
        return vmcs, key, steady_runner(_RIP_ONLY, v, entry), facts(self.profile), entry, compose

    def _fast_reentry(self, v: dict[int, int], written: set) -> bool:
        """Apply to the live guest state what exit + entry would change; False when
        that is more than the fast path handles (then the full path runs)."""
        if -1 in written or v.get(F.VM_ENTRY_MSR_LOAD_COUNT, 0):
            return False
        if written == _RIP_ONLY:                  # the usual handler: advance RIP
            guest_written = _RIP_LIST
        else:
            guest_written = [enc for enc in written if (enc & 0xC00) == 0x800]
            for enc in guest_written:
                if enc not in _FAST_GUEST:
                    return False
        exit_ctl, entry_ctl = v.get(F.VM_EXIT_CONTROLS, 0), v.get(F.VM_ENTRY_CONTROLS, 0)
        if entry_ctl & MS.ENTRY_CONTROLS or exit_ctl & MS.EXIT_CHANGES:
            return False                          # MSRs switched by the controls: the full path
        if (exit_ctl, entry_ctl) != self._kept[0]:
            self._kept = ((exit_ctl, entry_ctl), _round_trip_keeps(exit_ctl, entry_ctl))
        if not self._kept[1] and not self._compose_round_trip(v, exit_ctl, entry_ctl):
            return False
        if guest_written:
            m = self.m
            if guest_written == _RIP_LIST:
                m.gprs.values[REG.RIP] = v[F.GUEST_RIP]
                m.gprs.write_pc()
            else:
                g = m.gprs.read()
                for enc in guest_written:
                    g[_FAST_GUEST[enc]] = v[enc]
                g[REG.RFLAGS] |= 2
                m.gprs.write()
        return True

    def _compose_round_trip(self, v: dict[int, int], exit_ctl: int, entry_ctl: int) -> bool:
        """DR7, IA32_DEBUGCTL, IA32_EFER and IA32_PAT after "Loading Host State" then
        "Loading Guest State" when the controls do not keep them (_round_trip_keeps);
        False for a change of mode (the full path loads it)."""
        m = self.m
        c = m.ctrl.read()
        if entry_ctl & C.VM_ENTRY_LOAD_DEBUG_CONTROLS:
            if exit_ctl & C.VM_EXIT_SAVE_DEBUG_CONTROLS:
                dr7, debugctl = c[REG.DR7], m.msrs.peek(0x1D9)
            else:
                dr7, debugctl = (v.get(F.GUEST_DR7, 0) & ~0xD000) | 0x400, v.get(F.GUEST_IA32_DEBUGCTL, 0)
        else:
            dr7, debugctl = 0x400, 0
        if dr7 != c[REG.DR7]:
            c[REG.DR7] = dr7
            m.ctrl.write()
        if debugctl != m.msrs.peek(0x1D9):
            m.msrs.poke(0x1D9, debugctl)
        live = m._efer
        if entry_ctl & C.VM_ENTRY_LOAD_IA32_EFER:
            efer = live if exit_ctl & C.VM_EXIT_SAVE_IA32_EFER else v.get(F.GUEST_IA32_EFER, 0)
        else:
            host_long = bool(exit_ctl & C.VM_EXIT_HOST_ADDR_SPACE_SIZE)
            efer = v.get(F.HOST_IA32_EFER, 0) if exit_ctl & C.VM_EXIT_LOAD_IA32_EFER else \
                (live & ~0x500) | (0x500 if host_long else 0)
            ia32e = bool(entry_ctl & C.VM_ENTRY_IA32E_MODE)
            efer = (efer & ~0x400) | (0x400 if ia32e else 0)
            if c[REG.CR0] & AR.CR0_PG:
                efer = (efer & ~0x100) | (0x100 if ia32e else 0)
        if efer != live:
            return False                       # a mode change: the full path loads it
        pat = m.msrs.peek(0x277)
        if entry_ctl & C.VM_ENTRY_LOAD_IA32_PAT:
            new_pat = pat if exit_ctl & C.VM_EXIT_SAVE_IA32_PAT else v.get(F.GUEST_IA32_PAT, 0)
        else:
            new_pat = v.get(F.HOST_IA32_PAT, 0) if exit_ctl & C.VM_EXIT_LOAD_IA32_PAT else pat
        if new_pat != pat:
            m.msrs.poke(0x277, new_pat)
        return True

    def _rearm(self, v: dict[int, int]) -> None:
        """What every entry re-arms: window requests, MTF, the preemption timer, the
        PAUSE-loop detection."""
        m = self.m
        cpu, pin = v.get(F.CPU_BASED_VM_EXEC_CONTROL, 0), v.get(F.PIN_BASED_VM_EXEC_CONTROL, 0)
        self._ple_last = None
        m.request_interrupt_window(bool(cpu & C.CPU_BASED_INTR_WINDOW_EXITING))
        m.request_nmi_window(bool(cpu & C.CPU_BASED_NMI_WINDOW_EXITING))
        m.request_mtf(bool(cpu & C.CPU_BASED_MONITOR_TRAP_FLAG))
        if pin & C.PIN_BASED_VMX_PREEMPTION_TIMER:
            rate = self.profile.misc & 0x1F
            m.set_tsc_deadline(m.tsc.read() + (v.get(F.VMX_PREEMPTION_TIMER_VALUE, 0) << rate))
        else:
            m.set_tsc_deadline(None)

    def _load_host_state(self, v: dict[int, int], state: dict[str, int]) -> None:
        """"Loading Host State": registers from the host-state area, then the MSRs the
        VM-exit controls load or clear (before the VM-exit MSR-load area).  `state`:
        the live state (get_state(), its RIP may be the guest RIP the exit saves)."""
        self.m.set_state_over(T.load_host(v, state, self.profile.maxphyaddr), state)
        T.load_host_msrs(v, self.m.msrs.poke)

    def _to_host(self, v: dict[int, int], save_guest: bool, state: dict | None = None) -> None:
        m = self.m
        self._load_host_state(v, m.get_state() if state is None else state)
        # "Loading MSRs" on VM exit: the VM-exit MSR-load area
        count = v.get(F.VM_EXIT_MSR_LOAD_COUNT, 0)
        for msr, value in self._msr_area(v.get(F.VM_EXIT_MSR_LOAD_ADDR, 0), count) if count else ():
            why = msrmodel.wrmsr_fault(self.profile, msr, value, m.msrs.peek(msr) if m.msrs.exists(msr) else None)
            if why or msr in (0xC0000100, 0xC0000101) or msr >> 8 == 0x8:
                self._vmx_abort(4)
                return
            m.msrs.write(msr, value)
        self.vmx.non_root = False
        self._subscribe_root()
        if not self._controls(v)[1] & C.SECONDARY_EXEC_ENABLE_VPID:
            m.flush_tlb()
        for fn in self.observers:
            fn(self, self.exit)
        handler = self.hosts.get(v.get(F.HOST_RIP, 0))
        if handler is not None:
            self._in_host = True
            try:
                handler(self)
            finally:
                self._in_host = False

    def _msr_area(self, address: int, count: int):
        for i in range(count):
            raw = self.m.mem.read(address + 16 * i, 16)
            msr, _reserved, value = struct.unpack("<IIQ", raw)
            yield msr, value

    def _vmx_abort(self, indicator: int) -> None:
        """"VMX Aborts": the abort indicator is written into the VMCS region and the
        processor enters shutdown."""
        ptr = self.vmx.current
        self.m.mem.write(ptr + 4, struct.pack("<I", indicator))
        self.m.activity = EV.ACTIVITY_SHUTDOWN
        self.vmx.non_root = False
        self._subscribe_root()

    def _flush(self, kind: str, arg: int) -> None:
        self.m.flush_tlb()

    # ---- leaving VMX operation from Python host code ------------------------------------------
    def devirtualize(self, rip: int) -> None:
        """From host code: VMXOFF, then continue the guest of the last VM exit natively
        at `rip` with its state intact -- the seed's VMXRestoreState in reverse.  The
        guest state is what the exit saved (plus the host code's VMWRITEs to guest
        fields) and the live general registers."""
        lazy = self._lazy
        guest_fields = {enc for enc in (lazy.written if lazy else ()) if enc != -1 and (enc & 0xC00) == 0x800}
        if lazy is not None and -1 not in lazy.written and guest_fields <= _FAST_GUEST.keys():
            # the machine still holds the guest's state: apply what the host code changed
            v = self.vmx.current_vmcs.values
            ctx = self._ctx()
            self._lazy = None
            out = self.vmx.vmxoff(ctx)
            if out.kind != "succeed":
                raise VmxFault(out.vector or EV.UD)
            g = self.m.gprs.read()
            for enc in guest_fields:
                g[_FAST_GUEST[enc]] = v[enc]
            g[REG.RIP] = rip
            self.m.gprs.write()
        else:
            self.materialize()
            state = self.guest_snapshot()
            self._py(self.vmx.vmxoff(self.context()))
            state["GUEST_RIP"] = rip
            self.m.set_state(state)
        self._dirty = None
        self._subscribe_root()

    def guest_snapshot(self) -> dict[str, int]:
        """The guest's processor state as the exit saved it in the current VMCS, with
        the live general registers (VM exits do not change them): what devirtualize()
        puts back.  MSR fields the exit controls did not save keep the live value."""
        v = self.vmx.current_vmcs.values
        s = self.m.get_state()
        exit_ctl = v.get(F.VM_EXIT_CONTROLS, 0)
        unsaved = set()
        if not exit_ctl & C.VM_EXIT_SAVE_IA32_EFER:
            unsaved.add("GUEST_IA32_EFER")
        if not exit_ctl & C.VM_EXIT_SAVE_IA32_PAT:
            unsaved.add("GUEST_IA32_PAT")
        if not exit_ctl & C.VM_EXIT_SAVE_DEBUG_CONTROLS:
            unsaved |= {"GUEST_DR7", "GUEST_IA32_DEBUGCTL"}
        for key, enc in zip(VMCS_KEYS, VMCS_ENCODINGS):
            if key not in unsaved:
                s[key] = v.get(enc, 0)
        if "GUEST_IA32_EFER" in unsaved:
            lma = v.get(F.VM_ENTRY_CONTROLS, 0) & C.VM_ENTRY_IA32E_MODE
            s["GUEST_IA32_EFER"] = (s["GUEST_IA32_EFER"] & ~0x500) | (0x500 if lma else 0)
        return s

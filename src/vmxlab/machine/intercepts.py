"""Intercepts: the events the machine hands to a client, and the client's answer.

A client (the VMX layer, a test, a tracer) subscribes to kinds of events with
`Machine.intercept(...)`.  For every subscribed event the machine stops at the
instruction boundary where it occurs (nothing of the instruction executed) and
calls `client(machine, event)`, which answers:

- `Action.NATIVE`: the machine does what the architecture says (RDMSR from the
  MSR file, CPUID from the profile, an exception delivered through the IDT, a
  VMX instruction raises #UD because nobody implements it, ...);
- `Action.DONE`: the client did it; registers/memory may have changed; the
  machine continues at the current RIP (a client that emulates an instruction
  advances RIP itself);
- `Action.STOP`: `run()` returns `Stop(StopReason.EVENT, event)` with RIP at the
  instruction (for software interrupts/exceptions: at the INT instruction); the
  next `run()` executes that instruction exactly once without asking again,
  unless the state was replaced (`set_state`, `deliver`) in between.

Unsubscribed events are NATIVE without calling anyone.

Event fields by kind (all events have `kind`, `rip`, `length`, `insn` = the
iced-x86 Instruction or None):
  CPUID: `leaf` (EAX), `subleaf` (ECX).
  RDMSR, WRMSR: `msr` (ECX), WRMSR `value` (EDX:EAX).
  IO: `port`, `size` (1/2/4), `is_in`, `string`, `rep`, `value` (OUT data, non-string).
  MOV_TO_CR / MOV_FROM_CR: `cr`, `gpr` (0-15); MOV_TO_CR `value`.
  CLTS; LMSW: `value` (the source operand), `address` for a memory operand.
  MOV_DR: `dr`, `gpr`, `write` (True: MOV to DR).
  CMPXCHG (64-bit mode, 32-bit operand size): `address` for a memory destination.  Not a VMX
  exit; the machine emulates it (unicorn clears RAX bits 63:32 on success).
  INVLPG, INVPCID, descriptor-table and VMX instructions, XSAVES/XRSTORS: `address`
  = linear address of the memory operand when there is one.
  EXCEPTION: `vector`, `event_type` (arch.events INTR_TYPE_*), `error_code`,
  `cr2` (for #PF, not yet in CR2), `vectoring` (the event being delivered when
  this one arose, or None).
  EXTERNAL_INTERRUPT: `vector` (the highest pending); NMI.
  TRIPLE_FAULT: `vectoring`.
  INTERRUPT_WINDOW, NMI_WINDOW, TSC_DEADLINE: at the boundary where they occur.
Events of kinds that come from an access rather than an instruction
(SECOND_STAGE, NONEXISTENT_MEMORY) are not subscribable: they always stop the run
(StopReason.SECOND_STAGE / NONEXISTENT_MEMORY) with RIP at the instruction.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

import iced_x86 as I

_M = I.Mnemonic


class Action(Enum):
    __hash__ = object.__hash__       # members are singletons; Enum's own __hash__ is Python code on hot paths
    NATIVE = "native"
    DONE = "done"
    STOP = "stop"


class Kind(Enum):
    __hash__ = object.__hash__       # (as Action) kinds are set and dict keys on every intercept
    CPUID = "CPUID"
    RDMSR = "RDMSR"
    WRMSR = "WRMSR"
    IO = "IO"
    MOV_TO_CR = "MOV_TO_CR"
    MOV_FROM_CR = "MOV_FROM_CR"
    CLTS = "CLTS"
    LMSW = "LMSW"
    MOV_DR = "MOV_DR"
    INVLPG = "INVLPG"
    INVPCID = "INVPCID"
    HLT = "HLT"
    PAUSE = "PAUSE"
    MONITOR = "MONITOR"
    MWAIT = "MWAIT"
    WBINVD = "WBINVD"          # WBINVD and WBNOINVD
    INVD = "INVD"
    XSETBV = "XSETBV"
    RDPMC = "RDPMC"
    RDTSC = "RDTSC"
    RDTSCP = "RDTSCP"
    RDRAND = "RDRAND"
    RDSEED = "RDSEED"
    GDTR_IDTR = "GDTR_IDTR"    # LGDT, LIDT, SGDT, SIDT
    LDTR_TR = "LDTR_TR"        # LLDT, LTR, SLDT, STR
    XSAVES = "XSAVES"
    XRSTORS = "XRSTORS"
    GETSEC = "GETSEC"
    CMPXCHG = "CMPXCHG"        # 64-bit mode, 32-bit operand size only (emulate.cmpxchg32 says why)
    VMXON = "VMXON"
    VMXOFF = "VMXOFF"
    VMCLEAR = "VMCLEAR"
    VMPTRLD = "VMPTRLD"
    VMPTRST = "VMPTRST"
    VMREAD = "VMREAD"
    VMWRITE = "VMWRITE"
    VMLAUNCH = "VMLAUNCH"
    VMRESUME = "VMRESUME"
    INVEPT = "INVEPT"
    INVVPID = "INVVPID"
    VMCALL = "VMCALL"
    VMFUNC = "VMFUNC"
    EXCEPTION = "EXCEPTION"
    EXTERNAL_INTERRUPT = "EXTERNAL_INTERRUPT"
    NMI = "NMI"
    TRIPLE_FAULT = "TRIPLE_FAULT"
    INTERRUPT_WINDOW = "INTERRUPT_WINDOW"
    NMI_WINDOW = "NMI_WINDOW"
    TSC_DEADLINE = "TSC_DEADLINE"
    MTF = "MTF"
    # reported, never subscribed to: they always stop the run
    SECOND_STAGE = "SECOND_STAGE"
    NONEXISTENT_MEMORY = "NONEXISTENT_MEMORY"


INSTRUCTION_KINDS = frozenset(k for k in Kind if k not in (
    Kind.EXCEPTION, Kind.EXTERNAL_INTERRUPT, Kind.NMI, Kind.TRIPLE_FAULT, Kind.INTERRUPT_WINDOW,
    Kind.NMI_WINDOW, Kind.TSC_DEADLINE, Kind.MTF, Kind.SECOND_STAGE, Kind.NONEXISTENT_MEMORY))

VMX_KINDS = frozenset({Kind.VMXON, Kind.VMXOFF, Kind.VMCLEAR, Kind.VMPTRLD, Kind.VMPTRST, Kind.VMREAD,
                       Kind.VMWRITE, Kind.VMLAUNCH, Kind.VMRESUME, Kind.INVEPT, Kind.INVVPID, Kind.VMCALL,
                       Kind.VMFUNC})


class Event:
    """One event handed to the client (fields by kind: see the module doc).

    A plain class with class-level defaults: constructing one sets only the
    fields the event has (this is on every intercept's path)."""
    kind: Kind
    rip: int
    length = 0
    insn: Any = None                 # iced_x86.Instruction
    leaf = 0
    subleaf = 0
    msr: int | None = None
    value: int | None = None
    port: int | None = None
    size = 0
    is_in = False
    string = False
    rep = False
    cr: int | None = None
    dr: int | None = None
    gpr: int | None = None
    write = False
    address: int | None = None
    vector: int | None = None
    event_type: int | None = None
    error_code: int | None = None
    cr2: int | None = None
    vectoring: Any = None            # events.EventInfo of the event being delivered
    detail: Any = None

    def __init__(self, kind: Kind, rip: int, length: int = 0, insn: Any = None, **fields: Any):
        self.kind = kind
        self.rip = rip
        if length:
            self.length = length
        if insn is not None:
            self.insn = insn
        if fields:
            for name in fields:
                if not hasattr(Event, name):
                    raise TypeError(f"Event has no field {name!r}")
            self.__dict__.update(fields)

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items() if k not in ("kind", "rip", "insn"))
        return f"Event({self.kind.value} at {self.rip:#x}{', ' + parts if parts else ''})"


Client = Callable[[Any, Event], Action]


# ---- instruction -> kind ----------------------------------------------------------------
_BY_MNEMONIC: dict[int, Kind] = {
    _M.CPUID: Kind.CPUID, _M.RDMSR: Kind.RDMSR, _M.WRMSR: Kind.WRMSR,
    _M.IN: Kind.IO, _M.OUT: Kind.IO, _M.INSB: Kind.IO, _M.INSW: Kind.IO, _M.INSD: Kind.IO,
    _M.OUTSB: Kind.IO, _M.OUTSW: Kind.IO, _M.OUTSD: Kind.IO,
    _M.CLTS: Kind.CLTS, _M.LMSW: Kind.LMSW, _M.INVLPG: Kind.INVLPG, _M.INVPCID: Kind.INVPCID,
    _M.HLT: Kind.HLT, _M.PAUSE: Kind.PAUSE, _M.MONITOR: Kind.MONITOR, _M.MWAIT: Kind.MWAIT,
    _M.WBINVD: Kind.WBINVD, _M.WBNOINVD: Kind.WBINVD, _M.INVD: Kind.INVD, _M.XSETBV: Kind.XSETBV,
    _M.RDPMC: Kind.RDPMC, _M.RDTSC: Kind.RDTSC, _M.RDTSCP: Kind.RDTSCP, _M.RDRAND: Kind.RDRAND,
    _M.RDSEED: Kind.RDSEED, _M.LGDT: Kind.GDTR_IDTR, _M.LIDT: Kind.GDTR_IDTR, _M.SGDT: Kind.GDTR_IDTR,
    _M.SIDT: Kind.GDTR_IDTR, _M.LLDT: Kind.LDTR_TR, _M.LTR: Kind.LDTR_TR, _M.SLDT: Kind.LDTR_TR,
    _M.STR: Kind.LDTR_TR, _M.XSAVES: Kind.XSAVES, _M.XSAVES64: Kind.XSAVES, _M.XRSTORS: Kind.XRSTORS,
    _M.XRSTORS64: Kind.XRSTORS, _M.GETSEC: Kind.GETSEC, _M.VMXON: Kind.VMXON, _M.VMXOFF: Kind.VMXOFF,
    _M.VMCLEAR: Kind.VMCLEAR, _M.VMPTRLD: Kind.VMPTRLD, _M.VMPTRST: Kind.VMPTRST, _M.VMREAD: Kind.VMREAD,
    _M.VMWRITE: Kind.VMWRITE, _M.VMLAUNCH: Kind.VMLAUNCH, _M.VMRESUME: Kind.VMRESUME,
    _M.INVEPT: Kind.INVEPT, _M.INVVPID: Kind.INVVPID, _M.VMCALL: Kind.VMCALL, _M.VMFUNC: Kind.VMFUNC,
}
_CRS = frozenset(getattr(I.Register, f"CR{n}") for n in range(16))
_GPR32 = frozenset(getattr(I.Register, r) for r in ("EAX", "ECX", "EDX", "EBX", "ESP", "EBP", "ESI", "EDI",
                                                     *(f"R{n}D" for n in range(8, 16))))
_DRS = frozenset(getattr(I.Register, f"DR{n}") for n in range(16))


def kind_of(insn: I.Instruction) -> Kind | None:
    """The intercept kind of a decoded instruction, or None."""
    k = _BY_MNEMONIC.get(insn.mnemonic)
    if k is not None:
        return k
    if insn.mnemonic == _M.CMPXCHG and insn.op1_register in _GPR32 and insn.code_size == I.CodeSize.CODE64:
        return Kind.CMPXCHG
    if insn.mnemonic == _M.MOV and insn.op_count == 2 and insn.op0_kind == I.OpKind.REGISTER \
            and insn.op1_kind == I.OpKind.REGISTER:
        if insn.op0_register in _CRS:
            return Kind.MOV_TO_CR
        if insn.op1_register in _CRS:
            return Kind.MOV_FROM_CR
        if insn.op0_register in _DRS or insn.op1_register in _DRS:
            return Kind.MOV_DR
    return None


@dataclass
class Subscriptions:
    """Which events go to the client: kinds, plus exception vectors (a 32-bit
    bitmap like the VMX exception bitmap; bit 14 = #PF)."""
    kinds: set = field(default_factory=set)
    exception_bitmap: int = 0

    def wants(self, kind: Kind) -> bool:
        return kind in self.kinds

    def wants_exception(self, vector: int) -> bool:
        return bool(self.exception_bitmap >> vector & 1) if vector < 32 else False

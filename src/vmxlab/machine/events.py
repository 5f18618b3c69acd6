"""Exception and interrupt delivery through the IDT, in Python.

Unicorn never vectors through the guest's IDT; this module does what Intel SDM
Vol. 3A chapter "Interrupt and Exception Handling" and the operation section of
Vol. 2 "INT n/INTO/INT3/INT1-Call to Interrupt Procedure" specify:

- real-address mode: the IVT at IDTR.base + 4 * vector, push FLAGS, CS, IP,
  clear IF, TF, AC ("Interrupt and Exception Handling in Real-Address Mode");
- protected mode: 8-byte interrupt/trap gates (16- and 32-bit), privilege change
  to the stack in the TSS (32- or 16-bit TSS) ("Exception- or
  Interrupt-Handler Procedures");
- IA-32e mode: 16-byte 64-bit gates, RSP0-2 or IST stacks from the 64-bit TSS,
  16-byte stack alignment, SS:RSP always pushed, SS = NULL on a privilege change
  ("Exception and Interrupt Handling in 64-bit Mode", "Interrupt Stack Table");
- the checks of the INT pseudo-code in order, with their #GP/#NP/#TS/#SS error
  codes (IDT bit, EXT bit = the event is not a software interrupt);
- RFLAGS: TF, NT, RF, VM cleared, IF cleared for interrupt gates; RF is set in
  the pushed image of fault-class exceptions other than instruction-breakpoint
  #DB ("Instruction-Breakpoint Exception Condition": "for any fault-class
  exception except a debug exception generated in response to an instruction
  breakpoint, the value pushed for RF is 1");
- #DF and shutdown: "Conditions for Generating a Double Fault" (Table: benign,
  contributory, page-fault classes) and "Interrupt 8-Double Fault Exception
  (#DF)" (an exception while delivering #DF is a triple fault).

Delivery is transactional: every check, table read and stack translation is
done before anything is written, so a fault during delivery leaves the processor
state as it was (the caller then delivers the new exception or hands it to the
client with the event being delivered as `vectoring`).

Not modelled (raise MachineNotImplemented with this text): task gates (hardware
task switching), virtual-8086 mode, shadow stacks.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from ..arch import events as EV
from ..arch import registers as R
from ..arch import segments as S
from . import context_blob as CB
from .paging import Mode, PageFault

EXT_TYPES = (EV.INTR_TYPE_EXT_INTR, EV.INTR_TYPE_NMI, EV.INTR_TYPE_HARD_EXCEPTION, EV.INTR_TYPE_PRIV_SW_EXCEPTION)
SOFTWARE_TYPES = (EV.INTR_TYPE_SOFT_INTR, EV.INTR_TYPE_SOFT_EXCEPTION)   # INT n, INT3, INTO: gate DPL checked
# Fault-class exceptions: the pushed RFLAGS has RF = 1 ("Resume Flag").
FAULT_VECTORS = frozenset({0, 5, 6, 7, 10, 11, 12, 13, 14, 16, 17, 19, 20, 21})


class MachineNotImplemented(NotImplementedError):
    """An architectural feature the simulated processor does not model."""


class Fault(Exception):
    """An exception raised by an instruction or by event delivery.

    `cr2` is set for #PF (the faulting linear address, loaded into CR2 only when
    the #PF is delivered by the machine, not when it is handed to a client)."""

    def __init__(self, vector: int, error_code: int | None = None, cr2: int | None = None, reason: str = ""):
        super().__init__(f"{EV.exception_name(vector)}"
                         + (f"({error_code:#x})" if error_code is not None else "") + (f": {reason}" if reason else ""))
        self.vector = vector
        self.error_code = error_code
        self.cr2 = cr2
        self.reason = reason

    @classmethod
    def from_page_fault(cls, pf: PageFault) -> "Fault":
        return cls(EV.PF, pf.error_code, pf.linear, pf.reason)


class TripleFault(Exception):
    """An exception while delivering #DF: the processor enters shutdown."""


@dataclass(slots=True)
class EventInfo:
    """An event to deliver: vector, interruption type (arch.events INTR_TYPE_*),
    error code (None: none pushed), instruction length (software events: the
    return address is RIP + length), CR2 for a #PF, and the event whose delivery
    raised this one."""
    vector: int
    type: int
    error_code: int | None = None
    length: int = 0
    cr2: int | None = None
    vectoring: "EventInfo | None" = None

    @property
    def external(self) -> bool:
        return self.type in EXT_TYPES

    def exception_class(self) -> str:
        """benign / contributory / page fault / double fault (software events are benign)."""
        if self.type != EV.INTR_TYPE_HARD_EXCEPTION:
            return "benign"
        return EV.EXCEPTIONS.get(self.vector, ("", False, "benign"))[2]


def escalate(first: EventInfo, fault: Fault) -> EventInfo:
    """The event to deliver when delivering `first` raised `fault` ("Conditions for
    Generating a Double Fault"); raises TripleFault when `first` is #DF."""
    if first.type == EV.INTR_TYPE_HARD_EXCEPTION and first.vector == EV.DF:
        raise TripleFault(f"{fault} while delivering #DF")
    second_class = EV.EXCEPTIONS.get(fault.vector, ("", False, "benign"))[2]
    c1 = first.exception_class()
    if (c1 == "contributory" and second_class == "contributory") or \
            (c1 == "page fault" and second_class in ("contributory", "page fault")):
        out = EventInfo(EV.DF, EV.INTR_TYPE_HARD_EXCEPTION, 0)
    else:
        out = EventInfo(fault.vector, EV.INTR_TYPE_HARD_EXCEPTION, fault.error_code, cr2=fault.cr2)
    out.vectoring = first
    return out


@dataclass(slots=True)
class _Frame:
    """Everything a successful delivery changes."""
    writes: list            # (linear, bytes, cpl, implicit): the stack frame, lowest address first
    rsp: int
    rip: int
    rflags: int
    cs: tuple               # (selector, base, limit, flags)
    ss: tuple | None        # new SS cache, or None to keep
    gdt_accessed: tuple | None   # (linear of descriptor byte 5, value) to set the accessed bit


class Delivery:
    """Delivers one event on a machine (see Machine._deliver for the escalation loop).

    The machine provides `_cpu_view()` -> (gprs, cr0, cr4, efer, loaded blob,
    paging context), `read_linear(addr, size, cpl, implicit, ctx=)` and
    `_commit_delivery(frame, event, blob)` (translates every write of the frame
    before writing any).
    """

    def __init__(self, machine):
        self.m = machine
        self.ctx = None

    # -- helpers ------------------------------------------------------------------------
    def _read(self, addr: int, size: int) -> bytes:
        """An implicit supervisor-mode read (IDT, GDT, LDT, TSS)."""
        try:
            return self.m.read_linear(addr, size, cpl=0, implicit=True, ctx=self.ctx)
        except PageFault as pf:
            raise Fault.from_page_fault(pf) from None

    def _descriptor(self, selector: int, blob, ext: int, fault_vector: int = EV.GP) -> tuple[int, int, int, int]:
        """(base, limit, ar, address of the descriptor) for a selector, with the
        table-limit check (#GP(selector) by default)."""
        index = selector & 0xFFF8
        if selector & 4:
            _sel, tbase, tlimit, tflags = blob.cache(CB.LDT)
            if not tflags & CB.DESC_P:
                raise Fault(fault_vector, (selector & 0xFFFC) | ext, reason="selector in the LDT, LDTR unusable")
        else:
            _sel, tbase, tlimit, _ = blob.cache(CB.GDT)
        if index + 7 > tlimit:
            raise Fault(fault_vector, (selector & 0xFFFC) | ext, reason=f"selector {selector:#x} beyond the table limit")
        raw = self._read(tbase + index, 8)
        base, limit, ar = S.decode_descriptor(raw + b"\0" * 8, long_mode=False)
        return base, limit, ar, tbase + index

    # -- entry point --------------------------------------------------------------------
    def deliver(self, ev: EventInfo, blob=None, g=None) -> None:
        """Deliver `ev` or raise Fault / MachineNotImplemented without changing state.
        `blob`, `g`: the context blob and GPR batch already read (and not changed
        since) by the caller."""
        m = self.m
        gprs, cr0, cr4, efer, blob, self.ctx = m._cpu_view(blob, g)
        rip = gprs[16]
        rflags = gprs[17]
        return_rip = rip + ev.length if ev.type in (EV.INTR_TYPE_SOFT_INTR, EV.INTR_TYPE_SOFT_EXCEPTION,
                                                    EV.INTR_TYPE_PRIV_SW_EXCEPTION) else rip
        if not cr0 & R.CR0_PE:
            frame = self._real_mode(ev, gprs, blob, return_rip, rflags)
        elif rflags & R.RFLAGS_VM:
            raise MachineNotImplemented("event delivery in virtual-8086 mode is not modelled")
        else:
            frame = self._protected(ev, gprs, blob, return_rip, rflags, efer, cr0)
        m._commit_delivery(frame, ev, blob)

    # -- real-address mode ----------------------------------------------------------------
    def _real_mode(self, ev, gprs, blob, return_rip, rflags) -> _Frame:
        _s, idt_base, idt_limit, _f = blob.cache(CB.IDT)
        if ev.vector * 4 + 3 > idt_limit:
            raise Fault(EV.GP, None, reason="IVT entry beyond the IDTR limit")
        entry = self.m.read_linear(idt_base + ev.vector * 4, 4, cpl=0, implicit=True, ctx=self.ctx)
        ip, cs = struct.unpack("<HH", entry)
        ss_sel, ss_base, _l, _fl = blob.cache(CB.SS)
        cs_sel = blob.cache(CB.CS)[0]
        sp = gprs[4]
        writes = []
        for value in (rflags & 0xFFFF, cs_sel, return_rip & 0xFFFF):
            sp = (sp - 2) & 0xFFFF
            writes.append((ss_base + sp, struct.pack("<H", value), 0, False))
        writes.reverse()
        new_rsp = (gprs[4] & ~0xFFFF) | sp
        new_flags = rflags & ~(R.RFLAGS_IF | R.RFLAGS_TF | R.RFLAGS_AC)
        cs_cache = (cs, cs << 4, 0xFFFF, blob.cache(CB.CS)[3])
        return _Frame(writes, new_rsp, ip, new_flags, cs_cache, None, None)

    # -- protected mode and IA-32e mode ---------------------------------------------------
    def _protected(self, ev, gprs, blob, return_rip, rflags, efer, cr0) -> _Frame:
        m = self.m
        lma = bool(efer & (1 << 10))
        ext = 1 if ev.external else 0
        idt_err = (ev.vector << 3) | 2 | ext
        _s, idt_base, idt_limit, _f = blob.cache(CB.IDT)
        gate_size = 16 if lma else 8
        if ev.vector * gate_size + gate_size - 1 > idt_limit:
            raise Fault(EV.GP, idt_err, reason=f"vector {ev.vector} beyond the IDT limit {idt_limit:#x}")
        raw = self._read(idt_base + ev.vector * gate_size, gate_size)
        lo, hi = struct.unpack_from("<II", raw)
        gtype = (hi >> 8) & 0xF
        gdpl = (hi >> 13) & 3
        present = hi >> 15 & 1
        if lma:
            if gtype not in (S.TYPE_INTERRUPT_GATE, S.TYPE_TRAP_GATE) or (hi >> 12) & 1:
                raise Fault(EV.GP, idt_err, reason=f"IDT entry {ev.vector} is not a 64-bit interrupt or trap gate")
        elif gtype == 5:
            raise MachineNotImplemented("task gates (hardware task switching) are not modelled")
        elif gtype not in (6, 7, 14, 15) or (hi >> 12) & 1:
            raise Fault(EV.GP, idt_err, reason=f"IDT entry {ev.vector} is not an interrupt, trap or task gate")
        cpl = blob.hflags & CB.HF_CPL_MASK
        if ev.type in SOFTWARE_TYPES and gdpl < cpl:
            raise Fault(EV.GP, (ev.vector << 3) | 2, reason=f"gate DPL {gdpl} < CPL {cpl} for a software interrupt")
        if not present:
            raise Fault(EV.NP, idt_err, reason=f"IDT gate {ev.vector} not present")
        interrupt_gate = gtype in (6, 14)
        gate32 = gtype in (14, 15)
        sel = lo >> 16
        offset = (lo & 0xFFFF) | (hi & 0xFFFF0000)
        ist = 0
        if lma:
            offset |= struct.unpack_from("<I", raw, 8)[0] << 32
            ist = hi & 7
        elif not gate32:
            offset &= 0xFFFF
        if sel & 0xFFFC == 0:
            raise Fault(EV.GP, ext, reason="gate selects a null code segment")
        cbase, climit, car, caddr = self._descriptor(sel, blob, ext)
        cdpl = (car >> 5) & 3
        if not (car & S.AR_S and car & S.TYPE_CODE) or cdpl > cpl:
            raise Fault(EV.GP, (sel & 0xFFFC) | ext, reason=f"selector {sel:#x} is not a code segment with DPL <= CPL")
        if not car & S.AR_P:
            raise Fault(EV.NP, (sel & 0xFFFC) | ext, reason=f"code segment {sel:#x} not present")
        if lma and not (car & S.AR_L and not car & S.AR_DB):
            raise Fault(EV.GP, (sel & 0xFFFC) | ext, reason=f"code segment {sel:#x} is not 64-bit")
        conforming = bool(car & S.TYPE_CE)
        if not conforming and cdpl < cpl:
            new_cpl = cdpl
        elif conforming or cdpl == cpl:
            new_cpl = cpl
        else:
            raise Fault(EV.GP, (sel & 0xFFFC) | ext, reason="non-conforming code segment with DPL > CPL")
        ss_sel, ss_base, ss_limit, ss_flags = blob.cache(CB.SS)
        cs_sel_old = blob.cache(CB.CS)[0]
        rsp = gprs[4]
        new_ss = None
        tr_sel, tr_base, tr_limit, tr_flags = blob.cache(CB.TR)
        if lma:
            if new_cpl != cpl or ist:
                addr = ((ist << 3) + 28) if ist else ((new_cpl << 3) + 4)
                if addr + 7 > tr_limit:
                    raise Fault(EV.TS, (tr_sel & 0xFFFC) | ext, reason="TSS too small for the stack pointer")
                new_rsp = struct.unpack("<Q", self._read(tr_base + addr, 8))[0]
            else:
                new_rsp = rsp
            if new_cpl != cpl:
                new_ss = (new_cpl, 0, 0, new_cpl << CB.DESC_DPL_SHIFT)   # NULL SS, RPL = new CPL
            bits = 57 if self.ctx.mode == Mode.LEVEL5 else 48
            if not R.canonical(new_rsp, bits):
                raise Fault(EV.SS, ext, reason=f"new RSP {new_rsp:#x} is not canonical")
            if not R.canonical(offset, bits):
                raise Fault(EV.GP, ext, reason=f"handler address {offset:#x} is not canonical")
            new_rsp &= ~0xF
            items = [ss_sel, rsp, rflags, cs_sel_old, return_rip]
            if ev.error_code is not None:
                items.append(ev.error_code)
            width = 8
            stack_base = 0
            stack_mask = (1 << 64) - 1
        else:
            if new_cpl != cpl:
                tss32 = (tr_flags >> 8) & 0xF in (9, 11)
                if tss32:
                    addr = (new_cpl << 3) + 4
                    if addr + 5 > tr_limit:
                        raise Fault(EV.TS, (tr_sel & 0xFFFC) | ext, reason="TSS too small for SS:ESP")
                    raw_stack = self._read(tr_base + addr, 6)
                    esp, nss = struct.unpack("<IH", raw_stack)
                else:
                    addr = (new_cpl << 2) + 2
                    if addr + 3 > tr_limit:
                        raise Fault(EV.TS, (tr_sel & 0xFFFC) | ext, reason="TSS too small for SS:SP")
                    esp, nss = struct.unpack("<HH", self._read(tr_base + addr, 4))
                if nss & 0xFFFC == 0:
                    raise Fault(EV.TS, ext, reason="null stack segment in the TSS")
                if nss & 3 != new_cpl:
                    raise Fault(EV.TS, (nss & 0xFFFC) | ext, reason="TSS stack selector RPL != new CPL")
                sbase, slimit, sar, _ = self._descriptor(nss, blob, ext, EV.TS)
                if (sar >> 5) & 3 != new_cpl or not (sar & S.AR_S and not sar & S.TYPE_CODE and sar & S.TYPE_RW):
                    raise Fault(EV.TS, (nss & 0xFFFC) | ext, reason="TSS stack segment is not a writable data segment at the new CPL")
                if not sar & S.AR_P:
                    raise Fault(EV.SS, (nss & 0xFFFC) | ext, reason="TSS stack segment not present")
                new_ss = (nss, sbase, slimit, (sar & 0xF0FF) << 8 | CB.DESC_P)
                new_rsp = esp
                stack_base = sbase
                stack_b = bool(sar & S.AR_DB)
                items = [ss_sel, rsp & (0xFFFFFFFF if gate32 else 0xFFFF)]
            else:
                new_rsp = rsp
                stack_base = ss_base
                stack_b = bool(ss_flags & CB.DESC_B)
                items = []
            items += [rflags & 0xFFFFFFFF, cs_sel_old, return_rip & 0xFFFFFFFF]
            if ev.error_code is not None:
                items.append(ev.error_code)
            width = 4 if gate32 else 2
            stack_mask = 0xFFFFFFFF if stack_b else 0xFFFF
            if offset > climit:
                raise Fault(EV.GP, ext, reason=f"handler offset {offset:#x} beyond the code-segment limit")
        if ev.type == EV.INTR_TYPE_HARD_EXCEPTION and ev.vector in FAULT_VECTORS:
            rf_index = 2 if lma else (len(items) - 3 - (1 if ev.error_code is not None else 0))
            items[rf_index] |= R.RFLAGS_RF
        sp = new_rsp
        implicit = new_cpl < 3
        mask = ((1 << 64) - 1) if lma else stack_mask
        sp = (sp - width * len(items)) & mask
        frame_bytes = b"".join(v.to_bytes(8, "little")[:width] for v in reversed(items))
        if lma or sp + len(frame_bytes) <= stack_mask:
            writes = [(stack_base + sp, frame_bytes, new_cpl, implicit)]
        else:                                    # the 16/32-bit stack wraps inside the frame
            writes = []
            for i, value in enumerate(reversed(items)):
                writes.append((stack_base + ((sp + i * width) & stack_mask),
                               value.to_bytes(8, "little")[:width], new_cpl, implicit))
        if not lma:
            new_rsp_full = (rsp & ~stack_mask) | sp if new_ss is None else sp
        else:
            new_rsp_full = sp
        new_flags = rflags & ~(R.RFLAGS_TF | R.RFLAGS_NT | R.RFLAGS_RF | R.RFLAGS_VM)
        if interrupt_gate:
            new_flags &= ~R.RFLAGS_IF
        accessed = None
        if not car & S.TYPE_ACCESSED:
            raw5 = self._read(caddr + 5, 1)[0]
            accessed = (caddr + 5, raw5 | 1)
            car |= S.TYPE_ACCESSED
        cs_cache = ((sel & 0xFFFC) | new_cpl, cbase, climit, (car & 0xF0FF) << 8)
        return _Frame(writes, new_rsp_full, offset, new_flags, cs_cache, new_ss, accessed)

"""What the architecture says an intercepted instruction does (Action.NATIVE),
for the instructions the machine executes in Python.

Each function takes (machine, insn, rip) with RIP at the instruction and either
completes it (registers, memory, RIP = next instruction) or raises events.Fault
before changing anything (REP string I/O excepted: iterations done before a
fault stay done, as the SDM specifies for interrupted string instructions).
Sections: Intel SDM Vol. 2 instruction pages CPUID, RDMSR, WRMSR, RDTSC,
RDTSCP, IN, OUT, INS/INSB/INSW/INSD, OUTS/OUTSB/OUTSW/OUTSD, "MOV-Move to/from
Control Registers", MONITOR, MWAIT, RDPMC, INVPCID, XSAVES, XRSTORS, GETSEC,
CMPXCHG (32-bit operands in 64-bit mode, which unicorn gets wrong);
Vol. 1 "I/O Permission Bit Map" and Vol. 3A "Protected-Mode I/O".

Instructions unicorn executes correctly (MOV DR, CLTS, LMSW, INVLPG, PAUSE,
WBINVD/INVD, XSETBV, RDRAND/RDSEED, LGDT/LIDT/SGDT/SIDT/LLDT/LTR/SLDT/STR) are
left to unicorn when NATIVE (`UNICORN_NATIVE`).
"""
from __future__ import annotations

import iced_x86 as I

from ..arch import events as EV
from ..arch import msrs as M
from ..arch import registers as AR
from . import context_blob as CB
from . import operands as OP
from . import paging as PG
from . import registers as REG
from .events import Fault
from .intercepts import Kind
from .msr_file import MsrFault

_M = I.Mnemonic
_OK = I.OpKind
MASK64 = (1 << 64) - 1

UNICORN_NATIVE = frozenset({Kind.MOV_DR, Kind.CLTS, Kind.LMSW, Kind.INVLPG, Kind.PAUSE, Kind.WBINVD, Kind.INVD,
                            Kind.XSETBV, Kind.RDRAND, Kind.RDSEED, Kind.GDTR_IDTR, Kind.LDTR_TR})
# Kinds whose Python emulation may run inside a code hook (no segment/mode change).
INLINE_SAFE = frozenset({Kind.CPUID, Kind.RDMSR, Kind.RDTSC, Kind.RDTSCP, Kind.IO, Kind.MOV_FROM_CR,
                         Kind.CMPXCHG})


def _gp(reason: str) -> Fault:
    return Fault(EV.GP, 0, reason=reason)


def _ud(reason: str) -> Fault:
    return Fault(EV.UD, None, reason=reason)


def _finish(m, g, rip: int, insn) -> None:
    g[REG.RIP] = (rip + insn.len) & MASK64
    m.gprs.write()


def _set32(g, index: int, value: int) -> None:
    g[index] = value & 0xFFFFFFFF


# ---- CPUID, MSRs, TSC ---------------------------------------------------------------------
def cpuid(m, insn, rip: int) -> None:
    g = m.gprs.read()
    leaf, sub = g[REG.RAX] & 0xFFFFFFFF, g[REG.RCX] & 0xFFFFFFFF
    cr4 = m.ctrl.read()[REG.CR4] if leaf in (1, 0xD) else 0
    xcr0 = m.blob.load().xcr0 if leaf == 0xD else 1
    a, b, c, d = m.cpuid.query(leaf, sub, cr4, xcr0)
    g[REG.RAX], g[REG.RBX], g[REG.RCX], g[REG.RDX] = a & 0xFFFFFFFF, b & 0xFFFFFFFF, c & 0xFFFFFFFF, d & 0xFFFFFFFF
    _finish(m, g, rip, insn)


def rdmsr(m, insn, rip: int) -> None:
    if m.fast_cpl():
        raise _gp("RDMSR at CPL > 0")
    g = m.gprs.read()
    index = g[REG.RCX] & 0xFFFFFFFF
    try:
        value = m._efer if index == M.IA32_EFER else m.msrs.read(index)
    except MsrFault as e:
        raise _gp(e.reason) from None
    _set32(g, REG.RAX, value)
    _set32(g, REG.RDX, value >> 32)
    _finish(m, g, rip, insn)


def wrmsr(m, insn, rip: int) -> None:
    if m.fast_cpl():
        raise _gp("WRMSR at CPL > 0")
    g = m.gprs.read()
    index = g[REG.RCX] & 0xFFFFFFFF
    value = ((g[REG.RDX] & 0xFFFFFFFF) << 32) | (g[REG.RAX] & 0xFFFFFFFF)
    if index == M.IA32_EFER:
        m.write_efer(value)          # raises Fault
    else:
        try:
            m.msrs.write(index, value)
        except MsrFault as e:
            raise _gp(e.reason) from None
    _finish(m, g, rip, insn)


def wrmsr_inline_safe(m) -> bool:
    """WRMSR may run in a code hook unless it writes IA32_EFER (mode change)."""
    return m.gprs.read()[REG.RCX] & 0xFFFFFFFF != M.IA32_EFER


def rdtsc(m, insn, rip: int) -> None:
    if m.ctrl.read()[REG.CR4] & (1 << 2) and m.fast_cpl():
        raise _gp("RDTSC at CPL > 0 with CR4.TSD = 1")
    g = m.gprs.read()
    t = m.tsc.read()
    _set32(g, REG.RAX, t)
    _set32(g, REG.RDX, t >> 32)
    if insn.mnemonic == _M.RDTSCP:
        _set32(g, REG.RCX, m.msrs.peek(M.IA32_TSC_AUX))
    _finish(m, g, rip, insn)


# ---- I/O ------------------------------------------------------------------------------------
def io_decode(insn) -> tuple[bool, bool, int, bool]:
    """(is_in, string, size in bytes, port from DX) of an I/O instruction."""
    mn = insn.mnemonic
    is_in = mn in (_M.IN, _M.INSB, _M.INSW, _M.INSD)
    string = mn not in (_M.IN, _M.OUT)
    if string:
        size = {_M.INSB: 1, _M.OUTSB: 1, _M.INSW: 2, _M.OUTSW: 2}.get(mn, 4)
        return is_in, True, size, True
    reg_op = 0 if is_in else 1
    size = I.RegisterExt.size(insn.op_register(reg_op))
    port_op = 1 if is_in else 0
    return is_in, False, size, insn.op_kind(port_op) == _OK.REGISTER


def io_port(m, insn, g=None) -> int:
    is_in, string, size, from_dx = io_decode(insn)
    if from_dx:
        g = g if g is not None else m.gprs.read()
        return g[REG.RDX] & 0xFFFF
    return insn.immediate(1 if is_in else 0) & 0xFF


def io_allowed(m, port: int, size: int) -> bool:
    """"Protected-Mode I/O": CPL <= IOPL, else every bit of the TSS I/O permission
    bit map for the accessed ports must be 0 (and inside the TSS limit)."""
    c = m._fillregs.read()
    cr0, rflags = c[0], c[3]
    if not cr0 & AR.CR0_PE:
        return True
    cpl = 3 if rflags & AR.RFLAGS_VM else c[4] & 3
    iopl = (rflags >> 12) & 3
    if not rflags & AR.RFLAGS_VM and cpl <= iopl:
        return True
    _s, base, limit, flags = m.blob.load().cache(CB.TR)
    if (flags >> 8) & 0xF not in (9, 11) or limit < 0x67:
        return False
    try:
        map_base = int.from_bytes(m.read_linear(base + 0x66, 2, cpl=0, implicit=True), "little")
        first, last = map_base + port // 8, map_base + (port + size - 1) // 8
        if last + 1 > limit:
            return False
        bits = int.from_bytes(m.read_linear(base + first, last - first + 1 + 1, cpl=0, implicit=True), "little")
    except PG.PageFault:
        return False
    return not (bits >> (port % 8)) & ((1 << size) - 1)


_STRING_ASIZE = {_OK.MEMORY_ESDI: 2, _OK.MEMORY_ESEDI: 4, _OK.MEMORY_ESRDI: 8, _OK.MEMORY_SEG_SI: 2,
                 _OK.MEMORY_SEG_ESI: 4, _OK.MEMORY_SEG_RSI: 8}


def io(m, insn, rip: int) -> None:
    g = m.gprs.read()
    is_in, string, size, _dx = io_decode(insn)
    port = io_port(m, insn, g)
    if not io_allowed(m, port, size):
        raise _gp(f"I/O to port {port:#x} not permitted at this CPL/IOPL")
    if not string:
        if is_in:
            value = m.io.read(port, size)
            if size == 4:
                g[REG.RAX] = value
            else:
                g[REG.RAX] = REG.merge_gpr(g[REG.RAX], value, size, 0)
        else:
            m.io.write(port, size, g[REG.RAX] & ((1 << (8 * size)) - 1))
        _finish(m, g, rip, insn)
        return
    bitness = OP._bitness(m)
    asize = _STRING_ASIZE[insn.op_kind(0 if is_in else 1)]
    amask = (1 << (8 * asize)) - 1
    rep = insn.has_rep_prefix or insn.has_repe_prefix or insn.has_repne_prefix
    step = -size if g[REG.RFLAGS] & AR.RFLAGS_DF else size
    index = REG.RDI if is_in else REG.RSI
    pointer, counter = g[index], g[REG.RCX]      # locals: m.translate() re-reads the GPR batch
    count = counter & amask if rep else 1
    if is_in:
        seg_base = OP.segment_base(m, I.Register.ES, bitness)
    else:
        seg_base = OP.segment_base(m, insn.memory_segment, bitness)
    lmask = MASK64 if bitness == 64 else 0xFFFFFFFF

    def store() -> None:
        g2 = m.gprs.read()
        g2[index] = pointer
        g2[REG.RCX] = counter
        return g2

    try:
        while count:
            addr = (seg_base + (pointer & amask)) & lmask
            if is_in:
                m.translate(addr, PG.WRITE)          # fault before the device sees the read
                m.write_linear(addr, m.io.read(port, size).to_bytes(size, "little"))
            else:
                m.io.write(port, size, int.from_bytes(m.read_linear(addr, size), "little"))
            pointer = (pointer & ~amask) | ((pointer + step) & amask)
            count -= 1
            if rep:
                counter = (counter & ~amask) | ((counter - 1) & amask)
    except PG.PageFault as pf:
        store()
        m.gprs.write()                           # completed iterations stay done
        raise Fault.from_page_fault(pf) from None
    _finish(m, store(), rip, insn)


# ---- control registers ------------------------------------------------------------------------
def _cr_operands(insn) -> tuple[int, int]:
    """(CR number, iced GPR) of a MOV to/from CR."""
    if insn.op0_register in REG.ICED_CR:
        return REG.ICED_CR[insn.op0_register], insn.op1_register
    return REG.ICED_CR[insn.op1_register], insn.op0_register


def mov_from_cr(m, insn, rip: int) -> None:
    if m.fast_cpl():
        raise _gp("MOV from CR at CPL > 0")
    cr, reg = _cr_operands(insn)
    c = m.ctrl.read()
    values = {0: c[REG.CR0], 2: c[REG.CR2], 3: c[REG.CR3], 4: c[REG.CR4], 8: m.cr8}
    if cr not in values:
        raise _ud(f"CR{cr} does not exist")
    g = m.gprs.read()
    index, width, _shift = REG.ICED_GPR[reg]
    g[index] = values[cr] & ((1 << (8 * width)) - 1)
    _finish(m, g, rip, insn)


def mov_to_cr(m, insn, rip: int) -> None:
    if m.fast_cpl():
        raise _gp("MOV to CR at CPL > 0")
    cr, reg = _cr_operands(insn)
    g = m.gprs.read()
    index, width, _shift = REG.ICED_GPR[reg]
    value = g[index] & ((1 << (8 * width)) - 1)
    if cr == 0:
        m.write_cr0(value)
    elif cr == 3:
        m.write_cr3(value)
    elif cr == 4:
        m.write_cr4(value)
    elif cr == 8:
        if value >> 4:
            raise _gp(f"reserved bits in CR8 value {value:#x}")
        m.cr8 = value
    elif cr == 2:
        c = m.ctrl.read()
        c[REG.CR2] = value
        m.ctrl.write()
    else:
        raise _ud(f"CR{cr} does not exist")
    g = m.gprs.read()
    _finish(m, g, rip, insn)


def hlt(m, insn, rip: int) -> None:
    """HLT: #GP(0) at CPL > 0; else the processor enters the HLT state with RIP
    after the instruction (and no STI/MOV SS shadow: HLT completes it)."""
    if m.fast_cpl():
        raise _gp("HLT at CPL > 0")
    g = m.gprs.read()
    _finish(m, g, rip, insn)
    m.enter_hlt()


# ---- #UD-class instructions --------------------------------------------------------------------
def monitor(m, insn, rip: int) -> None:
    if not m.profile_has("MONITOR"):
        raise _ud("MONITOR not reported by CPUID")
    if m.fast_cpl():
        raise _ud("MONITOR at CPL > 0")
    g = m.gprs.read()
    if g[REG.RCX] & 0xFFFFFFFF:
        raise _gp("MONITOR extensions (ECX != 0) not supported")
    bitness = OP._bitness(m)
    seg = insn.memory_segment if insn.memory_segment != I.Register.NONE else I.Register.DS
    addr = OP.segment_base(m, seg, bitness) + (g[REG.RAX] & (MASK64 if bitness == 64 else 0xFFFFFFFF))
    try:
        m.translate(addr, PG.READ)
    except PG.PageFault as pf:
        raise Fault.from_page_fault(pf) from None
    m.monitor_address = addr
    _finish(m, g, rip, insn)


def mwait(m, insn, rip: int) -> None:
    """MWAIT: "the processor may exit the implementation-dependent-optimized state
    for any reason": vmxlab returns at once (a hint, not a sleep)."""
    if not m.profile_has("MONITOR"):
        raise _ud("MWAIT not reported by CPUID")
    if m.fast_cpl():
        raise _ud("MWAIT at CPL > 0")
    g = m.gprs.read()
    if g[REG.RCX] & 0xFFFFFFFF > 1:
        raise _gp("MWAIT extensions other than bit 0 not supported")
    _finish(m, g, rip, insn)


def rdpmc(m, insn, rip: int) -> None:
    """No performance counters are modelled (CPUID leaf 0AH reports none): any ECX
    is an invalid counter -> #GP(0); CR4.PCE = 0 at CPL > 0 -> #GP(0)."""
    raise _gp("RDPMC: no performance-monitoring counters")


def invpcid(m, insn, rip: int) -> None:
    if not m.profile_has("INVPCID"):
        raise _ud("INVPCID not reported by CPUID")
    if m.fast_cpl():
        raise _gp("INVPCID at CPL > 0")
    kind = OP.read_operand(m, insn, 0, 8)
    if kind > 3:
        raise _gp(f"INVPCID type {kind} > 3")
    addr = OP.operand_address(m, insn, 1)
    try:
        desc = m.read_linear(addr, 16)
    except PG.PageFault as pf:
        raise Fault.from_page_fault(pf) from None
    pcid = int.from_bytes(desc[:8], "little")
    linear = int.from_bytes(desc[8:], "little")
    if pcid >> 12:
        raise _gp("INVPCID descriptor bits 63:12 not zero")
    if kind == 0 and not AR.canonical(linear, m.linear_bits):
        raise _gp("INVPCID individual-address with a non-canonical address")
    if kind in (0, 1) and pcid and not m.ctrl.read()[REG.CR4] & AR.CR4_PCIDE:
        raise _gp("INVPCID with PCID != 0 while CR4.PCIDE = 0")
    m.flush_tlb()
    g = m.gprs.read()
    _finish(m, g, rip, insn)


# ---- CMPXCHG with 32-bit operands -------------------------------------------------------------
_STACK_BASES = frozenset({I.Register.RSP, I.Register.RBP, I.Register.ESP, I.Register.EBP})
_ARITH = AR.RFLAGS_CF | AR.RFLAGS_PF | AR.RFLAGS_AF | AR.RFLAGS_ZF | AR.RFLAGS_SF | AR.RFLAGS_OF


def _sub32_flags(a: int, b: int) -> int:
    """CF, PF, AF, ZF, SF, OF of the 32-bit subtraction a - b ("CMP", Flags Affected)."""
    r = (a - b) & 0xFFFFFFFF
    f = 0
    if a < b:
        f |= AR.RFLAGS_CF
    if not bin(r & 0xFF).count("1") & 1:
        f |= AR.RFLAGS_PF
    if (a ^ b ^ r) & 0x10:
        f |= AR.RFLAGS_AF
    if r == 0:
        f |= AR.RFLAGS_ZF
    if r & 0x80000000:
        f |= AR.RFLAGS_SF
    if (a ^ b) & (a ^ r) & 0x80000000:
        f |= AR.RFLAGS_OF
    return f


def cmpxchg32(m, insn, rip: int) -> None:
    """CMPXCHG r/m32, r32 (SDM Vol. 2 "CMPXCHG", Operation): TEMP := DEST; flags as
    CMP EAX, TEMP; equal: DEST := SRC and the accumulator is not written; not equal:
    EAX := TEMP, DEST := TEMP (the write-back cycle).  A 32-bit register write
    zero-extends ("General-Purpose Registers in 64-Bit Mode").  Unicorn 2.1.4 writes
    EAX in both cases, which clears RAX bits 63:32 after a successful comparison;
    the machine therefore executes this form itself.  LOCK with a register
    destination is #UD."""
    reg_dest = insn.op0_kind != _OK.MEMORY
    if reg_dest and insn.has_lock_prefix:
        raise _ud("LOCK CMPXCHG with a register destination")
    g = m.gprs.read()
    eax = g[REG.RAX] & 0xFFFFFFFF
    src = OP.gpr_value(m, insn.op1_register, g) & 0xFFFFFFFF
    if reg_dest:
        temp = OP.gpr_value(m, insn.op0_register, g) & 0xFFFFFFFF
        addr = None
    else:
        addr = OP.operand_address(m, insn)
        if OP._bitness(m) == 64 and not AR.canonical(addr, m.linear_bits):
            vector = EV.SS if insn.memory_base in _STACK_BASES else EV.GP
            raise Fault(vector, 0, reason=f"CMPXCHG to non-canonical address {addr:#x}")
        try:
            m.translate(addr, PG.WRITE)                          # the write cycle happens in both cases
            if (addr & 0xFFF) > 0xFFC:
                m.translate((addr + 3) & MASK64, PG.WRITE)
            temp = int.from_bytes(m.read_linear(addr, 4), "little")
        except PG.PageFault as pf:
            raise Fault.from_page_fault(pf) from None
    flags = _sub32_flags(eax, temp)
    new = src if eax == temp else temp
    if addr is not None:
        try:
            m.write_linear(addr, new.to_bytes(4, "little"))
        except PG.PageFault as pf:
            raise Fault.from_page_fault(pf) from None
    g = m.gprs.read()
    if reg_dest:
        index, _width, _shift = REG.ICED_GPR[insn.op0_register]
        g[index] = new                                           # zero-extended
    if eax != temp:
        g[REG.RAX] = temp                                        # zero-extended
    g[REG.RFLAGS] = (g[REG.RFLAGS] & ~_ARITH) | flags
    _finish(m, g, rip, insn)


def undefined(m, insn, rip: int) -> None:
    raise _ud(f"{insn} raises #UD on this processor")


PYTHON_NATIVE = {
    Kind.CPUID: cpuid, Kind.RDMSR: rdmsr, Kind.WRMSR: wrmsr, Kind.RDTSC: rdtsc, Kind.RDTSCP: rdtsc,
    Kind.IO: io, Kind.MOV_FROM_CR: mov_from_cr, Kind.MOV_TO_CR: mov_to_cr, Kind.HLT: hlt, Kind.MONITOR: monitor,
    Kind.MWAIT: mwait, Kind.RDPMC: rdpmc, Kind.INVPCID: invpcid, Kind.XSAVES: undefined,
    Kind.XRSTORS: undefined, Kind.GETSEC: undefined, Kind.CMPXCHG: cmpxchg32,
}

"""The differential runner: generated programs (progen.py) on the simulated
processor and on KVM, compared exit by exit and in their final state.

    sim, kvm = SimBackend(), KvmBackend()
    outcome = check(program, sim, kvm)            # Outcome: verdict "agree" | "quirk" | "diverge"
    report = run(count=1000, seed=1, cpls=(0, 3)) # Report: counts, divergences (shrunk), timing

What is compared (after normalisation, see Result):
- the exits, in order: I/O exits as (IO_INSTRUCTION, qualification in the SDM
  format of Vol. 3C "Exit Qualification for I/O Instructions", data: OUT data or
  the IN data supplied), then HLT or TRIPLE_FAULT; anything else a backend
  reports (a KVM internal error, the simulator's budget) is an exit of its own;
- the final registers: RAX..R15, RSP, RIP, RFLAGS, CR2, CS and SS selectors;
- memory: the data page and the stack pages.
RFLAGS bits the SDM leaves undefined after the instructions that ran
(progen.undefined_flags) are masked, in the final RFLAGS and in the RFLAGS image
of an interrupt frame on the stack.

Both backends run in the same environment (build_env): kvm/flat.py with these
changes: handlers that keep RAX (`push rax; mov eax, v; out 0xE0, eax; pop rax;
hlt`) and a page table for the alias pages of progen.py; STAR holds the
selectors SYSRET uses.  CPL3 programs run with IOPL 0: the
I/O permission bit map starts at the TSS base (I/O map base 0 in the TSS), where
bytes 0-3 are zero, so ports 0x00-0x1F are permitted ("I/O Permission Bit Map",
SDM Vol. 1) -- the generator's ports; on these hosts KVM lets CPL3 code reach
ports below 0x340 whatever the bit map says (kvm/machine.py), so both agree there.
IN data: IN_VALUE(n, port, size) for the n-th I/O exit of the run, on both sides.

Divergences are shrunk (shrink()): units of the program are removed, largest
chunks first, while the program still diverges in a subset of the places it
diverged before (exits, registers, memory pages).  A
divergence that a documented host quirk explains (QUIRKS, docs/differential.md:
the program with the quirk neutralized agrees) is counted as "quirk", not as a
divergence.
"""
from __future__ import annotations

import re
import struct
import time
from dataclasses import dataclass, field, replace
from typing import Callable

from ..arch import exits as X
from ..errors import BadInput
from . import flat, progen
from .progen import CODE, DATA, Program
from .system import KvmError

PAGE = 0x1000
RAM = flat.RAM
ALIAS_PT = 0x9000
HANDLER_PAGE = flat.HANDLERS
USER_STACK_PAGE = progen.STACK3 & ~0xFFF                  # 0x6F000
KERNEL_STACK_PAGES = (flat.RSP0 - PAGE, progen.STACK0 & ~0xFFF)  # 0x7E000 (CPL3 faults), 0x7F000
COMPARED_PAGES = (DATA, USER_STACK_PAGE) + KERNEL_STACK_PAGES
CODE_LIMIT = 0x8000                                        # code may fill [CODE, CODE + CODE_LIMIT)
MAX_EXITS = 400
GPRS = ("RAX", "RBX", "RCX", "RDX", "RSI", "RDI", "RBP", "R8", "R9", "R10", "R11", "R12", "R13", "R14", "R15")
COMPARED_KEYS = (("GUEST_RIP", "GUEST_RFLAGS", "CR2", "GUEST_RSP") + GPRS
                 + ("GUEST_CS_SELECTOR", "GUEST_SS_SELECTOR", "GUEST_CR0", "GUEST_CR3", "GUEST_CR4",
                    "GUEST_GS_BASE", "KERNEL_GS_BASE"))
KERNEL_GS = DATA + 0x800                 # KERNEL_GS_BASE at the start: SWAPGS points GS into the data page
IO_PORTS = tuple(progen.IO_PORTS) + (progen.END_PORT, flat.REPORT_PORT)
RFLAGS_RF = 1 << 16
VERDICTS = ("agree", "quirk", "diverge")


def in_value(n: int, port: int, size: int) -> int:
    """The data the n-th I/O exit of a run reads when it is an IN (both backends)."""
    v = ((n + 1) * 0x9E3779B97F4A7C15 ^ (port << 8) ^ size) & 0xFFFFFFFFFFFFFFFF
    return (v >> 17) & ((1 << (8 * size)) - 1)


def _handler(v: int) -> bytes:
    # push rax; mov eax, v; out 0xE0, eax; pop rax; hlt
    return b"\x50\xb8" + struct.pack("<I", v) + bytes((0xE7, flat.REPORT_PORT, 0x58, 0xF4))


def build_env(machine) -> None:
    """The environment of both backends (module doc), through phys_write only."""
    flat.build(machine)
    machine.phys_write(HANDLER_PAGE, b"".join(_handler(v).ljust(16, b"\xcc") for v in range(256)))
    P, RW, US = 1, 2, 4
    pt = [0] * 512
    pt[0] = DATA | P | RW | US                           # ALIAS_RW
    pt[1] = DATA | P | US                                # ALIAS_RO: read-only
    pt[2] = DATA | P | RW                                # ALIAS_SUPER: supervisor only
    pt[3] = 0                                            # ALIAS_ABSENT: not present
    machine.phys_write(ALIAS_PT, b"".join(struct.pack("<Q", e) for e in pt))
    machine.phys_write(flat.PD + 8 * (progen.ALIAS >> 21), struct.pack("<Q", ALIAS_PT | P | RW | US))


# SYSRET to 64-bit code loads CS = STAR[63:48] + 16 and SS = STAR[63:48] + 8, RPL 3,
# with fixed flat attributes (SDM Vol. 2 "SYSRET"): selectors 0x23 and 0x1B here
STAR = (0x10 << 48) | (flat.SEL_CODE0 << 32)


def initial_state(prog: Program) -> dict:
    direct = prog.cpl == 0 or prog.entry == "direct"
    cpl = prog.cpl if direct else 0
    st = flat.state(cpl=cpl, rsp=progen.STACK3 if cpl == 3 else progen.STACK0,
                    rflags=prog.regs["GUEST_RFLAGS"] if direct else 0x2)
    st.update({k: v for k, v in prog.regs.items() if k != "GUEST_RFLAGS"})
    st.update({"CR2": 0, "GUEST_ACTIVITY_STATE": 0, "GUEST_INTERRUPTIBILITY_INFO": 0, "STAR": STAR,
               "LSTAR": 0, "FMASK": 0, "KERNEL_GS_BASE": KERNEL_GS})
    return st


@dataclass
class Result:
    """What one backend did with one program."""
    exits: list = field(default_factory=list)      # normalised exit tuples
    state: dict = field(default_factory=dict)      # COMPARED_KEYS
    memory: dict = field(default_factory=dict)     # page address -> bytes
    error: str | None = None                       # the backend could not run it at all
    seconds: float = 0.0


def exit_text(e: tuple) -> str:
    if e[0] == "IO_INSTRUCTION":
        q = e[1]
        what = "IN" if q >> 3 & 1 else "OUT"
        extra = "".join((" string" if q >> 4 & 1 else "", " rep" if q >> 5 & 1 else "",
                         " imm" if q >> 6 & 1 else " dx"))
        return f"IO_INSTRUCTION {what} port {q >> 16:#x} size {(q & 7) + 1}{extra} (qual {q:#x}) data {e[2]}"
    return " ".join(str(x) for x in e)


class _Backend:
    name = "?"

    def load(self, m, prog: Program, code: bytes) -> None:
        m.phys_write(CODE, code.ljust(self._code_len, b"\0"))
        self._code_len = len(code)
        m.phys_write(DATA, prog.data)
        m.phys_write(USER_STACK_PAGE, prog.stack)
        m.phys_write(KERNEL_STACK_PAGES[0], bytes(PAGE))
        m.phys_write(KERNEL_STACK_PAGES[1], prog.stack)

    def finish(self, m, res: Result) -> None:
        st = m.get_state()
        res.state = {k: st[k] for k in COMPARED_KEYS}
        res.memory = {p: bytes(m.phys_read(p, PAGE)) for p in COMPARED_PAGES}


class _IoRecorder:
    """The simulator's device on the programs' ports: records each access as an exit
    (with the qualification of the I/O instruction the intercept client saw last)
    and answers IN with in_value()."""

    def __init__(self):
        self.exits: list = []
        self.insn = None

    def _qual(self, port: int, size: int, is_in: bool) -> int:
        ev = self.insn
        string = rep = imm = 0
        if ev is not None and ev.port == port and ev.size == size and ev.is_in == is_in:
            string, rep = int(ev.string), int(ev.rep)
            imm = int(not ev.string and ev.insn is not None and _immediate_port(ev.insn))
        return X.QUAL_IO.encode(size=size - 1, direction=int(is_in), string=string, rep=rep, operand=imm,
                                port=port)

    def io_read(self, port: int, size: int) -> int:
        v = in_value(len(self.exits), port, size)
        self.exits.append(("IO_INSTRUCTION", self._qual(port, size, True), v.to_bytes(size, "little").hex()))
        return v

    def io_write(self, port: int, size: int, value: int) -> None:
        self.exits.append(("IO_INSTRUCTION", self._qual(port, size, False), value.to_bytes(size, "little").hex()))


def _immediate_port(insn) -> bool:
    import iced_x86 as I
    return any(insn.op_kind(i) == I.OpKind.IMMEDIATE8 for i in range(insn.op_count))


class SimBackend(_Backend):
    """The simulated processor (machine/), one Machine reused across programs."""
    name = "sim"

    def __init__(self, profile=None, *, budget: float = 10.0):
        from ..machine import Action, Kind, Machine
        self._Action, self._Kind = Action, Kind
        self.m = Machine(profile, RAM)
        self.budget = budget
        self.rec = _IoRecorder()
        for p in IO_PORTS:
            self.m.io.claim(p, p, self.rec)
        self.m.client = self._client
        self.m.intercept(Kind.IO)
        build_env(self.m)
        self._code_len = 0

    def _client(self, m, ev):
        self.rec.insn = ev
        return self._Action.NATIVE

    def run(self, prog: Program, code: bytes | None = None) -> Result:
        from ..machine import StopReason
        code = prog.assemble() if code is None else code
        m, res = self.m, Result()
        t0 = time.perf_counter()
        self.load(m, prog, code)
        m.set_state(initial_state(prog))
        m.flush_tlb()
        self.rec.exits = res.exits
        self.rec.insn = None
        try:
            while len(res.exits) < MAX_EXITS:
                stop = m.run(time_budget=self.budget)
                if stop.reason == StopReason.HALTED:
                    res.exits.append(("HLT",))
                    break
                if stop.reason == StopReason.SHUTDOWN:
                    res.exits.append(("TRIPLE_FAULT",))
                    break
                res.exits.append(("SIM_STOP", stop.reason.value, stop.detail))
                break
            self.finish(m, res)
        except Exception as e:           # a simulator failure is a result to report, not a crash
            res.exits.append(("SIM_ERROR", f"{type(e).__name__}: {e}"))
            res.error = f"{type(e).__name__}: {e}"
            try:
                self.finish(m, res)
            except Exception:
                pass
        res.seconds = time.perf_counter() - t0
        return res

    def close(self) -> None:
        pass


class KvmBackend(_Backend):
    """KVM (KvmMachine), one VM reused across programs (a new one after a shutdown)."""
    name = "kvm"

    def __init__(self, *, timeout: float = 5.0):
        from .machine import KvmMachine
        self._new = lambda: KvmMachine(RAM, timeout=timeout)
        self.m = self._new()
        build_env(self.m)
        self._code_len = 0
        self.timeout = timeout

    def _fresh(self) -> None:
        self.m.close()
        self.m = self._new()
        build_env(self.m)
        self._code_len = 0

    def run(self, prog: Program, code: bytes | None = None) -> Result:
        code = prog.assemble() if code is None else code
        res = Result()
        t0 = time.perf_counter()
        m = self.m
        try:
            self._run(m, prog, code, res)
        except (KvmError, BadInput) as e:       # a failing ioctl is a result to report, not a crash
            res.exits.append(("KVM_ERROR", f"{type(e).__name__}: {e}"))
            res.error = str(e)
            self._fresh()
        res.seconds = time.perf_counter() - t0
        return res

    def _run(self, m, prog: Program, code: bytes, res: Result) -> None:
        from .exits import HltExit, IoExit, TripleFaultExit
        self.load(m, prog, code)
        m.set_state(initial_state(prog))
        reset = False
        while len(res.exits) < MAX_EXITS:
            e = m.run()
            if isinstance(e, IoExit):
                if e.is_in:
                    v = in_value(len(res.exits), e.port, e.size)
                    e.reply(v)
                    data = v.to_bytes(e.size, "little").hex()
                else:
                    data = e.data.hex()
                res.exits.append(("IO_INSTRUCTION", e.qualification, data))
                continue
            if isinstance(e, HltExit):
                res.exits.append(("HLT",))
            elif isinstance(e, TripleFaultExit):
                res.exits.append(("TRIPLE_FAULT",))
                reset = True
            else:
                rep = e.report
                res.exits.append(("KVM", e.name, rep.message if rep is not None else e.describe()))
                reset = True
            break
        self.finish(m, res)
        if reset:
            self._fresh()

    def close(self) -> None:
        self.m.close()


# ---- comparison ------------------------------------------------------------------------
@dataclass
class Difference:
    key: str           # "exits", a state key, or "mem:<page>"
    sim: object
    kvm: object
    detail: str = ""

    def text(self) -> str:
        if self.detail:
            return f"{self.key}: {self.detail}"
        fmt = (lambda v: f"{v:#x}") if isinstance(self.sim, int) and isinstance(self.kvm, int) else repr
        return f"{self.key}: sim {fmt(self.sim)} kvm {fmt(self.kvm)}"


_ORDER = {k: i for i, k in enumerate(("exits",) + COMPARED_KEYS)}


def _frame_rflags_slot(res: Result) -> int | None:
    """Address of the RFLAGS image of the interrupt frame the run ended in (the
    handler of vector v is at HANDLER_PAGE + 16 v and leaves RSP at the frame:
    [error code,] RIP, CS, RFLAGS, RSP, SS -- SDM Vol. 3A "Stack Usage on Transfers
    to Interrupt and Exception-Handling Routines"), or None."""
    rip = res.state.get("GUEST_RIP", 0)
    if not HANDLER_PAGE <= rip < HANDLER_PAGE + PAGE:
        return None
    vector = (rip - HANDLER_PAGE) // 16
    from ..arch.events import ERROR_CODE_VECTORS
    return res.state["GUEST_RSP"] + (8 if vector in ERROR_CODE_VECTORS else 0) + 16


def _frame_rip(res: Result, slot: int) -> int | None:
    page = slot - 16 & ~0xFFF
    mem = res.memory.get(page)
    off = slot - 16 - page
    if mem is None or off < 0 or off + 8 > PAGE:
        return None
    return struct.unpack_from("<Q", mem, off)[0]


def _mask_memory(res: Result, slot: int | None, mask: int) -> dict:
    if slot is None or not mask:
        return res.memory
    page = slot & ~0xFFF
    if page not in res.memory or (slot & 0xFFF) + 8 > PAGE:
        return res.memory
    mem = dict(res.memory)
    b = bytearray(mem[page])
    v = struct.unpack_from("<Q", b, slot & 0xFFF)[0] & ~mask
    struct.pack_into("<Q", b, slot & 0xFFF, v)
    mem[page] = bytes(b)
    return mem


def compare(prog: Program, sim: Result, kvm: Result, flags=None) -> list[Difference]:
    """The differences between two results of `prog`, with the RFLAGS bits the SDM
    leaves undefined masked (final RFLAGS and the frame's RFLAGS image)."""
    end_undef, before = flags if flags is not None else progen.undefined_flags(prog)
    diffs: list[Difference] = []
    if sim.exits != kvm.exits:
        n = next((i for i, (a, b) in enumerate(zip(sim.exits, kvm.exits)) if a != b),
                 min(len(sim.exits), len(kvm.exits)))
        a = exit_text(sim.exits[n]) if n < len(sim.exits) else "(none)"
        b = exit_text(kvm.exits[n]) if n < len(kvm.exits) else "(none)"
        diffs.append(Difference("exits", sim.exits, kvm.exits, f"exit {n}: sim {a} | kvm {b}"))
    # memory, with the RFLAGS image of a fault frame masked by the flags undefined
    # before the faulting instruction
    masks = []
    for r in (sim, kvm):
        slot = _frame_rflags_slot(r)
        mask = 0
        if slot is not None:
            frip = _frame_rip(r, slot)
            mask = before.get(frip, end_undef) if frip is not None else 0
        masks.append((slot, mask))
    # in a handler, RFLAGS holds the interrupted flags (minus TF, IF, NT, RF, VM)
    # elsewhere: the flags undefined before the instruction it stopped at (a triple
    # fault), or at the end
    final_mask = masks[0][1] if masks[0][0] is not None else before.get(sim.state.get("GUEST_RIP"), end_undef)
    undefined_keys = ()
    if sim.exits[-1:] == kvm.exits[-1:] == [("TRIPLE_FAULT",)]:
        # shutdown after a fault during #DF delivery: "the program state following a
        # double-fault exception is undefined" (SDM Vol. 3A "Interrupt 8-Double Fault
        # Exception (#DF)"), so CR2 (which fault of the chain last loaded it) and RF
        # are not compared; the GPRs, RIP, RSP and memory still are
        final_mask |= RFLAGS_RF
        undefined_keys = ("CR2",)
    for k in COMPARED_KEYS:
        if k in undefined_keys:
            continue
        a, b = sim.state.get(k), kvm.state.get(k)
        if k == "GUEST_RFLAGS" and a is not None and b is not None:
            a, b = a & ~final_mask, b & ~final_mask
        if a != b:
            d = Difference(k, a, b)
            if k == "GUEST_RFLAGS" and a is not None and b is not None:
                d.detail = f"sim {a:#x} kvm {b:#x} (differ in {_flag_names(a ^ b)})"
            diffs.append(d)
    mem_s = _mask_memory(sim, *masks[0])
    mem_k = _mask_memory(kvm, *masks[1])
    for page in COMPARED_PAGES:
        a, b = mem_s.get(page), mem_k.get(page)
        if a != b:
            if a is None or b is None:
                diffs.append(Difference(f"mem:{page:#x}", a is not None, b is not None, "page missing"))
                continue
            offs = [i for i in range(PAGE) if a[i] != b[i]]
            o = offs[0] & ~7
            detail = (f"{len(offs)} byte(s) differ, first at {page + offs[0]:#x}: qword at {page + o:#x} "
                      f"sim {struct.unpack_from('<Q', a, o)[0]:#x} kvm {struct.unpack_from('<Q', b, o)[0]:#x}")
            if masks[0][0] is not None and o == masks[0][0] - page:
                detail += " (the RFLAGS image of the interrupt frame)"
            diffs.append(Difference(f"mem:{page:#x}", a, b, detail))
    return diffs


def _flag_names(bits: int) -> str:
    names = {0: "CF", 2: "PF", 4: "AF", 6: "ZF", 7: "SF", 8: "TF", 9: "IF", 10: "DF", 11: "OF", 12: "IOPL0",
             13: "IOPL1", 14: "NT", 16: "RF", 17: "VM", 18: "AC", 19: "VIF", 20: "VIP", 21: "ID"}
    return " ".join(names.get(i, f"bit{i}") for i in range(64) if bits >> i & 1)


def primary(diffs: list[Difference]) -> str | None:
    """The difference a shrunk program must keep: the first in the order exits, RIP,
    RFLAGS, CR2, RSP, the GPRs, the selectors, memory."""
    if not diffs:
        return None
    return min((d.key for d in diffs), key=lambda k: (_ORDER.get(k, len(_ORDER)), k))


# ---- known host quirks -------------------------------------------------------------------
@dataclass(frozen=True)
class Quirk:
    """A documented host behaviour that differs from the SDM (docs/differential.md).
    `applies(prog)`: the program can show it; `neutralize(prog)`: the same program
    with an instruction added after each occurrence that makes both sides equal
    again whatever the host did.  A diverging program is a known quirk when its
    neutralized form agrees (the quirk explains every difference)."""
    id: str
    summary: str
    applies: Callable[[Program], bool]
    neutralize: Callable[[Program], Program]


_R32_NAMES = {progen.reg(r, 32) for r in progen.GPR64}
_CMPXCHG_REG = re.compile(r"^(?:\w+: )?cmpxchg (\w+), (\w+)$")


def _cmpxchg32_dest(ins) -> str | None:
    m = _CMPXCHG_REG.match(ins.text)
    return m.group(1) if m and m.group(1) in _R32_NAMES else None


def _cmpxchg32_applies(prog: Program) -> bool:
    return prog.cpl == 3 and any(_cmpxchg32_dest(i) for u in prog.units for i in u.insns)


def _cmpxchg32_neutralize(prog: Program) -> Program:
    units = []
    for u in prog.units:
        insns = []
        for ins in u.insns:
            insns.append(ins)
            dest = _cmpxchg32_dest(ins)
            if dest:
                insns.append(progen.Insn(f"mov {dest}, {dest}"))     # clears bits 63:32 on both sides
        units.append(replace(u, insns=tuple(insns)))
    return prog.with_units(units)


QUIRKS: list[Quirk] = [
    Quirk("amd-cmpxchg32-failure",
          "CMPXCHG r32, r32 with a failing comparison at CPL3: the AMD host keeps bits 63:32 of the destination "
          "register; the SDM's Operation writes DEST := TEMP, a 32-bit write that clears them (simulated so)",
          _cmpxchg32_applies, _cmpxchg32_neutralize),
]


def classify(prog: Program, sim, kvm) -> str | None:
    """The known quirks that explain every difference of `prog` ("+"-joined ids), or
    None: the program with the applicable quirks neutralized must agree."""
    applicable = [q for q in QUIRKS if q.applies(prog)]
    if not applicable:
        return None
    p = prog
    for q in applicable:
        p = q.neutralize(p)
    if compare(p, *run_both(p, sim, kvm)):
        return None
    return "+".join(q.id for q in applicable)


# ---- one program ------------------------------------------------------------------------
@dataclass
class Outcome:
    program: Program
    verdict: str                        # "agree" | "quirk" | "diverge"
    diffs: list = field(default_factory=list)
    quirk: str | None = None
    shrunk: Program | None = None
    shrunk_diffs: list = field(default_factory=list)
    sim: Result | None = None
    kvm: Result | None = None


def run_both(prog: Program, sim, kvm):
    code = prog.assemble()
    return sim.run(prog, code), kvm.run(prog, code)


def check(prog: Program, sim, kvm, *, shrink_divergences: bool = True) -> Outcome:
    rs, rk = run_both(prog, sim, kvm)
    diffs = compare(prog, rs, rk)
    if not diffs:
        return Outcome(prog, "agree", sim=rs, kvm=rk)
    quirk = classify(prog, sim, kvm)
    out = Outcome(prog, "quirk" if quirk else "diverge", diffs, quirk, sim=rs, kvm=rk)
    if shrink_divergences and quirk is None:
        out.shrunk, out.shrunk_diffs = shrink(prog, sim, kvm, diffs)
    return out


def shrink(prog: Program, sim, kvm, diffs: list[Difference] | None = None,
           max_runs: int = 400) -> tuple[Program, list[Difference]]:
    """The smallest program found (units removed, largest chunks first, then one
    by one until nothing can go) that still diverges, in a subset of the places
    where `prog` diverges (exits, registers, memory pages): a difference that only
    propagated to other registers drops out, the first cause stays."""
    if diffs is None:
        diffs = compare(prog, *run_both(prog, sim, kvm))
    if not diffs:
        return prog, diffs
    units = list(prog.units)
    best = diffs
    keys = {x.key for x in diffs}
    runs = 0

    def still(cand: list) -> list | None:
        nonlocal runs
        runs += 1
        p = prog.with_units(cand)
        d = compare(p, *run_both(p, sim, kvm))
        return d if d and {x.key for x in d} <= keys else None

    n = max(len(units) // 2, 1)
    while units and runs < max_runs:
        changed = False
        i = 0
        while i < len(units) and runs < max_runs:
            cand = units[:i] + units[i + n:]
            d = still(cand)
            if d is not None:
                units, best, changed = cand, d, True
            else:
                i += n
        if n > 1:
            n = max(n // 2, 1)
        elif not changed:
            break
    return prog.with_units(units), best


# ---- many programs ------------------------------------------------------------------------
@dataclass
class Report:
    seed: int
    count: int
    cpls: tuple
    outcomes: list = field(default_factory=list)
    seconds: float = 0.0
    sim_seconds: float = 0.0
    kvm_seconds: float = 0.0

    def tally(self) -> dict:
        t = {v: 0 for v in VERDICTS}
        for o in self.outcomes:
            t[o.verdict] += 1
        return t

    @property
    def agreement(self) -> float:
        return self.tally()["agree"] / len(self.outcomes) if self.outcomes else 1.0

    def endings(self) -> dict:
        """How the programs ended on KVM: "end" (reached END), "#PF", "#GP", ... (the
        vector the handler reported; at CPL3 END itself is a #GP from HLT, counted
        as "end"), "triple fault", or the other exit."""
        out: dict = {}
        for o in self.outcomes:
            k = ending(o.program, o.kvm)
            out[k] = out.get(k, 0) + 1
        return dict(sorted(out.items()))

    def to_dict(self) -> dict:
        t = self.tally()
        return {"seed": self.seed, "count": self.count, "cpl": list(self.cpls), "programs": len(self.outcomes),
                "agree": t["agree"], "quirk": t["quirk"], "diverge": t["diverge"],
                "agreement": round(self.agreement, 6), "seconds": round(self.seconds, 3),
                "quirks": _count(o.quirk for o in self.outcomes if o.verdict == "quirk"),
                "endings": self.endings(),
                "exits": sum(len(o.kvm.exits) for o in self.outcomes),
                "divergences": [divergence_dict(o) for o in self.outcomes if o.verdict == "diverge"]}


_VECTOR_NAMES = {0: "#DE", 6: "#UD", 13: "#GP", 12: "#SS", 14: "#PF", 8: "#DF"}


def ending(prog: Program, res: Result) -> str:
    ex = res.exits
    if not ex:
        return "none"
    if ex[-1] == ("TRIPLE_FAULT",):
        return "triple fault"
    if ex[-1] != ("HLT",):
        return str(ex[-1][0])
    ends = [e for e in ex if e[0] == "IO_INSTRUCTION" and e[1] >> 16 == progen.END_PORT]
    reports = [e for e in ex if e[0] == "IO_INSTRUCTION" and e[1] >> 16 == flat.REPORT_PORT]
    if ends and (prog.cpl == 0 or len(reports) == 1):
        return "end"
    if reports:
        v = int.from_bytes(bytes.fromhex(reports[-1][2]), "little")
        return _VECTOR_NAMES.get(v, f"vector {v}")
    return "HLT"


def _count(items) -> dict:
    out: dict = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return out


def divergence_dict(o: Outcome) -> dict:
    p = o.shrunk or o.program
    return {"program": o.program.name, "index": o.program.index, "cpl": o.program.cpl,
            "differences": [d.text() for d in (o.shrunk_diffs or o.diffs)],
            "shrunk_units": len(p.units), "original_units": len(o.program.units),
            "source": p.source().splitlines(), "disassembly": disassemble(p)}


def disassemble(prog: Program) -> list[str]:
    import iced_x86 as I
    fmt = I.Formatter(I.FormatterSyntax.INTEL)
    code = prog.assemble()
    return [f"{i.ip:#07x}  {code[i.ip - CODE:i.ip - CODE + i.len].hex():<24} {fmt.format(i)}"
            for i in I.Decoder(64, code, ip=CODE)]


def parse_cpls(text: str) -> tuple[int, ...]:
    choices = {"0": (0,), "3": (3,), "both": (0, 3)}
    if text not in choices:
        raise BadInput(f"--cpl {text!r} is not 0, 3 or both")
    return choices[text]


def run(count: int, seed: int, cpls=(0, 3), *, shrink_divergences: bool = True, progress=None) -> Report:
    """Programs 0..count-1 of `seed`, alternating over `cpls`, on both backends."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise BadInput(f"--count {count!r} is not a positive number")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise BadInput(f"--seed {seed!r} is not a number")
    from .system import unavailable_reason, KvmUnavailable
    why = unavailable_reason()
    if why is not None:
        raise KvmUnavailable(f"/dev/kvm unusable here: {why}")
    report = Report(seed, count, tuple(cpls))
    t0 = time.perf_counter()
    sim, kvm = SimBackend(), KvmBackend()
    try:
        for i in range(count):
            prog = progen.generate(seed, i, cpls[i % len(cpls)])
            o = check(prog, sim, kvm, shrink_divergences=shrink_divergences)
            report.sim_seconds += o.sim.seconds
            report.kvm_seconds += o.kvm.seconds
            report.outcomes.append(o)
            if progress is not None:
                progress(i, o)
    finally:
        kvm.close()
    report.seconds = time.perf_counter() - t0
    return report


def report_text(report: Report) -> str:
    t = report.tally()
    n = len(report.outcomes)
    lines = [f"vmxlab diff: seed {report.seed}, {n} programs (CPL {' and '.join(map(str, report.cpls))}), "
             f"{report.seconds:.1f} s (simulator {report.sim_seconds:.1f} s, KVM {report.kvm_seconds:.1f} s)",
             f"  agree {t['agree']}  known quirk {t['quirk']}  diverge {t['diverge']}  "
             f"agreement rate {100 * report.agreement:.1f}% "
             f"({100 * (t['agree'] + t['quirk']) / max(n, 1):.1f}% with known quirks)"]
    lines.append("  endings: " + ", ".join(f"{k} {v}" for k, v in report.endings().items())
                 + f"; {sum(len(o.kvm.exits) for o in report.outcomes)} exits compared")
    q = _count(o.quirk for o in report.outcomes if o.verdict == "quirk")
    for k, v in sorted(q.items()):
        summary = next((x.summary for x in QUIRKS if x.id == k), "")
        lines.append(f"  quirk {k}: {v} program(s) -- {summary}")
    for o in report.outcomes:
        if o.verdict != "diverge":
            continue
        p = o.shrunk or o.program
        lines.append("")
        lines.append(f"DIVERGENCE {o.program.name}: shrunk from {len(o.program.units)} to {len(p.units)} unit(s)")
        for d in o.shrunk_diffs or o.diffs:
            lines.append(f"  {d.text()}")
        lines.append("  program:")
        lines.extend(f"    {x}" for x in disassemble(p))
    return "\n".join(lines)

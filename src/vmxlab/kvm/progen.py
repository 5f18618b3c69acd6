"""Random but valid guest programs for the differential runner (differential.py).

    prog = generate(seed=1, index=7, cpl=3)      # deterministic: random.Random((seed, index, cpl))
    prog.source()                                 # assembly text (keystone syntax)
    prog.assemble()                               # bytes at CODE (checked by guests.asm)
    prog.with_units(prog.units[:3])               # a smaller program (the shrinker's step)

A program is a tuple of *units*.  A unit is a short instruction sequence that is
valid on its own: it sets up every register it needs for addressing, every flag
it reads (a Jcc, SETcc, CMOVcc, ADC/SBB, PUSHF or LAHF is preceded in the same
unit by an instruction that defines the flags it reads), and its branches only go
forward.  Removing any subset of units therefore leaves a valid program that
terminates, which is what the shrinker relies on.  Unit classes (CLASSES):

  arith   ALU ops, shifts/rotates, MUL/IMUL/DIV, BSF/BSR/BT*, SETcc/CMOVcc, XCHG/XADD/
          CMPXCHG, MOVZX/MOVSX, LEA, BSWAP, CBW family, flag instructions, PUSHF capture
  mem     loads/stores/read-modify-write through the data page (register bases, data-
          dependent offsets, alias pages), REP string instructions
  stack   PUSH/POP (registers, immediates, memory), CALL/RET to a local routine
  branch  forward Jcc/JMP over the following units, a bounded DEC/JNZ or LOOP loop
  fault   #PF (not-present, read-only, supervisor page), #GP (non-canonical address),
          #DE, #UD; at CPL0 also a #PF on the stack that escalates to a triple fault
  io      OUT/IN with immediate and DX ports, REP OUTSB/INSB with a small count
  system  CPL0: MOV to/from CRs, CR0.WP cleared around a write, RDMSR/WRMSR, SWAPGS,
          CLI/STI, INVLPG; both: SGDT/SIDT/SLDT/STR/SMSW; CPL3 faults also include
          privileged instructions (#GP)

A CPL3 program starts there directly, or at CPL0 with a prologue that enters
CPL3 through IRETQ or SYSRET (prologue()).  Every program ends with END: `out
END_PORT, eax; hlt` (at CPL3 the HLT raises #GP, reported like any fault).  A
fault ends the program early: the handler reports the vector with `out
REPORT_PORT` and halts.

Each instruction carries the arithmetic flags it reads, defines and leaves
undefined (the "Flags Affected" sections of Intel SDM Vol. 2, instruction by
instruction); `undefined_flags()` runs that through the program so that the
comparison masks exactly the flags the architecture leaves undefined at the end
and at a faulting instruction.

Memory layout (differential.py builds it on top of kvm/flat.py): code at CODE,
data page DATA (4 KiB), alias pages at ALIAS (ALIAS+0: the data page, writable,
user; +0x1000 read-only; +0x2000 supervisor-only; +0x3000 not present), nothing
mapped at UNMAPPED (above the first GiB), NONCANONICAL is not canonical.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field, replace

from ..guests.asm import asm
from . import flat

CODE, DATA = flat.CODE, flat.DATA
ALIAS = 0x200000
ALIAS_RW, ALIAS_RO, ALIAS_SUPER, ALIAS_ABSENT = ALIAS, ALIAS + 0x1000, ALIAS + 0x2000, ALIAS + 0x3000
UNMAPPED = 0x40000000
NONCANONICAL = 0x0000800000000000
STACK0, STACK3 = 0x7F800, 0x6F800            # initial RSP at CPL0 / CPL3 (middle of a page)
IO_PORTS = range(0x10, 0x1F)                 # ports the programs use (see differential.py)
END_PORT = 0x1F

CF, PF, AF, ZF, SF, OF = 0x1, 0x4, 0x10, 0x40, 0x80, 0x800
DF, IF = 0x400, 0x200
ARITH = CF | PF | AF | ZF | SF | OF

GPR64 = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
_R32 = {"rax": "eax", "rbx": "ebx", "rcx": "ecx", "rdx": "edx", "rsi": "esi", "rdi": "edi", "rbp": "ebp"}
_R16 = {"rax": "ax", "rbx": "bx", "rcx": "cx", "rdx": "dx", "rsi": "si", "rdi": "di", "rbp": "bp"}
_R8 = {"rax": "al", "rbx": "bl", "rcx": "cl", "rdx": "dl", "rsi": "sil", "rdi": "dil", "rbp": "bpl"}
_PTR = {8: "byte", 16: "word", 32: "dword", 64: "qword"}
CLASSES = ("arith", "mem", "stack", "branch", "fault", "io", "system")

# Jcc/SETcc/CMOVcc condition -> flags it reads (SDM Vol. 2 "Jcc", Table "Jcc").
CONDITIONS = {"o": OF, "no": OF, "b": CF, "ae": CF, "e": ZF, "ne": ZF, "be": CF | ZF, "a": CF | ZF,
              "s": SF, "ns": SF, "p": PF, "np": PF, "l": SF | OF, "ge": SF | OF, "le": ZF | SF | OF,
              "g": ZF | SF | OF}


def reg(name: str, bits: int) -> str:
    """The `bits`-wide name of a 64-bit GPR (r8 -> r8d/r8w/r8b)."""
    if bits == 64:
        return name
    if name.startswith("r") and name[1:].isdigit():
        return name + {32: "d", 16: "w", 8: "b"}[bits]
    return {32: _R32, 16: _R16, 8: _R8}[bits][name]


@dataclass(frozen=True)
class Insn:
    """One instruction: text (a `{L}` in it is the unit's forward label), flags it
    reads, defines (sets to a defined value) and leaves undefined."""
    text: str
    reads: int = 0
    defines: int = 0
    undefined: int = 0


@dataclass(frozen=True)
class Unit:
    """A self-contained instruction sequence (see the module doc).  `target`: for a
    forward branch, the uid of the unit after which its label `{L}` goes."""
    cls: str
    insns: tuple[Insn, ...]
    uid: int
    target: int | None = None
    pushes: int = 0                 # net stack growth in quadwords
    fault: str | None = None        # the fault this unit raises deliberately, if any


@dataclass(frozen=True)
class Program:
    seed: int
    index: int
    cpl: int
    units: tuple[Unit, ...]
    regs: dict = field(hash=False)      # initial GPRs (RAX..R15 but RSP) and GUEST_RFLAGS
    data: bytes = field(hash=False)     # initial data page
    stack: bytes = field(hash=False)    # initial contents of the stack page(s)
    entry: str = "direct"               # CPL3: "direct", "iretq" or "sysret" (prologue())

    @property
    def name(self) -> str:
        return f"seed {self.seed} program {self.index} (CPL{self.cpl})"

    def with_units(self, units) -> "Program":
        return replace(self, units=tuple(units))

    # -- text --------------------------------------------------------------------------
    def lines(self) -> list[Insn | str]:
        """The instruction list with forward labels ("L<uid>:") placed, END included.
        A branch unit's label goes before the first unit whose uid is above its
        target (units removed by the shrinker move it down, never up)."""
        out: list = list(prologue(self))
        pending: dict[int, list[str]] = {}          # target uid -> labels
        for u in self.units:
            for t in sorted(t for t in pending if t < u.uid):
                out.extend(f"{p}:" for p in pending.pop(t))
            for ins in u.insns:
                out.append(replace(ins, text=ins.text.replace("{L}", f"L{u.uid}")) if "{L}" in ins.text else ins)
            if u.target is not None:
                pending.setdefault(u.target, []).append(f"L{u.uid}")
        for t in sorted(pending):
            out.extend(f"{p}:" for p in pending[t])
        out.extend(end_insns(self.cpl))
        return out

    def source(self) -> str:
        return "\n".join(x if isinstance(x, str) else x.text for x in self.lines())

    def assemble(self) -> bytes:
        return asm(self.source(), CODE).code

    def instruction_count(self) -> int:
        return sum(1 for x in self.lines() if not isinstance(x, str))


def end_insns(cpl: int) -> tuple[Insn, ...]:
    """`out END_PORT, eax; hlt`: at CPL3 the HLT raises #GP(0) (SDM "HLT": privileged
    instruction), whose handler reports vector 13 and halts.  (Not SYSCALL: on PVM
    hosts it does not leave CPL3, docs/differential.md.)"""
    return (Insn(f"out {END_PORT:#x}, eax"), Insn("hlt"))


def prologue(prog: "Program") -> tuple[Insn, ...]:
    """How a CPL3 program gets to CPL3 from CPL0: nothing ("direct": it starts
    there), IRETQ with a frame of flat CPL3 selectors, STACK3, the program's
    initial RFLAGS and the first unit's address, or SYSRET (RCX = the first unit,
    R11 = the initial RFLAGS, RSP set before).  SDM Vol. 2 "IRET/IRETD/IRETQ",
    "SYSRET"."""
    flags = prog.regs["GUEST_RFLAGS"]
    if prog.entry == "iretq":
        return (Insn(f"push {flat.SEL_DATA3:#x}"), Insn(f"push {STACK3:#x}"), Insn(f"push {flags:#x}"),
                Insn(f"push {flat.SEL_CODE3:#x}"), Insn("push U0"), Insn("iretq"), Insn("U0: nop"))
    if prog.entry == "sysret":
        return (Insn("lea rcx, [rip + U0]"), Insn(f"mov r11d, {flags:#x}"), Insn(f"mov rsp, {STACK3:#x}"),
                Insn(".byte 0x48, 0x0f, 0x07"), Insn("U0: nop"))
    return ()


_FORWARD = re.compile(r"^j\w+ (L\d+)$")


def undefined_flags(prog: Program, addresses: list[int] | None = None) -> tuple[int, dict[int, int]]:
    """(flags undefined at the end, {address: flags undefined before the instruction
    there}) of a program: a forward pass over the instruction list applying each
    instruction's defines/undefined sets; at a forward label the sets of the paths
    that meet there are united, and after `jmp L<n>` nothing falls through.  The
    backward jumps of loop units and the CALL/RET of routine units need no special
    case: their bodies only hold instructions whose effect is idempotent (applying
    a body twice gives the same sets as once), so the straight-line pass is exact.
    Initial flags are all defined (the runner loads them).  `addresses`: the
    address of every instruction (decoded from the assembled program)."""
    if addresses is None:
        import iced_x86 as I
        addresses = [i.ip for i in I.Decoder(64, prog.assemble(), ip=CODE)]
    joins: dict[str, int] = {}
    cur = 0
    live = True
    before: dict[int, int] = {}
    k = 0
    for x in prog.lines():
        if isinstance(x, str):
            name = x[:-1]
            if name in joins:
                cur = (cur if live else 0) | joins.pop(name)
                live = True
            continue
        before[addresses[k]] = cur
        k += 1
        after = (cur & ~x.defines) | x.undefined
        m = _FORWARD.match(x.text)
        if m:
            joins[m.group(1)] = joins.get(m.group(1), 0) | after
            if x.text.startswith("jmp"):
                live = False
        cur = after
    return cur, before


# ---- the generator ---------------------------------------------------------------------
_SPECIAL = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
            0x7FFFFFFFFFFFFFFF, 0x8000000000000000, 0xFFFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFE)


class _Gen:
    def __init__(self, rng: random.Random, cpl: int):
        self.r = rng
        self.cpl = cpl
        self.uid = 0
        self.pushes = 0

    def value(self) -> int:
        r = self.r.random()
        if r < 0.3:
            return self.r.choice(_SPECIAL)
        if r < 0.5:
            return self.r.getrandbits(8)
        if r < 0.65:
            return self.r.getrandbits(32)
        return self.r.getrandbits(64)

    def imm(self, bits: int, signed_ok: bool = True) -> int:
        """An immediate that keystone encodes for this width (imm32 sign-extended
        for 64-bit operands)."""
        if bits == 8:
            return self.r.getrandbits(8)
        if bits == 16:
            return self.r.getrandbits(16)
        v = self.r.choice((self.r.getrandbits(8), self.r.getrandbits(31), 0x7FFFFFFF, 1, 0))
        return v

    def gpr(self, exclude=()) -> str:
        return self.r.choice([g for g in GPR64 if g not in exclude])

    def width(self) -> int:
        return self.r.choice((64, 64, 32, 32, 16, 8))

    # -- units -------------------------------------------------------------------------
    def unit(self, cls: str, insns, **kw) -> Unit:
        self.uid += 1
        return Unit(cls, tuple(insns), self.uid, **kw)

    def flags_setter(self) -> Insn:
        """An instruction that defines all six arithmetic flags."""
        a, b = self.gpr(), self.gpr()
        w = self.r.choice((64, 32, 16, 8))
        op = self.r.choice(("cmp", "add", "sub", "cmp", "neg"))
        if op == "neg":
            return Insn(f"neg {reg(a, w)}", defines=ARITH)
        return Insn(f"{op} {reg(a, w)}, {reg(b, w)}", defines=ARITH)

    def arith(self) -> Unit:
        r = self.r
        k = r.random()
        a, b = self.gpr(), self.gpr()
        w = self.width()
        ra, rb = reg(a, w), reg(b, w)
        if k < 0.25:
            op = r.choice(("add", "sub", "and", "or", "xor", "cmp", "test", "adc", "sbb"))
            src = rb if r.random() < 0.6 else str(self.imm(w))
            if op in ("and", "or", "xor", "test"):
                ins = Insn(f"{op} {ra}, {src}", defines=ARITH & ~AF, undefined=AF)   # AF undefined
            elif op in ("adc", "sbb"):
                pre = r.choice((Insn("clc", defines=CF), Insn("stc", defines=CF), self.flags_setter()))
                return self.unit("arith", [pre, Insn(f"{op} {ra}, {src}", reads=CF, defines=ARITH)])
            else:
                ins = Insn(f"{op} {ra}, {src}", defines=ARITH)
            return self.unit("arith", [ins])
        if k < 0.33:
            op = r.choice(("inc", "dec", "neg", "not"))
            if op == "not":
                return self.unit("arith", [Insn(f"not {ra}")])
            if op == "neg":
                return self.unit("arith", [Insn(f"neg {ra}", defines=ARITH)])
            return self.unit("arith", [Insn(f"{op} {ra}", defines=ARITH & ~CF)])   # CF unaffected
        if k < 0.45:
            # shifts and rotates with an immediate count (SDM "SAL/SAR/SHL/SHR", "RCL/RCR/ROL/ROR")
            op = r.choice(("shl", "shr", "sar", "rol", "ror", "rcl", "rcr"))
            count = r.choice((1, 1, r.randrange(0, 64)))
            shown = count & (0x3F if w == 64 else 0x1F)
            if r.random() < 0.3:
                pre = [Insn(f"mov ecx, {count}")]
                a = self.gpr(("rcx",))
                ra = reg(a, w)
                cnt = "cl"
            else:
                pre = []
                cnt = str(count)
            pre_flags = []
            if op in ("rcl", "rcr"):
                pre_flags = [r.choice((Insn("clc", defines=CF), Insn("stc", defines=CF)))]
            insn = Insn(f"{op} {ra}, {cnt}", reads=CF if op in ("rcl", "rcr") else 0,
                        **_shift_flags(op, shown, w))
            return self.unit("arith", pre + pre_flags + [insn])
        if k < 0.52:
            # MUL/IMUL: OF and CF defined; SF, ZF, AF, PF undefined (SDM "MUL", "IMUL")
            form = r.choice(("mul", "imul1", "imul2", "imul3"))
            w2 = r.choice((64, 32, 16))
            if form == "mul":
                return self.unit("arith", [Insn(f"mul {reg(b, w2)}", defines=OF | CF, undefined=SF | ZF | AF | PF)])
            if form == "imul1":
                return self.unit("arith", [Insn(f"imul {reg(b, w2)}", defines=OF | CF, undefined=SF | ZF | AF | PF)])
            if form == "imul2":
                return self.unit("arith", [Insn(f"imul {reg(a, w2)}, {reg(b, w2)}", defines=OF | CF,
                                                undefined=SF | ZF | AF | PF)])
            return self.unit("arith", [Insn(f"imul {reg(a, w2)}, {reg(b, w2)}, {self.imm(8) - 128}",
                                            defines=OF | CF, undefined=SF | ZF | AF | PF)])
        if k < 0.57:
            # DIV/IDIV without #DE: divisor made nonzero; DIV with RDX = 0 cannot overflow.
            # All six flags undefined (SDM "DIV", "IDIV").
            d = self.gpr(("rax", "rdx"))
            w2 = r.choice((64, 32))
            rd = reg(d, w2)
            if r.random() < 0.5:
                return self.unit("arith", [Insn(f"or {rd}, 1", defines=ARITH & ~AF, undefined=AF),
                                           Insn("xor edx, edx", defines=ARITH & ~AF, undefined=AF),
                                           Insn(f"div {rd}", undefined=ARITH)])
            # IDIV of the sign-extended RAX/EAX: the quotient fits, except for the minimum
            # value divided by -1 (#DE on both sides, as the SDM says)
            return self.unit("arith", [Insn(f"or {rd}, 3", defines=ARITH & ~AF, undefined=AF),
                                       Insn("cqo" if w2 == 64 else "cdq"),
                                       Insn(f"idiv {rd}", undefined=ARITH)])
        if k < 0.63:
            # BSF/BSR (source made nonzero: the destination is undefined for 0), BT family
            op = r.choice(("bsf", "bsr", "bt", "bts", "btr", "btc"))
            w2 = r.choice((64, 32, 16))
            if op in ("bsf", "bsr"):
                t = self.gpr((a,))
                bit = r.randrange(w2 if w2 < 32 else 31)
                return self.unit("arith", [Insn(f"mov {reg(t, w2)}, {reg(b, w2)}"),
                                           Insn(f"or {reg(t, w2)}, {1 << bit}", defines=ARITH & ~AF, undefined=AF),
                                           Insn(f"{op} {reg(a, w2)}, {reg(t, w2)}", defines=ZF,
                                                undefined=CF | OF | SF | AF | PF)])
            src = reg(b, w2) if r.random() < 0.5 else str(r.randrange(w2))
            # BT*: CF defined; OF, SF, AF, PF undefined; ZF unaffected (SDM "BT")
            return self.unit("arith", [Insn(f"{op} {reg(a, w2)}, {src}", defines=CF, undefined=OF | SF | AF | PF)])
        if k < 0.72:
            cond = r.choice(list(CONDITIONS))
            form = r.choice(("set", "cmov"))
            setter = self.flags_setter()
            if form == "set":
                return self.unit("arith", [setter, Insn(f"set{cond} {reg(a, 8)}", reads=CONDITIONS[cond])])
            w2 = r.choice((64, 32, 16))
            return self.unit("arith", [setter, Insn(f"cmov{cond} {reg(a, w2)}, {reg(b, w2)}", reads=CONDITIONS[cond])])
        if k < 0.78:
            op = r.choice(("xchg", "xadd", "cmpxchg", "movzx", "movsx", "movsxd", "lea", "bswap", "cbw"))
            if op == "xchg":
                return self.unit("arith", [Insn(f"xchg {ra}, {rb}")])
            if op == "xadd":
                return self.unit("arith", [Insn(f"xadd {ra}, {rb}", defines=ARITH)])
            if op == "cmpxchg":
                return self.unit("arith", [Insn(f"cmpxchg {ra}, {rb}", defines=ARITH)])
            if op in ("movzx", "movsx"):
                sw = r.choice((8, 16))
                dw = r.choice([x for x in (16, 32, 64) if x > sw])
                return self.unit("arith", [Insn(f"{op} {reg(a, dw)}, {reg(b, sw)}")])
            if op == "movsxd":
                return self.unit("arith", [Insn(f"movsxd {a}, {reg(b, 32)}")])
            if op == "lea":
                c = self.gpr()
                scale = r.choice((1, 2, 4, 8))
                disp = r.randrange(-0x80000000, 0x80000000)
                lw = r.choice((64, 32))
                return self.unit("arith", [Insn(f"lea {reg(a, lw)}, [{b} + {c}*{scale} {'+' if disp >= 0 else '-'} "
                                                f"{abs(disp):#x}]")])
            if op == "bswap":
                return self.unit("arith", [Insn(f"bswap {reg(a, r.choice((64, 32)))}")])
            return self.unit("arith", [Insn(r.choice(("cbw", "cwde", "cdqe", "cwd", "cdq", "cqo")))])
        if k < 0.86:
            # move immediates
            v = self.value()
            if r.random() < 0.5:
                return self.unit("arith", [Insn(f"mov {a}, {v:#x}")])
            return self.unit("arith", [Insn(f"mov {reg(a, 32)}, {v & 0xFFFFFFFF:#x}")])
        if k < 0.92:
            # flag instructions and a PUSHF capture (SDM "PUSHF": the image has RF and VM clear)
            op = r.choice(("clc", "stc", "cmc", "lahf", "sahf", "pushf", "mov"))
            if op == "clc" or op == "stc":
                return self.unit("arith", [Insn(op, defines=CF)])
            if op == "cmc":
                return self.unit("arith", [self.flags_setter(), Insn("cmc", reads=CF, defines=CF)])
            if op == "lahf":
                return self.unit("arith", [self.flags_setter(), Insn("lahf", reads=SF | ZF | AF | PF | CF)])
            if op == "sahf":
                return self.unit("arith", [Insn("sahf", defines=SF | ZF | AF | PF | CF)])
            if op == "pushf":
                if r.random() < 0.5:
                    return self.unit("arith", [self.flags_setter(), Insn("pushfq", reads=ARITH | DF),
                                               Insn(f"pop {self.gpr()}")])
                # POPF of an image with arithmetic flags, DF and IF at random: at CPL3 with
                # IOPL 0, IF keeps its value (SDM Vol. 2 "POPF"); IOPL, AC, TF, NT stay 0
                image = 0x2 | sum(f for f in (CF, PF, AF, ZF, SF, OF, DF, IF) if r.random() < 0.5)
                return self.unit("arith", [Insn(f"push {image:#x}"), Insn("popfq", defines=ARITH | DF)])
            return self.unit("arith", [Insn(f"mov {ra}, {rb}")])
        # SHLD/SHRD: 32/64-bit only (16-bit counts above 16 leave the result undefined)
        op = r.choice(("shld", "shrd"))
        w2 = r.choice((64, 32))
        count = r.choice((1, r.randrange(1, w2)))
        und = AF | (OF if count != 1 else 0)
        return self.unit("arith", [Insn(f"{op} {reg(a, w2)}, {reg(b, w2)}, {count}",
                                        defines=(CF | SF | ZF | PF | OF) & ~und, undefined=und)])

    def address(self, base: str, exclude=()) -> list[Insn]:
        """Instructions that point `base` into the data page, at a fixed or a data-
        dependent offset (leaving 8 bytes of room)."""
        r = self.r
        page = r.choice((DATA, DATA, DATA, ALIAS_RW))
        if r.random() < 0.5:
            return [Insn(f"mov {base}, {page + r.randrange(0, 0xFF8):#x}")]
        src = self.gpr((base,) + tuple(exclude))
        return [Insn(f"mov {reg(base, 32)}, {reg(src, 32)}"),
                Insn(f"and {reg(base, 32)}, 0xff8" if r.random() < 0.5 else f"and {reg(base, 32)}, 0xff7",
                     defines=ARITH & ~AF, undefined=AF),
                Insn(f"add {base}, {page:#x}", defines=ARITH)]

    def mem(self) -> Unit:
        r = self.r
        base = self.gpr(("rsp",))
        pre = self.address(base)
        v = self.gpr((base,))
        w = self.width()
        ptr = f"{_PTR[w]} ptr [{base}]"
        k = r.random()
        if k < 0.3:
            return self.unit("mem", pre + [Insn(f"mov {reg(v, w)}, {ptr}")])
        if k < 0.55:
            if r.random() < 0.3 and w != 64:
                return self.unit("mem", pre + [Insn(f"mov {ptr}, {self.imm(w)}")])
            return self.unit("mem", pre + [Insn(f"mov {ptr}, {reg(v, w)}")])
        if k < 0.75:
            op = r.choice(("add", "sub", "and", "or", "xor", "adc", "sbb", "inc", "dec", "neg", "not", "xchg",
                           "xadd", "cmp"))
            if op in ("inc", "dec"):
                return self.unit("mem", pre + [Insn(f"{op} {ptr}", defines=ARITH & ~CF)])
            if op == "neg":
                return self.unit("mem", pre + [Insn(f"neg {ptr}", defines=ARITH)])
            if op == "not":
                return self.unit("mem", pre + [Insn(f"not {ptr}")])
            if op == "xchg":
                return self.unit("mem", pre + [Insn(f"xchg {ptr}, {reg(v, w)}")])
            if op in ("adc", "sbb"):
                return self.unit("mem", pre + [Insn("stc" if r.random() < 0.5 else "clc", defines=CF),
                                               Insn(f"{op} {ptr}, {reg(v, w)}", reads=CF, defines=ARITH)])
            if op in ("and", "or", "xor"):
                return self.unit("mem", pre + [Insn(f"{op} {ptr}, {reg(v, w)}", defines=ARITH & ~AF, undefined=AF)])
            if op == "xadd":
                return self.unit("mem", pre + [Insn(f"xadd {ptr}, {reg(v, w)}", defines=ARITH)])
            if r.random() < 0.5:
                return self.unit("mem", pre + [Insn(f"{op} {reg(v, w)}, {ptr}", defines=ARITH)])
            return self.unit("mem", pre + [Insn(f"{op} {ptr}, {reg(v, w)}", defines=ARITH)])
        if k < 0.85:
            # base + index*scale + displacement
            idx = self.gpr((base, "rsp"))
            scale = r.choice((1, 2, 4, 8))
            disp = r.randrange(0, 0x100)
            ins = [Insn(f"mov {base}, {DATA:#x}"), Insn(f"mov {reg(idx, 32)}, {r.randrange(0, 0xE00 // scale)}")]
            t = self.gpr((base, idx))
            return self.unit("mem", ins + [Insn(f"mov {reg(t, w)}, {_PTR[w]} ptr [{base} + {idx}*{scale} + {disp}]")])
        # REP string instructions inside the data page (SDM "MOVS", "STOS", "LODS", "CMPS", "SCAS"
        # with "REP/REPE/REPZ/REPNE/REPNZ"); DF chosen in the unit
        op = r.choice(("movsb", "movsq", "stosb", "stosd", "lodsb", "lodsq", "cmpsb", "scasb"))
        count = r.randrange(0, 9)
        std = r.random() < 0.3
        lo, hi = (0x100, 0x700) if not std else (0x900, 0xF00)
        ins = [Insn("std" if std else "cld", defines=DF),
               Insn(f"mov rsi, {DATA + r.randrange(lo, hi):#x}"), Insn(f"mov rdi, {DATA + r.randrange(lo, hi):#x}"),
               Insn(f"mov ecx, {count}")]
        prefix = "rep " if op[:4] in ("movs", "stos", "lods") else r.choice(("repe ", "repne "))
        flags = dict(defines=ARITH) if op[:4] in ("cmps", "scas") else {}
        if count == 0 and flags:
            flags = {}      # no iteration: flags unchanged
        return self.unit("mem", ins + [Insn(f"{prefix}{op}", reads=DF, **flags)])

    def stack(self) -> Unit:
        r = self.r
        k = r.random()
        if k < 0.35 and self.pushes < 100:
            a = self.gpr()
            w = r.choice((64, 64, 16))
            return self.unit("stack", [Insn(f"push {reg(a, w)}")], pushes=1)
        if k < 0.5 and self.pushes < 100:
            return self.unit("stack", [Insn(f"push {self.imm(32) - (1 << 31) if r.random() < 0.3 else self.imm(8)}")],
                             pushes=1)
        if k < 0.75:
            a = self.gpr()
            return self.unit("stack", [Insn(f"pop {reg(a, r.choice((64, 64, 16)))}")], pushes=-1)
        if k < 0.85:
            base = self.gpr()
            pre = self.address(base)
            if r.random() < 0.5 and self.pushes < 100:
                return self.unit("stack", pre + [Insn(f"push qword ptr [{base}]")], pushes=1)
            return self.unit("stack", pre + [Insn(f"pop qword ptr [{base}]")], pushes=-1)
        # CALL to a local routine that returns
        a, b = self.gpr(), self.gpr()
        self.uid += 1
        u = self.uid
        body = [Insn(f"call F{u}"), Insn(f"jmp E{u}"), Insn(f"F{u}: add {a}, {b}", defines=ARITH),
                Insn(f"mov {self.gpr()}, qword ptr [rsp]"), Insn("ret"), Insn(f"E{u}: nop")]
        return Unit("stack", tuple(body), u)

    def branch(self, remaining: int) -> Unit:
        r = self.r
        k = r.random()
        if k < 0.6 and remaining > 0:
            skip = r.randrange(0, min(remaining, 4))
            cond = r.choice(list(CONDITIONS) + ["mp"])
            if cond == "mp":
                ins = [Insn("jmp {L}")]
            else:
                ins = [self.flags_setter(), Insn(f"j{cond} {{L}}", reads=CONDITIONS[cond])]
            self.uid += 1
            return Unit("branch", tuple(ins), self.uid, target=self.uid + skip)
        # a bounded loop: the counter is set in the unit and not written by the body
        ctr = self.gpr()
        n = r.randrange(1, 6)
        self.uid += 1
        u = self.uid
        a, b = self.gpr((ctr,)), self.gpr((ctr,))
        body = r.choice(([Insn(f"add {a}, {b}", defines=ARITH)], [Insn(f"xor {a}, {b}", defines=ARITH & ~AF,
                                                                        undefined=AF)],
                         [Insn(f"rol {a}, 1", **_shift_flags("rol", 1, 64)), Insn(f"inc {reg(b, 32)}",
                                                                                   defines=ARITH & ~CF)]))
        if ctr == "rcx" and r.random() < 0.5:
            return Unit("branch", (Insn(f"mov ecx, {n}"), Insn(f"T{u}: " + body[0].text, body[0].reads,
                                                                 body[0].defines, body[0].undefined),
                                   *body[1:], Insn(f"loop T{u}")), u)
        return Unit("branch", (Insn(f"mov {reg(ctr, 32)}, {n}"),
                               Insn(f"T{u}: " + body[0].text, body[0].reads, body[0].defines, body[0].undefined),
                               *body[1:], Insn(f"dec {reg(ctr, 32)}", defines=ARITH & ~CF),
                               Insn(f"jnz T{u}", reads=ZF)), u)

    def fault(self) -> Unit:
        r = self.r
        base = self.gpr()
        v = self.gpr((base,))
        kinds = ["absent", "unmapped", "readonly", "noncanonical", "de", "ud"]
        if self.cpl == 3:
            kinds += ["supervisor", "privileged"]
        else:
            kinds.append("stack")
        kind = r.choice(kinds)
        off = r.randrange(0, 0xFF8)
        if kind in ("absent", "unmapped", "readonly", "supervisor", "noncanonical"):
            addr = {"absent": ALIAS_ABSENT, "unmapped": UNMAPPED, "readonly": ALIAS_RO,
                    "supervisor": ALIAS_SUPER, "noncanonical": NONCANONICAL}[kind] + off
            # a read, a write or a read-modify-write (its operand is accessed as a write:
            # #PF error code W=1 even where the page is not present)
            access = r.choice(("write", "rmw") if kind == "readonly" else ("read", "write", "rmw"))
            w = self.width()
            m = f"{_PTR[w]} ptr [{base}]"
            rmw = r.choice(("add", "xor", "xchg"))
            flags = {"add": {"defines": ARITH}, "xor": {"defines": ARITH & ~AF, "undefined": AF},
                     "xchg": {}}[rmw] if access == "rmw" else {}
            op = {"read": f"mov {reg(v, w)}, {m}", "write": f"mov {m}, {reg(v, w)}",
                  "rmw": f"{rmw} {m}, {reg(v, w)}"}[access]
            return self.unit("fault", [Insn(f"mov {base}, {addr:#x}"), Insn(op, **flags)], fault=kind)
        if kind == "de":
            d = self.gpr(("rax", "rdx"))
            return self.unit("fault", [Insn(f"xor {reg(d, 32)}, {reg(d, 32)}", defines=ARITH & ~AF, undefined=AF),
                                       Insn(f"div {reg(d, r.choice((64, 32, 8)))}", undefined=ARITH)], fault="de")
        if kind == "ud":
            return self.unit("fault", [Insn("ud2")], fault="ud")
        if kind == "privileged":
            # CPL0-only instructions at CPL3: #GP(0) (SDM Vol. 3A "Privileged Instructions";
            # CLI with IOPL < CPL, SWAPGS, RDMSR, ...)
            op = r.choice((f"mov {base}, cr0", f"mov cr2, {base}", "rdmsr", "wrmsr", "cli", "sti", "swapgs",
                           f"invlpg [{base}]", "clts", "wbinvd", f"mov {base}, dr7"))
            return self.unit("fault", [Insn("mov ecx, 0xc0000080"), Insn(op)], fault="privileged")
        # CPL0: a push to a not-present stack: #PF, whose delivery on the same stack
        # faults again (#DF), and again: triple fault (SDM "Interrupt 8-Double Fault Exception")
        return self.unit("fault", [Insn(f"mov rsp, {ALIAS_ABSENT + 0x800:#x}"), Insn(f"push {v}")], fault="stack")

    def system(self) -> Unit:
        """System instructions.  CPL0: MOV from CR0/CR2/CR3/CR4, MOV to CR2, CR3
        reloaded, CR0.WP cleared around a write to the read-only alias page (SDM Vol.
        3A "Paging", supervisor writes with CR0.WP = 0), RDMSR of EFER/STAR/LSTAR/
        FMASK/KERNEL_GS_BASE, WRMSR of KERNEL_GS_BASE, SWAPGS around a GS-relative
        load, CLI/STI, INVLPG, and the stores below.  Both CPLs: SGDT, SIDT, SLDT,
        STR, SMSW (not privileged with CR4.UMIP = 0, SDM Vol. 2 "SGDT")."""
        r = self.r
        a, b = self.gpr(), self.gpr()
        k = r.random()
        if k < 0.35 or self.cpl == 3:
            op = r.choice(("sgdt", "sidt", "sldt", "str", "smsw"))
            base = self.gpr()
            pre = [Insn(f"mov {base}, {DATA + r.randrange(0, 0xFF0):#x}")]
            if op in ("sgdt", "sidt"):
                return self.unit("system", pre + [Insn(f"{op} [{base}]")])
            if r.random() < 0.5:
                return self.unit("system", pre + [Insn(f"{op} word ptr [{base}]")])
            return self.unit("system", [Insn(f"{op} {reg(a, r.choice((16, 32, 64)))}")])
        if k < 0.5:
            cr = r.choice((0, 2, 3, 4))
            return self.unit("system", [Insn(f"mov {a}, cr{cr}")])
        if k < 0.58:
            return self.unit("system", [Insn(f"mov {a}, {self.value():#x}"), Insn(f"mov cr2, {a}")])
        if k < 0.63:
            return self.unit("system", [Insn(f"mov {a}, cr3"), Insn(f"mov cr3, {a}")])
        if k < 0.7:
            t = self.gpr((a,))
            return self.unit("system", [Insn(f"mov {a}, cr0"), Insn(f"and {reg(a, 32)}, 0xfffeffff",
                                                                     defines=ARITH & ~AF, undefined=AF),
                                        Insn(f"mov cr0, {a}"), Insn(f"mov {t}, {ALIAS_RO + r.randrange(0, 0xFF8):#x}"),
                                        Insn(f"mov qword ptr [{t}], {b if b != t else a}"),
                                        Insn(f"or {reg(a, 32)}, 0x10000", defines=ARITH & ~AF, undefined=AF),
                                        Insn(f"mov cr0, {a}")])
        if k < 0.8:
            msr = r.choice((0xC0000080, 0xC0000081, 0xC0000082, 0xC0000084, 0xC0000102))
            return self.unit("system", [Insn(f"mov ecx, {msr:#x}"), Insn("rdmsr")])
        if k < 0.86:
            v = DATA + r.randrange(0, 0xF00)
            return self.unit("system", [Insn("mov ecx, 0xc0000102"), Insn(f"mov eax, {v:#x}"), Insn("xor edx, edx",
                                        defines=ARITH & ~AF, undefined=AF), Insn("wrmsr")])
        if k < 0.93:
            t = self.gpr((a,))
            return self.unit("system", [Insn("swapgs"), Insn(f"mov {t}, {r.randrange(0, 0x700) & ~7:#x}"),
                                        Insn(f"mov {a}, qword ptr gs:[{t}]"), Insn("swapgs")])
        if k < 0.96:
            return self.unit("system", [Insn("cli"), Insn("sti")] if r.random() < 0.5 else [Insn("cli")])
        return self.unit("system", [Insn(f"mov {a}, {ALIAS_RW + r.randrange(0, 0x1000):#x}"),
                                    Insn(f"invlpg [{a}]")])

    def io(self) -> Unit:
        r = self.r
        port = r.choice(IO_PORTS)
        size = r.choice((1, 2, 4))
        acc = {1: "al", 2: "ax", 4: "eax"}[size]
        k = r.random()
        if k < 0.35:
            return self.unit("io", [Insn(f"out {port:#x}, {acc}")])
        if k < 0.55:
            return self.unit("io", [Insn(f"mov edx, {port:#x}"), Insn(f"out dx, {acc}")])
        if k < 0.75:
            return self.unit("io", [Insn(f"in {acc}, {port:#x}")])
        if k < 0.88:
            return self.unit("io", [Insn(f"mov edx, {port:#x}"), Insn(f"in {acc}, dx")])
        count = r.randrange(1, 4)
        op = r.choice(("outsb", "insb"))
        ptr = "rsi" if op == "outsb" else "rdi"
        return self.unit("io", [Insn("cld", defines=DF), Insn(f"mov edx, {port:#x}"),
                                Insn(f"mov {ptr}, {DATA + r.randrange(0x100, 0xF00):#x}"),
                                Insn(f"mov ecx, {count}"), Insn(f"rep {op}", reads=DF)])


def _shift_flags(op: str, count: int, width: int) -> dict:
    """Flags of a shift/rotate by a masked count (count & 0x1F, or & 0x3F for 64-bit
    operands), from SDM Vol. 2 "SAL/SAR/SHL/SHR" and "RCL/RCR/ROL/ROR", Flags
    Affected: a masked count of 0 affects no flag.  Shifts: CF is the last bit
    shifted out (undefined for SHL/SHR when the count is >= the operand width,
    possible for 8/16-bit operands), SF/ZF/PF from the result, OF defined for a
    1-bit shift only, AF undefined.  Rotates: CF affected, OF defined for a 1-bit
    rotate only, the other flags unaffected."""
    if count == 0:
        return {}
    if op in ("shl", "shr", "sar"):
        und = AF | (OF if count != 1 else 0) | (CF if count >= width and op != "sar" else 0)
        return {"defines": (CF | SF | ZF | PF | OF) & ~und, "undefined": und}
    und = OF if count != 1 else 0
    return {"defines": (CF | OF) & ~und, "undefined": und}


WEIGHTS = {"arith": 40, "mem": 22, "stack": 12, "branch": 14, "io": 12, "system": 6}
FAULT_SHARE = 0.35          # programs with one deliberate fault unit, at a random position


def generate(seed: int, index: int, cpl: int, *, length: int | None = None) -> Program:
    """Program `index` of `seed` at `cpl` (0 or 3): deterministic."""
    if cpl not in (0, 3):
        raise ValueError(f"cpl {cpl} is not 0 or 3")
    rng = random.Random(f"vmxlab-diff/{seed}/{index}/{cpl}")
    g = _Gen(rng, cpl)
    n = length if length is not None else rng.randrange(4, 40)
    fault_at = rng.randrange(n) if n and rng.random() < FAULT_SHARE else None
    units: list[Unit] = []
    classes = list(WEIGHTS)
    weights = [WEIGHTS[c] for c in classes]
    for i in range(n):
        cls = "fault" if i == fault_at else rng.choices(classes, weights)[0]
        if cls == "arith":
            u = g.arith()
        elif cls == "mem":
            u = g.mem()
        elif cls == "stack":
            u = g.stack()
            g.pushes += u.pushes
        elif cls == "branch":
            u = g.branch(n - i - 1)
        elif cls == "fault":
            u = g.fault()
        elif cls == "system":
            u = g.system()
        else:
            u = g.io()
        units.append(u)
    regs = {r.upper(): g.value() for r in GPR64}
    # initial arithmetic flags at random; DF clear; IOPL 0; IF set at CPL3 (as user code
    # runs under an operating system; nothing raises interrupts), clear at CPL0
    regs["GUEST_RFLAGS"] = (0x2 | (IF if cpl == 3 else 0)
                            | sum(f for f in (CF, PF, AF, ZF, SF, OF) if rng.random() < 0.5))
    data = rng.randbytes(4096)
    stack = rng.randbytes(4096)
    entry = rng.choice(("direct", "iretq", "sysret")) if cpl == 3 else "direct"
    return Program(seed, index, cpl, tuple(units), regs, data, stack, entry)

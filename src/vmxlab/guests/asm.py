"""asm(): keystone-engine assembly checked by decoding every instruction with iced-x86.

    prog = asm('''
        mov rax, 0x7000        # comments start with '#'
        mov rcx, [rax]         # ';' separates statements, as in keystone
    done: hlt
    ''', address=0x10000)
    prog.code, prog.labels["done"]

Syntax is keystone's (Intel syntax, GNU directives: .code16/.code32/.code64,
.byte/.word/.long/.quad, .ascii/.asciz, .balign, .org, `x = value`).

Checks (AsmError when one fails), on every instruction statement:
- it decodes (iced-x86, in the mode of its .codeNN section) to exactly one
  instruction whose length is the number of bytes keystone emitted for it;
- keystone 0.9.2 encodes an absolute memory operand in 64-bit code (`[0x7000]`,
  `fs:[0x10]`) as RIP-relative (`[rip+0x7000]`): a RIP-relative operand in a
  statement that does not say `rip` is rejected (use a register base, or a
  label: labels are encoded as absolute addresses correctly);
- keystone encodes `ljmp sel:target` in .code32 with a 16-bit offset: a far
  jump/call whose operand size is not the section's is rejected (write the
  bytes with .byte/.long/.word).

Label addresses come from marker labels inserted before every top-level
statement and a table of their values appended to the source (then cut off the
output), so `labels` holds every label defined at top level.  Macro expansions
and .rept/.irp blocks are checked as instruction sequences.  Results are cached per
(source, address, bits).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

import iced_x86 as I
from keystone import KS_ARCH_X86, KS_MODE_16, KS_MODE_32, KS_MODE_64, Ks, KsError

_MODES = {16: KS_MODE_16, 32: KS_MODE_32, 64: KS_MODE_64}
_LABEL = re.compile(r"^\s*([A-Za-z_.$][\w.$]*)\s*:(?!:)")
_ASSIGN = re.compile(r"^\s*[A-Za-z_.$][\w.$]*\s*=")
_MARK = "__vmxlab_s{}"
_FAR = {I.Code.JMP_PTR1616: 16, I.Code.JMP_PTR1632: 32, I.Code.CALL_PTR1616: 16, I.Code.CALL_PTR1632: 32}


class AsmError(ValueError):
    """The source does not assemble, or keystone's output fails a check."""


@dataclass(frozen=True)
class Assembly:
    code: bytes
    address: int
    labels: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.code)


def _statements(source: str) -> list[str]:
    """Split into statements: newlines and ';' outside quotes; '#' comments dropped."""
    out: list[str] = []
    for line in source.splitlines():
        cur, quote = [], None
        for ch in line:
            if quote:
                cur.append(ch)
                if ch == quote:
                    quote = None
            elif ch in "\"'":
                quote = ch
                cur.append(ch)
            elif ch == "#":
                break
            elif ch == ";":
                out.append("".join(cur))
                cur = []
            else:
                cur.append(ch)
        out.append("".join(cur))
    return [s.strip() for s in out if s.strip()]


def _strip_labels(stmt: str) -> tuple[list[str], str]:
    names = []
    while True:
        m = _LABEL.match(stmt)
        if not m:
            return names, stmt.strip()
        names.append(m.group(1))
        stmt = stmt[m.end():]


def asm(source: str, address: int = 0, bits: int = 64) -> Assembly:
    """Assemble `source` at `address` in `bits`-bit mode (checked; see module doc)."""
    return _asm(source, address, bits)


_BLOCK_OPEN = (".rept", ".irp", ".irpc", ".macro")
_BLOCK_CLOSE = (".endr", ".endm")


@lru_cache(maxsize=256)
def _asm(source: str, address: int, bits: int) -> Assembly:
    if bits not in _MODES:
        raise AsmError(f"bits must be 16, 32 or 64, not {bits}")
    stmts = _statements(source)
    # Marker labels go before top-level statements only: a label inside a .rept or
    # .macro body would be defined more than once.
    marked, depth, top = [], 0, []
    for s in stmts:
        low = s.lower()
        word = low.split(None, 1)[0] if low else ""
        if depth == 0:
            marked.append(f"{_MARK.format(len(top))}: {s}")
            top.append(len(marked) - 1)
        else:
            marked.append(s)
        if word in _BLOCK_OPEN:
            depth += 1
        elif word in _BLOCK_CLOSE:
            depth = max(depth - 1, 0)
    n = len(top) + 1
    marked.append(f"{_MARK.format(len(top))}:")
    table = ", ".join(_MARK.format(i) for i in range(n))
    text = "\n".join(marked) + f"\n.quad {table}\n"
    try:
        encoding, _count = Ks(KS_ARCH_X86, _MODES[bits]).asm(text, address)
    except KsError as e:
        raise AsmError(f"keystone: {e} (in {_first_bad(stmts, address, bits)})") from None
    raw = bytes(encoding or b"")
    if len(raw) < 8 * n:
        raise AsmError("keystone output is shorter than its statement table")
    offsets = [int.from_bytes(raw[len(raw) - 8 * n + 8 * i:len(raw) - 8 * n + 8 * i + 8], "little") - address
               for i in range(n)]
    code = raw[:len(raw) - 8 * n]
    labels: dict[str, int] = {}
    macros: set[str] = set()
    mode = bits
    depth = 0
    k = -1                       # index of the current top-level statement
    block_start = 0
    block_text: list[str] = []
    for stmt in stmts:
        low = stmt.lower()
        word = low.split(None, 1)[0] if low else ""
        if depth == 0:
            k += 1
        if depth > 0:
            block_text.append(stmt)
            if word in _BLOCK_OPEN:
                depth += 1
            elif word in _BLOCK_CLOSE:
                depth -= 1
                if depth == 0:
                    chunk = code[offsets[block_start]:offsets[k + 1]] if not block_text[0].lower().startswith(".macro") \
                        else b""
                    _check_sequence(" ; ".join(block_text), chunk, address + offsets[block_start], mode)
            continue
        names, body = _strip_labels(stmt)
        for name in names:
            labels[name] = address + offsets[k]
        blow = body.lower()
        bword = blow.split(None, 1)[0] if blow else ""
        if bword in _BLOCK_OPEN:
            depth = 1
            block_start = k
            block_text = [body]
            if bword == ".macro":
                parts = body.split(None, 2)
                if len(parts) > 1:
                    macros.add(parts[1].split(",")[0].strip().lower())
            continue
        if blow.startswith(".code16"):
            mode = 16
            continue
        if blow.startswith(".code32"):
            mode = 32
            continue
        if blow.startswith(".code64"):
            mode = 64
            continue
        if not body or body.startswith(".") or _ASSIGN.match(body):
            continue
        chunk = code[offsets[k]:offsets[k + 1]]
        if bword in macros:
            _check_sequence(body, chunk, address + offsets[k], mode)
        else:
            _check(body, chunk, address + offsets[k], mode)
    return Assembly(code, address, labels)


def _check_sequence(text: str, chunk: bytes, ip: int, mode: int) -> None:
    """A macro expansion or .rept/.irp block: it must decode cleanly unless it
    holds data directives; the RIP-relative check applies to each instruction."""
    if not chunk:
        return
    body = [t.strip().lower() for t in text.split(";")]
    if any(t.startswith(".") and not t.startswith((".rept", ".irp", ".irpc", ".endr", ".set", ".equ"))
           for t in body):
        return
    off = 0
    for insn in I.Decoder(mode, chunk, ip=ip):
        if insn.code == I.Code.INVALID:
            raise AsmError(f"{text!r} at {ip + off:#x}: keystone emitted bytes that do not decode")
        if mode == 64 and insn.is_ip_rel_memory_operand and "rip" not in text.lower():
            raise AsmError(f"{text!r}: keystone encoded an absolute memory operand as RIP-relative ({insn})")
        off += insn.len


def _check(stmt: str, chunk: bytes, ip: int, mode: int) -> None:
    insns = list(I.Decoder(mode, chunk, ip=ip))
    if len(insns) != 1 or insns[0].code == I.Code.INVALID or insns[0].len != len(chunk):
        got = ", ".join(str(x) for x in insns) or "nothing"
        raise AsmError(f"{stmt!r} at {ip:#x}: keystone emitted {chunk.hex()} which decodes as {got}")
    insn = insns[0]
    if mode == 64 and insn.is_ip_rel_memory_operand and "rip" not in stmt.lower():
        raise AsmError(f"{stmt!r} at {ip:#x}: keystone encoded an absolute memory operand as RIP-relative "
                       f"({insn}); use a register base (mov rax, ADDR; ... [rax]) or a label")
    far = _FAR.get(insn.code)
    if far is not None and far != mode:
        raise AsmError(f"{stmt!r} at {ip:#x}: keystone encoded a far transfer with a {far}-bit offset in "
                       f"{mode}-bit code ({insn}); write it with .byte/.long/.word")


def _first_bad(stmts: list[str], address: int, bits: int) -> str:
    """The first statement keystone rejects on its own (for the error message)."""
    ks = Ks(KS_ARCH_X86, _MODES[bits])
    for s in stmts:
        try:
            ks.asm(s, address)
        except KsError:
            return repr(s)
    return "the source"

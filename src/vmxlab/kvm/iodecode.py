"""The I/O instruction behind a KVM_EXIT_IO, for the VMX exit qualification.

`struct kvm_run.io` gives direction, size, port and count, but not what the VMX
qualification also holds (SDM Vol. 3C "Exit Qualification for I/O Instructions":
bit 4 string instruction, bit 5 REP prefixed, bit 6 operand encoding DX or
immediate) nor the instruction information of INS/OUTS (address size, segment).
They come from the instruction bytes.  This module decodes the twelve I/O
opcodes (SDM Vol. 2: IN E4/E5/EC/ED, OUT E6/E7/EE/EF, INS 6C/6D, OUTS 6E/6F) with
their prefixes; it is not a general x86 decoder.

Two situations (see machine.py for which applies when):
- `decode(code, mode)`: the instruction starts at the given bytes (RIP still
  points at it);
- `decode_retired_out(before, size, port, dx)`: an OUT/OUTS that KVM's instruction
  emulator already retired, so RIP points just past it; only the last bytes can be
  read back, and the result says what they allow.
"""
from __future__ import annotations

from typing import NamedTuple

from ..arch.exits import INFO_INS_OUTS, QUAL_IO

_SEGMENT_PREFIXES = {0x26: 0, 0x2E: 1, 0x36: 2, 0x3E: 3, 0x64: 4, 0x65: 5}   # ES CS SS DS FS GS
_LEGACY_PREFIXES = frozenset((0xF0, 0xF2, 0xF3, 0x66, 0x67, *_SEGMENT_PREFIXES))
# opcode -> (is_in, byte-sized, string, immediate port)
_OPCODES = {
    0xE4: (True, True, False, True), 0xE5: (True, False, False, True),
    0xE6: (False, True, False, True), 0xE7: (False, False, False, True),
    0xEC: (True, True, False, False), 0xED: (True, False, False, False),
    0xEE: (False, True, False, False), 0xEF: (False, False, False, False),
    0x6C: (True, True, True, False), 0x6D: (True, False, True, False),
    0x6E: (False, True, True, False), 0x6F: (False, False, True, False),
}
_ADDRESS_SIZE_CODE = {16: 0, 32: 1, 64: 2}
_Q_SIZE, _Q_DIRECTION, _Q_STRING, _Q_REP, _Q_OPERAND, _Q_PORT = (
    QUAL_IO[name].lo for name in ("size", "direction", "string", "rep", "operand", "port"))
SEG_ES, SEG_DS = 0, 3


class IoInstruction(NamedTuple):
    is_in: bool
    size: int                    # operand size in bytes: 1, 2 or 4
    string: bool                 # INS / OUTS
    rep: bool                    # REP (F3) or REPNE (F2) prefix on a string instruction
    immediate: bool              # port is an imm8 operand (else DX)
    port: int | None             # the imm8 port, None for the DX forms
    length: int | None           # instruction length in bytes (None when not known)
    address_size: int | None     # 16, 32 or 64 (string instructions)
    segment: int | None          # segment register number of the source (OUTS), ES for INS

    def qualification(self, port: int) -> int:
        """The exit qualification (SDM "Exit Qualification for I/O Instructions"), with
        the bit positions of arch/exits.QUAL_IO."""
        return (((self.size - 1) << _Q_SIZE) | (self.is_in << _Q_DIRECTION) | (self.string << _Q_STRING)
                | (self.rep << _Q_REP) | (self.immediate << _Q_OPERAND) | ((port & 0xFFFF) << _Q_PORT))

    def instruction_info(self) -> int | None:
        """VM-exit instruction information of INS/OUTS (address size, segment), or None."""
        if not self.string or self.address_size is None:
            return None
        return INFO_INS_OUTS.encode(address_size=_ADDRESS_SIZE_CODE[self.address_size],
                                    segment=self.segment if self.segment is not None else 0)


def decode(code: bytes, mode: int) -> IoInstruction | None:
    """The I/O instruction at the start of `code` in a `mode`-bit code segment
    (16, 32 or 64), or None if the bytes are not one."""
    if mode not in (16, 32, 64):
        raise ValueError(f"mode {mode} is not 16, 32 or 64")
    prefixes: list[int] = []
    i = 0
    while i < len(code) and i < 15:
        b = code[i]
        if b in _LEGACY_PREFIXES:
            prefixes.append(b)
        elif not (mode == 64 and 0x40 <= b <= 0x4F):   # REX: even REX.W leaves I/O at 32 bits
            break
        i += 1
    if i >= len(code) or code[i] not in _OPCODES:
        return None
    is_in, byte_sized, string, immediate = _OPCODES[code[i]]
    length = i + 1 + (1 if immediate else 0)
    if length > 15 or length > len(code):
        return None
    opsize_prefix = 0x66 in prefixes
    if byte_sized:
        size = 1
    elif mode == 16:
        size = 4 if opsize_prefix else 2
    else:
        size = 2 if opsize_prefix else 4
    addr_prefix = 0x67 in prefixes
    address_size = {64: 32 if addr_prefix else 64, 32: 16 if addr_prefix else 32,
                    16: 32 if addr_prefix else 16}[mode]
    segment = None
    if string:
        if is_in:
            segment = SEG_ES             # INS always writes ES:[rDI]
        else:
            segment = SEG_DS
            for p in prefixes:
                if p in _SEGMENT_PREFIXES:
                    segment = _SEGMENT_PREFIXES[p]     # the last override wins
    rep = string and (0xF3 in prefixes or 0xF2 in prefixes)
    return IoInstruction(is_in=is_in, size=size, string=string, rep=rep, immediate=immediate,
                         port=code[i + 1] if immediate else None, length=length,
                         address_size=address_size if string else None, segment=segment)


def matches(insn: IoInstruction | None, is_in: bool, size: int, port: int, dx: int) -> bool:
    """Whether a decoded instruction is the one a KVM_EXIT_IO reports."""
    if insn is None or insn.is_in != is_in or insn.size != size:
        return False
    if insn.immediate:
        return insn.port == port
    return dx & 0xFFFF == port


def decode_retired_out(before: bytes, size: int, port: int, dx: int) -> tuple[IoInstruction | None, str | None]:
    """An OUT/OUTS that ended just before RIP, from the bytes that precede RIP.

    `before` holds the (up to) two bytes before RIP.  Candidates: a one-byte opcode
    EE/EF (OUT DX) or 6E/6F (OUTS) as the last byte, with DX equal to the port; or
    E6/E7 followed by imm8 == port.  A REP OUTS is never retired at its exit (KVM's
    emulator leaves RIP on a REP string instruction until a later entry finds the
    count exhausted), so rep is 0.  Prefixes cannot be told from the end of an
    instruction: length, address size and segment stay unknown.  Returns the
    instruction (or None) and a note when the bytes allow two readings (then the DX
    reading is taken).
    """
    dx_ok = dx & 0xFFFF == port
    one = before[-1] if len(before) >= 1 else None
    two = before[-2] if len(before) >= 2 else None
    dx_form = string_form = imm_form = False
    if size == 1:
        dx_form, string_form = one == 0xEE and dx_ok, one == 0x6E and dx_ok
        imm_form = two == 0xE6 and one == port
    else:
        dx_form, string_form = one == 0xEF and dx_ok, one == 0x6F and dx_ok
        imm_form = two == 0xE7 and one == port
    note = None
    if (dx_form or string_form) and imm_form:
        note = (f"bytes {two:02x} {one:02x} before RIP read both as OUT imm8 and as "
                f"{'OUTS' if string_form else 'OUT DX'}; taken as the latter")
    if dx_form or string_form:
        return IoInstruction(is_in=False, size=size, string=string_form, rep=False, immediate=False,
                             port=None, length=None, address_size=None, segment=None), note
    if imm_form:
        return IoInstruction(is_in=False, size=size, string=False, rep=False, immediate=True,
                             port=port, length=None, address_size=None, segment=None), None
    return None, None

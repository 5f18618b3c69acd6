"""The I/O instruction decoder behind IO_INSTRUCTION qualifications (no /dev/kvm needed).

Expected qualifications are worked out from SDM Vol. 3C "Exit Qualification for I/O
Instructions": bits 2:0 size-1, bit 3 direction (1 = IN), bit 4 string, bit 5 REP,
bit 6 operand encoding (1 = immediate), bits 31:16 port; and the INS/OUTS
instruction information: bits 9:7 address size (0 16-bit, 1 32-bit, 2 64-bit),
bits 17:15 segment (0 ES .. 5 GS).
"""
import itertools

import pytest

from vmxlab.arch.exits import QUAL_IO
from vmxlab.kvm.iodecode import IoInstruction, decode, decode_retired_out, matches


@pytest.mark.parametrize("code,mode,port,qual,length", [
    ("e610", 64, 0x10, 0x00100040, 2),          # out 0x10, al: imm
    ("66e780", 64, 0x80, 0x00800041, 3),        # out 0x80, ax
    ("e780", 32, 0x80, 0x00800043, 2),          # out 0x80, eax in a 32-bit segment
    ("e780", 16, 0x80, 0x00800041, 2),          # out 0x80, ax in a 16-bit segment
    ("66e780", 16, 0x80, 0x00800043, 3),        # 66 in 16-bit code: 32-bit operand
    ("ef", 64, 0x3F8, 0x03F80003, 1),           # out dx, eax
    ("48ef", 64, 0x3F8, 0x03F80003, 2),         # REX.W does not make it 64-bit
    ("ec", 64, 0x60, 0x00600008, 1),            # in al, dx
    ("e571", 64, 0x71, 0x0071004B, 2),          # in eax, 0x71
    ("f36e", 64, 0x10, 0x00100030, 2),          # rep outsb
    ("6e", 64, 0x10, 0x00100010, 1),            # outsb, no REP
    ("f3676d", 64, 0x20, 0x0020003B, 3),        # rep insd, 32-bit addressing
    ("f26f", 32, 0x1F0, 0x01F00033, 2),         # repne outsd counts as REP
    ("41f36e", 64, 0x10, 0x00100030, 3),        # a REX before a legacy prefix is ignored
])
def test_decode_qualification(code, mode, port, qual, length):
    insn = decode(bytes.fromhex(code), mode)
    assert insn is not None
    assert insn.qualification(port) == qual
    assert insn.length == length


@pytest.mark.parametrize("code,mode,info", [
    ("f36e", 64, (2 << 7) | (3 << 15)),          # 64-bit addressing, DS
    ("f3676d", 64, (1 << 7) | (0 << 15)),        # INS: ES
    ("26f36f", 64, (2 << 7) | (0 << 15)),        # ES override on OUTS
    ("646e", 32, (1 << 7) | (4 << 15)),          # FS override, 32-bit addressing
    ("6e", 16, (0 << 7) | (3 << 15)),            # 16-bit addressing
    ("676e", 16, (1 << 7) | (3 << 15)),          # 67 in 16-bit code: 32-bit addressing
])
def test_string_instruction_information(code, mode, info):
    assert decode(bytes.fromhex(code), mode).instruction_info() == info


def test_non_string_has_no_instruction_information():
    assert decode(bytes.fromhex("e610"), 64).instruction_info() is None


@pytest.mark.parametrize("code,mode", [
    ("90", 64), ("", 64), ("f3", 64), ("e6", 64),      # not I/O, empty, prefix only, imm8 missing
    ("48ef", 32),                                       # 48 is DEC EAX outside 64-bit mode
    ("66" * 15 + "ee", 64),                             # 16 bytes: longer than 15
])
def test_not_an_io_instruction(code, mode):
    assert decode(bytes.fromhex(code), mode) is None


def test_fifteen_bytes_is_still_an_instruction():
    insn = decode(bytes.fromhex("66" * 14 + "ee"), 64)
    assert insn is not None and insn.length == 15 and insn.size == 1


def test_matches_checks_direction_size_and_port():
    out_imm = decode(bytes.fromhex("e610"), 64)
    assert matches(out_imm, False, 1, 0x10, dx=0)
    assert not matches(out_imm, False, 1, 0x11, dx=0x11)      # imm8 is 0x10
    assert not matches(out_imm, True, 1, 0x10, dx=0)          # direction
    out_dx = decode(bytes.fromhex("ee"), 64)
    assert matches(out_dx, False, 1, 0x3F8, dx=0xFFFF_0000_03F8)
    assert not matches(out_dx, False, 1, 0x3F8, dx=0x3F9)
    assert not matches(out_dx, False, 2, 0x3F8, dx=0x3F8)     # size
    assert not matches(None, False, 1, 0x10, dx=0x10)


def test_retired_out_forms():
    insn, note = decode_retired_out(bytes.fromhex("90ee"), 1, 0x20, dx=0x20)
    assert (insn.string, insn.immediate, insn.rep, note) == (False, False, False, None)
    assert insn.qualification(0x20) == 0x00200000
    insn, _ = decode_retired_out(bytes.fromhex("e620"), 1, 0x20, dx=0)
    assert insn.immediate and insn.qualification(0x20) == 0x00200040
    insn, _ = decode_retired_out(bytes.fromhex("666f"), 2, 0x1F0, dx=0x1F0)
    assert insn.string and not insn.rep and insn.qualification(0x1F0) == 0x01F00011
    assert insn.length is None and insn.instruction_info() is None


def test_retired_out_ambiguity_prefers_dx_and_says_so():
    # E6 EE: "out 0xee, al", or some byte E6 followed by "out dx, al" with DX = 0xEE
    insn, note = decode_retired_out(bytes.fromhex("e6ee"), 1, 0xEE, dx=0xEE)
    assert not insn.immediate and "taken as the latter" in note
    insn, note = decode_retired_out(bytes.fromhex("e6ee"), 1, 0xEE, dx=0)
    assert insn.immediate and note is None         # DX is not the port: only the imm8 reading fits


def test_retired_out_nothing_fits():
    assert decode_retired_out(bytes.fromhex("9090"), 1, 0x10, dx=0x10) == (None, None)
    assert decode_retired_out(bytes.fromhex("90ee"), 1, 0x10, dx=0x11) == (None, None)
    assert decode_retired_out(bytes.fromhex("90ee"), 2, 0x10, dx=0x10) == (None, None)


def test_qualification_bits_agree_with_the_qual_io_layout():
    for is_in, size, string, rep, imm in itertools.product((False, True), (1, 2, 4), (False, True),
                                                            (False, True), (False, True)):
        insn = IoInstruction(is_in, size, string, rep, imm, None, None, None, None)
        for port in (0, 0x80, 0xFFFF):
            assert insn.qualification(port) == QUAL_IO.encode(
                size=size - 1, direction=int(is_in), string=int(string), rep=int(rep), operand=int(imm), port=port)

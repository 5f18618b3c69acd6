"""The #UD hook keeps the instruction it decoded at an address (runloop._on_invalid)
and reuses it only while the same bytes are fetched through the same translation:
code rewritten, a page remapped or another address space at the same linear
address is decoded again."""
import struct

from vhelpers import root_bench  # (puts tests/machine on the path)
from mhelpers import CODE, P, PT, RW, US, q  # noqa: I001

from vmxlab.arch import fields as F
from vmxlab.guests.asm import asm
from vmxlab.machine import StopReason

# two VMX instructions of the same length at the same address, different operands
FIRST, SECOND = "vmread rax, rbx", "vmread rcx, rbx"


def _program(insn: str, at: int = CODE) -> bytes:
    return asm(f"mov rbx, {F.GUEST_RIP:#x}\n{insn}\nhlt", at).code


def _run(b, expect_rax: int, expect_rcx: int) -> None:
    s = b.m.get_state()
    s.update(RAX=0, RCX=0, GUEST_RIP=CODE, GUEST_ACTIVITY_STATE=0)   # (out of the last HLT)
    b.m.set_state(s)
    assert b.cpu.run(time_budget=5).reason == StopReason.HALTED
    assert (b.env.reg("RAX"), b.env.reg("RCX")) == (expect_rax, expect_rcx)


def test_code_rewritten_at_the_same_address_is_decoded_again():
    b = root_bench()
    b.m.load(CODE, _program(FIRST))
    _run(b, 0x1234, 0)
    _run(b, 0x1234, 0)
    b.m.load(CODE, _program(SECOND))
    _run(b, 0, 0x1234)


def test_a_remapped_code_page_is_decoded_again():
    b = root_bench()
    other = CODE + 0x10000                         # another physical page, same offset
    b.m.load(CODE, _program(FIRST))
    b.m.load(other, _program(SECOND, CODE))
    _run(b, 0x1234, 0)
    _run(b, 0x1234, 0)
    b.env.set_pte(CODE >> 12, other | P | RW | US)   # (flushes the TLBs, as INVLPG would)
    _run(b, 0, 0x1234)


def test_another_address_space_at_the_same_linear_address_is_decoded_again():
    b = root_bench()
    other = CODE + 0x10000
    b.m.load(CODE, _program(FIRST))
    b.m.load(other, _program(SECOND, CODE))
    # a second hierarchy: the same map but CODE's page backed by `other`
    pml4, pdpt, pd, pt = 0x14000, 0x15000, 0x16000, 0x17000
    b.m.load(pml4, q(pdpt | P | RW | US))
    b.m.load(pdpt, q(pd | P | RW | US))
    b.m.load(pd, q(pt | P | RW | US) + b.m.mem.read(0x12000 + 8, 511 * 8))
    entries = bytearray(b.m.mem.read(PT, 4096))
    struct.pack_into("<Q", entries, 8 * (CODE >> 12), other | P | RW | US)
    b.m.load(pt, bytes(entries))
    first_cr3 = b.env.reg("GUEST_CR3")
    _run(b, 0x1234, 0)
    _run(b, 0x1234, 0)
    for cr3, rax, rcx in ((pml4, 0, 0x1234), (first_cr3, 0x1234, 0), (pml4, 0, 0x1234)):
        s = b.m.get_state()
        s["GUEST_CR3"] = cr3                       # (no TLB flush: the TLBs are tagged by context)
        b.m.set_state(s)
        _run(b, rax, rcx)


def test_code_the_program_rewrites_itself_is_decoded_again():
    b = root_bench()
    a = b.env.code(f"""
        mov rbx, {F.GUEST_RIP:#x}
        xor r9d, r9d
    again:
    site: vmread rax, rbx          # 0F 78 D8; then 0F 78 D9: vmread rcx, rbx
        inc r9
        cmp r9, 3
        je done
        mov rdx, site
        mov byte ptr [rdx + 2], 0xd9
        xor eax, eax
        jmp again
    done:
        hlt""")
    assert b.m.mem.read(a.labels["site"], 3) == bytes.fromhex("0f78d8")
    assert b.cpu.run(time_budget=5).reason == StopReason.HALTED
    assert (b.env.reg("RAX"), b.env.reg("RCX")) == (0, 0x1234)


def test_a_changed_translation_context_is_not_taken_for_the_remembered_one():
    """The remembered decoding is bound to the paging context the machine last
    selected: here a second stage (tagged, as VMX installs EPT) maps the code page
    elsewhere while unicorn's TLB would still hold the old page, and the #UD hook
    (called directly, as for an instruction executed from that stale entry) decodes
    through the new context, as decode_at does."""
    b = root_bench()
    other = CODE + 0x10000
    b.m.load(CODE, _program(FIRST))
    b.m.load(other, _program(SECOND, CODE))
    _run(b, 0x1234, 0)
    s = b.m.get_state()
    s.update(RAX=0, RCX=0, GUEST_RIP=CODE + 7, GUEST_ACTIVITY_STATE=0)   # at the VMREAD
    b.m.set_state(s)
    page = CODE & ~0xFFF
    b.m.set_second_stage(lambda gpa, access, linear, entry: ((other if gpa & ~0xFFF == page else gpa & ~0xFFF)
                                                              | (gpa & 0xFFF), 7), tag="elsewhere")
    b.m._on_invalid(None, None)
    assert (b.env.reg("RAX"), b.env.reg("RCX")) == (0, 0x1234)


def test_the_same_bytes_in_another_mode_are_decoded_again():
    """VMREAD in compatibility mode (same paging, CS.L = 0): #UD, and the decoding
    kept for the address is the 32-bit one."""
    b = root_bench()
    b.m.load(CODE, _program(FIRST))
    _run(b, 0x1234, 0)
    b.env.handler(6, "mov r8, 6\nhlt")
    s = b.m.get_state()
    s.update(R8=0, GUEST_RIP=CODE + 7, GUEST_CS_SELECTOR=0x18, GUEST_CS_AR_BYTES=0xC09B, GUEST_ACTIVITY_STATE=0)
    b.m.set_state(s)
    assert b.cpu.run(time_budget=5).reason == StopReason.HALTED
    assert b.env.reg("R8") == 6
    assert b.m._ud_memo[CODE + 7][5] == b.m.decode_at(CODE + 7, 32) != b.m.decode_at(CODE + 7, 64)

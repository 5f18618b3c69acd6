"""Small guests for the KVM backend tests: assembly (keystone, checked with iced-x86)
in the flat 64-bit environment of vmxlab.kvm.flat (its layout is in that module:
code at 0x10000, data at 0x20000, handlers that report vector v as `out 0xE0, v`).
"""
from __future__ import annotations

import re
import struct

import pytest
from iced_x86 import Decoder, Formatter, FormatterSyntax, OpKind, Register
from keystone import KS_ARCH_X86, KS_MODE_16, KS_MODE_32, KS_MODE_64, Ks

from vmxlab.kvm import flat, unavailable_reason
from vmxlab.kvm.flat import (CODE, DATA, REPORT_PORT, RSP0, SEL_CODE0, SEL_CODE3, SEL_DATA0,  # noqa: F401
                             SEL_DATA3, STACK, USER_STACK)

MMIO = 0x10000000            # mapped by the page tables, no memslot
KVM_REASON = unavailable_reason()
needs_kvm = pytest.mark.skipif(KVM_REASON is not None, reason=f"/dev/kvm unusable here: {KVM_REASON}")

_MODES = {16: KS_MODE_16, 32: KS_MODE_32, 64: KS_MODE_64}
_ABS = re.compile(r"\[\s*(0x[0-9a-fA-F]+)\s*\]")


def asm(source: str, address: int = CODE, bits: int = 64) -> bytes:
    """Assemble with keystone at `address`, then decode with iced-x86 and check that
    keystone emitted one instruction per statement (statements are lines or parts
    separated by ';'; no comments) and that every absolute memory operand `[0x...]`
    of the source addresses what it says (keystone mis-encodes some of them in
    64-bit code)."""
    encoding, _ = Ks(KS_ARCH_X86, _MODES[bits]).asm(source, address)
    code = bytes(encoding)
    count = 0      # statements, labels removed
    for part in re.split(r"[;\n]", source):
        part = re.sub(r"^\s*[A-Za-z_.][\w.]*:", "", part).strip()
        count += bool(part)
    decoded = list(Decoder(bits, code, ip=address))
    fmt = Formatter(FormatterSyntax.INTEL)
    assert not any(i.is_invalid for i in decoded), [fmt.format(i) for i in decoded]
    assert len(decoded) == count, (count, [fmt.format(i) for i in decoded])
    absolute = sorted(i.memory_displacement for i in decoded
                      if any(i.op_kind(k) == OpKind.MEMORY for k in range(i.op_count))
                      and i.memory_base in (Register.NONE, Register.RIP, Register.EIP)
                      and i.memory_index == Register.NONE)
    wanted = sorted(int(m, 16) for m in _ABS.findall(source))
    assert absolute == wanted, (f"absolute memory operands {[hex(a) for a in absolute]} "
                                f"but the source says {[hex(a) for a in wanted]}")
    return code


def long_mode_state(**kw) -> dict:
    return flat.state(**kw)


def long_mode_machine(source: str | bytes, *, cpl: int = 0, memory: int = flat.RAM, **state):
    """A KvmMachine in 64-bit mode with `source` at CODE; extra state keys as keywords."""
    return flat.machine(asm(source) if isinstance(source, str) else source, cpl=cpl, memory=memory, **state)


def addresses(code: bytes, address: int = CODE) -> list[int]:
    """The address of each instruction of `code` (decoded with iced-x86)."""
    return [i.ip for i in Decoder(64, code, ip=address)]


def frame(m, rsp: int, n: int = 5) -> list[int]:
    """n quadwords of the stack at rsp."""
    return list(struct.unpack(f"<{n}Q", m.phys_read(rsp, 8 * n)))

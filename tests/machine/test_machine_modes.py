"""Event delivery in real-address and 32-bit protected mode, and 5-level paging
("Interrupt and Exception Handling in Real-Address Mode", "Exception- or
Interrupt-Handler Procedures", "4-Level Paging and 5-Level Paging")."""
import struct

import mhelpers as H

from vmxlab.arch import segments as S
from vmxlab.guests.asm import asm
from vmxlab.machine import Machine, StopReason


def test_real_mode_int_through_the_ivt():
    m = Machine(memory_size=1 << 20)
    # IVT entry 0x10 -> 0000:9000; the handler sets BX and IRETs
    m.load(0x10 * 4, struct.pack("<HH", 0x9000, 0))
    m.load(0x9000, asm("mov bx, 0x5a5a; iret", 0x9000, bits=16).code)
    a = asm("mov sp, 0x7000; sti; int 0x10; after: mov cx, 1; cli; hlt", 0x8000, bits=16)
    m.load(0x8000, a.code)
    m.reset(entry=(0, 0x8000))
    m.add_breakpoint(0x9000)
    st = m.run(time_budget=2)
    assert st.reason == StopReason.BREAKPOINT
    s = m.get_state()
    # pushed FLAGS, CS, IP (6 bytes); IF and TF cleared in the handler
    assert s["GUEST_RSP"] == 0x7000 - 6
    assert m.mem.read16(0x7000 - 6) == a.labels["after"]       # IP
    assert m.mem.read16(0x7000 - 4) == 0                        # CS
    assert m.mem.read16(0x7000 - 2) & 0x200                     # FLAGS.IF was 1
    assert not s["GUEST_RFLAGS"] & 0x200
    assert m.run(time_budget=2).reason == StopReason.HALTED
    assert m.get_state()["RBX"] & 0xFFFF == 0x5A5A and m.get_state()["RCX"] & 0xFFFF == 1


def test_protected_mode_32bit_gate_with_privilege_change():
    m = Machine(memory_size=1 << 20)
    gdt = [0, 0x00CF9B000000FFFF, 0x00CF93000000FFFF, 0x00CFFB000000FFFF, 0x00CFF3000000FFFF]
    tss_desc = S.encode_descriptor(0x3000, 0x67, 0x89, long_mode=False)
    m.load(0x1000, b"".join(struct.pack("<Q", d) for d in gdt) + tss_desc)
    # 32-bit TSS: ESP0 at +4, SS0 at +8
    m.load(0x3000 + 4, struct.pack("<I", 0x70000))
    m.load(0x3000 + 8, struct.pack("<I", 0x10))
    # IDT: vector 0x40 -> 32-bit interrupt gate DPL 3 to 0x08:0x9000
    lo = 0x9000 & 0xFFFF | (0x08 << 16)
    hi = (0x9000 & 0xFFFF0000) | 0xEE00
    m.load(0x2000 + 8 * 0x40, struct.pack("<II", lo, hi))
    m.load(0x9000, asm("mov ebx, esp; mov ecx, [esp + 4]; hlt", 0x9000, bits=32).code)
    a = asm("mov esp, 0x60000; int 0x40; after: nop", 0x8000, bits=32)
    m.load(0x8000, a.code)
    s = m.get_state()
    s.update({"GUEST_CR0": 0x11, "GUEST_RIP": 0x8000, "GUEST_RFLAGS": 0x202, "GUEST_IA32_EFER": 0,
              "GUEST_GDTR_BASE": 0x1000, "GUEST_GDTR_LIMIT": 0x2F, "GUEST_IDTR_BASE": 0x2000,
              "GUEST_IDTR_LIMIT": 0x7FF, "GUEST_TR_SELECTOR": 0x28, "GUEST_TR_BASE": 0x3000,
              "GUEST_TR_LIMIT": 0x67, "GUEST_TR_AR_BYTES": 0x8B})
    for seg in ("ES", "CS", "SS", "DS", "FS", "GS"):
        code = seg == "CS"
        s.update({f"GUEST_{seg}_SELECTOR": 0x1B if code else 0x23, f"GUEST_{seg}_BASE": 0,
                  f"GUEST_{seg}_LIMIT": 0xFFFFFFFF, f"GUEST_{seg}_AR_BYTES": 0xC0FB if code else 0xC0F3})
    m.set_state(s)
    assert m.cpl() == 3
    st = m.run(time_budget=2)
    assert st.reason == StopReason.HALTED
    g = m.get_state()
    # CPL 3 -> 0 through a 32-bit gate: SS:ESP from the TSS, pushed SS, ESP, EFLAGS, CS, EIP
    assert g["GUEST_SS_SELECTOR"] == 0x10 and g["GUEST_CS_SELECTOR"] == 0x08
    assert g["RBX"] & 0xFFFFFFFF == 0x70000 - 20
    assert g["RCX"] & 0xFFFFFFFF == 0x1B                       # pushed CS
    frame = struct.unpack("<5I", m.mem.read(0x70000 - 20, 20))
    assert frame == (a.labels["after"], 0x1B, 0x202, 0x60000, 0x23)


def test_five_level_paging_with_an_la57_profile():
    e = H.Env(profile="icelake-server")
    pml5 = 0x14000
    e.m.mem.write64(pml5, H.PML4 | 7)
    e.m.mem.write64(pml5 + 8 * 2, H.PML4 | 7)     # linear 2 << 48 -> the same 4-level tables
    s = e.m.get_state()
    s["GUEST_CR3"], s["GUEST_CR4"] = pml5, s["GUEST_CR4"] | (1 << 12)
    e.m.set_state(s)
    e.code("mov rbx, 0x2000000060000; mov qword ptr [rbx], 0x57; mov rcx, 0x60000; mov r10, [rcx]; cli; hlt")
    assert e.m.run(time_budget=2).reason == StopReason.HALTED
    assert e.reg("R10") == 0x57 and e.m.linear_bits == 57

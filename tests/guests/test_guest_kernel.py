"""The built-in kernel boots from its documented reset state: real mode ->
protected mode -> IA-32e mode with its own GDT, TSS, IDT and page tables."""
import struct

from vmxlab.guests import kernel
from vmxlab.guests.asm import asm
from vmxlab.machine import Machine, StopReason


def booted(**kw):
    m = Machine(memory_size=8 << 20, **kw)
    img = kernel.boot(m)
    return m, img


def test_kernel_boots_and_prints():
    m, img = booted()
    st = m.run(time_budget=5)
    assert st.reason == StopReason.HALTED
    assert m.uart.text() == ("vmxlab kernel: long mode\n"
                             "workload: default\n"
                             f"vector 0x3 rip {img.labels['workload_int3'] + 1:#x}\n"
                             "kernel: done\n")


def test_reset_state_is_real_mode_at_8000():
    m, img = booted()
    s = m.get_state()
    assert s["GUEST_CR0"] & 1 == 0                      # real-address mode
    assert (s["GUEST_CS_SELECTOR"], s["GUEST_CS_BASE"], s["GUEST_RIP"]) == (0, 0, 0x8000)
    assert s["GUEST_RFLAGS"] == 2 and s["GUEST_IA32_EFER"] == 0
    assert img.labels["start16"] == 0x8000


def test_mode_switches_with_its_own_code():
    m, img = booted()
    for label in ("start32", "start64", "kernel_main"):
        m.add_breakpoint(img.labels[label])
    st = m.run(time_budget=5)
    assert st.reason == StopReason.BREAKPOINT and st.rip == img.labels["start32"]
    s = m.get_state()
    # protected mode, paging off, CS = 0x18: 32-bit code segment (D = 1, L = 0)
    assert s["GUEST_CR0"] & 0x80000001 == 1
    assert s["GUEST_CS_SELECTOR"] == 0x18
    assert s["GUEST_CS_AR_BYTES"] & 0x6000 == 0x4000
    assert s["GUEST_GDTR_BASE"] == img.labels["gdt"]
    st = m.run(time_budget=5)
    assert st.rip == img.labels["start64"]
    s = m.get_state()
    # IA-32e mode: EFER.LMA, CR0.PG, CR4.PAE, CS.L = 1
    assert s["GUEST_IA32_EFER"] & 0xD00 == 0xD00        # LME, LMA, NXE
    assert s["GUEST_CR0"] & 0x80010001 == 0x80010001
    assert s["GUEST_CR4"] & 0x20
    assert s["GUEST_CR3"] == kernel.PML4
    assert s["GUEST_CS_SELECTOR"] == 0x08 and s["GUEST_CS_AR_BYTES"] & 0x2000
    st = m.run(time_budget=5)
    assert st.rip == img.labels["kernel_main"]
    s = m.get_state()
    assert s["GUEST_TR_SELECTOR"] == 0x28 and s["GUEST_TR_AR_BYTES"] & 0xF == 0xB   # busy TSS
    assert s["GUEST_TR_BASE"] == img.labels["tss"]
    assert s["GUEST_IDTR_BASE"] == img.labels["idt"]
    assert m.mem.read64(img.labels["tss"] + 4) == kernel.STACK_TOP
    assert m.run(time_budget=5).reason == StopReason.HALTED


def test_workload_point_and_fault_handler():
    m, img = booted()
    code = asm("mov rsi, 0x1234; fault: ud2", 0x100000)
    m.load(0x100000, code.code)
    m.load(img.labels["workload_ptr"], struct.pack("<Q", 0x100000))
    st = m.run(time_budget=5)
    assert st.reason == StopReason.HALTED
    out = m.uart.text()
    assert out.endswith(f"vector 0x6 rip {code.labels['fault']:#x}\nhalted\n")
    counts = img.labels["vector_counts"]
    assert m.mem.read64(counts + 6 * 8) == 1


def test_driver_point_is_called_with_the_services_table():
    m, img = booted()
    code = asm("mov rsi, rdi; mov rax, [rsi + 8]; lea rsi, [msg]; call rax; ret; msg: .asciz \"driver\\n\"",
               0x100000)
    m.load(0x100000, code.code)
    m.load(img.labels["driver_ptr"], struct.pack("<Q", 0x100000))
    m.run(time_budget=5)
    assert m.uart.text().startswith("vmxlab kernel: long mode\ndriver\nworkload: default\n")

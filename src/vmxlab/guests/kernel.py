"""The built-in 64-bit kernel (source: kernel.asm, assembled when first needed).

Reset state it boots from (what `boot(machine)` sets up):
- the image is loaded at physical 0x8000 (`BASE`);
- the processor is in real-address mode as after RESET (Intel SDM "Processor
  State Following Power-up, Reset, or INIT": CR0 = 60000010H, RFLAGS = 2 so
  IF = 0, EFER = 0, GDTR/IDTR limit FFFFH, DR7 = 400H) except that CS:IP =
  0000:8000 (selector 0, base 0) instead of F000:FFF0, as a boot loader's far
  jump would leave it; no firmware, no BIOS services, no A20 gate;
- memory: at least 1 MiB of RAM (the kernel uses physical 0x7000-0x98000).

What it does: loads its GDT (16-bit LGDT), sets CR0.PE and far-jumps to 32-bit
code; builds 4-level page tables (PML4 0x20000, PDPT 0x21000, PD 0x22000:
identity map of the first GiB with 2 MiB pages, user bit clear), sets CR4.PAE,
CR3, IA32_EFER.LME|NXE and CR0.PG|WP, far-jumps to 64-bit code; fills its TSS
(RSP0 = 0x90000, IST1 = 0x98000) and loads TR = 0x28; builds a 256-entry IDT
(interrupt gates to 16-byte stubs; NMI and #DF on IST1; #BP with DPL 3);
prints "vmxlab kernel: long mode" on the 16550 UART at 0x3F8; calls the
"load driver" point and the workload; prints "kernel: done"; halts with IF = 0
(the machine's run then ends with StopReason.HALTED).

Every interrupt/exception handler prints "vector <v> [error <e>] rip <rip>";
vectors below 32 other than #DB, NMI, #BP and #OF then print "halted" and halt,
the others return.  `vector_counts` (256 qwords) counts the vectors taken.

GDT: 0x08 code64 DPL0, 0x10 data DPL0, 0x18 code32, 0x20 data32, 0x28 TSS,
0x38 data DPL3, 0x40 code64 DPL3.

Extension points (label addresses in `image().labels`):
- `driver_ptr`: a qword; when non-zero the kernel calls it (rdi = `services`)
  before the workload: where a later issue loads a driver (a hypervisor);
- `workload_ptr`: a qword, the workload called with rdi = `services`
  (default: `default_workload`, which prints and executes INT3);
- `services`: qwords putc(dil), puts(rsi), print_hex(rdi);
- `kernel_main`, `start16`, `start32`, `start64`, `isr_common`, `isr_stubs`,
  `gdt`, `tss`, `idt`, `vector_counts`, `kernel_end`.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources

from .asm import Assembly, asm

BASE = 0x8000
STACK_TOP = 0x90000
IST1_TOP = 0x98000
PML4 = 0x20000


def source() -> str:
    return resources.files(__package__).joinpath("kernel.asm").read_text()


@lru_cache(maxsize=1)
def image() -> Assembly:
    """The assembled kernel (code at BASE, labels by name)."""
    return asm(source(), BASE, bits=16)


def boot(machine) -> Assembly:
    """Load the kernel into `machine` and put the processor in the reset state
    described above; `machine.run()` then boots it."""
    img = image()
    machine.load(BASE, img.code)
    machine.reset(entry=(0, BASE))
    return img

"""Reading the live processor state the way driver code does: by executing the
instructions (SGDT, SIDT, STR, SLDT, MOV from CRn and segment registers, PUSHFQ,
RDMSR, loads from the GDT) on the simulated processor, not by peeking into
Python objects.

Each probe writes a few instructions to a scratch page, runs them at the current
privilege level with the current paging, stops at their end (a breakpoint) and
puts the interrupted context back.  An exception they raise (a #GP from RDMSR of
an MSR the processor does not have) comes back as ProbeFault, as it would crash
a driver.
"""
from __future__ import annotations

from ..arch import msrs as M

import struct

from ..guests.asm import asm
from ..machine import registers as REG
from ..machine.runloop import StopReason

SCRATCH = 0x1F0000          # identity-mapped by the built-in kernel, unused by it
DATA = SCRATCH + 0x1000     # its own page: the code page is never written by the probes


class ProbeFault(Exception):
    def __init__(self, vector: int, what: str):
        super().__init__(f"{what} raised exception {vector}")
        self.vector = vector
        self.what = what


class Processor:
    def __init__(self, machine):
        self.m = machine
        self.executed: list[str] = []        # every instruction sequence run, for the record

    def execute(self, source: str, regs: dict[str, int] | None = None, out: tuple[str, ...] = ()) -> dict[str, int]:
        """Run `source` (64-bit code) with `regs` set; return the `out` registers."""
        m = self.m
        code = asm(source, SCRATCH).code
        end = SCRATCH + len(code)
        m.write_host(SCRATCH, code + b"\x90")
        saved = list(m.gprs.read())
        old_client, old_kinds, old_bitmap = m.client, set(m.subs.kinds), m.subs.exception_bitmap
        fault: list[int] = []

        def client(_m, ev):
            from ..machine.intercepts import Action
            fault.append(ev.vector)
            return Action.STOP

        g = m.gprs.read()
        g[REG.RIP] = SCRATCH
        for name, value in (regs or {}).items():
            g[REG.GPR_INDEX[name]] = value & ((1 << 64) - 1)
        m.gprs.write()
        m.client = client
        m.intercept(exceptions=0xFFFFFFFF)
        m.add_breakpoint(end)
        try:
            stop = m.run(instruction_budget=64)
        finally:
            m.remove_breakpoint(end)
            m.client = old_client
            m.intercept(*old_kinds, exceptions=old_bitmap)
        result = {name: m.gprs.read()[REG.GPR_INDEX[name]] for name in out}
        g = m.gprs.read()
        g[:] = saved
        m.gprs.write()
        self.executed.append(source.replace("\n", "; "))
        if fault:
            raise ProbeFault(fault[0], source.replace("\n", "; "))
        if stop.reason != StopReason.BREAKPOINT:
            raise RuntimeError(f"probe {source!r} did not finish: {stop}")
        return result

    # -- the instructions the seed uses ---------------------------------------------------
    def read_cr(self, n: int) -> int:
        return self.execute(f"mov rax, cr{n}", out=("RAX",))["RAX"]

    def selector(self, seg: str) -> int:
        """MOV r16, Sreg (ES, CS, SS, DS, FS, GS); STR / SLDT for TR / LDTR."""
        if seg == "TR":
            return self.execute("xor eax, eax\nstr ax", out=("RAX",))["RAX"] & 0xFFFF
        if seg == "LDTR":
            return self.execute("xor eax, eax\nsldt ax", out=("RAX",))["RAX"] & 0xFFFF
        return self.execute(f"xor eax, eax\nmov ax, {seg.lower()}", out=("RAX",))["RAX"] & 0xFFFF

    def descriptor_table(self, which: str) -> tuple[int, int]:
        """(limit, base) stored by SGDT or SIDT."""
        self.execute(f"mov rdi, {DATA}\n{which} [rdi]")
        limit, base = struct.unpack("<HQ", self.m.mem.read(DATA, 10))
        return limit, base

    def rdmsr(self, index: int) -> int:
        try:
            r = self.execute("rdmsr", regs={"RCX": index}, out=("RAX", "RDX"))
        except ProbeFault as e:
            raise ProbeFault(e.vector, f"RDMSR {M.name_of(index)} ({index:#x})") from None
        return (r["RDX"] & 0xFFFFFFFF) << 32 | (r["RAX"] & 0xFFFFFFFF)

    def rflags(self) -> int:
        return self.execute("pushfq\npop rax", out=("RAX",))["RAX"]

    def read_qwords(self, address: int, count: int) -> list[int]:
        """Loads from memory (GetSegmentDescriptor reads the GDT)."""
        values = []
        for i in range(count):
            values.append(self.execute("mov rax, [rdi]", regs={"RDI": address + 8 * i}, out=("RAX",))["RAX"])
        return values

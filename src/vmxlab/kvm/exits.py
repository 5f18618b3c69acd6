"""KVM exits as VMX exits: basic exit reason and qualification in SDM format.

| KVM (kvm_run->exit_reason)      | VMX basic exit reason (arch/exits.py)  | qualification / data            |
|---------------------------------|-----------------------------------------|---------------------------------|
| KVM_EXIT_IO                     | 30 IO_INSTRUCTION                       | QUAL_IO; OUT data, IN reply     |
| KVM_EXIT_MMIO                   | 48 EPT_VIOLATION                        | QUAL_EPT_VIOLATION, GPA, data   |
| KVM_EXIT_X86_RDMSR / _WRMSR     | 31 MSR_READ / 32 MSR_WRITE              | 0; MSR index (ECX), EDX:EAX     |
| KVM_EXIT_HLT                    | 12 HLT                                  | 0                               |
| KVM_EXIT_SHUTDOWN               | 2 TRIPLE_FAULT                          | 0                               |
| KVM_EXIT_IRQ_WINDOW_OPEN        | 7 INTERRUPT_WINDOW (when requested)     | 0                               |
| anything else, KVM_RUN errors,  | none: a KvmReport (kvm exit code and    |                                 |
| the watchdog                    | name, internal-error suberror and data) |                                 |

Qualification formats: SDM Vol. 3C "Exit Qualification for I/O Instructions" (bits
2:0 size-1, 3 direction 1=IN, 4 string, 5 REP, 6 operand encoding 1=immediate,
31:16 port) and "Exit Qualification for EPT Violations" (bit 0 data read, 1 data
write, 2 instruction fetch, 3-5 the R/W/X permissions of the guest-physical
address; bit 7, guest-linear address valid, stays 0: KVM does not report the
linear address).  MSR exits have qualification 0 (Vol. 3C "Basic VM-Exit
Information").

KVM completes some exiting instructions itself, on the next KVM_RUN: IN and MMIO
reads take the data the caller supplied with `reply()`; RDMSR/WRMSR take the
value or the #GP.  Unanswered exits get defined answers: all-ones data for IN
and MMIO reads (what a read of an absent device returns on a PC), #GP for MSR
accesses (an MSR nobody implements).

An exit belongs to the KVM exit it came from: `reply()` and the I/O
qualification (decoded from the guest's code on first use, as kvm_run does not
carry the string/REP/operand bits) work until the machine's next run() or
set_state(); afterwards they raise RuntimeError.
"""
from __future__ import annotations

from ..arch import exits as X
from . import abi
from .iodecode import IoInstruction


class Exit:
    """A VM exit: `reason` (VMX basic exit reason), `qualification`, `rip` (guest RIP
    when KVM reported the exit), `kvm_exit` (the KVM_EXIT_* code)."""

    __slots__ = ("rip", "_serial")
    reason: int | None = None
    kvm_exit: int | None = None

    def __init__(self, rip: int, serial: int):
        self.rip = rip
        self._serial = serial

    @property
    def name(self) -> str:
        return X.name_of(self.reason)

    @property
    def qualification(self) -> int:
        return 0

    @property
    def report(self) -> "KvmReport | None":
        return None

    def describe(self) -> str:
        return f"{self.name} rip {self.rip:#x}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


class HltExit(Exit):
    __slots__ = ()
    reason, kvm_exit = X.HLT, abi.KVM_EXIT_HLT


class TripleFaultExit(Exit):
    __slots__ = ()
    reason, kvm_exit = X.TRIPLE_FAULT, abi.KVM_EXIT_SHUTDOWN


class InterruptWindowExit(Exit):
    __slots__ = ()
    reason, kvm_exit = X.INTERRUPT_WINDOW, abi.KVM_EXIT_IRQ_WINDOW_OPEN


class IoExit(Exit):
    """IN, OUT, INS, OUTS.  A KVM exit with count > 1 (REP INS) becomes `count` exits,
    one an iteration, as VMX exits once an iteration; they share the first one's
    decoded instruction.

    port, size (bytes), is_in; data: the OUT data, or for IN the reply so far;
    reply(value) supplies IN data (int or `size` bytes)."""

    __slots__ = ("port", "size", "is_in", "rdx", "_m", "_offset", "_data", "_lead",
                 "_decoded", "_insn", "_address", "_note")
    reason, kvm_exit = X.IO_INSTRUCTION, abi.KVM_EXIT_IO

    def __init__(self, rip, serial, machine, port, size, is_in, rdx, offset, data, lead=None):
        self.rip = rip
        self._serial = serial
        self.port, self.size, self.is_in, self.rdx = port, size, is_in, rdx
        self._m, self._offset, self._data, self._lead = machine, offset, data, lead
        self._decoded = False

    @property
    def data(self) -> bytes:
        if self._data is None:          # IN: what KVM will load (reply or the default)
            if self._m._serial != self._serial:
                raise RuntimeError("the data of an IN exit can be read until the next run()")
            return self._m._mm[self._offset:self._offset + self.size]
        return self._data

    @property
    def value(self) -> int:
        return int.from_bytes(self.data, "little")

    def reply(self, value: int | bytes) -> None:
        """The data an IN reads (int: little-endian, `size` bytes)."""
        if not self.is_in:
            raise RuntimeError(f"OUT to port {self.port:#x} takes no reply")
        if isinstance(value, int):
            if value < 0 or value >> (8 * self.size):
                raise ValueError(f"IN reply {value:#x} does not fit in {self.size} bytes")
            value = value.to_bytes(self.size, "little")
        elif len(value) != self.size:
            raise ValueError(f"IN reply of {len(value)} bytes for a {self.size}-byte port read")
        if self._m._serial != self._serial:
            raise RuntimeError("reply to an exit before the next run()")
        self._m._mm[self._offset:self._offset + self.size] = value

    # -- from the decoded instruction (machine._decode_io, on first use) --
    def _decoding(self) -> "IoExit":
        lead = self._lead or self
        if not lead._decoded:
            self._m._decode_io(lead)
        return lead

    @property
    def instruction(self) -> IoInstruction | None:
        return self._decoding()._insn

    @property
    def string(self) -> bool:
        d = self.instruction
        return bool(d and d.string)

    @property
    def rep(self) -> bool:
        d = self.instruction
        return bool(d and d.rep)

    @property
    def qualification(self) -> int:
        d = self.instruction
        if d is None:   # not decodable: what kvm_run says, with string/REP/operand bits 0
            return X.QUAL_IO.encode(size=self.size - 1, direction=int(self.is_in), port=self.port)
        return d.qualification(self.port)

    @property
    def instruction_address(self) -> int | None:
        """Guest RIP of the I/O instruction (None when KVM had retired it and its
        start cannot be read back)."""
        return self._decoding()._address

    @property
    def instruction_length(self) -> int | None:
        d = self.instruction
        return d.length if d is not None else None

    @property
    def instruction_info(self) -> int | None:
        d = self.instruction
        return d.instruction_info() if d is not None else None

    @property
    def decode_note(self) -> str | None:
        return self._decoding()._note

    def describe(self) -> str:
        what = "IN" if self.is_in else "OUT"
        text = f"IO_INSTRUCTION {what} port {self.port:#x} size {self.size}"
        if not self.is_in:
            text += f" data {self.data.hex()}"
        return text + f" rip {self.rip:#x}"


class MmioExit(Exit):
    """A guest-physical access with no memory behind it (no memslot, or a write to a
    read-only slot), as an EPT violation.  gpa, size, is_write, data (the written
    bytes, or for a read the reply so far); reply(value) supplies read data."""

    __slots__ = ("gpa", "size", "is_write", "_data", "_mm", "_machine", "_qual")
    reason, kvm_exit = X.EPT_VIOLATION, abi.KVM_EXIT_MMIO

    def __init__(self, rip, serial, machine, mm, gpa, size, is_write, data, qualification):
        super().__init__(rip, serial)
        self.gpa, self.size, self.is_write = gpa, size, is_write
        self._data, self._mm, self._machine, self._qual = data, mm, machine, qualification

    @property
    def guest_physical_address(self) -> int:
        return self.gpa

    @property
    def qualification(self) -> int:
        return self._qual

    @property
    def data(self) -> bytes:
        if self._data is None:
            if self._machine._serial != self._serial:
                raise RuntimeError("the data of an MMIO read can be read until the next run()")
            return bytes(self._mm[abi.RUN_MMIO_DATA:abi.RUN_MMIO_DATA + self.size])
        return self._data

    @property
    def value(self) -> int:
        return int.from_bytes(self.data, "little")

    def reply(self, value: int | bytes) -> None:
        """The data an MMIO read loads (int: little-endian, `size` bytes)."""
        if self.is_write:
            raise RuntimeError(f"an MMIO write to {self.gpa:#x} takes no reply")
        if isinstance(value, int):
            if value < 0 or value >> (8 * self.size):
                raise ValueError(f"MMIO reply {value:#x} does not fit in {self.size} bytes")
            value = value.to_bytes(self.size, "little")
        elif len(value) != self.size:
            raise ValueError(f"MMIO reply of {len(value)} bytes for a {self.size}-byte read")
        if self._machine._serial != self._serial:
            raise RuntimeError("reply to an exit before the next run()")
        self._mm[abi.RUN_MMIO_DATA:abi.RUN_MMIO_DATA + self.size] = value

    def describe(self) -> str:
        what = f"write {self.data.hex()}" if self.is_write else "read"
        return f"EPT_VIOLATION gpa {self.gpa:#x} {what} size {self.size} qual {self._qual:#x} rip {self.rip:#x}"


class MsrExit(Exit):
    """RDMSR or WRMSR of an intercepted MSR (KVM's MSR filter).  index (ECX), value
    (WRMSR: EDX:EAX), kvm_reason (KVM_MSR_EXIT_REASON_*).  reply(value) answers a
    RDMSR (or accepts a WRMSR); inject_gp() makes the instruction raise #GP(0)."""

    __slots__ = ("reason", "kvm_exit", "index", "value", "kvm_reason", "_mm", "_machine", "answer")

    def __init__(self, is_write, rip, serial, machine, mm, index, value, kvm_reason):
        super().__init__(rip, serial)
        self.reason = X.MSR_WRITE if is_write else X.MSR_READ
        self.kvm_exit = abi.KVM_EXIT_X86_WRMSR if is_write else abi.KVM_EXIT_X86_RDMSR
        self.index, self.value, self.kvm_reason = index, value, kvm_reason
        self._mm, self._machine = mm, machine
        self.answer = "#GP"

    @property
    def is_write(self) -> bool:
        return self.reason == X.MSR_WRITE

    def _check(self) -> None:
        if self._machine._serial != self._serial:
            raise RuntimeError("answer an exit before the next run()")

    def reply(self, value: int | None = None) -> None:
        self._check()
        if self.is_write:
            if value is not None:
                raise ValueError("a WRMSR is accepted with reply() and no value")
        else:
            if value is None or value < 0 or value >> 64:
                raise ValueError(f"RDMSR reply must be a 64-bit value, not {value!r}")
            self._mm[abi.RUN_MSR_DATA:abi.RUN_MSR_DATA + 8] = value.to_bytes(8, "little")
            self.value = value
        self._mm[abi.RUN_MSR_ERROR] = 0
        self.answer = "ok"

    def inject_gp(self) -> None:
        self._check()
        self._mm[abi.RUN_MSR_ERROR] = 1
        self.answer = "#GP"

    def describe(self) -> str:
        text = f"{self.name} msr {self.index:#x}"
        if self.is_write:
            text += f" value {self.value:#x}"
        return text + f" ({abi.MSR_EXIT_REASONS.get(self.kvm_reason, self.kvm_reason)}) rip {self.rip:#x}"


class KvmReport(Exit):
    """A KVM exit with no VMX counterpart, a KVM_RUN failure, or the watchdog.

    kvm_exit and kvm_exit_name (None for a KVM_RUN error), suberror and its name
    and data (KVM_EXIT_INTERNAL_ERROR), insn_bytes (emulation failure with
    instruction bytes), hardware_reason (KVM_EXIT_UNKNOWN / FAIL_ENTRY), errno
    (KVM_RUN failed), message (one line saying all of it)."""

    __slots__ = ("kvm_exit", "kvm_exit_name", "suberror", "data", "insn_bytes", "hardware_reason", "errno",
                 "message", "watchdog")

    def __init__(self, kvm_exit, rip, serial, message, *, suberror=None, data=(), insn_bytes=None,
                 hardware_reason=None, errno=None, watchdog=False):
        super().__init__(rip, serial)
        self.kvm_exit = kvm_exit
        self.kvm_exit_name = abi.EXIT_NAMES.get(kvm_exit, f"KVM_EXIT_{kvm_exit}") if kvm_exit is not None else None
        self.suberror, self.data, self.insn_bytes = suberror, tuple(data), insn_bytes
        self.hardware_reason, self.errno, self.message = hardware_reason, errno, message
        self.watchdog = watchdog

    @property
    def name(self) -> str:
        if self.watchdog:
            return "WATCHDOG"
        return self.kvm_exit_name or "KVM_RUN_ERROR"

    @property
    def report(self) -> "KvmReport":
        return self

    def describe(self) -> str:
        return self.message

    def __str__(self) -> str:
        return self.message

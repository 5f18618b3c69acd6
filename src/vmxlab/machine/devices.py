"""The platform: an I/O port bus and the devices on it.

- `IoBus`: devices claim port ranges.  A port nobody claims reads as all ones
  and ignores writes (an ISA bus without a device; no exception is raised, as on
  a PC).
- `DebugConsole` on port 0xE9 (the Bochs/QEMU "port E9 hack"): every byte
  written is appended to `output`; reads return 0xE9.
- `Uart16550` at 0x3F8-0x3FF: transmit-only 16550.  Bytes written to THR
  (offset 0 with LCR.DLAB = 0) are captured in `output`; LSR (offset 5) always
  reads THRE | TEMT (0x60): the transmitter is empty, nothing is ever received;
  IIR reads 0x01 (no interrupt pending); the other registers hold what was
  written.  Reference: the PC16550D data sheet register map.
- `Timer` at ports 0x4C0-0x4CF (a vmxlab device, documented here because no PC
  timer is modelled): it raises an external interrupt after a number of TSC
  ticks, once or periodically.  Registers (little endian):
    0x4C0 (byte)   VECTOR  interrupt vector (32-255)
    0x4C1 (byte)   CONTROL 0 = stopped, 1 = one-shot, 2 = periodic; writing 1 or 2
                   arms the timer: the first interrupt is raised COUNT ticks later
    0x4C4 (dword)  COUNT   low 32 bits of the period in TSC ticks
    0x4C8 (dword)  COUNT   high 32 bits
  The interrupt goes to the machine's interrupt controller and is delivered when
  RFLAGS.IF = 1 and no STI / MOV SS shadow blocks it.

Device callbacks run inside unicorn hooks or between runs; they must be quick and
must not touch the processor state.
"""
from __future__ import annotations

from typing import Callable, Protocol


class Device(Protocol):
    def io_read(self, port: int, size: int) -> int: ...
    def io_write(self, port: int, size: int, value: int) -> None: ...


class IoBus:
    def __init__(self) -> None:
        self._ranges: list[tuple[int, int, Device]] = []
        self._by_port: dict[int, Device] = {}

    def claim(self, first: int, last: int, device: Device) -> None:
        if not 0 <= first <= last <= 0xFFFF:
            raise ValueError(f"bad port range {first:#x}-{last:#x}")
        for a, b, d in self._ranges:
            if first <= b and a <= last:
                raise ValueError(f"ports {first:#x}-{last:#x} overlap {a:#x}-{b:#x} ({type(d).__name__})")
        self._ranges.append((first, last, device))
        for p in range(first, last + 1):
            self._by_port[p] = device

    def device_at(self, port: int) -> Device | None:
        return self._by_port.get(port)

    def read(self, port: int, size: int) -> int:
        dev = self._by_port.get(port)
        if dev is None:
            return (1 << (8 * size)) - 1
        return dev.io_read(port, size) & ((1 << (8 * size)) - 1)

    def write(self, port: int, size: int, value: int) -> None:
        dev = self._by_port.get(port)
        if dev is not None:
            dev.io_write(port, size, value & ((1 << (8 * size)) - 1))


class DebugConsole:
    PORT = 0xE9

    def __init__(self) -> None:
        self.output = bytearray()

    def io_read(self, port: int, size: int) -> int:
        return 0xE9

    def io_write(self, port: int, size: int, value: int) -> None:
        self.output += (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def text(self) -> str:
        return self.output.decode("latin-1")


class Uart16550:
    BASE = 0x3F8
    THR, IER, IIR, LCR, MCR, LSR, MSR, SCR = range(8)
    LSR_THRE, LSR_TEMT = 0x20, 0x40

    def __init__(self, base: int = BASE) -> None:
        self.base = base
        self.output = bytearray()
        self.regs = [0] * 8
        self.divisor = 1

    def io_read(self, port: int, size: int) -> int:
        off = port - self.base
        dlab = self.regs[self.LCR] & 0x80
        if off == self.THR:
            return self.divisor & 0xFF if dlab else 0
        if off == self.IER:
            return self.divisor >> 8 if dlab else self.regs[self.IER]
        if off == self.IIR:
            return 0x01
        if off == self.LSR:
            return self.LSR_THRE | self.LSR_TEMT
        if off == self.MSR:
            return 0
        return self.regs[off]

    def io_write(self, port: int, size: int, value: int) -> None:
        off = port - self.base
        dlab = self.regs[self.LCR] & 0x80
        value &= 0xFF
        if off == self.THR:
            if dlab:
                self.divisor = (self.divisor & 0xFF00) | value
            else:
                self.output.append(value)
        elif off == self.IER and dlab:
            self.divisor = (self.divisor & 0xFF) | (value << 8)
        elif off in (self.IER, self.LCR, self.MCR, self.SCR):
            self.regs[off] = value

    def text(self) -> str:
        return self.output.decode("latin-1")


class Timer:
    BASE = 0x4C0
    STOPPED, ONE_SHOT, PERIODIC = 0, 1, 2

    def __init__(self, now: Callable[[], int], raise_interrupt: Callable[[int], None]) -> None:
        self._now = now
        self._raise = raise_interrupt
        self.vector = 0x20
        self.mode = self.STOPPED
        self.count = 0
        self.deadline: int | None = None

    def arm(self, vector: int, ticks: int, periodic: bool = False) -> None:
        if not 32 <= vector <= 255:
            raise ValueError(f"timer vector {vector} is not 32-255")
        self.vector, self.count = vector, max(int(ticks), 1)
        self.mode = self.PERIODIC if periodic else self.ONE_SHOT
        self.deadline = self._now() + self.count

    def stop(self) -> None:
        self.mode = self.STOPPED
        self.deadline = None

    def expire(self, now: int) -> bool:
        """Raise the interrupt if the deadline passed; True if it did."""
        if self.deadline is None or now < self.deadline:
            return False
        self._raise(self.vector)
        if self.mode == self.PERIODIC:
            periods = (now - self.deadline) // self.count + 1
            self.deadline += periods * self.count
        else:
            self.stop()
        return True

    def io_read(self, port: int, size: int) -> int:
        off = port - self.BASE
        if off == 0:
            return self.vector
        if off == 1:
            return self.mode
        raw = (self.count).to_bytes(8, "little")
        if 4 <= off < 12:
            return int.from_bytes(raw[off - 4:off - 4 + size].ljust(size, b"\0"), "little")
        return 0

    def io_write(self, port: int, size: int, value: int) -> None:
        off = port - self.BASE
        if off == 0:
            self.vector = value & 0xFF
        elif off == 1:
            mode = value & 0xFF
            if mode in (self.ONE_SHOT, self.PERIODIC) and self.count and 32 <= self.vector:
                self.arm(self.vector, self.count, mode == self.PERIODIC)
            else:
                self.stop()
        elif 4 <= off < 12:
            raw = bytearray(self.count.to_bytes(8, "little"))
            raw[off - 4:off - 4 + size] = value.to_bytes(size, "little")[:8 - (off - 4)]
            self.count = int.from_bytes(raw, "little")

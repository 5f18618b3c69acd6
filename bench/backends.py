"""The simulated processor beside /dev/kvm, on the same guests in the same environment.

    python -m bench.backends [--exits N] [--rounds R]

Both backends get the environment of the differential runner
(kvm/differential.build_env: flat 64-bit paging, GDT, TSS, IDT) and the same guest
bytes, at CPL0 and at CPL3 (IOPL 0; ports below 0x20 are open through the TSS
I/O bit map).  Measured in this run, the simulator and KVM alternating:

1. Exit round trip from Python: a guest looping on `out 0x10, eax`; the time from
   calling run() to holding the exit's port and data, per exit, median and 90th
   percentile over N exits (default 20,000), in interleaved batches of 500.
   KVM: KvmMachine.run() -> IoExit (.port, .value).  Simulator: an intercept client
   answering STOP on IO, Machine.run() -> Stop(EVENT) (.event.port, .event.value);
   the next run() executes the OUT and goes on.
2. Guest throughput in instructions per second: a register loop (`dec rcx; jnz`)
   and a memory loop (`add [rsi], rcx; dec rcx; jnz`), each the best of R rounds
   (default 3).  On PVM hosts KVM runs CPL3 code natively and interprets CPL0 code
   in its instruction emulator (../shared/notes/kvm.md), which the figures show.

The ratio column is simulator / KVM for rates and KVM / simulator for times, so
that above 1 always means "the simulator is faster".  Exit status 2 with one line
when /dev/kvm is missing or refuses.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

from vmxlab.errors import BadInput
from vmxlab.guests.asm import asm
from vmxlab.kvm import differential as D
from vmxlab.kvm import flat
from vmxlab.machine import Action, Kind, StopReason

OUT_LOOP = "xor ebx, ebx\ntop: mov eax, ebx\nout 0x10, eax\ninc ebx\njmp top"
# iterations per backend and CPL for the throughput loops (KVM's CPL0 emulator is slow)
ITERATIONS = {("sim", 0): 50_000_000, ("sim", 3): 50_000_000, ("kvm", 0): 300_000, ("kvm", 3): 500_000_000}


def reg_loop(n: int) -> str:
    return f"mov rcx, {n}\ntop: dec rcx\njnz top\nout 0x10, al\nhlt"           # 2n + 1 instructions


def mem_loop(n: int) -> str:
    return (f"mov rcx, {n}\nmov rsi, {flat.DATA:#x}\n"
            "top: add qword ptr [rsi], rcx\ndec rcx\njnz top\nout 0x10, al\nhlt")  # 3n + 2


def _state(cpl: int) -> dict:
    st = flat.state(cpl=cpl, rsp=0x6F800 if cpl == 3 else 0x7F800, rflags=0x202 if cpl == 3 else 0x2)
    st.update({"GUEST_ACTIVITY_STATE": 0, "GUEST_INTERRUPTIBILITY_INFO": 0})
    return st


class _Backend:
    code_len = 0

    def _load_program(self, source: str, cpl: int) -> None:
        """The program at flat.CODE (over the previous one), a zeroed data page, the state."""
        code = asm(source, flat.CODE).code
        self.m.phys_write(flat.CODE, code.ljust(self.code_len, b"\0"))
        self.code_len = len(code)
        self.m.phys_write(flat.DATA, bytes(4096))
        self.m.set_state(_state(cpl))


class Sim(_Backend):
    name = "sim"

    def __init__(self):
        from vmxlab.machine import Machine
        self.m = Machine(None, D.RAM)
        D.build_env(self.m)
        self.m.client = lambda m, ev: Action.STOP

    def load(self, source: str, cpl: int, intercept_io: bool) -> None:
        self._load_program(source, cpl)
        self.m.flush_tlb()
        self.m.intercept(*((Kind.IO,) if intercept_io else ()))

    def exit(self) -> tuple[int, int]:
        st = self.m.run()
        ev = st.event
        return ev.port, ev.value

    def run_to_end(self) -> None:
        st = self.m.run(time_budget=600)
        if st.reason != StopReason.HALTED:
            raise RuntimeError(f"the simulator's loop ended with {st}")

    def close(self) -> None:
        pass


class Kvm(_Backend):
    name = "kvm"

    def __init__(self):
        from vmxlab.kvm import KvmMachine
        self.m = KvmMachine(D.RAM, timeout=600)
        D.build_env(self.m)

    def load(self, source: str, cpl: int, intercept_io: bool) -> None:
        self._load_program(source, cpl)

    def exit(self) -> tuple[int, int]:
        e = self.m.run()
        return e.port, e.value

    def run_to_end(self) -> None:
        e = self.m.run()
        if getattr(e, "port", None) != 0x10:
            raise RuntimeError(f"KVM's loop ended with {e.describe()}")

    def close(self) -> None:
        self.m.close()


def _pct(ns: list[int]) -> tuple[float, float]:
    ns = sorted(ns)
    return statistics.median(ns) / 1000, ns[len(ns) * 9 // 10] / 1000


def exit_round_trips(backends, cpl: int, n: int, batch: int = 500) -> dict:
    clock = time.perf_counter_ns
    times = {b.name: [] for b in backends}
    for b in backends:
        b.load(OUT_LOOP, cpl, True)
        for _ in range(200):                      # warm up: translation, site scans, caches
            b.exit()
    expected = {b.name: 200 for b in backends}
    for done in range(0, n, batch):
        for b in backends:
            exit_, t = b.exit, times[b.name]
            for _ in range(min(batch, n - done)):
                t0 = clock()
                port, value = exit_()
                t.append(clock() - t0)
            if port != 0x10 or value != expected[b.name] + min(batch, n - done) - 1:
                raise RuntimeError(f"{b.name}: OUT loop out of step (port {port:#x}, value {value})")
            expected[b.name] += min(batch, n - done)
    return {name: _pct(t) for name, t in times.items()}


def throughput(backend, kind: str, cpl: int, rounds: int) -> float:
    n = ITERATIONS[(backend.name, cpl)]
    source, insns = (reg_loop(n), 2 * n + 1) if kind == "reg" else (mem_loop(n), 3 * n + 2)
    best = None
    for _ in range(rounds):
        backend.load(source, cpl, False)
        t0 = time.perf_counter()
        backend.run_to_end()
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    return insns / best


def measure(exits: int, rounds: int) -> dict:
    sim, kvm = Sim(), Kvm()
    try:
        out = {}
        for cpl in (0, 3):
            out[("exit", cpl)] = exit_round_trips((sim, kvm), cpl, exits)
        for kind in ("reg", "mem"):
            for cpl in (3, 0):
                out[(kind, cpl)] = {b.name: throughput(b, kind, cpl, rounds) for b in (sim, kvm)}
        return out
    finally:
        kvm.close()


def table(r: dict, exits: int) -> str:
    lines = [f"{'':44} {'simulator':>14} {'KVM':>14} {'sim vs KVM':>11}"]
    for cpl in (0, 3):
        s, k = r[("exit", cpl)]["sim"], r[("exit", cpl)]["kvm"]
        lines.append(f"{f'I/O exit round trip, CPL{cpl} (us, median)':44} {s[0]:>14.2f} {k[0]:>14.2f} "
                     f"{k[0] / s[0]:>10.2f}x")
        lines.append(f"{f'  90th percentile':44} {s[1]:>14.2f} {k[1]:>14.2f} {k[1] / s[1]:>10.2f}x")
    for kind, what in (("reg", "register loop"), ("mem", "memory loop")):
        for cpl in (3, 0):
            s, k = r[(kind, cpl)]["sim"], r[(kind, cpl)]["kvm"]
            lines.append(f"{f'{what}, CPL{cpl} (instructions/s)':44} {s:>14.3g} {k:>14.3g} {s / k:>10.3g}x")
    lines.append(f"({exits:,} exits per backend and CPL; ratio > 1: the simulator is faster)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.backends", description=__doc__.split("\n\n")[0])
    ap.add_argument("--exits", type=int, default=20_000, help="I/O exits to time per backend and CPL")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of each throughput loop (best kept)")
    args = ap.parse_args(argv)
    if not 1000 <= args.exits < 2 ** 31 or not 1 <= args.rounds <= 100:
        print(f"{ap.prog}: error: --exits must be at least 1000 and --rounds 1..100", file=sys.stderr)
        return 2
    try:
        r = measure(args.exits, args.rounds)
    except BadInput as e:
        print(f"{ap.prog}: error: {e}", file=sys.stderr)
        return 2
    print("The simulated processor beside /dev/kvm (same guests, same environment)")
    print(table(r, args.exits))
    return 0


if __name__ == "__main__":
    sys.exit(main())

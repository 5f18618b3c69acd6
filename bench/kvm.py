"""/dev/kvm from Python: the exit round trip and guest throughput.

    python -m bench.kvm [--exits N] [--cpl0-iterations N] [--cpl3-iterations N]

1. Exit round trip of a CPL0 guest that loops on `out 0x10, eax`: the time from
   entering run() to having the exit's port and data in Python, per exit, over N
   exits (default 100,000), as median, 90th and 99th percentile; measured three
   ways, in interleaved batches of 1000 (the host's speed drifts):
   - raw:        fcntl.ioctl(KVM_RUN) and struct.unpack of port and data from kvm_run
                 (the floor of any Python KVM backend on this host);
   - KvmMachine: run() -> IoExit, reading .port and .value (what a handler sees);
   - with qualification: also .qualification, decoded from the guest's code as a VMX
                 exit needs it (N/10 exits).
   These are the reference figures for the simulator's exit path: its Python-handler
   round trip should be no slower than the KvmMachine figure.
2. Guest throughput in a `dec rcx; jnz` loop: instructions per second at CPL3 (runs
   natively here) and at CPL0 (KVM's instruction emulator on PVM hosts).

Exit status 2 with one line when /dev/kvm is missing or refuses.
"""
from __future__ import annotations

import argparse
import fcntl
import statistics
import struct
import sys
import time

from vmxlab.errors import BadInput
from vmxlab.kvm import abi, flat

# xor ebx, ebx / top: mov eax, ebx / out 0x10, eax / inc ebx / jmp top
OUT_LOOP = bytes.fromhex("31db" "89d8" "e710" "ffc3" "ebf8")


def count_loop(n: int) -> bytes:
    """mov rcx, n / top: dec rcx / jnz top / out 0x10, al / hlt  (2n + 1 instructions
    before the OUT)."""
    return bytes.fromhex("48c7c1") + struct.pack("<i", n) + bytes.fromhex("48ffc9" "75fb" "e610" "f4")


def _percentiles(ns: list[int]) -> tuple[float, float, float]:
    ns.sort()
    return statistics.median(ns) / 1000, ns[len(ns) * 9 // 10] / 1000, ns[len(ns) * 99 // 100] / 1000


def exit_round_trips(n: int, batch: int = 1000) -> dict[str, tuple[int, tuple[float, float, float]]]:
    """The three round trips, measured in interleaved batches (raw, KvmMachine, with
    qualification at a tenth of the count) so that drift in the host's speed falls on
    all three alike.  Each on its own machine running OUT_LOOP."""
    raw_m, full_m, qual_m = flat.machine(OUT_LOOP), flat.machine(OUT_LOOP), flat.machine(OUT_LOOP)
    with raw_m, full_m, qual_m:
        fd, mm = raw_m._fd, raw_m._mm          # the floor: no backend code at all
        unpack, ioctl, clock = struct.unpack_from, fcntl.ioctl, time.perf_counter_ns
        run, qrun = full_m.run, qual_m.run
        for _ in range(1000):
            ioctl(fd, abi.KVM_RUN, 0)
            run()
            qrun()
        raw, full, qual = [], [], []
        q = 0
        for done in range(0, n, batch):
            k = min(batch, n - done)
            for _ in range(k):
                t0 = clock()
                ioctl(fd, abi.KVM_RUN, 0)
                port, = unpack("<H", mm, abi.RUN_IO_PORT)
                offset, = unpack("<Q", mm, abi.RUN_IO_DATA_OFFSET)
                value, = unpack("<I", mm, offset)
                raw.append(clock() - t0)
            assert port == 0x10 and value == 1000 + len(raw) - 1, (port, value)
            for _ in range(k):
                t0 = clock()
                e = run()
                port, value = e.port, e.value
                full.append(clock() - t0)
            assert port == 0x10 and value == 1000 + len(full) - 1, (port, value)
            for _ in range(max(k // 10, 1)):
                t0 = clock()
                e = qrun()
                port, value, q = e.port, e.value, e.qualification
                qual.append(clock() - t0)
            assert q == 0x00100043, hex(q)     # OUT imm8 (bit 6), 4 bytes (bits 2:0 = 3), port 0x10
    return {"raw": (len(raw), _percentiles(raw)), "full": (len(full), _percentiles(full)),
            "qual": (len(qual), _percentiles(qual))}


def throughput(cpl: int, iterations: int) -> tuple[float, float]:
    m = flat.machine(count_loop(iterations), cpl=cpl)
    with m:
        t0 = time.perf_counter()
        e = m.run(timeout=600)
        seconds = time.perf_counter() - t0
        if getattr(e, "port", None) != 0x10:
            raise RuntimeError(f"the CPL{cpl} loop ended with {e.describe()}")
        if m.get_state()["RCX"] != 0:
            raise RuntimeError(f"the CPL{cpl} loop stopped early")
    return (2 * iterations + 1) / seconds, seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.kvm", description=__doc__.split("\n\n")[0])
    ap.add_argument("--exits", type=int, default=100_000, help="OUT exits to time (default 100000)")
    ap.add_argument("--cpl0-iterations", type=int, default=1_000_000, help="CPL0 loop iterations (default 1e6)")
    ap.add_argument("--cpl3-iterations", type=int, default=1_000_000_000, help="CPL3 loop iterations (default 1e9)")
    args = ap.parse_args(argv)
    for name in ("exits", "cpl0_iterations", "cpl3_iterations"):
        value = getattr(args, name)
        if not 10 <= value < 2 ** 31:
            print(f"{ap.prog}: error: --{name.replace('_', '-')} {value} is not in 10..2**31-1", file=sys.stderr)
            return 2
    try:
        trips = exit_round_trips(args.exits)
        ips3, s3 = throughput(3, args.cpl3_iterations)
        ips0, s0 = throughput(0, args.cpl0_iterations)
    except BadInput as e:
        print(f"{ap.prog}: error: {e}", file=sys.stderr)
        return 2
    print("KVM exit round trip, CPL0 `out 0x10, eax` handled in Python (microseconds per exit)")
    print(f"  {'':34} {'exits':>8} {'median':>8} {'p90':>8} {'p99':>8}")
    for label, key in (("raw ioctl + unpack", "raw"), ("KvmMachine.run() -> port, value", "full"),
                       ("  + VMX qualification", "qual")):
        n, (med, p90, p99) = trips[key]
        print(f"  {label:34} {n:>8} {med:>8.2f} {p90:>8.2f} {p99:>8.2f}")
    print("Guest throughput, `dec rcx; jnz` loop")
    print(f"  CPL3 (native):   {ips3:.3g} instructions/s  ({2 * args.cpl3_iterations + 1:.3g} in {s3:.2f} s)")
    print(f"  CPL0 (emulated): {ips0:.3g} instructions/s  ({2 * args.cpl0_iterations + 1:.3g} in {s0:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

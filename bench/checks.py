"""Full VM-entry checks per second: every rule evaluated (all=True) on the
template VMCS (long mode), per shipped profile.

    python -m bench.checks [--seconds S] [--cpu PROFILE]
"""
from __future__ import annotations

import argparse
import time

from vmxlab import caps
from vmxlab.checks import RULES, check
from vmxlab.checks.template import build


def measure(profile_name: str, seconds: float) -> tuple[float, int]:
    p = caps.load(profile_name)
    doc = build(p)
    vmcs, memory = doc.vmcs, doc.read_memory
    assert check(vmcs, p, memory, all=True).ok
    n, batch = 0, 200
    start = time.perf_counter()
    while True:
        for _ in range(batch):
            check(vmcs, p, memory, all=True)
        n += batch
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n / elapsed, n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.checks")
    ap.add_argument("--seconds", type=float, default=2.0, help="time per profile")
    ap.add_argument("--cpu", action="append", help="profile (repeatable; default: every shipped profile)")
    args = ap.parse_args(argv)
    print(f"full VM-entry checks (all=True, {len(RULES)} rules) on the long-mode template")
    for name in args.cpu or caps.shipped():
        rate, n = measure(name, args.seconds)
        print(f"  {name:<18} {rate:>10,.0f} checks/s  ({n} checks, {1e6 / rate:.1f} us each)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

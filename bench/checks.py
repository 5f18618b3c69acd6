"""Full VM-entry checks per second: every rule evaluated (all=True, no early exit)
on the template VMCS (long mode), per shipped profile.

    python -m bench.checks [--rounds N] [--cpu PROFILE]

Each profile is measured in N rounds of about 0.3 s; the best round is the figure
(as timeit recommends: slower rounds measure other load on the machine), the
median is shown beside it.
"""
from __future__ import annotations

import argparse
import statistics
import time

from vmxlab import caps
from vmxlab.checks import RULES, check
from vmxlab.checks.template import build


def measure(profile_name: str, rounds: int, round_seconds: float = 0.3) -> tuple[float, float]:
    p = caps.load(profile_name)
    doc = build(p)
    vmcs, memory = doc.vmcs, doc.read_memory
    assert check(vmcs, p, memory, all=True).ok
    rates = []
    for _ in range(rounds):
        n = 0
        start = time.perf_counter()
        while True:
            for _ in range(100):
                check(vmcs, p, memory, all=True)
            n += 100
            elapsed = time.perf_counter() - start
            if elapsed >= round_seconds:
                break
        rates.append(n / elapsed)
    return max(rates), statistics.median(rates)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.checks")
    ap.add_argument("--rounds", type=int, default=7, help="rounds per profile (default 7)")
    ap.add_argument("--cpu", action="append", help="profile (repeatable; default: every shipped profile)")
    args = ap.parse_args(argv)
    print(f"full VM-entry checks (all=True, {len(RULES)} rules) on the long-mode template, "
          f"best of {args.rounds} rounds (median)")
    for name in args.cpu or caps.shipped():
        best, median = measure(name, args.rounds)
        print(f"  {name:<18} {best:>8,.0f} checks/s  ({1e6 / best:.1f} us each; median {median:,.0f}/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

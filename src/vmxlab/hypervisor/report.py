"""The demo's report: text for people, one JSON document for tools."""
from __future__ import annotations

from ..arch import fields as F
from ..arch.instruction_errors import ERRORS
from ..caps.describe import format_adjustment
from .bluepill import DemoResult
from .seed_setup import DEVIATIONS, STEPS



def _deviations(r) -> list[str]:
    """The deviation marks (D1..D5) the writes carry ("D2, D5": two)."""
    return sorted({d for w in r.writes if w.deviation for d in w.deviation.split(", ")})

def _hex(field: str, value: int) -> str:
    f = F.by_name(field)
    digits = {"16": 4, "32": 8}.get(f.width, 16)
    return f"{value:#0{digits + 2}x}"


def text(r: DemoResult, trace: bool = False) -> str:
    out: list[str] = []
    mode = "the seed as written (--seed-literal)" if r.literal else "the seed with its mistakes fixed"
    out.append(f"vmxlab demo: the seed's hypervisor blue-pills the built-in kernel -- {mode}, profile {r.profile}")
    out.append("")
    out.append("(a) VMCS setup, in the seed's step order (every value read from the running processor)")
    step = None
    for w in r.writes:
        if w.step != step:
            step = w.step
            out.append(f"  step {step:2d}: {STEPS[step]}")
        mark = f"  [{w.deviation}]" if w.deviation else ""
        fail = f"  ** {w.failed}" if w.failed else ""
        out.append(f"    {w.field:<30} {_hex(w.field, w.value):<20} {w.source}{mark}{fail}")
    if r.literal:
        out.append("  (literal: the seed's mistakes are reproduced)")
    else:
        used = _deviations(r)
        out.append("  deviations from the seed:")
        out.extend(f"    {d}: {DEVIATIONS[d]}" for d in used)
    out.append("")
    out.append("(b) the seed's controls adjusted through the capability MSRs")
    for a in r.adjustments:
        out.extend("  " + line for line in format_adjustment(a))
    if r.literal:
        out.append("  (literal: PIN_BASED_VM_EXEC_CONTROL is written as 0, not adjusted)")
    out.append("")
    out.append("(c) VM-entry checks on the VMCS before VMLAUNCH")
    if r.check is None:
        out.append(f"  not reached: {r.outcome}: {r.report}")
    elif r.check.outcome == "success":
        out.append(f"  VM entry succeeds: every check passes")
    else:
        out.append(f"  {_outcome(r.check)}")
        for v in r.check.violations:
            value = "" if v.value is None else f" = {v.value:#x}"
            out.append(f"    {v.id}  [{v.section}]")
            out.append(f"      {v.field}{value}: {v.message}")
            if r.seed_lines.get(v.id):
                out.append(f"      seed: {r.seed_lines[v.id]}")
    out.append("")
    out.append("(d) VMLAUNCH")
    if r.launch_error is not None:
        e = ERRORS.get(r.launch_error)
        out.append(f"  VMfailValid({r.launch_error}): {e.name if e else ''} -- what the hardware reports "
                   f"(RFLAGS.ZF = 1, VM-instruction error field = {r.launch_error})")
    else:
        out.append(f"  {r.launch or r.outcome}")
    out.append("")
    out.append("(e) the kernel's console (UART)")
    out.extend(f"  | {line}" for line in r.console.rstrip("\n").splitlines())
    out.append("")
    if r.exits:
        out.append("(f) VM exits by reason")
        for name, n in sorted(r.exits.items(), key=lambda kv: -kv[1]):
            out.append(f"  {name:<22} {n}")
        if trace:
            out.append("  trace:")
            out.extend(f"  {line}" for line in r.trace)
        out.append("")
    out.append("summary")
    if r.exits:
        n = sum(r.exits.values())
        out.append(f"  {n} VM exits in {r.seconds * 1000:.1f} ms of virtualized run ({r.exits_per_second:,.0f} exits/s)")
    out.append(f"  outcome: {r.outcome}" + (f" -- {r.report}" if r.report else ""))
    if r.results and not r.literal:
        res = r.results
        out.append(f"  the kernel saw: hypervisor bit {res['hypervisor_before']}, signature {res['signature']!r}, "
                   f"ping -> {res['ping']:#x}, hypervisor bit after unload {res['hypervisor_after']}")
    return "\n".join(out) + "\n"


def _outcome(check) -> str:
    if check.outcome == "vmfail_valid":
        e = ERRORS.get(check.error)
        return f"VMfailValid {check.error} ({e.name if e else ''}); every violation:"
    if check.outcome == "entry_failure":
        return f"VM-entry failure, exit reason {check.exit_reason}, qualification {check.qualification}; every violation:"
    return check.outcome


def document(r: DemoResult) -> dict:
    return {
        "format": "vmxlab-demo/1",
        "profile": r.profile,
        "mode": "seed-literal" if r.literal else "fixed",
        "setup": [{"step": w.step, "field": w.field, "value": f"{w.value:#x}", "source": w.source, "seed": w.seed,
                   **({"deviation": w.deviation} if w.deviation else {}),
                   **({"failed": w.failed} if w.failed else {})} for w in r.writes],
        "deviations": {d: DEVIATIONS[d] for d in _deviations(r)},
        "adjustments": [{"field": a.field, "wanted": f"{a.wanted:#x}", "value": f"{a.value:#x}", "msr": a.msr,
                         "forced": a.forced, "dropped": a.dropped} for a in r.adjustments],
        "check": r.check.to_dict() if r.check is not None else None,
        "seed_lines": r.seed_lines,
        "launch": r.launch,
        "launch_error": r.launch_error,
        "console": r.console,
        "exits": r.exits,
        "trace": r.trace,
        "seconds": round(r.seconds, 6),
        "exits_per_second": round(r.exits_per_second, 1),
        "outcome": r.outcome,
        "report": r.report,
        "results": r.results,
    }

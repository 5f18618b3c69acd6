"""The rule catalogue: `vmxlab rules` and docs/rules.md, both generated from the registry."""
from __future__ import annotations

from . import registry as REG

_CLASS_TITLES = {
    REG.BASIC: "Basic VM-entry checks (VMfailInvalid, VMfailValid 4, 5, 26)",
    REG.CONTROLS: "Checks on VMX controls (VMfailValid 7)",
    REG.HOST: "Checks on the host-state area and address-space size (VMfailValid 8)",
    REG.GUEST: "Checking guest state (VM-entry failure, exit reason 33)",
    REG.MSR_LOAD: "Loading MSRs (VM-entry failure, exit reason 34)",
}


def lines() -> list[str]:
    width = max(len(r.id) for r in REG.RULES)
    swidth = max(len(r.section) for r in REG.RULES)
    out = [f"{'rule':<{width}}  {'SDM section':<{swidth}}  outcome"]
    for r in REG.RULES:
        out.append(f"{r.id:<{width}}  {r.section:<{swidth}}  {r.outcome}")
    out.append(f"{len(REG.RULES)} rules")
    return out


def markdown() -> str:
    out = [
        "# VM-entry checks",
        "",
        "Generated from the rule registry (`src/vmxlab/checks/`) by",
        "`python -m vmxlab.checks.catalogue > docs/rules.md`; a test keeps it current.",
        "",
        "Every check of the Intel SDM (Vol. 3C) chapter \"VM Entries\", one rule each, in the",
        "order the processor reports them: the first failing rule gives the outcome.",
        "Sections are the SDM's section titles. \"Reads\" lists the VMCS fields a rule reads;",
        "for a `dump_vmcs` input a rule that needs a field the dump does not print is",
        "reported as not checked.",
        "",
    ]
    for klass in REG.CLASS_ORDER:
        rules = [r for r in REG.RULES if r.klass == klass]
        out += [f"## {_CLASS_TITLES[klass]}", "", f"{len(rules)} rules.", "",
                "| rule | SDM section | outcome | reads | note |", "| --- | --- | --- | --- | --- |"]
        for r in rules:
            reads = ", ".join(r.fields) + (", memory" if r.memory else "")
            note = r.note.replace("|", "\\|")
            out.append(f"| `{r.id}` | {r.section} | {r.outcome} | {reads or '-'} | {note} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    import vmxlab.checks  # noqa: F401  (registers the rules)
    print(markdown(), end="")

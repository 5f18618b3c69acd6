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


# Checks of the SDM chapter that vmxlab does not implement, and why (also in the report).
NOT_IMPLEMENTED = [
    ("Basic VM-Entry Checks", "the current VMCS is a shadow VMCS (VMfailInvalid)",
     "a VMCS document carries no shadow-VMCS indicator"),
    ("Basic VM-Entry Checks", "#UD / #GP / VM exit before the checks (not in VMX operation, CPL > 0, "
     "VMX non-root operation)", "these are not VM-entry outcomes; the simulated processor (vmx/) raises them"),
    ("VM-Execution Control Fields", "Intel PT enabled at VM entry (IA32_RTIT_CTL.TraceEn = 1) requires "
     "'load IA32_RTIT_CTL' = 0", "processor state that check() is not given"),
    ("VM-Execution Control Fields", "IPI virtualization (PID-pointer table, last PID-pointer index), PASID "
     "translation (PASID directory addresses), HLAT prefix size", "the SDM text of these checks was not available "
     "to write them from; no profile shipped supports these controls"),
    ("VM-Exit / VM-Entry / host / guest state", "FRED (load/save FRED controls, FRED MSR fields, CR4.FRED, "
     "injected-event data, nested-exception bit of event injection)", "as above; no profile shipped supports FRED"),
    ("VM-Entry Control Fields, Checks on Guest Non-Register State", "VM entries from SMM (dual-monitor "
     "treatment: executive-VMCS pointer, MSEG)", "vmxlab models a processor outside SMM; the rules for that case "
     "are implemented (entry to SMM and deactivate dual-monitor must be 0, SMI blocking must be 0)"),
]


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
    out += ["\"No current VMCS\" (VMfailInvalid) is not a rule: `check(None, ...)` returns it before any rule runs.", ""]
    for klass in REG.CLASS_ORDER:
        rules = [r for r in REG.RULES if r.klass == klass]
        out += [f"## {_CLASS_TITLES[klass]}", "", f"{len(rules)} rules.", "",
                "| rule | SDM section | outcome | reads | note |", "| --- | --- | --- | --- | --- |"]
        for r in rules:
            reads = ", ".join(r.fields) + (", memory" if r.memory else "")
            note = r.note.replace("|", "\\|")
            out.append(f"| `{r.id}` | {r.section} | {r.outcome} | {reads or '-'} | {note} |")
        out.append("")
    out += ["## Controls without checks of their own", "",
            "The ENCLS- and ENCLV-exiting bitmaps, the XSS-exiting bitmap, the PCONFIG-exiting bitmap, the",
            "TSC offset and multiplier, PLE gap/window and the instruction-timeout window take any value:",
            "the SDM has no VM-entry check on them.  Their enabling controls are covered by the",
            "reserved-bit rules (`ctrl.secondary.allowed0/1`, `ctrl.tertiary.reserved`).", ""]
    out += ["## Not implemented", "", "| SDM section | check | why |", "| --- | --- | --- |"]
    out += [f"| {sec} | {what} | {why} |" for sec, what, why in NOT_IMPLEMENTED]
    out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    import vmxlab.checks  # noqa: F401  (registers the rules)
    print(markdown(), end="")

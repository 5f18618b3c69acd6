"""docs/walkthrough.md stays honest: its links, rule ids, seed steps and field names.

Static checks only (no demo run), so the test is fast:
(a) every relative link points to an existing file inside the repository;
(b) every rule id mentioned exists in the check registry (what `vmxlab rules` lists);
(c) each of the seed's steps 1..16 has its own section, in order;
(d) every VMCS field name quoted resolves through vmxlab.arch.fields.lookup, and every
    other upper-case name in backticks is some fact vmxlab knows (a control bit, an
    MSR, an exit reason, a VM-instruction error, a constant of the hypervisor).
"""
from __future__ import annotations

import re
from pathlib import Path

import vmxlab.checks
from vmxlab.arch import controls as C
from vmxlab.arch import exits as X
from vmxlab.arch import fields as F
from vmxlab.arch import instruction_errors as E
from vmxlab.arch import msrs as M
from vmxlab.hypervisor import bluepill, handlers, seed, seed_setup

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "walkthrough.md"
TEXT = DOC.read_text(encoding="utf-8")

_FENCE = re.compile(r"^```.*?^```[ \t]*$", re.S | re.M)
PROSE = _FENCE.sub("", TEXT)                          # the text without fenced blocks
BLOCKS = "\n".join(m.group(0) for m in _FENCE.finditer(TEXT))
SPANS = re.findall(r"`([^`\n]+)`", PROSE)             # inline code spans

_FILE_SUFFIXES = {"py", "md", "asm", "json", "txt", "s", "toml"}


def _rule_ids(text: str) -> set[str]:
    found = set()
    for m in re.finditer(r"(?<![\w./-])((?:basic|ctrl|host|guest|msr_load)(?:\.\w+)+)(?![\w/-])", text):
        ident = m.group(1)
        if ident.rsplit(".", 1)[1] not in _FILE_SUFFIXES:
            found.add(ident)
    return found


def test_relative_links_point_to_existing_files():
    links = re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", TEXT)
    relative = [t for t in links if not re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", t) and not t.startswith("#")]
    assert len(relative) >= 16, "the walkthrough should link the code of every step"
    bad = []
    for target in relative:
        path = (DOC.parent / target.split("#", 1)[0]).resolve()
        if not path.exists() or ROOT not in path.parents:
            bad.append(target)
    assert not bad, f"links to files that do not exist in the repository: {bad}"


def test_rule_ids_exist_in_the_registry():
    known = {r.id for r in vmxlab.checks.RULES}
    mentioned = _rule_ids(TEXT)
    assert len(mentioned) >= 50, "the walkthrough names the rules that guard each step"
    unknown = sorted(mentioned - known)
    assert not unknown, f"rule ids not in the registry (vmxlab rules): {unknown}"


def test_every_seed_step_has_a_section_in_order():
    steps = [int(n) for n in re.findall(r"^#{2,4} Step (\d+)\b", TEXT, re.M)]
    assert steps == list(range(1, 17))
    assert sorted(seed_setup.STEPS) == steps


def test_every_deviation_is_explained():
    for d in seed_setup.DEVIATIONS:
        assert re.search(rf"Seed mistake, {d}:", TEXT), f"no step explains {d}"
        assert re.search(rf"^\| {d} \|", TEXT, re.M), f"{d} missing from the summary table"


def _field_names() -> set[str]:
    names = set(re.findall(r"(?<![\w])((?:GUEST|HOST)_[A-Z0-9_]+)(?![\w])", TEXT))
    for line in TEXT.splitlines():
        if "**VMCS fields:**" in line:
            names |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", line))
    # the first column of the demo's setup table (inside fenced blocks)
    names |= set(re.findall(r"^ {4}([A-Z][A-Z0-9_]+) +0x[0-9a-f]+ ", BLOCKS, re.M))
    return names


def test_quoted_field_names_resolve():
    names = _field_names()
    assert len(names) >= 60
    unknown = sorted(n for n in names if F.lookup(n) is None)
    assert not unknown, f"not VMCS fields (vmxlab.arch.fields.lookup): {unknown}"


_CONSTANTS = {name for mod in (handlers, seed, seed_setup, bluepill) for name in vars(mod) if name.isupper()}


def _known_name(name: str) -> bool:
    return any((F.lookup(name), C.lookup(name), M.lookup(name), X.lookup(name), E.lookup(name))) \
        or name in _CONSTANTS


def test_upper_case_names_in_backticks_are_known():
    names = {s for s in SPANS if re.fullmatch(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+", s)}
    assert len(names) >= 50
    unknown = sorted(n for n in names if not _known_name(n))
    assert not unknown, f"not a VMCS field, control bit, MSR, exit reason, error or constant: {unknown}"

"""docs/rules.md is the registry's catalogue, regenerated."""
from pathlib import Path

from vmxlab.checks import RULES
from vmxlab.checks.catalogue import markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "rules.md"


def test_docs_rules_md_is_current():
    assert DOC.read_text() == markdown(), \
        "docs/rules.md is stale: run `python -m vmxlab.checks.catalogue > docs/rules.md`"


def test_docs_name_every_rule_with_its_section():
    text = DOC.read_text()
    for r in RULES:
        assert f"| `{r.id}` | {r.section} | {r.outcome} |" in text

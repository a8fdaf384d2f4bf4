"""The README's table of supported operations is the registry's (``gmbound.ops.table``), so it cannot go stale."""
from __future__ import annotations

from pathlib import Path

import pytest

from gmbound.ops import registry, table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_table_equals_the_registry():
    got = table.readme_section(README.read_text())
    assert got == table.operations_table(), "README.md is stale: run `python -m gmbound.ops.table README.md`"


def test_table_lists_every_rule_and_refusal():
    text = table.operations_table()
    for rule in registry.MODULE_RULES:
        assert rule.label in text
    for rule in list(registry.FUNCTION_RULES.values()) + list(registry.METHOD_RULES.values()):
        assert rule.label in text
    for what, why in registry.REFUSED:
        assert what in text and why in text


def test_update_rewrites_only_between_the_markers(tmp_path):
    p = tmp_path / "R.md"
    p.write_text(f"head\n{table.START}\nold\n{table.END}\ntail\n")
    assert table.update_readme(str(p)) is True
    text = p.read_text()
    assert text.startswith("head\n") and text.endswith("tail\n")
    assert table.readme_section(text) == table.operations_table()
    assert table.update_readme(str(p)) is False
    p.write_text("no markers")
    with pytest.raises(ValueError, match="markers"):
        table.update_readme(str(p))

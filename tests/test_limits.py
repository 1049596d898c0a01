"""Every request bound lives in gatehouse.limits, and the README documents each one."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

from gatehouse.limits import LIMITS, Limits

ROOT = Path(__file__).resolve().parent.parent


def documented_fields() -> dict[str, str]:
    """Each Limits field with the docstring written under it in limits.py."""
    tree = ast.parse((ROOT / "src/gatehouse/limits.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Limits")
    docs: dict[str, str] = {}
    for node, after in zip(cls.body, cls.body[1:], strict=False):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)):
            docs[node.target.id] = str(after.value.value)
    return docs


def shown(value: float) -> str:
    """How the README writes a limit's value."""
    if isinstance(value, int):
        return f"{value:,}"
    if value.is_integer() and value >= 1000:
        return f"{value:,.0f}"
    return f"{value:g}"


class TestLimits:
    def test_every_limit_says_what_it_bounds(self) -> None:
        """Each field of Limits carries a docstring (the README's explanation)."""
        names = {f.name for f in dataclasses.fields(Limits)}
        assert names == set(documented_fields())

    def test_the_readme_table_lists_every_limit_with_its_value(self) -> None:
        """The README's Limits table has one row per field, with the value in force."""
        readme = (ROOT / "README.md").read_text()
        rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]+?) \|", readme, re.MULTILINE))
        expected = {f.name: shown(getattr(LIMITS, f.name)) for f in dataclasses.fields(Limits)}
        assert {k: v for k, v in rows.items() if k in expected} == expected

"""``docs/loss.md``'s table names, for every line of the math, the function implementing it in the reference, the
shared C++ header and the Triton helpers: each named function must exist there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ukd.op import reference

REPO = Path(__file__).resolve().parents[2]
COLUMNS = {1: "reference", 2: "csrc/ukd_math.h", 3: "ukd_kernels/math.py"}


def _table() -> list[list[str]]:
    lines = (REPO / "docs/loss.md").read_text().splitlines()
    rows = [line.split("|")[1:-1] for line in lines if line.startswith("| (")]
    assert len(rows) >= 10, "the table of docs/loss.md §5 is missing"
    return rows


def _named(cell: str) -> list[str]:
    """Backticked names of a cell, unless it says (with a leading dash) that the line lives elsewhere."""
    cell = cell.strip()
    return [] if cell.startswith("—") or cell == "autograd" else re.findall(r"`(\w+)`", cell)


@pytest.mark.parametrize("column", sorted(COLUMNS))
def test_every_named_function_exists(column):
    where = COLUMNS[column]
    names = sorted({name for row in _table() for name in _named(row[column])})
    assert names
    if where == "reference":
        missing = [n for n in names if not callable(getattr(reference, n, None))]
    else:
        text = (REPO / where).read_text()
        pattern = r"\b{}\s*\(" if where.endswith(".h") else r"^def {}\("
        missing = [n for n in names if not re.search(pattern.format(n), text, flags=re.M)]
    assert not missing, f"docs/loss.md names functions that {where} does not define: {missing}"

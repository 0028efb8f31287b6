"""Test module basenames stay unique. Since tests/ became a package pytest itself would cope
with two of one name, but a failure's module name, `pytest -k` and the docs' references to a
test file then stop pointing at one file."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_module_basenames_are_unique():
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert [n for n, c in names.items() if c > 1] == []

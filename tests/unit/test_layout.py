"""The test tree stays collectable however it is run: tests/ is a package now, but a test run
with ``--import-mode=importlib`` or from inside a tier directory still breaks on two test
modules with one basename, so they stay unique."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_module_basenames_are_unique():
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert [n for n, c in names.items() if c > 1] == []

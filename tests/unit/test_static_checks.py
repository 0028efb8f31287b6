"""The tree's static checks, run by the test suite so CI enforces them: mypy over tunnelpy/
(settings in pyproject.toml's [tool.mypy]) and ruff over everything.

Both tools come with the `test` extra. Outside CI a missing tool skips; in CI (CI=true) it fails,
because a green run must mean the checks ran."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _tool(module: str) -> list[str]:
    probe = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True)
    if probe.returncode != 0:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{module} is not installed (pip install -e '.[test]')")
        pytest.skip(f"{module} is not installed")
    return [sys.executable, "-m", module]


def test_mypy_is_clean_over_tunnelpy():
    r = subprocess.run(
        [*_tool("mypy"), "--no-incremental", "--cache-dir", os.devnull],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Success: no issues found" in r.stdout


def test_ruff_is_clean():
    r = subprocess.run(
        [*_tool("ruff"), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr

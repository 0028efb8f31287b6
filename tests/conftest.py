"""Shared pytest setup: requirement markers, the `lab` fixture, and a leak check.

Markers (also applied by directory, so a forgotten decorator cannot make a test run unguarded):
  root     needs root and working ``ip netns`` (tests/integration, tests/interop)
  interop  needs wireguard-go and wg (tests/interop)

A test whose requirements are missing is skipped, except with CI=true: there a missing tool or
privilege is a failure, because a CI run that silently skips the network tests proves nothing.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Callable, Generator, Iterator
from functools import cache
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from tests.harness import netns
from tests.harness.netns import Lab
from tunnelpy.io import knobs
from tunnelpy.protocol import aead

# TUNNELPY_TEST_COMPILED=off runs the whole suite on the Python paths: the daemons read the knob
# themselves (Device, workers); engines made by the unit tests learn it here.
aead.enable(not knobs.compiled_forced_off())

TESTS = Path(__file__).resolve().parent
MARKERS = {
    "root": "needs root and network namespaces",
    "interop": "needs wireguard-go and wg",
}
_LABS_KEY = pytest.StashKey[list[Lab]]()


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _sigterm(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM/SIGHUP (CI cancel, `timeout`) into the same unwinding as Ctrl-C, so fixtures
    # tear their namespaces down instead of the interpreter dying mid-test.
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    known = {line.split(":")[0].strip() for line in config.getini("markers")}
    for name, doc in MARKERS.items():
        if name not in known:
            config.addinivalue_line("markers", f"{name}: {doc}")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _sigterm)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.path)).resolve()
        top = path.relative_to(TESTS).parts[0] if path.is_relative_to(TESTS) else ""
        if top in ("integration", "interop"):
            item.add_marker(pytest.mark.root)
        if top == "interop":
            item.add_marker(pytest.mark.interop)


# ------------------------------------------------------------------------- requirements --


@cache
def root_problem() -> str | None:
    """Why namespace tests cannot run here, or None. Probes by creating a namespace."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "ping"):
        if shutil.which(tool) is None:
            return f"needs {tool} (iproute2, iputils-ping)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    probe = f"{netns.NS_PREFIX}probe-{secrets.token_hex(3)}"
    netns.REGISTRY.netns.add(probe)
    res = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    if res.returncode != 0:
        return f"`ip netns add` does not work here: {res.stderr.strip()}"
    return None


@cache
def interop_problem() -> str | None:
    missing = [t for t in ("wireguard-go", "wg") if shutil.which(t) is None]
    return f"needs {' and '.join(missing)} (wireguard-go, wireguard-tools)" if missing else None


def _require(problem: str | None) -> None:
    if problem is None:
        return
    if in_ci():
        pytest.fail(f"CI=true and requirement missing: {problem}", pytrace=False)
    pytest.skip(problem)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") or item.get_closest_marker("interop"):
        _require(root_problem())
    if item.get_closest_marker("interop"):
        _require(interop_problem())


# ------------------------------------------------------------------------------ fixtures --


@pytest.fixture
def make_lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[int], Lab]]:
    """Factory: `make_lab(n)` returns an entered Lab with n namespaces, closed after the test."""
    _require(root_problem())
    labs = request.node.stash.setdefault(_LABS_KEY, [])
    mine: list[Lab] = []

    def make(n: int = 2) -> Lab:
        lab = Lab(n, workdir=tmp_path / f"lab{len(mine)}")
        lab.__enter__()
        mine.append(lab)
        labs.append(lab)
        return lab

    yield make
    errors = []
    for lab in reversed(mine):
        try:
            lab.close()
        except netns.LabError as e:
            errors.append(str(e))
    if errors:
        pytest.fail("; ".join(errors), pytrace=False)


@pytest.fixture
def lab(make_lab: Callable[[int], Lab]) -> Lab:
    """A Lab with two namespaces (``lab.ns[0]``, ``lab.ns[1]``); logs live in tmp_path."""
    return make_lab(2)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    # While the test's lab still exists (before teardown), attach daemon logs, addresses, routes
    # and `wg show` to the failure report: that is what explains a tunnel that never came up.
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.failed and call.when == "call":
        for lab in item.stash.get(_LABS_KEY, []):
            report.sections.append((f"lab {lab.tag} diagnostics", lab.diagnostics()))


@pytest.fixture(scope="session", autouse=True)
def _no_leaks() -> Iterator[None]:
    """After the whole session: nothing this run created may survive (fails the run loudly).

    Only our own names are checked: other jobs on the machine may have `tp-*` namespaces of
    their own at the same moment.
    """
    yield
    if shutil.which("ip") is None or os.geteuid() != 0:
        return
    leaked = netns.leaks()
    if leaked:
        netns.close_all_labs()  # leave the machine clean even though we fail
        pytest.fail("test run leaked: " + ", ".join(leaked), pytrace=False)

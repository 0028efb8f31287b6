"""Boot a VM with a full kernel and run tests/vm/guest in it (VLAN, IPVLAN, bond, team).

The tooling (see shared VMLANE.md and the VM block of .ci/run): qemu-system-x86, a Debian
``linux-image-amd64`` kernel in /boot, virtme-ng (``vng``) and a static busybox. When any of it
is missing the test is skipped with the reason, even under CI=true: the tier is optional
tooling, and .ci/run prints the same reason. Knobs (environment): TUNNELPY_VM_KERNEL (a vmlinuz),
TUNNELPY_VM_BUSYBOX (a static busybox), TUNNELPY_VM_TIMEOUT (seconds, default 1500).

Everything runs in one boot (about 15 s) because Python in the guest is 6-40x slower than on
the host (no KVM here: TCG software emulation). The guest writes its junit file into a --rwdir
under this test's tmp_path; failures are reported with the guest's output.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BUSYBOX = "/var/cache/tunnelpy-vm/bbs/bin/busybox"


def _kernel() -> str | None:
    if os.environ.get("TUNNELPY_VM_KERNEL"):
        return os.environ["TUNNELPY_VM_KERNEL"]
    found = glob.glob("/boot/vmlinuz-*-amd64")

    def version(path: str) -> list[int]:
        return [int(x) for x in re.findall(r"\d+", path)]

    return max(found, key=version) if found else None


def tooling_problem() -> str | None:
    """Why the VM tier cannot run here, or None."""
    if os.geteuid() != 0:
        return "the VM tier needs root"
    for tool, package in (("qemu-system-x86_64", "qemu-system-x86"), ("vng", "virtme-ng (pip)")):
        if shutil.which(tool) is None:
            return f"the VM tier needs {tool} ({package}); see .ci/run's VM block"
    kernel = _kernel()
    if kernel is None or not os.path.exists(kernel):
        return "the VM tier needs a kernel: apt-get install linux-image-amd64 (none in /boot)"
    busybox = os.environ.get("TUNNELPY_VM_BUSYBOX", DEFAULT_BUSYBOX)
    if not os.access(busybox, os.X_OK):
        return f"the VM tier needs a static busybox at {busybox} (from busybox-static)"
    return None


def test_vm_tier(tmp_path: Path) -> None:
    problem = tooling_problem()
    if problem:
        pytest.skip(problem)
    results = tmp_path / "results"
    results.mkdir()
    kernel = _kernel()
    assert kernel is not None
    busybox = os.environ.get("TUNNELPY_VM_BUSYBOX", DEFAULT_BUSYBOX)
    timeout = float(os.environ.get("TUNNELPY_VM_TIMEOUT", "1500"))
    inner = (
        f"env TUNNELPY_IN_VM=1 CI={os.environ.get('CI', '')} PYTHONDONTWRITEBYTECODE=1 "
        f"{sys.executable} -m pytest -q -p no:cacheprovider -rs "
        f"--junitxml={results}/junit.xml tests/vm/guest"
    )
    argv = [
        "vng", "--disable-kvm", "--force-9p", "--busybox", busybox, "--run", kernel,
        "-p", "2", "-m", "1G", "--rwdir", str(results), "--cwd", str(REPO), "--exec", inner,
    ]  # fmt: skip
    started = time.monotonic()
    try:
        res = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as e:
        out = (
            (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout
        )
        pytest.fail(f"the VM tier did not finish within {timeout:g} s:\n{(out or '')[-4000:]}")
    elapsed = time.monotonic() - started
    output = f"{res.stdout}\n{res.stderr}"[-8000:]
    junit = results / "junit.xml"
    assert junit.exists(), f"vng exited {res.returncode} without a junit file:\n{output}"
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")  # type: ignore[assignment]
    assert suite is not None
    counts = {k: int(suite.get(k, "0")) for k in ("tests", "failures", "errors", "skipped")}
    print(f"VM tier ({Path(kernel).name}, {elapsed:.0f} s): {counts}")
    for case in suite.iter("testcase"):
        outcome, why = "passed", ""
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                outcome, why = tag, (found.get("message") or "")[:200]
        took = float(case.get("time") or 0)
        print(f"  {outcome:8} {took:5.1f} s {case.get('name')}" + (f": {why}" if why else ""))
        for prop in case.iter("property"):  # a guest test's record_property(), e.g. its phases
            print(f"{'':19}{prop.get('name')}: {prop.get('value')}")
    assert res.returncode == 0 and counts["failures"] == counts["errors"] == 0, output
    assert counts["tests"] - counts["skipped"] >= 4, f"the guest ran too few tests: {counts}"

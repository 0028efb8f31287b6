"""Packaging as a user meets it: from a clean `git archive` export of HEAD, `python -m build`
makes the sdist and then the wheel *from that sdist* (so the sdist must hold everything the
build needs). Each is installed into a fresh venv (`python3 -m venv`; pip fetches the
dependencies from the package registry) — the sdist with no C compiler (CC=false: the optional
Cython loops are skipped, the install goes on), the wheel with its compiled loops — and then
the installed commands are run: `tunnelpyd --version`, `tunnelpy --version`, `man -l` on the
installed pages and `man -w` through $PATH, and `tunnelpy install-unit` whose unit
`systemd-analyze verify` accepts with the venv's absolute paths.

Slow (two builds, two installs: about a minute), so one test does all of it. It builds what is
committed: uncommitted changes are not in `git archive HEAD`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tunnelpy.version import version

ROOT = Path(__file__).resolve().parents[2]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def need(ok: bool, why: str) -> None:
    if not ok:
        if in_ci():
            pytest.fail(f"CI=true and {why}")
        pytest.skip(why)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH pointing at this checkout, and none of
    the TUNNELPY_TEST_* knobs a whole test run may be under (TUNNELPY_TEST_COMPILED=off would
    hide the compiled modules this test checks the install built)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("TUNNELPY_TEST_")
    }
    env.update(extra)
    return env


def run(*cmd: str | Path, timeout: float = 600, **kw) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw
    )
    assert res.returncode == 0, (
        f"{' '.join(map(str, cmd))}: {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    )
    return res


def venv_with(tmp: Path, name: str, target: Path, **env: str) -> Path:
    venv = tmp / name
    run(sys.executable, "-m", "venv", venv, env=clean_env())
    run(venv / "bin" / "python", "-m", "pip", "install", "--no-input", target, env=clean_env(**env))
    return venv


def check_installed(venv: Path, tmp: Path) -> None:
    bindir = venv / "bin"
    env = clean_env(PATH=f"{bindir}:/usr/local/bin:/usr/bin:/bin", MANWIDTH="80")
    v = version()
    daemon = run(bindir / "tunnelpyd", "--version", env=env, cwd=tmp)
    assert daemon.stdout.splitlines()[0] == f"tunnelpyd v{v}"
    assert run(bindir / "tunnelpy", "--version", env=env, cwd=tmp).stdout == f"tunnelpy v{v}\n"
    share = venv / "share"
    for page, title in (("man8/tunnelpyd.8", "TUNNELPYD(8)"), ("man8/tunnelpy.8", "TUNNELPY(8)"),
                        ("man5/tunnelpy.conf.5", "TUNNELPY.CONF(5)")):  # fmt: skip
        out = run("man", "-l", share / "man" / page, env=env).stdout
        assert out.startswith(title) and "SYNOPSIS" in out, out[:200]
    # `man tunnelpyd` finds the venv's page through $PATH (man-db maps bin/ to ../share/man)
    assert run("man", "-w", "tunnelpyd", env=env).stdout.strip() == str(
        share / "man/man8/tunnelpyd.8"
    )
    for rel in ("bash-completion/completions/tunnelpy", "doc/tunnelpy/operations.md",
                "doc/tunnelpy/LICENSE", "doc/tunnelpy/examples/site.conf",
                "tunnelpy/systemd/tunnelpyd@.service"):  # fmt: skip
        assert (share / rel).is_file(), rel
    # the unit for this venv: absolute paths that exist, verified by systemd
    units = tmp / f"units-{venv.name}"
    run(bindir / "tunnelpy", "install-unit", "--wg-quick", "--dir", units, env=env, cwd=tmp)
    text = (units / "tunnelpyd@.service").read_text()
    assert f"ExecStart={bindir}/tunnelpyd -c /etc/tunnelpy/%i.conf" in text
    assert f"ExecReload={bindir}/tunnelpy reload %i" in text
    assert f"Documentation=file:{share}/doc/tunnelpy/operations.md" in text
    res = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(units / "tunnelpyd@.service")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0 and not res.stderr.strip(), res.stdout + res.stderr


def test_sdist_and_wheel_from_a_clean_export_install_into_fresh_venvs(tmp_path):
    need((ROOT / ".git").exists() and shutil.which("git") is not None, "not a git checkout")
    need(shutil.which("man") is not None, "man is missing (apt-get install man-db)")
    need(shutil.which("systemd-analyze") is not None, "systemd-analyze is missing (systemd)")
    try:
        import build  # noqa: F401
    except ImportError:
        need(False, "the build package is missing (pip install -e '.[test]')")
    export = tmp_path / "export"
    export.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", "HEAD"], capture_output=True,
        timeout=120, check=True,
    ).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(export)], input=archive, check=True, timeout=120)
    dist = tmp_path / "dist"
    # sdist, then the wheel from the sdist (build's default)
    run(sys.executable, "-m", "build", "--outdir", dist, export, env=clean_env(), cwd=tmp_path)
    (sdist,) = dist.glob("tunnelpy-*.tar.gz")
    (wheel,) = dist.glob("tunnelpy-*.whl")
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    for needed in ("tunnelpy/io/_segments.pyx", "LICENSE", "man/tunnelpyd.8", "completions/tunnelpy",
                   "systemd/tunnelpyd@.service", "conf/site.conf", "docs/operations.md",
                   "tests/conftest.py"):  # fmt: skip
        assert needed in names, needed
    with zipfile.ZipFile(wheel) as z:
        wheel_names = z.namelist()
    assert any(n.startswith("tunnelpy/io/_segments.") and n.endswith(".so") for n in wheel_names)

    # the sdist without a C compiler: the compiled loops are skipped, the install goes on
    plain = venv_with(tmp_path, "venv-sdist", sdist, CC="false")
    check_installed(plain, tmp_path)
    probe = "import tunnelpy.io.accel as a; print(a.join_run is None)"
    assert run(plain / "bin/python", "-c", probe, env=clean_env(), cwd=tmp_path).stdout == "True\n"

    compiled = venv_with(tmp_path, "venv-wheel", wheel)
    check_installed(compiled, tmp_path)
    assert (
        run(compiled / "bin/python", "-c", probe, env=clean_env(), cwd=tmp_path).stdout == "False\n"
    )

"""`tunnelpy install-unit`: the shipped unit with this installation's absolute paths, ProtectHome
relaxed only when the installation lives in a home, nothing written from a drifted template.
(systemd-analyze verify of the result: tests/unit/test_systemd.py, and against a fresh venv:
tests/integration/test_packaging.py.)"""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest

from tunnelpy import unitinstall
from tunnelpy.unitinstall import InstallError

SHIPPED = (Path(__file__).resolve().parents[2] / "systemd" / unitinstall.UNIT).read_text()


def fake_install(root: Path, interpreter: str = "/usr/bin/python3") -> Path:
    bindir = root / "bin"
    bindir.mkdir(parents=True)
    for name in ("tunnelpyd", "tunnelpy"):
        p = bindir / name
        p.write_text(f"#!{interpreter}\nimport sys\n")
        p.chmod(0o755)
    return bindir


def settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            k, v = line.split("=", 1)
            out.setdefault(k, []).append(v)
    return out


@pytest.fixture
def homes(tmp_path, monkeypatch):
    """Pretend tmp_path/home is the only tree ProtectHome hides (the real /root holds this
    machine's interpreter, which would relax every unit)."""
    home = tmp_path / "home"
    monkeypatch.setattr(unitinstall, "HIDDEN_BY_PROTECT_HOME", (str(home),))
    return home


def test_absolute_programs_and_protect_home_kept(tmp_path, homes):
    bindir = fake_install(tmp_path / "opt" / "venv")
    s = settings(unitinstall.render_unit(bindir))
    assert s["ExecStart"] == [f"{bindir}/tunnelpyd -c /etc/tunnelpy/%i.conf"]
    assert s["ExecReload"] == [f"{bindir}/tunnelpy reload %i"]
    assert s["ProtectHome"] == ["yes"]
    # every other line exactly as shipped
    shipped = settings(SHIPPED)
    for key in set(shipped) - {"ExecStart", "ExecReload", "Documentation"}:
        assert s[key] == shipped[key], key


def test_installation_in_a_home_gets_protect_home_read_only(tmp_path, homes):
    bindir = fake_install(homes / "alice" / "venv")
    text = unitinstall.render_unit(bindir)
    assert settings(text)["ProtectHome"] == ["read-only"]
    assert f"the service runs {bindir}/tunnelpyd" in text
    # the venv outside, its interpreter (pyenv) inside a home: still hidden with yes
    pyenv = homes / "bob" / ".pyenv" / "versions" / "3.11" / "bin"
    pyenv.mkdir(parents=True)
    (pyenv / "python3.11").write_text("")
    bindir2 = fake_install(tmp_path / "srv" / "venv", interpreter=str(pyenv / "python3.11"))
    assert settings(unitinstall.render_unit(bindir2))["ProtectHome"] == ["read-only"]


def test_program_dir_is_the_running_scripts_directory(tmp_path, monkeypatch):
    bindir = fake_install(tmp_path / "venv")
    monkeypatch.setattr(sys, "argv", [str(bindir / "tunnelpy"), "install-unit"])
    assert unitinstall.program_dir() == bindir
    # a directory with only one of the two programs is not taken
    (bindir / "tunnelpyd").unlink()
    monkeypatch.setattr(unitinstall.sysconfig, "get_path", lambda *a: str(tmp_path / "none"))
    monkeypatch.setattr(unitinstall.sys, "executable", str(tmp_path / "none" / "python3"))
    monkeypatch.setattr(unitinstall.shutil, "which", lambda name: None)
    with pytest.raises(InstallError, match="not found together"):
        unitinstall.program_dir()


def test_writes_both_files_0644_or_prints(tmp_path, monkeypatch, capsys):
    bindir = fake_install(tmp_path / "venv")
    monkeypatch.setattr(sys, "argv", [str(bindir / "tunnelpy")])
    out = tmp_path / "etc"
    written = unitinstall.install(str(out), wg_quick=True)
    unit = out / unitinstall.UNIT
    dropin = out / unitinstall.DROPIN
    assert written == [str(unit), str(dropin)]
    for p in (unit, dropin):
        assert stat.S_IMODE(p.stat().st_mode) == 0o644
    assert f"WG_QUICK_USERSPACE_IMPLEMENTATION={bindir}/tunnelpyd" in dropin.read_text()
    assert [f.name for f in out.iterdir() if f.name.startswith(".")] == []  # no temp left
    assert unitinstall.install(str(tmp_path / "not-made"), to_stdout=True) == []
    assert f"ExecStart={bindir}/tunnelpyd " in capsys.readouterr().out
    assert not (tmp_path / "not-made").exists()


def test_a_drifted_template_writes_nothing(tmp_path, monkeypatch):
    bindir = fake_install(tmp_path / "venv")
    monkeypatch.setattr(sys, "argv", [str(bindir / "tunnelpy")])
    drifted = SHIPPED.replace("ExecReload=tunnelpy reload %i", "ExecReload=/bin/kill -HUP $MAINPID")
    monkeypatch.setattr(unitinstall, "template", lambda rel: drifted)
    out = tmp_path / "etc"
    with pytest.raises(InstallError, match="ExecReload=tunnelpy"):
        unitinstall.install(str(out))
    assert not out.exists()

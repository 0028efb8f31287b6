"""sd_notify against real AF_UNIX datagram sockets, the watchdog interval, and the unit file."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tunnelpy.io.systemd import Notifier, socket_address, watchdog_interval

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "tunnelpyd@.service"


@pytest.fixture
def listener(tmp_path):
    path = tmp_path / "notify.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(2)
    yield str(path), s
    s.close()


def recv(s: socket.socket) -> list[str]:
    return s.recv(4096).decode().split("\n")


def test_ready_status_watchdog_stopping_over_a_real_socket(listener):
    path, s = listener
    n = Notifier(path)
    assert n.enabled
    assert n.ready("tp0: 2 peers")
    assert recv(s) == ["READY=1", "STATUS=tp0: 2 peers"]
    assert n.status("3 peers, 1 with a handshake")
    assert recv(s) == ["STATUS=3 peers, 1 with a handshake"]
    assert n.watchdog()
    assert recv(s) == ["WATCHDOG=1"]
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.reloading("reloading")
    msg = recv(s)
    assert msg[0] == "RELOADING=1" and msg[2] == "STATUS=reloading"
    usec = int(msg[1].removeprefix("MONOTONIC_USEC="))
    assert before <= usec <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.stopping()
    assert recv(s) == ["STOPPING=1"]
    n.close()


def test_abstract_socket(tmp_path):
    name = f"tunnelpy-test-{os.getpid()}-{time.monotonic_ns()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(b"\0" + name.encode())
    s.settimeout(2)
    try:
        assert socket_address("@" + name) == b"\0" + name.encode()
        assert Notifier("@" + name).ready()
        assert recv(s) == ["READY=1"]
    finally:
        s.close()


def test_environment_and_no_socket(monkeypatch, listener):
    path, s = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert Notifier().watchdog()
    assert recv(s) == ["WATCHDOG=1"]
    monkeypatch.delenv("NOTIFY_SOCKET")
    n = Notifier()
    assert not n.enabled
    assert n.ready() is False  # a no-op outside systemd


def test_unreachable_socket_never_raises(tmp_path):
    n = Notifier(str(tmp_path / "nobody-listens"))
    assert n.ready() is False
    assert n.watchdog() is False


def test_status_is_one_line_and_assignments_are_checked(listener):
    path, s = listener
    n = Notifier(path)
    n.status("line one\nline two")
    assert recv(s) == ["STATUS=line one line two"]
    with pytest.raises(ValueError):
        n.notify("READY=1\nSTATUS=x")
    with pytest.raises(ValueError):
        n.notify("READY")


@pytest.mark.parametrize(
    "env,pid,expected",
    [
        ({"WATCHDOG_USEC": "30000000"}, 10, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "10"}, 10, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "11"}, 10, None),  # someone else's
        ({"WATCHDOG_USEC": "0"}, 10, None),
        ({"WATCHDOG_USEC": "x"}, 10, None),
        ({}, 10, None),
    ],
)
def test_watchdog_interval(env, pid, expected):
    assert watchdog_interval(env, pid) == expected


def test_watchdog_interval_defaults_to_our_pid(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 1.0


# ------------------------------------------------------------------------------ unit file --


def unit_settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            k, v = line.split("=", 1)
            out.setdefault(k, []).append(v)
    return out


def test_unit_file_contents():
    s = unit_settings()
    assert s["Type"] == ["notify"]
    assert s["ExecStart"][0].split()[1:] == ["-c", "/etc/tunnelpy/%i.conf"]
    # tunnelpy reload waits for the answer and exits 1 when the file is refused (SIGHUP can't)
    assert s["ExecReload"] == ["tunnelpy reload %i"]
    assert s["Documentation"] == ["man:tunnelpyd(8) man:tunnelpy.conf(5) man:tunnelpy(8)"]
    assert s["WatchdogSec"]
    assert set(s["RestrictAddressFamilies"][0].split()) == {
        "AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK",
    }  # fmt: skip
    caps = set(s["CapabilityBoundingSet"][0].split())
    assert (
        "CAP_NET_ADMIN" in caps and "CAP_SYS_MODULE" not in caps and "CAP_DAC_OVERRIDE" not in caps
    )
    for key, value in [
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
    ]:
        assert s[key] == [value], key
    # @mount and mnt: ip netns add/del in systemd's mount namespace (docs/topology.md)
    assert s["SystemCallFilter"] == ["@system-service", "@mount"]
    assert set(s["RestrictNamespaces"][0].split()) == {"net", "mnt"}
    assert {"CAP_SYS_ADMIN", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE"} <= caps
    assert "/dev/net/tun rw" in s["DeviceAllow"]
    # above systemd's default soft limit of 1024 (docs/hostile.md, "Metrics endpoint")
    assert int(s["LimitNOFILE"][0]) >= 4096
    removed = s["ExecStopPost"][0].split()
    assert {"/run/wireguard/%i.sock", "/run/tunnelpy/%i.ctl", "/run/tunnelpy/%i.metrics"} <= set(
        removed
    )


def _systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("CI=true and systemd-analyze is missing (apt-get install systemd)")
        pytest.skip("systemd-analyze not installed (Debian package systemd)")
    return tool


def verify(unit: Path, cwd: Path | None = None) -> None:
    res = subprocess.run(
        [_systemd_analyze(), "verify", "--man=no", str(unit)],
        capture_output=True, text=True, timeout=60, cwd=cwd,
    )  # fmt: skip
    assert res.returncode == 0 and not res.stderr.strip(), res.stdout + res.stderr


def test_systemd_analyze_verify_of_the_installed_unit(tmp_path):
    # verify checks that ExecStart's and ExecReload's programs exist; as shipped they are bare
    # names on systemd's fixed search path, which a venv or pyenv install is not on:
    # `tunnelpy install-unit` writes them as absolute paths (tests/integration/test_packaging.py
    # does the same against a fresh venv). Every other line is verified as shipped.
    _systemd_analyze()
    res = subprocess.run(
        [sys.executable, "-m", "tunnelpy", "install-unit", "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    text = (tmp_path / UNIT.name).read_text()
    exe = re.search(r"^ExecStart=(\S+) ", text, re.M)
    assert exe and os.path.isabs(exe[1]) and os.access(exe[1], os.X_OK)
    verify(tmp_path / UNIT.name)


DROPIN = UNIT.parent / "wg-quick@.service.d" / "tunnelpyd.conf"


def test_wg_quick_dropin_names_tunnelpyd():
    env = [
        line.split("=", 1)[1]
        for line in DROPIN.read_text().splitlines()
        if line.startswith("Environment=")
    ]
    assert "WG_QUICK_USERSPACE_IMPLEMENTATION=tunnelpyd" in env
    assert "[Service]" in DROPIN.read_text().splitlines()


def test_wg_quick_dropin_verifies_with_the_unit(tmp_path):
    _systemd_analyze()
    unit = Path("/lib/systemd/system/wg-quick@.service")
    if not unit.exists():
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("CI=true and wireguard-tools' wg-quick@.service is missing")
        pytest.skip("wg-quick@.service not installed")
    (tmp_path / "wg-quick@.service.d").mkdir()
    (tmp_path / "wg-quick@.service.d" / DROPIN.name).write_text(DROPIN.read_text())
    (tmp_path / unit.name).write_text(unit.read_text())
    verify(tmp_path / "wg-quick@wg0.service", cwd=tmp_path)
    # and the drop-in `tunnelpy install-unit --wg-quick` writes, with tunnelpyd's full path
    out = tmp_path / "installed"
    res = subprocess.run(
        [sys.executable, "-m", "tunnelpy", "install-unit", "--wg-quick", "--dir", str(out)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    written = (out / "wg-quick@.service.d" / DROPIN.name).read_text()
    impl = re.search(r"^Environment=WG_QUICK_USERSPACE_IMPLEMENTATION=(\S+)$", written, re.M)
    assert impl and os.path.isabs(impl[1]) and os.access(impl[1], os.X_OK)
    (out / unit.name).write_text(unit.read_text())
    verify(out / "wg-quick@wg0.service", cwd=out)

"""`tunnelpyd IFNAME` (wireguard-go's command line): the empty interface it starts with, the
LOG_LEVEL names, the readiness pipe, and an engine without a private key.

The real thing (a background start that returns only once `wg` can talk to it, wg-quick) is
tested with real processes in tests/integration/test_wg_dropin.py.
"""

from __future__ import annotations

import os

import pytest

from tests.harness.engine_pair import A_IN, B_IN, Net
from tests.harness.packets import ipv4
from tunnelpy import launcher
from tunnelpy.cli import daemon_main
from tunnelpy.protocol.drops import Drop
from tunnelpy.protocol.engine import Engine


def test_interface_starts_empty_like_wireguard_go():
    conf = launcher.interface_config("wg7")
    ic = conf.interface
    assert (ic.name, ic.private_key, ic.public_key, ic.listen_port) == ("wg7", b"", b"", None)
    assert ic.mtu == 1420 and ic.addresses == () and conf.peers == () and conf.path == ""


@pytest.mark.parametrize("name", ["", "a" * 16, "wg/0", "wg 0", ".."])
def test_bad_interface_name_is_one_line(name, capsys):
    assert daemon_main(["-f", name]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tunnelpyd: ")


def test_config_and_ifname_exclude_each_other(capsys):
    assert daemon_main(["-c", "/nonexistent.conf", "wg0"]) == 1
    assert daemon_main([]) == 1
    assert "either -c FILE or an interface name" in capsys.readouterr().err


def test_version(capsys):
    assert daemon_main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("tunnelpyd v")


@pytest.mark.parametrize(
    "value,level",
    [("verbose", "debug"), ("debug", "debug"), ("error", "error"), ("silent", "silent"),
     ("SILENT", "silent"), ("", "error"), ("bogus", "error")],
)  # fmt: skip
def test_log_level_names_of_wireguard_go(value, level):
    assert launcher.log_level({"LOG_LEVEL": value}) == level
    assert launcher.log_level({}) == "error"


def test_foreground_env():
    assert launcher.foreground_from_env({"WG_PROCESS_FOREGROUND": "1"})
    assert not launcher.foreground_from_env({})


def test_readiness_says_ready_once_then_closes():
    r, w = os.pipe()
    ready = launcher.Readiness(w)
    ready.ready()
    ready.failed("ignored: the pipe is closed already")
    assert os.read(r, 100) == launcher.READY
    assert os.read(r, 100) == b""  # EOF: the child let go of the pipe
    os.close(r)


def test_readiness_failure_is_one_bounded_line():
    r, w = os.pipe()
    launcher.Readiness(w).failed("interface wg0\nalready exists" + "x" * 10000)
    data = os.read(r, 100000)
    os.close(r)
    assert data.count(b"\n") == 1 and data.startswith(b"interface wg0 already exists")
    assert len(data) <= 4001


def test_readiness_without_a_pipe_does_nothing(monkeypatch):
    monkeypatch.delenv(launcher.READY_FD_ENV, raising=False)
    ready = launcher.Readiness.from_env()
    assert ready.fd is None
    ready.ready()


# ---------------------------------------------------------------- an engine without a key


def _keyless_b() -> Net:
    n = Net()
    n.b.set_private_key(b"")
    return n


def test_no_key_no_public_key():
    e = Engine(b"", rng=os.urandom, wall=lambda: 1.7e9)
    assert e.public_key == b""


def test_no_initiation_without_a_private_key():
    n = _keyless_b()
    n.send(n.b, [ipv4(B_IN, A_IN)])
    assert n.kinds() == []  # nothing on the wire: B has no identity to handshake with


def test_initiation_to_a_keyless_interface_is_dropped_and_counted():
    n = _keyless_b()
    n.send(n.a, [ipv4(A_IN, B_IN)])
    assert n.kinds() == [1]  # A's initiation, unanswered
    assert n.b.drops[Drop.NO_PRIVATE_KEY] == 1
    assert n.delivered["b"] == []


def test_setting_the_key_later_makes_the_tunnel_work():
    n = _keyless_b()
    n.send(n.a, [ipv4(A_IN, B_IN)])
    n.b.set_private_key(n.key_b)
    n.tick(n.now + 6)  # A retransmits after REKEY_TIMEOUT (5 s + jitter)
    p = ipv4(A_IN, B_IN, b"after")
    n.send(n.a, [p])
    assert p in n.delivered["b"]

"""UDP GSO send and GRO receive over loopback, and the clean fallback when GSO is refused."""

from __future__ import annotations

import errno
import logging
import select
import socket

import pytest

from tunnelpy.io.udp import UdpSocket


@pytest.fixture(autouse=True)
def _offloads_not_forced_off(monkeypatch):
    monkeypatch.delenv("TUNNELPY_TEST_OFFLOAD", raising=False)


def test_testing_knob_forces_offloads_off(monkeypatch):
    monkeypatch.setenv("TUNNELPY_TEST_OFFLOAD", "off")
    s = UdpSocket(0)
    try:
        assert not s.gso and not s.gro
    finally:
        s.close()


def _drain(sock: UdpSocket, want: int, timeout: float = 2.0) -> list[tuple[bytes, tuple]]:
    got: list[tuple[bytes, tuple]] = []
    while len(got) < want:
        if not select.select([sock.fileno()], [], [], timeout)[0]:
            break
        got.extend(sock.recv_batch())
    return got


def test_gso_send_gro_receive_round_trip():
    a, b = UdpSocket(0), UdpSocket(0)
    try:
        datagrams = [bytes([i]) * 1200 for i in range(30)] + [b"tail" * 10]
        datagrams += [b"x" * 300, b"y" * 1200]  # sizes change: a new run
        a.send(("127.0.0.1", b.port), datagrams)
        got = _drain(b, len(datagrams))
        assert [d for d, _ in got] == datagrams
        # (With the local address it arrived at: see test_udp_pktinfo.py.)
        lo = socket.if_nametoindex("lo")
        assert {addr for _, addr in got} == {("127.0.0.1", a.port, ("127.0.0.1", lo))}
        assert a.gso and a.send_errors == 0
    finally:
        a.close()
        b.close()


def test_offload_off_is_one_datagram_per_syscall():
    a, b = UdpSocket(0, offload=False), UdpSocket(0, offload=False)
    try:
        assert not a.gso and not b.gro
        datagrams = [b"%d" % i * 100 for i in range(10)]
        a.send(("127.0.0.1", b.port), datagrams)
        assert [d for d, _ in _drain(b, 10)] == datagrams
    finally:
        a.close()
        b.close()


class _RefusingSocket:
    """Wraps a socket; sendmsg fails like a NIC without checksum offload (EIO)."""

    def __init__(self, sock):
        self._sock = sock
        self.calls = 0

    def sendmsg(self, *args):
        self.calls += 1
        raise OSError(errno.EIO, "Input/output error")

    def __getattr__(self, name):
        return getattr(self._sock, name)


def test_gso_refused_falls_back_once_and_logs_once(caplog):
    a, b = UdpSocket(0), UdpSocket(0)
    real = a.sock
    a.sock = _RefusingSocket(real)  # type: ignore[assignment]
    try:
        with caplog.at_level(logging.WARNING, logger="tunnelpyd"):
            for _ in range(3):
                a.send(("127.0.0.1", b.port), [b"z" * 500] * 5)
        assert a.sock.calls == 1 and not a.gso
        assert sum("GSO refused" in r.message for r in caplog.records) == 1
        assert len(_drain(b, 15)) == 15
    finally:
        a.sock = real
        a.close()
        b.close()

"""UDP GSO send and GRO receive over loopback, and the clean fallback when GSO is refused."""

from __future__ import annotations

import errno
import logging
import select
import socket
import sys

import pytest

from tunnelpy.io import accel, udp
from tunnelpy.io.udp import UdpSocket
from tunnelpy.protocol.actions import Sealed


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


@pytest.mark.parametrize("compiled", [True, False])
def test_gso_send_gro_receive_round_trip(monkeypatch, compiled):
    """Both cuts of a GRO read (the compiled one and udp.py's loop) give the datagrams."""
    if not compiled:
        monkeypatch.setattr(udp, "_cut_datagrams", None)
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


def test_compiled_cut_equals_slices():
    cut = accel.cut_datagrams
    if cut is None:
        pytest.skip("compiled module not built")
    origin = ("127.0.0.1", 1, None)
    for n, size in ((0, 5), (1, 1), (10, 3), (12, 3), (4000, 1200), (4000, 4000), (7, 100)):
        data = bytes(range(256)) * (n // 256) + bytes(range(n % 256))
        out: list = [("before", None)]
        cut(data, size, origin, out)
        want = [(data[at : at + size], origin) for at in range(0, n, size)]
        assert out == [("before", None), *want]
        assert all(type(d) is bytes and o is origin for d, o in out[1:])
    with pytest.raises(ValueError):
        cut(b"abc", 0, origin, [])


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


# ------------------------------------------------------ the compiled seal's contiguous buffer


def sealed(datagrams: list[bytes]) -> Sealed:
    """The datagrams laid out as the compiled seal does (protocol/_aead.pyx): one buffer, runs
    of equal sizes, a shorter datagram ending its run."""
    runs: list[tuple[int, int, int]] = []
    at = i = 0
    while i < len(datagrams):
        size = len(datagrams[i])
        start = at
        at += size
        i += 1
        while i < len(datagrams) and len(datagrams[i]) <= size:
            at += len(datagrams[i])
            i += 1
            if len(datagrams[i - 1]) < size:
                break
        runs.append((start, at, size))
    return Sealed(b"".join(datagrams), runs, len(datagrams))


# Longer than one GSO send (64 segments; 65000 bytes = 44 of 1452), shorter tails, lone ones.
MIXED = (
    [bytes([i]) * 1200 for i in range(100)] + [b"t" * 700]
    + [bytes([i]) * 1452 for i in range(60)] + [b"a" * 1452, b"b" * 96, b"c" * 200, b"d" * 32]
)  # fmt: skip


@pytest.mark.parametrize("offload", [True, False], ids=["gso", "plain"])
def test_a_sealed_buffer_arrives_as_its_datagrams(offload):
    a, b = UdpSocket(0, offload=offload), UdpSocket(0, offload=offload)
    try:
        s = sealed(MIXED)
        assert list(s) == MIXED
        a.send(("127.0.0.1", b.port), s)
        assert [d for d, _ in _drain(b, len(MIXED))] == MIXED
        assert a.send_errors == 0 and a.gso is offload
    finally:
        a.close()
        b.close()


def test_a_sealed_buffer_goes_out_in_gso_sends_of_whole_runs():
    a, b = UdpSocket(0), UdpSocket(0)
    sends: list[tuple[int, int]] = []  # (bytes, segment size or 0) per syscall
    real = a.sock

    class Spy:
        def sendmsg(self, buffers, anc=(), flags=0, address=None):
            seg = [int.from_bytes(d, sys.byteorder) for _, k, d in anc if k == 103]
            sends.append((sum(map(len, buffers)), seg[0] if seg else 0))
            return real.sendmsg(buffers, anc, flags, address)

        def __getattr__(self, name):
            return getattr(real, name)

    a.sock = Spy()  # type: ignore[assignment]
    try:
        a.send(("127.0.0.1", b.port), sealed(MIXED))
        assert [d for d, _ in _drain(b, len(MIXED))] == MIXED
        # At most 64 segments and 65000 bytes a send: 100 x 1200 + 700 in 54 + 47 segments,
        # 61 x 1452 + 96 in 44 + 18, then 200 + 32 (a shorter one ends a run).
        assert sends == [(54 * 1200, 1200), (46 * 1200 + 700, 1200), (44 * 1452, 1452),
                         (17 * 1452 + 96, 1452), (232, 200)]  # fmt: skip
    finally:
        a.sock = real
        a.close()
        b.close()


def test_a_sealed_buffer_falls_back_when_gso_is_refused(caplog):
    a, b = UdpSocket(0), UdpSocket(0)
    real = a.sock
    a.sock = _RefusingSocket(real)  # type: ignore[assignment]
    try:
        with caplog.at_level(logging.WARNING, logger="tunnelpyd"):
            a.send(("127.0.0.1", b.port), sealed(MIXED))
        assert not a.gso and sum("GSO refused" in r.message for r in caplog.records) == 1
        assert [d for d, _ in _drain(b, len(MIXED))] == MIXED
    finally:
        a.sock = real
        a.close()
        b.close()


@pytest.mark.parametrize("offload", [True, False], ids=["gso", "plain"])
def test_a_sealed_buffer_from_a_source_that_is_gone(offload):
    """A sticky source the host does not have: refused at the first send, the whole buffer
    leaves from the kernel's choice, nothing lost or counted as an error."""
    a, b = UdpSocket(0, offload=offload), UdpSocket(0, offload=offload)
    try:
        gone = ("192.0.2.77", 1)
        b.send(("127.0.0.1", a.port, 0, gone), sealed(MIXED))
        assert [d for d, _ in _drain(a, len(MIXED))] == MIXED
        assert b.lost_sources == [gone] and b.send_errors == 0 and b.gso is offload
    finally:
        a.close()
        b.close()

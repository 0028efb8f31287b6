"""Sticky sources in io/udp.py, on loopback: PKTINFO received, sent, refused, and the fallback.

Every address in 127.0.0.0/8 is local on ``lo``, so one host has many IPv4 addresses on one
link without root: a datagram sent to 127.0.0.3 arrives "at" 127.0.0.3, and a reply sent from
it is seen coming from 127.0.0.3, not 127.0.0.1. IPv6 has only ::1 there, which is enough for
the cmsg format and the refusal of an address that is not ours. Real kernel cmsgs throughout;
the namespace test (tests/integration/test_sticky_namespaces.py) does the same between daemons.
"""

from __future__ import annotations

import errno
import select
import socket
import sys

import pytest

from tunnelpy.io.udp import (
    IP_PKTINFO,
    UdpSocket,
    parse_pktinfo,
    pktinfo_cmsg,
)

LO = socket.if_nametoindex("lo")


@pytest.fixture(autouse=True)
def _offloads_not_forced_off(monkeypatch):
    monkeypatch.delenv("TUNNELPY_TEST_OFFLOAD", raising=False)


@pytest.fixture
def pair():
    socks = [UdpSocket(0), UdpSocket(0)]
    yield socks
    for s in socks:
        s.close()


def drain(sock: UdpSocket, want: int, timeout: float = 2.0) -> list[tuple[bytes, tuple]]:
    got: list[tuple[bytes, tuple]] = []
    while len(got) < want:
        if not select.select([sock.fileno()], [], [], timeout)[0]:
            break
        got.extend(sock.recv_batch())
    return got


class CountingSocket:
    """Wraps a socket: counts sendmsg calls that carry a PKTINFO cmsg, and the errors."""

    def __init__(self, sock):
        self._sock = sock
        self.with_src = 0
        self.errors: list[int] = []

    def sendmsg(self, buffers, anc=(), flags=0, address=None):
        if any(kind in (IP_PKTINFO, socket.IPV6_PKTINFO) for _, kind, _ in anc):
            self.with_src += 1
        try:
            return self._sock.sendmsg(buffers, anc, flags, address)
        except OSError as e:
            self.errors.append(e.errno)
            raise

    def __getattr__(self, name):
        return getattr(self._sock, name)


# ------------------------------------------------------------------------------- formats --


def test_parse_pktinfo_formats():
    mapped = bytes(10) + b"\xff\xff" + socket.inet_aton("192.0.2.7")
    assert parse_pktinfo(mapped + (4).to_bytes(4, "little"), True) == ("192.0.2.7", 4)
    v6 = socket.inet_pton(socket.AF_INET6, "2001:db8::7")
    assert parse_pktinfo(v6 + (9).to_bytes(4, "little"), True) == ("2001:db8::7", 9)
    # in_pktinfo: ifindex, spec_dst (the local address), addr (the header's destination)
    v4 = (2).to_bytes(4, "little") + socket.inet_aton("10.1.1.1") + socket.inet_aton("10.1.1.255")
    assert parse_pktinfo(v4, False) == ("10.1.1.1", 2)
    # Not addresses to send from: multicast, broadcast, unspecified; malformed lengths.
    for bad, v6flag in (
        (socket.inet_pton(socket.AF_INET6, "ff02::1") + bytes(4), True),
        (bytes(10) + b"\xff\xff" + socket.inet_aton("224.0.0.1") + bytes(4), True),
        (bytes(10) + b"\xff\xff" + socket.inet_aton("255.255.255.255") + bytes(4), True),
        (bytes(20), True),
        (bytes(4) + socket.inet_aton("239.1.1.1") + bytes(4), False),
        (b"\x01" * 19, True),
        (b"\x01" * 13, False),
        (b"", True),
    ):
        assert parse_pktinfo(bad, v6flag) is None, bad


def test_pktinfo_cmsg_formats():
    level, kind, data = pktinfo_cmsg(("192.0.2.7", 4))
    # IPv4: in_pktinfo with ipi_ifindex 0 (routing chooses the way out), spec_dst the source
    assert (level, kind) == (socket.IPPROTO_IP, IP_PKTINFO)
    assert data == bytes(4) + socket.inet_aton("192.0.2.7") + bytes(4)
    level, kind, data = pktinfo_cmsg(("2001:db8::7", 9))
    assert (level, kind) == (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO)
    assert data == socket.inet_pton(socket.AF_INET6, "2001:db8::7") + bytes(4)
    # A link-local source keeps its interface: the kernel refuses one without.
    _, _, data = pktinfo_cmsg(("fe80::1", 9))
    assert data[16:] == (9).to_bytes(4, sys.byteorder)
    with pytest.raises((ValueError, OSError)):
        pktinfo_cmsg(("not an address", 1))


# ------------------------------------------------------------------------------- receive --


@pytest.mark.parametrize("offload", [True, False], ids=["gro", "plain"])
def test_receive_reports_the_local_address_v4_and_v6(offload):
    a, b = UdpSocket(0, offload=offload), UdpSocket(0, offload=offload)
    try:
        assert b.pktinfo
        for host in ("127.0.0.1", "127.0.0.3", "::1"):
            a.send((host, b.port), [b"x"])
            ((data, origin),) = drain(b, 1)
            sender = "::1" if host == "::1" else "127.0.0.1"  # the kernel's choice at a
            assert (data, origin) == (b"x", (sender, a.port, (host, LO)))
    finally:
        a.close()
        b.close()


def test_what_the_kernel_gives_a_dual_stack_socket_for_ipv4():
    """The assumption udp.py rests on, checked against the kernel: an IPv4 datagram on the
    dual-stack socket with IPV6_RECVPKTINFO carries an IPV6_PKTINFO with the IPv4-mapped local
    address (not IP_PKTINFO)."""
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        s.bind(("::", 0))
        c.sendto(b"q", ("127.0.0.4", s.getsockname()[1]))
        s.settimeout(2)
        _, anc, _, _ = s.recvmsg(100, socket.CMSG_SPACE(20))
        ((level, kind, data),) = anc
        assert (level, kind) == (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO)
        assert data[:16] == bytes(10) + b"\xff\xff" + socket.inet_aton("127.0.0.4")
        assert parse_pktinfo(data, True) == ("127.0.0.4", LO)
    finally:
        s.close()
        c.close()


def test_an_ipv4_socket_parses_ip_pktinfo():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        s.bind(("0.0.0.0", 0))
        c.sendto(b"q", ("127.0.0.5", s.getsockname()[1]))
        s.settimeout(2)
        _, anc, _, _ = s.recvmsg(100, socket.CMSG_SPACE(12))
        ((level, kind, data),) = anc
        assert (level, kind) == (socket.IPPROTO_IP, IP_PKTINFO)
        assert parse_pktinfo(data, False) == ("127.0.0.5", LO)
    finally:
        s.close()
        c.close()


def test_without_pktinfo_origins_stay_host_and_port():
    a, b = UdpSocket(0), UdpSocket(0, pktinfo=False)
    try:
        assert not b.pktinfo
        a.send(("127.0.0.3", b.port), [b"x", b"y"])
        assert {o for _, o in drain(b, 2)} == {("127.0.0.1", a.port)}
    finally:
        a.close()
        b.close()


# ---------------------------------------------------------------------------------- send --


@pytest.mark.parametrize("offload", [True, False], ids=["gso", "plain"])
def test_answers_leave_from_the_address_asked(offload):
    """b has many addresses on one link (lo); a reaches it at 127.0.0.3 and b's answer names
    the local address it was asked at: a sees it come from 127.0.0.3, one datagram or a GSO
    batch, IPv4 and (for the cmsg path) IPv6."""
    a, b = UdpSocket(0, offload=offload), UdpSocket(0, offload=offload)
    try:
        for asked in ("127.0.0.3", "127.0.0.9", "::1"):
            a.send((asked, b.port), [b"hello"])
            ((_, origin),) = drain(b, 1)
            host, port, src = origin
            assert src == (asked, LO)
            replies = [bytes([i]) * 1000 for i in range(8)] + [b"end"]
            b.send((host, port, 0, src), replies[:1])
            b.send((host, port, 0, src), replies[1:])
            got = drain(a, len(replies))
            assert [d for d, _ in got] == replies
            assert {o[:2] for _, o in got} == {(asked, b.port)}
        assert b.send_errors == 0 and b.lost_sources == []
        assert b.gso is offload
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("offload", [True, False], ids=["gso", "plain"])
@pytest.mark.parametrize(
    ("dest", "gone", "kernel_errno"),
    [
        ("127.0.0.1", ("192.0.2.77", 1), errno.ENETUNREACH),
        ("::1", ("2001:db8::77", 1), errno.EINVAL),
    ],
    ids=["v4", "v6"],
)
def test_a_source_that_is_not_ours_falls_back_at_once(offload, dest, gone, kernel_errno):
    """An address the host no longer has (192.0.2.77 never was): the kernel refuses it, the
    same datagrams leave at once from the kernel's choice, nothing is lost or counted as an
    error, the source is reported once, and later sends do not try it again."""
    a, b = UdpSocket(0, offload=offload), UdpSocket(0, offload=offload)
    counting = CountingSocket(b.sock)
    b.sock = counting  # type: ignore[assignment]
    try:
        batch = [bytes([i]) * 700 for i in range(5)]
        b.send((dest, a.port, 0, gone), batch)
        got = drain(a, 5)
        assert [d for d, _ in got] == batch
        assert {o[:2] for _, o in got} == {(dest, b.port)}  # from the kernel's choice
        assert counting.errors == [kernel_errno] and counting.with_src == 1
        assert b.lost_sources == [gone] and b.send_errors == 0
        assert b.gso is offload  # the source's EINVAL is not mistaken for GSO's
        b.send((dest, a.port, 0, gone), [b"again"])  # not tried again until taken
        assert counting.with_src == 1 and [d for d, _ in drain(a, 1)] == [b"again"]
        b.lost_sources.clear()  # (what the data path does after telling the engine)
    finally:
        b.sock = counting._sock
        a.close()
        b.close()


def test_a_source_of_the_other_family_is_not_used(pair):
    a, b = pair
    counting = CountingSocket(b.sock)
    b.sock = counting  # type: ignore[assignment]
    try:
        b.send(("127.0.0.1", a.port, 0, ("::1", LO)), [b"1", b"2"])
        b.send(("::1", a.port, 0, ("127.0.0.1", LO)), [b"3"])
        b.send(("127.0.0.1", a.port, 0, ("bogus", 0)), [b"4"])
        assert sorted(d for d, _ in drain(a, 4)) == [b"1", b"2", b"3", b"4"]
        assert counting.with_src == 0 and b.lost_sources == [] and b.send_errors == 0
    finally:
        b.sock = counting._sock


def test_an_adopted_socket_sends_from_the_source_too(pair):
    """A worker sends on an inherited copy of the daemon's socket (UdpSocket.adopt)."""
    a, b = pair
    w = UdpSocket.adopt(socket.dup(b.fileno()), offload=True)
    try:
        w.send(("127.0.0.1", a.port, 0, ("127.0.0.6", LO)), [b"w"] * 3)
        got = drain(a, 3)
        assert [d for d, _ in got] == [b"w"] * 3
        assert {o[:2] for _, o in got} == {("127.0.0.6", b.port)}
        w.send(("127.0.0.1", a.port, 0, ("192.0.2.77", 1)), [b"v"])
        assert [d for d, _ in drain(a, 1)] == [b"v"] and w.lost_sources == [("192.0.2.77", 1)]
    finally:
        w.close()

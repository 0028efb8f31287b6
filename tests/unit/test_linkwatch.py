"""rtnetlink link messages as netlink/linkwatch.py reads them: well-formed, truncated, odd."""

from __future__ import annotations

import random
import socket
import struct

from tunnelpy.netlink import linkwatch as lw


def _attr(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


def _link(kind: int, index: int, name: str | None = None, mtu: int | None = None) -> bytes:
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 65534, index, 0x1043, 0)
    if name is not None:
        body += _attr(lw.IFLA_IFNAME, name.encode() + b"\0")
    if mtu is not None:
        body += _attr(lw.IFLA_MTU, struct.pack("=I", mtu))
    body += _attr(99, b"\x01\x02\x03")  # an attribute we do not know, with padding
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def test_new_and_del_link_parsed():
    data = _link(lw.RTM_NEWLINK, 7, "wg0", 34816) + _link(lw.RTM_DELLINK, 7, "wg0")
    assert lw.parse_links(data) == [
        (lw.RTM_NEWLINK, 7, "wg0", 34816),
        (lw.RTM_DELLINK, 7, "wg0", None),
    ]


def test_other_messages_skipped():
    done = struct.pack("=IHHII", 20, lw.NLMSG_DONE, 0, 0, 0) + b"\0" * 4
    addr = struct.pack("=IHHII", 24, 20, 0, 0, 0) + b"\0" * 8  # RTM_NEWADDR
    assert lw.parse_links(addr + _link(lw.RTM_NEWLINK, 3, "x", 1420) + done) == [
        (lw.RTM_NEWLINK, 3, "x", 1420)
    ]


def test_malformed_never_raises():
    good = _link(lw.RTM_NEWLINK, 7, "wg0", 1420)
    r = random.Random(5)
    for cut in range(len(good)):
        lw.parse_links(good[:cut])
    for _ in range(2000):
        b = bytearray(good * 2)
        for _ in range(r.randrange(1, 6)):
            b[r.randrange(len(b))] = r.randrange(256)
        for kind, index, _name, _mtu in lw.parse_links(bytes(b)):
            assert kind in (lw.RTM_NEWLINK, lw.RTM_DELLINK) and isinstance(index, int)
    # a zero-length attribute must not loop for ever
    body = struct.pack("=BxHiII", 0, 0, 1, 0, 0) + struct.pack("=HH", 0, lw.IFLA_MTU)
    assert lw.parse_links(struct.pack("=IHHII", 16 + len(body), lw.RTM_NEWLINK, 0, 0, 0) + body)


def test_getlink_request_round_trips_through_our_parser_shape():
    req = lw.getlink_request("wg0", seq=9)
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", req)
    assert (length, kind, flags, seq) == (len(req), lw.RTM_GETLINK, lw.NLM_F_REQUEST, 9)
    assert len(req) % 4 == 0 and b"wg0\0" in req


def test_watch_reports_mtu_changes_of_its_link_only():
    seen: list[int] = []
    w = lw.LinkWatch("wg0", -1, seen.append)

    class Sock:
        def __init__(self, reads: list[bytes]) -> None:
            self.reads = reads

        def recv(self, n: int) -> bytes:
            if not self.reads:
                raise BlockingIOError
            return self.reads.pop(0)

    w.sock = Sock([
        _link(lw.RTM_NEWLINK, 4, "eth0", 9000),  # another link
        _link(lw.RTM_NEWLINK, 7, "wg0", 1420),  # the answer to our request: learn index 7
        _link(lw.RTM_NEWLINK, 7, "wg0", 1420),  # no change
        _link(lw.RTM_NEWLINK, 7, None, 34816),
    ])  # type: ignore[assignment]  # fmt: skip
    assert w.on_readable() is False
    assert (w.index, seen) == (7, [1420, 34816])
    w.sock = Sock([_link(lw.RTM_DELLINK, 7, "wg0")])  # type: ignore[assignment]
    assert w.on_readable() is True and w.index is None

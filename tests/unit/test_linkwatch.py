"""rtnetlink link messages as netlink/linkwatch.py reads them, and how the watch follows a link
across namespaces (by the ids NETLINK_LISTEN_ALL_NSID tags messages with)."""

from __future__ import annotations

import random
import socket
import struct

from tunnelpy.netlink import linkwatch as lw
from tunnelpy.netlink.linkwatch import LinkMsg


def _attr(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


def _link(
    kind: int, index: int, name: str | None = None, mtu: int | None = None,
    new_nsid: int | None = None, new_index: int | None = None,
) -> bytes:  # fmt: skip
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 65534, index, 0x1043, 0)
    if name is not None:
        body += _attr(lw.IFLA_IFNAME, name.encode() + b"\0")
    if mtu is not None:
        body += _attr(lw.IFLA_MTU, struct.pack("=I", mtu))
    if new_nsid is not None:
        body += _attr(lw.IFLA_NEW_NETNSID, struct.pack("=i", new_nsid))
    if new_index is not None:
        body += _attr(lw.IFLA_NEW_IFINDEX, struct.pack("=i", new_index))
    body += _attr(99, b"\x01\x02\x03")  # an attribute we do not know, with padding
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def test_new_and_del_link_parsed():
    data = _link(lw.RTM_NEWLINK, 7, "wg0", 34816) + _link(lw.RTM_DELLINK, 7, "wg0", 1420, 3, 9)
    assert lw.parse_links(data) == [
        LinkMsg(lw.RTM_NEWLINK, 7, "wg0", 34816),
        LinkMsg(lw.RTM_DELLINK, 7, "wg0", 1420, 3, 9),
    ]


def test_other_messages_skipped():
    done = struct.pack("=IHHII", 20, 3, 0, 0, 0) + b"\0" * 4  # NLMSG_DONE
    addr = struct.pack("=IHHII", 24, 20, 0, 0, 0) + b"\0" * 8  # RTM_NEWADDR
    assert lw.parse_links(addr + _link(lw.RTM_NEWLINK, 3, "x", 1420) + done) == [
        LinkMsg(lw.RTM_NEWLINK, 3, "x", 1420)
    ]


def test_malformed_never_raises():
    good = _link(lw.RTM_NEWLINK, 7, "wg0", 1420, 1, 2)
    r = random.Random(5)
    for cut in range(len(good)):
        lw.parse_links(good[:cut])
    for _ in range(2000):
        b = bytearray(good * 2)
        for _ in range(r.randrange(1, 6)):
            b[r.randrange(len(b))] = r.randrange(256)
        for m in lw.parse_links(bytes(b)):
            assert m.kind in (lw.RTM_NEWLINK, lw.RTM_DELLINK) and isinstance(m.index, int)
    # a zero-length attribute must not loop for ever
    body = struct.pack("=BxHiII", 0, 0, 1, 0, 0) + struct.pack("=HH", 0, lw.IFLA_MTU)
    assert lw.parse_links(struct.pack("=IHHII", 16 + len(body), lw.RTM_NEWLINK, 0, 0, 0) + body)


def test_nsid_cmsg():
    assert lw.nsid_of([]) is None
    tag = (lw.SOL_NETLINK, lw.NETLINK_LISTEN_ALL_NSID, struct.pack("=i", 4))
    assert lw.nsid_of([tag]) == 4
    assert lw.nsid_of([(lw.SOL_NETLINK, lw.NETLINK_LISTEN_ALL_NSID, b"\x01")]) is None


def test_getlink_request_shape():
    req = lw.getlink_request("wg0", seq=9)
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", req)
    assert (length, kind, flags, seq) == (len(req), lw.RTM_GETLINK, lw.NLM_F_REQUEST, 9)
    assert len(req) % 4 == 0 and b"wg0\0" in req


class _Sock:
    """recvmsg() as the kernel answers it: (data, [nsid cmsg], flags, address)."""

    def __init__(self) -> None:
        self.reads: list[tuple[bytes, int | None]] = []

    def push(self, data: bytes, nsid: int | None = None) -> None:
        self.reads.append((data, nsid))

    def recvmsg(self, n: int, anc: int) -> tuple[bytes, list, int, tuple]:
        if not self.reads:
            raise BlockingIOError
        data, nsid = self.reads.pop(0)
        cmsg = [] if nsid is None else [
            (lw.SOL_NETLINK, lw.NETLINK_LISTEN_ALL_NSID, struct.pack("=i", nsid))
        ]  # fmt: skip
        return data, cmsg, 0, (0, 0)


def _watch() -> tuple[lw.LinkWatch, _Sock, list[int]]:
    seen: list[int] = []
    w = lw.LinkWatch("wg0", seen.append)
    sock = _Sock()
    w.sock = sock  # type: ignore[assignment]
    return w, sock, seen


def test_watch_reports_mtu_changes_of_its_link_only():
    w, sock, seen = _watch()
    sock.push(_link(lw.RTM_NEWLINK, 4, "eth0", 9000))  # another link
    sock.push(
        _link(
            lw.RTM_NEWLINK,
            7,
            "wg0",
            1420,
        ),
        nsid=2,
    )  # same name, other namespace
    sock.push(_link(lw.RTM_NEWLINK, 5, "wg0", 1420))  # the answer to our request: index 5
    sock.push(_link(lw.RTM_NEWLINK, 5, "wg0", 1420))  # no change
    sock.push(_link(lw.RTM_NEWLINK, 5, None, 34816))
    sock.push(_link(lw.RTM_NEWLINK, 5, None, 1300), nsid=2)  # index 5 elsewhere: not ours
    w.on_readable()
    assert (w.where, w.index, seen) == (None, 5, [1420, 34816])


def test_watch_follows_a_move_and_the_mtu_there():
    w, sock, seen = _watch()
    sock.push(_link(lw.RTM_NEWLINK, 5, "wg0", 1420))
    sock.push(_link(lw.RTM_DELLINK, 5, "wg0", 1420, new_nsid=3, new_index=2))  # moved to ns 3
    sock.push(_link(lw.RTM_NEWLINK, 2, "wg0", 1420), nsid=3)
    sock.push(_link(lw.RTM_NEWLINK, 2, "wg0", 34816), nsid=3)  # `ip -n X link set wg0 mtu`
    sock.push(_link(lw.RTM_NEWLINK, 2, "wg0", 9000), nsid=4)  # another namespace's index 2
    w.on_readable()
    assert (w.where, w.index, w.moves, seen) == (3, 2, 1, [1420, 34816])
    # onwards from ns 3: its numbering is not ours, so the next wg0 with index 6 is taken
    sock.push(_link(lw.RTM_DELLINK, 2, "wg0", 34816, new_nsid=0, new_index=6), nsid=3)
    sock.push(_link(lw.RTM_NEWLINK, 6, "wg0", 1280))  # back home
    w.on_readable()
    assert (w.where, w.index, w.moves, seen[-1]) == (None, 6, 2, 1280)


def test_watch_stops_on_deletion():
    w, sock, seen = _watch()
    sock.push(_link(lw.RTM_NEWLINK, 5, "wg0", 1420))
    sock.push(_link(lw.RTM_DELLINK, 5, "wg0", 1420))
    sock.push(_link(lw.RTM_NEWLINK, 5, "wg0", 9000))  # a new link reusing name and index
    w.on_readable()
    assert w.gone and seen == [1420]

"""Sticky source addresses in the sans-I/O engine (protocol/actions.py, engine._heard_from).

The socket hands each datagram up with the local address it arrived at, ``(host, port, src)``;
the engine keeps the ``src`` of the peer's last *authenticated* datagram and names it in every
``Dest`` for that peer, so the socket sends from it. Two engines with a hand-held clock; the
"network" here is this file's `deliver`, which stamps every datagram with the local address it
is said to have arrived at.
"""

from __future__ import annotations

from tests.harness.engine_pair import A_ADDR, A_IN, B_ADDR, B_IN, Net
from tests.harness.packets import ipv4
from tunnelpy.protocol.actions import Dest, Output
from tunnelpy.protocol.events import Roamed, SourceChanged

# Two addresses of B's on one link (and the interface index they arrived on), and one of A's.
B_PRIMARY = ("192.0.2.2", 3)
B_SECONDARY = ("192.0.2.22", 3)
A_LOCAL = ("192.0.2.1", 5)


def datagrams(out: Output) -> list[bytes]:
    return [d for dgs in out.datagrams.values() for d in dgs]


def deliver(dst, out: Output, origin: tuple, now: float) -> Output:
    """Every datagram of `out`, received by `dst` from `origin` (sender and local address)."""
    return dst.from_network([(d, origin) for d in datagrams(out)], now)


def handshake_at(n: Net, b_src: tuple) -> Output:
    """A starts a session with B, whose socket says A's packets arrived at `b_src`; A's socket
    says B's answers arrived at A_LOCAL. Returns B's output for A's first transport message."""
    init = n.a.from_tunnel([ipv4(A_IN, B_IN)], n.now)
    resp = deliver(n.b, init, (*A_ADDR, b_src), n.now)
    first = deliver(n.a, resp, (*B_ADDR, A_LOCAL), n.now)  # the staged packet
    return deliver(n.b, first, (*A_ADDR, b_src), n.now)


def test_authenticated_initiation_sets_the_source_and_the_response_leaves_from_it():
    n = Net()
    init = n.a.from_tunnel([ipv4(A_IN, B_IN)], n.now)
    resp = deliver(n.b, init, (*A_ADDR, B_SECONDARY), n.now)
    assert n.pb.src == B_SECONDARY
    assert list(resp.datagrams) == [Dest(*A_ADDR, 0, B_SECONDARY)]
    assert SourceChanged(n.pb.public_key, "a", None, B_SECONDARY) in resp.events
    assert not [e for e in resp.events if isinstance(e, Roamed)]  # same endpoint: no roam
    assert n.pb.endpoint == A_ADDR  # the endpoint (wg show) stays (host, port)
    # The initiator learns its own source from the authenticated response.
    deliver(n.a, resp, (*B_ADDR, A_LOCAL), n.now)
    assert n.pa.src == A_LOCAL and n.pa.endpoint == B_ADDR
    out = n.a.from_tunnel([ipv4(A_IN, B_IN)], n.now)
    assert list(out.datagrams) == [Dest(*B_ADDR, 0, A_LOCAL)]


def test_transport_at_another_local_address_moves_the_source():
    n = Net()
    handshake_at(n, B_PRIMARY)
    assert n.pb.src == B_PRIMARY
    n.now += 1
    msg = n.a.from_tunnel([ipv4(A_IN, B_IN, b"x")], n.now)
    got = deliver(n.b, msg, (*A_ADDR, B_SECONDARY), n.now)
    assert got.packets == [ipv4(A_IN, B_IN, b"x")]
    assert n.pb.src == B_SECONDARY
    assert got.events == [SourceChanged(n.pb.public_key, "a", B_PRIMARY, B_SECONDARY)]
    reply = n.b.from_tunnel([ipv4(B_IN, A_IN)], n.now)
    assert list(reply.datagrams) == [Dest(*A_ADDR, 0, B_SECONDARY)]
    # Keepalives and handshakes leave from it too.
    n.now += 200
    timers = n.b.on_timer(n.now)
    assert timers.datagrams and all(d.src == B_SECONDARY for d in timers.datagrams)


def test_a_burst_that_changes_local_address_midway_ends_at_the_last_one():
    n = Net()
    handshake_at(n, B_PRIMARY)
    packets = [ipv4(A_IN, B_IN, bytes([i]) * 50) for i in range(6)]
    sealed = datagrams(n.a.from_tunnel(packets, n.now))
    items = [(d, (*A_ADDR, B_PRIMARY if i < 3 else B_SECONDARY)) for i, d in enumerate(sealed)]
    got = n.b.from_network(items, n.now)
    assert got.packets == packets  # the fast path's run breaks at the change, nothing lost
    assert n.pb.src == B_SECONDARY


def test_unauthenticated_datagrams_do_not_move_the_source():
    n = Net()
    handshake_at(n, B_PRIMARY)
    evil = (*A_ADDR, B_SECONDARY)
    sealed = datagrams(n.a.from_tunnel([ipv4(A_IN, B_IN)], n.now))[0]
    forged = sealed[:-1] + bytes([sealed[-1] ^ 1])  # the tag no longer matches
    unknown = b"\x04\x00\x00\x00" + b"\xee" * 12 + bytes(32)  # an index nobody has
    n.b.from_network([(forged, evil), (unknown, evil)], n.now)
    assert n.pb.src == B_PRIMARY
    # A genuine message, delivered once at the primary address, then replayed at the other.
    n.b.from_network([(sealed, (*A_ADDR, B_PRIMARY))], n.now)
    n.b.from_network([(sealed, evil)], n.now)
    assert n.b.drops["replay"] == 1 and n.pb.src == B_PRIMARY
    # An initiation with a broken mac1, and a genuine one replayed (its timestamp is old).
    n.now += 10
    out = Output()
    n.a._send_initiation(n.pa, n.now, out, retry=True)
    init = datagrams(out)[0]
    n.b.from_network([(init[:-32] + bytes(32), evil)], n.now)  # macs zeroed
    assert n.b.drops["bad_mac1"] == 1 and n.pb.src == B_PRIMARY
    resp = n.b.from_network([(init, (*A_ADDR, B_PRIMARY))], n.now)
    assert resp.datagrams
    n.now += 10
    n.b.from_network([(init, evil)], n.now)  # the same initiation again: its timestamp is old
    assert n.b.drops["replayed_initiation"] == 1 and n.pb.src == B_PRIMARY


def test_a_configured_endpoint_clears_the_source():
    n = Net()
    handshake_at(n, B_SECONDARY)
    # Other changes keep it.
    n.b.update_peer(n.pb.public_key, persistent_keepalive=25, now=n.now)
    assert n.pb.src == B_SECONDARY
    # Setting the endpoint, even to the same address (wg set ... endpoint), clears it.
    n.b.update_peer(n.pb.public_key, endpoint=A_ADDR, now=n.now)
    assert n.pb.src is None and n.pb.endpoint == A_ADDR
    out = n.b.from_tunnel([ipv4(B_IN, A_IN)], n.now)
    assert list(out.datagrams) == [Dest(*A_ADDR)] and Dest(*A_ADDR).src is None
    # The next authenticated datagram sets it again, although it comes from the same place.
    msg = n.a.from_tunnel([ipv4(A_IN, B_IN)], n.now)
    deliver(n.b, msg, (*A_ADDR, B_SECONDARY), n.now)
    assert n.pb.src == B_SECONDARY


def test_forget_sources_returns_peers_to_the_kernels_choice():
    n = Net()
    handshake_at(n, B_SECONDARY)
    assert n.b.forget_sources([B_PRIMARY]).events == []  # nobody sends from that one
    assert n.pb.src == B_SECONDARY
    out = n.b.forget_sources([B_SECONDARY])
    assert out.events == [SourceChanged(n.pb.public_key, "a", B_SECONDARY, None)]
    assert not out.datagrams and n.pb.src is None
    sent = n.b.from_tunnel([ipv4(B_IN, A_IN)], n.now)
    assert list(sent.datagrams) == [Dest(*A_ADDR)]
    # Packets still queued that arrived at the old address before it went: learned again (the
    # socket would find it gone once more and fall back again).
    msg = n.a.from_tunnel([ipv4(A_IN, B_IN)], n.now)
    deliver(n.b, msg, (*A_ADDR, B_SECONDARY), n.now)
    assert n.pb.src == B_SECONDARY


def test_roaming_to_another_sender_and_local_address_at_once():
    n = Net()
    handshake_at(n, B_PRIMARY)
    moved = ("198.51.100.9", 4000)
    msg = n.a.from_tunnel([ipv4(A_IN, B_IN)], n.now)
    got = deliver(n.b, msg, (*moved, B_SECONDARY), n.now)
    key = n.pb.public_key
    assert got.events == [
        Roamed(key, "a", A_ADDR, moved),
        SourceChanged(key, "a", B_PRIMARY, B_SECONDARY),
    ]
    assert n.pb.endpoint == moved and type(n.pb.endpoint) is tuple and len(n.pb.endpoint) == 2
    out = n.b.from_tunnel([ipv4(B_IN, A_IN)], n.now)
    assert list(out.datagrams) == [Dest(*moved, 0, B_SECONDARY)]


def test_cookie_reply_leaves_from_the_address_asked():
    n = Net()
    n.b.under_load_threshold = 0
    out = Output()
    n.a._send_initiation(n.pa, n.now, out, retry=True)
    init = datagrams(out)[0]
    n.b.from_network([(init, (*A_ADDR, B_SECONDARY))], n.now)  # (the first one sets the load)
    reply = n.b.from_network([(init, (*A_ADDR, B_SECONDARY))], n.now + 0.001)
    assert n.b.drops["cookie_sent"] >= 1
    assert list(reply.datagrams) == [Dest(*A_ADDR, 0, B_SECONDARY)]
    assert n.pb.src is None  # a cookie reply is no authentication


def test_sources_unknown_to_the_socket_leave_dests_without_one():
    # Plain (host, port) origins (no PKTINFO): as before, the kernel chooses.
    n = Net()
    n.send(n.a, [ipv4(A_IN, B_IN)])
    n.send(n.b, [ipv4(B_IN, A_IN)])
    assert n.pa.src is None and n.pb.src is None
    assert not [e for e in n.events if isinstance(e, SourceChanged)]
    out = n.b.from_tunnel([ipv4(B_IN, A_IN)], n.now)
    assert list(out.datagrams) == [Dest(*A_ADDR)]
    # An origin whose local address the socket could not tell (None) is the same.
    msg = n.a.from_tunnel([ipv4(A_IN, B_IN)], n.now)
    deliver(n.b, msg, (*A_ADDR, None), n.now)
    assert n.pb.src is None

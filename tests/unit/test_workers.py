"""The pieces of `Workers = N` that need no daemon: shared counters (across real processes),
the worker's send engine against a real peer engine, the control channel, `Workers = auto`.

The send engine is checked the way it is used: a worker encrypts with the sending half of a
keypair the daemon's engine negotiated, on counters reserved from the same bank the engine
uses, and the peer engine must accept every datagram whoever encrypted it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import struct

import pytest

from tests.harness.engine_pair import A_IN, B_ADDR, B_IN, Net
from tests.harness.packets import ipv4, ipv6
from tunnelpy.protocol import constants as C
from tunnelpy.protocol.actions import Dest
from tunnelpy.protocol.engine import Output
from tunnelpy.workers.channel import FRAME, Channel, pair
from tunnelpy.workers.counters import KEYPAIR_LIFETIME, LocalCounters, SharedCounters
from tunnelpy.workers.messages import (
    KeypairMaterial,
    PeerRoutes,
    Peers,
    PeerSent,
    Report,
    Stop,
    decode_from_daemon,
    decode_from_worker,
    encode,
)
from tunnelpy.workers.pool import resolve_workers
from tunnelpy.workers.sender import SendEngine

NETS_B = [ipaddress.ip_network("10.0.0.2/32"), ipaddress.ip_network("fd00::2/128")]


# ---------------------------------------------------------------- Workers = auto


@pytest.mark.parametrize("cpus,expected", [(1, 1), (2, 1), (3, 1), (4, 2), (8, 4), (64, 4)])
def test_auto_workers(cpus, expected):
    assert resolve_workers(None, cpus) == expected


def test_explicit_workers_are_taken_as_given():
    assert resolve_workers(3, 2) == 3 and resolve_workers(1, 64) == 1


# ---------------------------------------------------------------- counters


@pytest.mark.parametrize("bank", [LocalCounters, SharedCounters])
def test_counter_slots(bank):
    c = bank(slots=4) if bank is LocalCounters else SharedCounters(slots=4)
    slot, ident = c.claim()
    assert c.reserve(slot, ident, 10) == 0
    assert c.reserve(slot, ident, 5) == 10
    assert c.peek(slot, ident) == 15
    assert c.reserve(slot, ident + 1, 1) is None  # not this slot's keypair
    others = [c.claim() for _ in range(3)]
    assert sorted(s for s, _ in others + [(slot, ident)]) == [0, 1, 2, 3]
    reused, newer = c.claim()  # round-robin: the first slot goes to a new keypair
    assert reused == slot and newer != ident
    assert c.reserve(slot, ident, 1) is None and c.peek(slot, ident) is None
    assert c.reserve(reused, newer, 3) == 0


def test_shared_counters_never_hand_out_a_counter_twice_across_processes():
    bank = SharedCounters(slots=8)
    slot, ident = bank.claim()
    r, w = os.pipe()
    children = []
    for seed in (1, 2, 3):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            try:
                mine = SharedCounters(fd=bank.fd)  # as a worker: the same memfd
                out = []
                for i in range(1500):
                    n = 1 + (i * seed) % 47
                    base = mine.reserve(slot, ident, n)
                    out.append(struct.pack("<QQ", base, n))
                os.write(w, b"".join(out))
            finally:
                os._exit(0)
        children.append(pid)
    os.close(w)
    data = b""
    while chunk := os.read(r, 1 << 16):
        data += chunk
    os.close(r)
    for pid in children:
        assert os.waitpid(pid, 0)[1] == 0
    ranges = sorted(struct.iter_unpack("<QQ", data))
    assert len(ranges) == 4500
    at = 0
    for base, n in ranges:  # disjoint and gap-free: every counter used exactly once
        assert base == at
        at += n
    assert bank.peek(slot, ident) == at
    bank.close()


# ---------------------------------------------------------------- the worker's send engine


def material(kp, now):
    return KeypairMaterial(
        kp.send_key, kp.remote_index, kp.slot, kp.ident, now - kp.created, kp.is_initiator
    )


def shared_net() -> tuple[Net, SendEngine]:
    n = Net()
    n.a.counters = LocalCounters()  # what the daemon does before any handshake
    w = SendEngine(n.a.counters, mtu=n.a.mtu)
    w.set_peers([PeerRoutes(n.pa.public_key, B_ADDR, NETS_B)])
    return n, w


def deliver(n: Net, out) -> None:
    n.run(n.a, Output(datagrams=dict(out.datagrams)))


def test_worker_encrypts_on_the_daemons_session():
    n, w = shared_net()
    n.send(n.a, [ipv4(A_IN, B_IN)])  # handshake, by the daemon
    kp = n.pa.current
    assert kp is not None and kp.ident
    w.set_keypair(n.pa.public_key, material(kp, n.now), n.now)
    before = len(n.delivered["b"])
    pkts = [ipv4(A_IN, B_IN, bytes([i]) * (40 + i)) for i in range(20)] + [
        ipv6("fd00::1", "fd00::2")
    ]
    out = w.from_tunnel(pkts, n.now)
    assert not out.to_daemon and not out.rekey
    assert list(out.datagrams) == [Dest(*B_ADDR)] and len(out.datagrams[Dest(*B_ADDR)]) == 21
    deliver(n, out)
    assert n.delivered["b"][before:] == pkts
    sent, drops = w.take_report()
    assert sent == [
        PeerSent(n.pa.public_key, sum(map(len, out.datagrams[Dest(*B_ADDR)])), 21, True)
    ]
    assert drops == {} and w.take_report() == ([], {})


def test_daemon_and_worker_interleave_counters_without_replay_drops():
    n, w = shared_net()
    n.send(n.a, [ipv4(A_IN, B_IN)])
    w.set_keypair(n.pa.public_key, material(n.pa.current, n.now), n.now)
    expected = []
    for round_ in range(30):
        batch = [ipv4(A_IN, B_IN, bytes([round_, i]) * 30) for i in range(1 + round_ % 7)]
        expected += batch
        if round_ % 2:
            deliver(n, w.from_tunnel(batch, n.now))
        else:
            n.send(n.a, batch)
    assert n.delivered["b"][1:] == expected
    assert n.b.drops["replay"] == 0 and n.b.drops["bad_auth"] == 0
    counters = sorted(
        struct.unpack_from("<Q", d, 8)[0] for src, d in n.wire if src == "a" and d[0] == 4
    )
    assert counters == list(range(len(counters)))  # every nonce once, none skipped


def test_without_a_session_the_worker_hands_packets_to_the_daemon():
    n, w = shared_net()
    p = ipv4(A_IN, B_IN)
    out = w.from_tunnel([p, ipv4(A_IN, "10.9.9.9"), b"\x00" * 30], n.now)
    assert out.datagrams == {} and out.to_daemon == {n.pa.public_key: [p]}
    assert w.take_report()[1] == {"tun_no_route": 1, "tun_not_ip": 1}
    # The daemon stages them behind a handshake, as for its own queue.
    n.run(n.a, n.a.send_packets(n.pa, out.to_daemon[n.pa.public_key], n.now))
    assert n.kinds() == [1, 2, 4] and n.delivered["b"] == [p]


def test_a_retired_slot_is_never_used_again():
    n = Net()
    n.a.counters = LocalCounters(slots=2)
    w = SendEngine(n.a.counters)
    w.set_peers([PeerRoutes(n.pa.public_key, B_ADDR, NETS_B)])
    n.send(n.a, [ipv4(A_IN, B_IN)])
    w.set_keypair(n.pa.public_key, material(n.pa.current, n.now), n.now)
    n.a.counters.claim()
    n.a.counters.claim()  # both slots now belong to newer keypairs
    out = w.from_tunnel([ipv4(A_IN, B_IN)], n.now)
    assert out.datagrams == {} and len(out.to_daemon[n.pa.public_key]) == 1
    assert w.peers[n.pa.public_key].send is None


def test_expired_session_goes_to_the_daemon_and_old_ones_ask_for_a_rekey():
    n, w = shared_net()
    n.send(n.a, [ipv4(A_IN, B_IN)])
    t0 = n.now
    w.set_keypair(n.pa.public_key, material(n.pa.current, n.now), n.now)
    p = ipv4(A_IN, B_IN)
    assert w.from_tunnel([p], t0 + 10).rekey == []
    out = w.from_tunnel([p], t0 + C.REKEY_AFTER_TIME + 1)
    assert out.rekey == [n.pa.public_key] and out.datagrams  # still sent on the old session
    assert w.from_tunnel([p], t0 + C.REKEY_AFTER_TIME + 2).rekey == []  # once per REKEY_TIMEOUT
    assert w.from_tunnel([p], t0 + C.REKEY_AFTER_TIME + 1 + C.REKEY_TIMEOUT).rekey
    # The daemon's engine does the rekey: an initiation goes out.
    n.now = t0 + C.REKEY_AFTER_TIME + 1
    out_d = Output()
    n.a.rekey_if_due(n.pa, n.now, out_d)
    assert [d[0] for d in out_d.datagrams[Dest(*B_ADDR)]] == [1]
    out = w.from_tunnel([p], t0 + C.REJECT_AFTER_TIME)
    assert out.datagrams == {} and out.to_daemon == {n.pa.public_key: [p]}


def test_responder_session_never_asks_for_a_rekey():
    n = Net()
    n.b.counters = LocalCounters()
    w = SendEngine(n.b.counters)
    nets_a = [ipaddress.ip_network("10.0.0.1/32")]
    w.set_peers([PeerRoutes(n.pb.public_key, ("192.0.2.1", 51820), nets_a)])
    n.send(n.a, [ipv4(A_IN, B_IN)])
    kp = n.pb.current
    assert kp is not None and not kp.is_initiator
    w.set_keypair(n.pb.public_key, material(kp, n.now), n.now)
    assert w.from_tunnel([ipv4(B_IN, A_IN)], n.now + C.REKEY_AFTER_TIME + 5).rekey == []


def test_worker_reports_run_the_send_timers():
    n, w = shared_net()
    n.send(n.a, [ipv4(A_IN, B_IN)])
    n.pa.new_handshake_at = None
    tx = n.pa.stats.tx_bytes
    n.a.note_worker_sent(n.pa, 1000, 7, True, n.now)
    assert n.pa.stats.tx_bytes == tx + 1000
    assert n.pa.new_handshake_at is not None  # heard nothing back in 15 s -> rehandshake
    assert n.a.next_deadline() is not None


def test_peer_list_updates_keep_sessions_and_follow_routes():
    n, w = shared_net()
    n.send(n.a, [ipv4(A_IN, B_IN)])
    w.set_keypair(n.pa.public_key, material(n.pa.current, n.now), n.now)
    w.set_peers([PeerRoutes(n.pa.public_key, B_ADDR, [ipaddress.ip_network("10.0.0.0/24")])])
    out = w.from_tunnel([ipv4(A_IN, "10.0.0.77")], n.now)
    assert len(out.datagrams[Dest(*B_ADDR)]) == 1  # new route, same session
    w.set_endpoint(n.pa.public_key, ("192.0.2.99", 1))
    assert list(w.from_tunnel([ipv4(A_IN, B_IN)], n.now).datagrams) == [Dest("192.0.2.99", 1)]
    w.set_peers([])
    assert w.from_tunnel([ipv4(A_IN, B_IN)], n.now).datagrams == {}


def test_the_worker_sends_from_the_daemons_sticky_source_and_drops_a_lost_one():
    n, w = shared_net()
    n.send(n.a, [ipv4(A_IN, B_IN)])
    w.set_keypair(n.pa.public_key, material(n.pa.current, n.now), n.now)
    src, other = ("192.0.2.11", 2), ("192.0.2.12", 2)
    w.set_endpoint(n.pa.public_key, B_ADDR, src)
    out = w.from_tunnel([ipv4(A_IN, B_IN)], n.now)
    assert list(out.datagrams) == [Dest(*B_ADDR, 0, src)]
    deliver(n, out)  # (the session is the daemon's: b accepts it)
    assert n.delivered["b"][-1] == ipv4(A_IN, B_IN)
    # The whole peer list carries it too, and keeps the session.
    w.set_peers([PeerRoutes(n.pa.public_key, B_ADDR, NETS_B, other)])
    assert list(w.from_tunnel([ipv4(A_IN, B_IN)], n.now).datagrams) == [Dest(*B_ADDR, 0, other)]
    # The worker's socket found it gone: the kernel's choice from now on.
    w.forget_sources([src])  # not this peer's
    assert list(w.from_tunnel([ipv4(A_IN, B_IN)], n.now).datagrams) == [Dest(*B_ADDR, 0, other)]
    w.forget_sources([other])
    assert list(w.from_tunnel([ipv4(A_IN, B_IN)], n.now).datagrams) == [Dest(*B_ADDR)]


# ---------------------------------------------------------------- control channel


def test_channel_carries_large_messages_both_ways_and_reports_the_end():
    loop = asyncio.new_event_loop()
    try:
        a, b = pair()
        got_a, got_b, closed = [], [], []
        # a: the daemon's end (reads worker messages); b: the worker's end.
        ca = Channel(a, loop, got_a.append, lambda: closed.append("a"),
                     decode=decode_from_worker, max_message=1 << 20)  # fmt: skip
        cb = Channel(b, loop, got_b.append, lambda: closed.append("b"),
                     decode=decode_from_daemon, max_message=64 << 20)  # fmt: skip
        nets = [ipaddress.ip_network(((0xFD00 << 112) + (i << 64), 64)) for i in range(25000)]
        big = Peers([PeerRoutes(os.urandom(32), None, nets)])
        assert len(encode(big)) > 3 * FRAME
        for i in range(50):
            ca.send(Peers([PeerRoutes(bytes([i]) * 32, ("192.0.2.1", i), [])]))
        ca.send(big)
        ca.send(Stop())
        report = Report([PeerSent(b"k" * 32, 1, 2, True)], {"tun_no_route": 1})
        cb.send(report)

        async def settle():
            for _ in range(200):
                if len(got_b) == 52 and got_a:
                    return
                await asyncio.sleep(0.01)

        loop.run_until_complete(settle())
        assert [m.peers[0].endpoint for m in got_b[:50]] == [("192.0.2.1", i) for i in range(50)]
        assert got_b[50] == big and got_b[51] == Stop()
        assert got_a == [report]
        cb.close()
        loop.run_until_complete(asyncio.sleep(0.05))
        assert closed == ["b", "a"] and ca.closed and ca.error is None
        ca.send(Stop())  # sending on a closed channel is a no-op, not an error
    finally:
        loop.close()


def test_channel_pair_is_seqpacket():
    a, b = pair()
    try:
        assert a.type == socket.SOCK_SEQPACKET
    finally:
        a.close()
        b.close()


def test_worker_forgets_a_sending_key_once_it_expired():
    n, w = shared_net()
    n.send(n.a, [ipv4(A_IN, B_IN)])
    t0 = n.now
    w.set_keypair(n.pa.public_key, material(n.pa.current, n.now), n.now + 5)  # (its own clock)
    assert w.next_expiry() == t0 + 5 + C.REJECT_AFTER_TIME
    w.forget_expired(t0 + 5 + C.REJECT_AFTER_TIME - 1)
    assert w.peers[n.pa.public_key].send is not None
    w.forget_expired(t0 + 5 + C.REJECT_AFTER_TIME)
    assert w.peers[n.pa.public_key].send is None and w.next_expiry() is None


@pytest.mark.parametrize("bank", [LocalCounters, SharedCounters])
def test_a_slot_is_reused_only_once_its_keypair_cannot_be_alive(bank):
    c = bank(slots=2)
    a = c.claim(100.0)
    b = c.claim(101.0)
    assert a and b
    assert c.claim(150.0) is None  # both may still be live: the keypair stays local
    later = c.claim(100.0 + KEYPAIR_LIFETIME)
    assert later is not None and later[0] == a[0]
    assert c.reserve(b[0], b[1], 1) == 0  # the other live keypair kept its slot


def test_unconfirmed_initiations_claim_no_slot_and_cannot_retire_a_live_keypair():
    from tunnelpy.protocol.engine import Output

    n = Net()
    bank = LocalCounters(slots=4)  # B's: a handful, so any wrap would show
    n.a.counters, n.b.counters = LocalCounters(), bank
    n.send(n.a, [ipv4(A_IN, B_IN)])
    n.send(n.b, [ipv4(B_IN, A_IN)])
    live = n.pb.current
    assert live is not None and live.ident  # B's keypair, confirmed: it has a slot
    claims = bank._next_ident
    for _ in range(50):  # 50 handshakes B answers but never sees confirmed
        n.now += 1.0
        out = Output()
        n.a._send_initiation(n.pa, n.now, out, retry=True)
        n.drop_next = {C.MSG_TRANSPORT}
        n.run(n.a, out)
    assert bank._next_ident == claims  # B claimed nothing for keypairs never confirmed
    assert n.pb.current is live and bank.reserve(live.slot, live.ident, 0) is not None
    before = n.b.drops["stale_keypair"]
    n.delivered["a"].clear()
    n.send(n.b, [ipv4(B_IN, A_IN, b"still mine")])
    assert n.b.drops["stale_keypair"] == before

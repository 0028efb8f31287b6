"""Two sans-I/O engines talking in memory, driven by a hand-held clock.

The "network" is a dict from address to engine; `Net.run` delivers every datagram an engine
emits to the engine at its destination until nothing moves. Nothing here sleeps or opens a socket.
"""

from __future__ import annotations

import random

import pytest

from tests.harness.engine_pair import A_ADDR, A_IN, B_ADDR, B_IN, Net
from tests.harness.packets import ipv4, ipv6
from tunnelpy.protocol import constants as C
from tunnelpy.protocol.actions import Dest
from tunnelpy.protocol.engine import Output
from tunnelpy.protocol.events import HandshakeFailed, ResolveEndpoint, Roamed


def test_handshake_and_first_packet():
    n = Net()
    p = ipv4(A_IN, B_IN)
    n.send(n.a, [p])
    # initiation, response, then the staged packet on the new session
    assert n.kinds() == [1, 2, 4]
    assert n.delivered["b"] == [p]
    assert n.pa.current is not None and n.pa.current.is_initiator
    assert n.pb.current is not None and not n.pb.current.is_initiator
    assert n.pa.last_handshake_wall > 0 and n.pb.last_handshake_wall > 0
    assert len(n.wire[0][1]) == 148 and len(n.wire[1][1]) == 92


def test_data_both_ways_v4_v6_and_padding_stripped():
    n = Net()
    n.send(n.a, [ipv4(A_IN, B_IN)])
    reply = ipv4(B_IN, A_IN, b"z" * 7)
    n.send(n.b, [reply])
    assert n.delivered["a"] == [reply]
    # transport ciphertext is padded to 16: header 16 + 32 (27 padded) + tag 16
    assert len(n.wire[-1][1]) == 16 + 32 + 16
    p6 = ipv6("fd00::1", "fd00::2")
    n.send(n.a, [p6])
    assert n.delivered["b"][-1] == p6


def test_outbound_routing_and_unknown_destination():
    n = Net()
    n.send(n.a, [ipv4(A_IN, "10.9.9.9"), b"\x00garbage", b""])
    assert n.a.drops["tun_no_route"] == 1
    assert n.a.drops["tun_not_ip"] == 2
    assert n.wire == []


def test_inbound_source_must_be_allowed():
    n = Net()
    n.send(n.a, [ipv4(A_IN, B_IN)])
    n.send(n.a, [ipv4("10.0.0.66", B_IN)])  # A's TUN lets it out; B must refuse it
    assert n.b.drops["not_allowed_source"] == 1
    assert len(n.delivered["b"]) == 1


def test_replayed_transport_and_initiation_dropped():
    n = Net()
    n.send(n.a, [ipv4(A_IN, B_IN)])
    init = n.wire[0][1]
    data = n.wire[2][1]
    out = n.b.from_network([(data, A_ADDR)], n.now)
    assert out.packets == [] and n.b.drops["replay"] == 1
    n.now += 1
    out = n.b.from_network([(init, A_ADDR)], n.now)
    assert out.datagrams == {} and n.b.drops["replayed_initiation"] == 1


def test_bit_flips_anywhere_are_dropped():
    n = Net()
    n.send(n.a, [ipv4(A_IN, B_IN)])
    data = n.wire[2][1]
    for i in range(len(data)):
        forged = bytearray(data)
        forged[i] ^= 0x01
        out = n.b.from_network([(bytes(forged), A_ADDR)], n.now)
        assert out.packets == []
    assert sum(n.b.drops.values()) == len(data)


def test_garbage_never_raises():
    n = Net()
    r = random.Random(7)
    junk = [r.randbytes(r.randrange(0, 200)) for _ in range(500)]
    junk += [bytes([t, 0, 0, 0]) + r.randbytes(s - 4) for t, s in ((1, 148), (2, 92), (3, 64), (4, 32), (4, 100))]
    n.b.from_network([(j, A_ADDR) for j in junk], n.now)
    assert sum(n.b.drops.values()) == len(junk)


def test_rekey_after_time_by_initiator():
    n = Net()
    n.send(n.a, [ipv4(A_IN, B_IN)])
    first = n.pa.current
    n.tick(n.now + C.REKEY_AFTER_TIME + 1)
    mark = len(n.wire)
    n.send(n.a, [ipv4(A_IN, B_IN)])
    assert 1 in n.kinds(mark)  # a new initiation
    assert n.pa.current is not first
    assert n.pa.previous is first  # old session still decrypts in-flight packets


def test_rekey_after_messages():
    n = Net()
    n.send(n.a, [ipv4(A_IN, B_IN)])
    n.pa.current.send_counter = C.REKEY_AFTER_MESSAGES + 1
    n.now += C.REKEY_TIMEOUT + 1  # initiations are limited to one per REKEY_TIMEOUT
    mark = len(n.wire)
    n.send(n.a, [ipv4(A_IN, B_IN)])
    assert n.kinds(mark)[:2] == [4, 1]


def test_reject_after_time_stages_and_rehandshakes():
    n = Net()
    n.send(n.a, [ipv4(A_IN, B_IN)])
    n.drop_next = {1, 2, 4}
    n.now += C.REJECT_AFTER_TIME + 1
    old = n.pa.current
    assert not old.usable_for_sending(n.now)
    mark = len(n.wire)
    n.send(n.a, [ipv4(A_IN, B_IN, b"later")])
    assert n.kinds(mark) == [1]  # nothing sent on the dead session
    assert len(n.pa.staged) == 1


def test_retransmit_every_rekey_timeout_then_give_up():
    n = Net()
    n.hosts.pop(B_ADDR)  # B is unreachable
    start = n.now
    n.send(n.a, [ipv4(A_IN, B_IN)])
    n.tick(start + 4.9)
    assert n.kinds().count(1) == 1
    n.tick(start + 5.4)
    assert n.kinds().count(1) == 2
    # As wireguard-go: the first initiation plus MAX_TIMER_HANDSHAKES + 1 retries, then give up.
    n.tick(start + C.REKEY_ATTEMPT_TIME + 20)
    assert n.kinds().count(1) == C.MAX_TIMER_HANDSHAKES + 2
    assert any(isinstance(e, HandshakeFailed) for e in n.events)
    assert not n.pa.staged
    n.tick(start + 300)
    assert n.kinds().count(1) == C.MAX_TIMER_HANDSHAKES + 2  # gave up: quiet


def test_passive_keepalive_after_receiving_data():
    n = Net()
    n.send(n.a, [ipv4(A_IN, B_IN)])
    mark = len(n.wire)
    t0 = n.now
    n.tick(t0 + C.KEEPALIVE_TIMEOUT - 0.1)
    assert n.wire[mark:] == []
    n.tick(t0 + C.KEEPALIVE_TIMEOUT + 0.1)
    sent = n.wire[mark:]
    assert [(s, len(d)) for s, d in sent] == [("b", 32)]


def test_new_handshake_when_peer_goes_quiet():
    n = Net()
    n.send(n.a, [ipv4(A_IN, B_IN)])
    n.tick(n.now + 30)
    n.hosts.pop(B_ADDR)  # B vanishes
    t0 = n.now
    n.send(n.a, [ipv4(A_IN, B_IN)])
    mark = len(n.wire)
    n.tick(t0 + C.KEEPALIVE_TIMEOUT + C.REKEY_TIMEOUT - 0.01)
    assert 1 not in n.kinds(mark)
    n.tick(t0 + C.KEEPALIVE_TIMEOUT + C.REKEY_TIMEOUT + C.REKEY_TIMEOUT_JITTER_MAX + 0.01)
    assert 1 in n.kinds(mark)
    assert any(isinstance(e, ResolveEndpoint) for e in n.events)


def test_persistent_keepalive():
    n = Net()
    n.send(n.a, [ipv4(A_IN, B_IN)])
    n.a.set_persistent_keepalive(n.pa, 25, n.now)
    mark = len(n.wire)
    n.tick(n.now + 80)
    from_a = [d for s, d in n.wire[mark:] if s == "a"]
    assert len(from_a) >= 3 and all(len(d) == 32 for d in from_a)


def test_zero_key_material_after_three_reject_times():
    n = Net()
    n.send(n.a, [ipv4(A_IN, B_IN)])
    n.hosts.pop(B_ADDR)
    n.hosts.pop(A_ADDR)
    n.tick(n.now + C.REJECT_AFTER_TIME * 3 + C.REKEY_ATTEMPT_TIME + 30)
    assert n.pa.keypairs() == [] and n.pb.keypairs() == []
    assert not any(kp is not None for _, kp in n.a.indices.values())


def test_cookie_path_under_load():
    n = Net(under_load_threshold=0)
    n.a.under_load_threshold = 10**6  # only the responder is under load
    n.send(n.a, [ipv4(A_IN, B_IN)])
    assert n.kinds() == [1, 3]
    assert n.b.drops["cookie_sent"] == 1 and n.a.drops["cookie_received"] == 1
    n.tick(n.now + C.REKEY_TIMEOUT + 1)  # the retry carries mac2 and succeeds
    assert n.kinds()[2:5] == [1, 2, 4]
    assert n.delivered["b"]


def test_initiation_flood_limited_per_peer():
    n = Net()
    n.send(n.a, [ipv4(A_IN, B_IN)])
    # Fresh initiations from A faster than 50/s: the second is refused. 18 ms apart, so the
    # whitened TAI64N timestamps (16.7 ms granularity) differ and only the rate limit applies.
    n.now += 0.018
    n.a._send_initiation(n.pa, n.now, out := Output(), retry=True)
    n.b.from_network([(d, A_ADDR) for d in out.datagrams[Dest(*B_ADDR)]], n.now)
    n.now += 0.018
    n.a._send_initiation(n.pa, n.now, out := Output(), retry=True)
    n.b.from_network([(d, A_ADDR) for d in out.datagrams[Dest(*B_ADDR)]], n.now)
    assert n.b.drops["initiation_flood"] == 1 and n.b.drops["replayed_initiation"] == 0


def test_roaming_moves_endpoint():
    n = Net()
    n.send(n.a, [ipv4(A_IN, B_IN)])
    new_addr = ("198.51.100.9", 40000)
    n.a_out = n.a.from_tunnel([ipv4(A_IN, B_IN)], n.now)
    for d in n.a_out.datagrams[Dest(*B_ADDR)]:
        n.b.from_network([(d, new_addr)], n.now)
    assert n.pb.endpoint == new_addr
    out = n.b.from_tunnel([ipv4(B_IN, A_IN)], n.now)
    assert list(out.datagrams) == [Dest(*new_addr)]
    assert any(isinstance(e, Roamed) for e in n.b.from_network([], n.now).events) is False


def test_psk_mismatch_fails():
    n = Net()
    n.pa.preshared_key = b"\x01" * 32
    n.send(n.a, [ipv4(A_IN, B_IN)])
    assert n.kinds() == [1, 2]
    assert n.a.drops["bad_response"] == 1
    assert n.delivered["b"] == []


def test_unknown_peer_dropped():
    n = Net()
    n.b.remove_peer(n.pb.public_key)
    n.send(n.a, [ipv4(A_IN, B_IN)])
    assert n.b.drops["unknown_peer"] == 1


def test_staged_queue_bounded():
    n = Net()
    n.hosts.pop(B_ADDR)
    n.send(n.a, [ipv4(A_IN, B_IN)] * (C.MAX_STAGED_PACKETS + 10))
    assert len(n.pa.staged) == C.MAX_STAGED_PACKETS
    assert n.a.drops["staged_overflow"] == 10


def test_simultaneous_initiation_converges():
    n = Net()
    oa = n.a.from_tunnel([ipv4(A_IN, B_IN)], n.now)
    ob = n.b.from_tunnel([ipv4(B_IN, A_IN)], n.now)
    n.run(n.a, oa)
    n.run(n.b, ob)
    n.tick(n.now + 20)
    n.send(n.a, [ipv4(A_IN, B_IN, b"after")])
    n.send(n.b, [ipv4(B_IN, A_IN, b"after")])
    assert any(p.endswith(b"after") for p in n.delivered["b"])
    assert any(p.endswith(b"after") for p in n.delivered["a"])


@pytest.mark.parametrize("batch", [1, 64])
def test_batches_grouped_by_peer(batch):
    n = Net()
    n.send(n.a, [ipv4(A_IN, B_IN)])
    out = n.a.from_tunnel([ipv4(A_IN, B_IN)] * batch, n.now)
    assert list(out.datagrams) == [Dest(*B_ADDR)] and len(out.datagrams[Dest(*B_ADDR)]) == batch


def test_staged_bound_is_the_kernels():
    assert C.MAX_STAGED_PACKETS == 128  # wireguard-go and the kernel module: 128 per peer


def test_a_low_order_peer_key_cannot_stall_the_others():
    # The key is refused where keys enter (config, UAPI); the engine must still never raise
    # out of a batch because of one peer.
    import ipaddress

    n = Net()
    bad = n.a.add_peer(bytes(32), name="bad", endpoint=("192.0.2.9", 51820),
                       allowed_ips=[ipaddress.ip_network("10.0.9.0/24")])  # fmt: skip
    out = n.a.from_tunnel([ipv4(A_IN, "10.0.9.1"), ipv4(A_IN, B_IN)], n.now)
    assert n.a.drops["bad_peer_key"] == 1 and not bad.staged
    assert any(d[0] == 1 for dgs in out.datagrams.values() for d in dgs)  # B's initiation
    n.a.on_timer(n.now + 10)  # the timers keep running

"""Floods, replays, forgeries and resource bounds at the engine level (in memory, hand-held clock).

These are the sans-I/O halves of the namespace tests: the same attacks, with exact counts and
simulated time, in well under a second each.
"""

from __future__ import annotations

import random
import time
import tracemalloc

from tests.harness.engine_pair import A_ADDR, A_IN, B_ADDR, B_IN, MAC_A, VNI, Pair
from tests.harness.hostile_env import figure, pick
from tests.harness.hostile_mutate import mac1_key, with_mac1
from tests.harness.packets import eth, ipv4
from tunnelpy.protocol import constants as C
from tunnelpy.protocol.actions import Dest
from tunnelpy.protocol.cookie import CookieGenerator
from tunnelpy.protocol.engine import RATELIMIT_MAX_SOURCES, UNDER_LOAD_THRESHOLD

FLOODER = ("198.51.100.66", 40000)


def flood_initiations(r: random.Random, responder_public: bytes, n: int) -> list[bytes]:
    """Initiations a stranger can make: random bodies with a correct mac1 (it knows our key)."""
    key = mac1_key(responder_public)
    return [with_mac1(b"\x01\0\0\0" + r.randbytes(144), key) for _ in range(n)]


def drive_flood(p: Pair, msgs: list[bytes], rate: float, src=FLOODER, batch: int = 100) -> float:
    """Feed `msgs` to B at `rate` per second of engine time; returns wall seconds spent."""
    t0 = time.perf_counter()
    for i in range(0, len(msgs), batch):
        p.b.from_network([(m, src) for m in msgs[i : i + batch]], p.now)
        p.now += batch / rate
    return time.perf_counter() - t0


def test_flood_forces_cookie_mode_and_legit_peer_still_handshakes():
    p = Pair(1, under_load_threshold=UNDER_LOAD_THRESHOLD)
    r = random.Random(2)
    n = pick(20_000, 200_000)
    msgs = flood_initiations(r, p.b.public_key, n)
    wall = drive_flood(p, msgs[: n // 2], 10_000)
    # the legitimate peer starts its handshake in the middle of the flood
    start = p.now
    out = p.a.from_tunnel([ipv4(A_IN, B_IN)], p.now)
    p.run(p.a, out)  # initiation -> cookie reply (B is under load)
    assert p.b.drops["cookie_sent"] > 0 and p.a.drops["cookie_received"] == 1
    done_at = None
    for k in range(800):  # 8 s more of flood at 10^4/s, cycling through the second half
        i = n // 2 + (k * 100) % (n // 2)
        p.b.from_network([(m, FLOODER) for m in msgs[i : i + 100]], p.now)
        p.now += 0.01
        for e in (p.a, p.b):
            p.run(e, e.on_timer(p.now))
        if done_at is None and p.delivered["b"]:
            done_at = p.now
    assert done_at is not None, dict(p.b.drops)
    # the retry carries mac2, passes the per-IP rate limit, and completes
    assert done_at - start <= C.REKEY_TIMEOUT + C.REKEY_TIMEOUT_JITTER_MAX + 0.1
    d = p.b.drops
    # only the first burst (before "under load" is noticed) costs a Diffie-Hellman
    assert d["bad_initiation"] <= UNDER_LOAD_THRESHOLD + 1
    assert d["cookie_sent"] >= n // 2 + 80_000 - UNDER_LOAD_THRESHOLD - 1
    assert len(p.b.indices) <= 6 and len(p.b._buckets) <= 2
    assert len(p.b._handshake_times) <= UNDER_LOAD_THRESHOLD + 1
    figure(
        "engine_flood_cost_us_per_initiation", round(wall / (n // 2) * 1e6, 1), "µs (cookie mode)"
    )
    figure("engine_flood_legit_handshake_s", round(done_at - start, 2), "s of engine time")


def test_flood_with_valid_cookie_is_rate_limited_per_source():
    """A stranger that can receive at its address gets cookies, but then meets the rate limit."""
    p = Pair(1, under_load_threshold=0)
    r = random.Random(3)
    gen = CookieGenerator(p.b.public_key)
    first = gen.add_macs(b"\x01\0\0\0" + r.randbytes(144), p.now)
    reply = p.b.from_network([(first, FLOODER)], p.now).datagrams[Dest(*FLOODER)][0]
    assert gen.consume_reply(reply, p.now)
    n = pick(5000, 50_000)
    for _i in range(n):
        m = gen.add_macs(b"\x01\0\0\0" + r.randbytes(144), p.now)
        p.b.from_network([(m, FLOODER)], p.now)
        p.now += 1 / 10_000
    seconds = n / 10_000
    passed = p.b.drops["bad_initiation"]
    assert passed <= 5 + 20 * seconds + 1  # burst 5, then 20/s from one address
    assert p.b.drops["ratelimited"] >= n - passed - 1


def test_spoofed_source_flood_keeps_tables_bounded():
    """Cookies for 10^4+ distinct source addresses (an IPv6 /64 is plenty): bounded state."""
    p = Pair(1, under_load_threshold=0)
    r = random.Random(4)
    n = pick(3 * RATELIMIT_MAX_SOURCES, 20 * RATELIMIT_MAX_SOURCES)
    gens = []
    for i in range(n):
        src = (f"2001:db8::{i // 65536:x}:{i % 65536:x}", 4000)
        gen = CookieGenerator(p.b.public_key)
        m = gen.add_macs(b"\x01\0\0\0" + r.randbytes(144), p.now)
        out = p.b.from_network([(m, src)], p.now)
        gen.consume_reply(out.datagrams[Dest(*src)][0], p.now)
        gens.append((gen, src))
    t0 = time.perf_counter()
    for gen, src in gens:
        m = gen.add_macs(b"\x01\0\0\0" + r.randbytes(144), p.now)
        p.b.from_network([(m, src)], p.now)
        p.now += 1 / 50_000
    per = (time.perf_counter() - t0) / n
    assert len(p.b._buckets) <= RATELIMIT_MAX_SOURCES + 1
    figure("engine_many_sources_cost_us", round(per * 1e6, 1), f"µs per initiation, {n} sources")
    assert per < 0.005  # no per-packet work proportional to the number of sources


def test_captured_messages_replayed_later_are_dropped_and_counted():
    p = Pair(2).established()
    captured = [(who, d) for who, d in p.wire]
    # later: new sessions after a rekey
    p.now += C.REKEY_AFTER_TIME + 1
    p.send(p.a, [ipv4(A_IN, B_IN, b"fresh")])
    p.send(p.b, [ipv4(B_IN, A_IN, b"fresh")])
    assert p.pa.current is not None and p.pa.previous is not None
    before_a, before_b = sum(p.a.drops.values()), sum(p.b.drops.values())
    delivered_before = len(p.delivered["a"]), len(p.delivered["b"])
    for who, d in captured:
        dst, src = (p.b, A_ADDR) if who == "a" else (p.a, B_ADDR)
        out = dst.from_network([(d, src)], p.now)
        assert not out.packets and not out.frames
    assert sum(p.a.drops.values()) + sum(p.b.drops.values()) - before_a - before_b == len(captured)
    assert (len(p.delivered["a"]), len(p.delivered["b"])) == delivered_before
    assert p.b.drops["replayed_initiation"] >= 1


def test_staged_packets_bounded_for_ip_and_frames():
    p = Pair(3)
    p.hosts.clear()  # nobody answers
    p.send(p.a, [ipv4(A_IN, B_IN)] * (C.MAX_STAGED_PACKETS * 3))
    p.send_frames(p.a, [eth(b"\xff" * 6, MAC_A)] * C.MAX_STAGED_PACKETS)
    assert len(p.pa.staged) == C.MAX_STAGED_PACKETS
    assert p.a.drops["staged_overflow"] == C.MAX_STAGED_PACKETS * 3
    # giving up on the handshake frees them
    for _ in range(40):
        p.now += C.REKEY_TIMEOUT + 1
        p.run(p.a, p.a.on_timer(p.now))
    assert not p.pa.staged


def test_mac_flood_from_a_peer_is_bounded_and_known_unicast_survives():
    p = Pair(4).established()  # MAC_A and MAC_B are known on both sides
    seg = p.b.segments[VNI]
    r = random.Random(5)
    n = pick(20_000, 200_000)
    header = seg.header
    frames = [header + eth(b"\xff" * 6, bytes([r.randrange(256) & 0xFE]) + r.randbytes(5))
              for _ in range(n)]  # fmt: skip
    for i in range(0, n, 500):
        for m in p.sealed(p.a, frames[i : i + 500]):
            p.b.from_network([(m, A_ADDR)], p.now)
    assert len(seg.fdb) <= seg.fdb.max_entries
    assert seg.fdb.refused > 0
    assert seg.fdb.lookup(MAC_A, p.now) is p.pb  # learnt before the flood, still there
    out = p.b.from_segment(VNI, [eth(MAC_A, bytes.fromhex("02000000000b"))], p.now)
    assert list(out.datagrams) == [Dest(*A_ADDR)] and len(out.datagrams[Dest(*A_ADDR)]) == 1


def test_memory_flat_over_simulated_hours_of_traffic_and_rekeys():
    p = Pair(6).established()
    hours = pick(2, 24)
    step = 0.5
    pkt_a, pkt_b = ipv4(A_IN, B_IN, b"s" * 500), ipv4(B_IN, A_IN, b"t" * 100)
    seen_indices = 0

    def run_for(seconds: float) -> None:
        nonlocal seen_indices
        end = p.now + seconds
        while p.now < end:
            p.send(p.a, [pkt_a] * 8)
            p.send(p.b, [pkt_b] * 2)
            p.now += step
            for e in (p.a, p.b):
                p.run(e, e.on_timer(p.now))
            seen_indices = max(seen_indices, len(p.a.indices), len(p.b.indices))
            p.wire.clear()
            p.delivered["a"].clear()
            p.delivered["b"].clear()

    run_for(600)  # warm up: caches, first rekeys
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    handshakes0 = p.pa.stats.handshakes
    run_for(hours * 3600)
    grown = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    rekeys = p.pa.stats.handshakes - handshakes0
    assert rekeys >= hours * 3600 / (C.REKEY_AFTER_TIME + 30)
    assert seen_indices <= 6
    assert grown < 256 * 1024, grown
    figure("engine_soak_simulated_hours", hours, f"h, {rekeys} rekeys, heap growth {grown} B")

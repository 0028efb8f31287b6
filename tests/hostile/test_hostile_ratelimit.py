"""The handshake rate limit under floods (security review, item 1): IPv6 sources are limited
per /64 as the kernel module does, a full table degrades per wider prefix instead of refusing
every newcomer, and a peer that completed a handshake keeps rekeying through a flood.

Before the fix: 4096 addresses of one /64 x 6 cookie-carrying initiations each reached the DH
(per-/128 buckets), a legitimate new source was refused while the table was full, and each junk
initiation cost ~123 µs of X25519.
"""

from __future__ import annotations

import random

from tests.harness.engine_pair import A_IN, B_IN, Pair
from tests.harness.hostile_env import figure
from tests.harness.packets import ipv4
from tunnelpy.protocol import constants as C
from tunnelpy.protocol.actions import Dest
from tunnelpy.protocol.cookie import CookieGenerator
from tunnelpy.protocol.engine import RATELIMIT_BURST, RATELIMIT_MAX_SOURCES, RATELIMIT_PER_SECOND


def _cookie_holders(p: Pair, r: random.Random, sources: list[tuple[str, int]]):
    """Strangers that got a cookie at their address (on-path, or really there)."""
    out = []
    for src in sources:
        gen = CookieGenerator(p.b.public_key)
        m = gen.add_macs(b"\x01\0\0\0" + r.randbytes(144), p.now)
        reply = p.b.from_network([(m, src)], p.now).datagrams[Dest(*src)][0]
        assert gen.consume_reply(reply, p.now)
        out.append((gen, src))
    return out


def test_one_v6_slash64_is_one_source():
    p = Pair(1, under_load_threshold=0)
    r = random.Random(7)
    holders = _cookie_holders(p, r, [(f"2001:db8:1:2::{i:x}", 4000) for i in range(4096)])
    before = p.b.drops["bad_initiation"]
    t0 = p.now
    for _ in range(6):
        for gen, src in holders:
            p.b.from_network([(gen.add_macs(b"\x01\0\0\0" + r.randbytes(144), p.now), src)], p.now)
            p.now += 1 / 100_000
    reached_dh = p.b.drops["bad_initiation"] - before
    allowed = RATELIMIT_BURST + RATELIMIT_PER_SECOND * (p.now - t0) + 1
    figure("ratelimit_v6_slash64_reached_dh", reached_dh, f"of {6 * 4096} initiations")
    assert reached_dh <= allowed, (reached_dh, allowed)
    assert p.b.drops["ratelimited"] >= 6 * 4096 - allowed


def test_full_table_still_admits_a_newcomer_from_elsewhere():
    p = Pair(1, under_load_threshold=0)
    r = random.Random(8)
    # Fill the table: one busy source per /64, all in 2001:db8::/32.
    n = RATELIMIT_MAX_SOURCES + 100
    holders = _cookie_holders(p, r, [(f"2001:db8:{i >> 16:x}:{i & 0xFFFF:x}::1", 4000)
                                     for i in range(n)])  # fmt: skip
    for gen, src in holders:
        p.b.from_network([(gen.add_macs(b"\x01\0\0\0" + r.randbytes(144), p.now), src)], p.now)
    assert len(p.b._buckets) <= RATELIMIT_MAX_SOURCES
    # A new, legitimate source elsewhere (valid mac1 and mac2) is not refused.
    ((gen, src),) = _cookie_holders(p, r, [("2001:db9:5::7", 5000)])
    before = p.b.drops["ratelimited"]
    p.b.from_network([(gen.add_macs(b"\x01\0\0\0" + r.randbytes(144), p.now), src)], p.now)
    assert p.b.drops["ratelimited"] == before
    # ... while the flood's sources that found the table full share their /32's bucket.
    passed = 0
    for gen, src in holders[-100:]:
        b = p.b.drops["bad_initiation"]
        p.b.from_network([(gen.add_macs(b"\x01\0\0\0" + r.randbytes(144), p.now), src)], p.now)
        passed += p.b.drops["bad_initiation"] - b
    assert passed <= RATELIMIT_BURST + 1


def test_a_peer_keeps_its_session_through_a_flood_from_one_slash64():
    p = Pair(1, under_load_threshold=0).established()  # under load from the start
    r = random.Random(9)
    holders = _cookie_holders(p, r, [(f"2001:db8:7:7::{i:x}", 4000) for i in range(4096)])
    first = p.pa.current
    rekeyed_at = None
    # REKEY_AFTER_TIME later A must rekey while the flood runs; its session must not die.
    deadline = p.now + C.REJECT_AFTER_TIME + 10
    k = 0
    while p.now < deadline:
        for gen, src in holders[k % 4096 : k % 4096 + 50]:
            p.b.from_network([(gen.add_macs(b"\x01\0\0\0" + r.randbytes(144), p.now), src)], p.now)
        k += 50
        p.now += 0.5
        for e in (p.a, p.b):
            p.run(e, e.on_timer(p.now))
        p.send(p.a, [ipv4(A_IN, B_IN, b"still here")])
        if rekeyed_at is None and p.pa.current is not first:
            rekeyed_at = p.now
    assert rekeyed_at is not None, dict(p.b.drops)
    p.delivered["b"].clear()
    p.send(p.a, [ipv4(A_IN, B_IN, b"after")])
    assert p.delivered["b"] == [ipv4(A_IN, B_IN, b"after")]
    assert p.b.drops["ratelimited"] > 0  # the flood was limited all along

"""The semantics of the testing knob TUNNELPY_TEST_TIME_SCALE, shown on the in-memory engines.

Wanted from the daemon (tunnelpy/daemon.py + datapath.py; not wired by this test tree):

    TUNNELPY_TEST_TIME_SCALE=S   with 0.01 <= S <= 1 (anything else: one-line error, exit 1)

- Every ``now`` the daemon passes the engine (from_tunnel, from_network, from_segment, on_timer,
  UAPI changes) is ``t0 + (loop.time() - t0) / S``, t0 = loop.time() at start-up: protocol time
  runs 1/S times faster than real time.
- The loop timer for ``engine.next_deadline()`` is armed at ``t0 + (deadline - t0) * S``.
- The wall clock (TAI64N timestamps, ``last_handshake_time``) stays real.
- A warning is logged at start: the knob is for tests only.

So every protocol timer — REKEY_AFTER_TIME 120 s, REJECT_AFTER_TIME 180 s, KEEPALIVE 10 s,
REKEY_TIMEOUT 5 s and its jitter, COOKIE_REFRESH 120 s, the 50/s initiation limit, the
under-load window — fires S times sooner in real time, and nothing else changes. The lower
bound 0.01 keeps REKEY_TIMEOUT × S (50 ms) above the 2^24 ns TAI64N whitening step, so two
initiations from one peer never carry the same timestamp (the responder would drop the second as
a replay); test_scale_below_bound_breaks shows why the bound exists.
"""

from __future__ import annotations

import pytest

from tests.harness.engine_pair import A_IN, B_IN, Pair
from tests.harness.packets import ipv4
from tunnelpy.protocol import constants as C


class ScaledClock:
    """The mapping the daemon applies (see the module docstring)."""

    def __init__(self, scale: float, t0: float) -> None:
        if not 0.01 <= scale <= 1:
            raise ValueError("TUNNELPY_TEST_TIME_SCALE must be between 0.01 and 1")
        self.scale, self.t0 = scale, t0

    def engine_now(self, loop_time: float) -> float:
        return self.t0 + (loop_time - self.t0) / self.scale

    def loop_at(self, deadline: float) -> float:
        return self.t0 + (deadline - self.t0) * self.scale


def run_real(p: Pair, clock: ScaledClock, real_seconds: float, step: float = 0.01) -> dict:
    """Drive the pair in real-time steps, traffic A->B every step, like the daemon would."""
    real = clock.t0
    handshakes = []
    end = real + real_seconds
    while real < end:
        real += step
        p.now = clock.engine_now(real)
        p.real = real  # the wall clock follows real time, not engine time
        for e in (p.a, p.b):
            d = e.next_deadline()
            if d is not None and clock.loop_at(d) <= real + 1e-9:
                p.run(e, e.on_timer(p.now))
        n = p.pa.stats.handshakes
        p.send(p.a, [ipv4(A_IN, B_IN)])
        if p.pa.stats.handshakes != n:
            handshakes.append(real - clock.t0)
    return {"handshakes": handshakes}


def scaled_pair(scale: float) -> tuple[Pair, ScaledClock]:
    p = Pair(9)
    clock = ScaledClock(scale, p.now)
    p.real = p.now
    wall = lambda: 1.7e9 + p.real  # noqa: E731
    p.a.wall = p.b.wall = wall
    return p, clock


def test_mapping_round_trips_and_bounds():
    c = ScaledClock(0.05, 100.0)
    assert c.engine_now(106.0) == pytest.approx(100.0 + C.REKEY_AFTER_TIME)
    assert c.loop_at(c.engine_now(123.4)) == pytest.approx(123.4)
    for bad in (0, 0.001, 1.5, -1):
        with pytest.raises(ValueError):
            ScaledClock(bad, 0.0)


@pytest.mark.parametrize("scale", [0.01, 0.05])
def test_rekeys_every_rekey_after_time_times_scale_without_loss(scale):
    p, clock = scaled_pair(scale)
    real_seconds = 3 * C.REKEY_AFTER_TIME * scale + 1
    res = run_real(p, clock, real_seconds, step=C.REKEY_TIMEOUT * scale / 5)
    hs = res["handshakes"]
    assert len(hs) >= 3, hs
    gaps = [b - a for a, b in zip(hs, hs[1:], strict=False)]
    for g in gaps:
        assert C.REKEY_AFTER_TIME * scale <= g <= (C.REKEY_AFTER_TIME + 2 * C.REKEY_TIMEOUT) * scale
    assert p.b.drops["replayed_initiation"] == 0
    assert dict(p.b.drops).keys() <= {"expired_session"}, dict(p.b.drops)
    sent = len([d for w, d in p.wire if w == "a" and d[0] == 4 and len(d) > 32])
    assert len(p.delivered["b"]) >= sent - 1  # every data packet arrived


def test_scale_below_bound_breaks():
    """At S = 0.001 retries come 5 ms apart: same whitened TAI64N, dropped as replays."""
    p, clock = scaled_pair(0.05)
    clock.scale = 0.001  # bypass the bound on purpose
    p.hosts.pop(("192.0.2.2", 51820))  # B never answers: A retries every REKEY_TIMEOUT
    b = p.b
    inits = []
    real = clock.t0
    p.send(p.a, [ipv4(A_IN, B_IN)])
    for _ in range(40):
        real += 0.001
        p.real = real
        p.now = clock.engine_now(real)
        out = p.a.on_timer(p.now)
        inits += [d for dgs in out.datagrams.values() for d in dgs if d[0] == 1]
    inits = [d for w, d in p.wire if d[0] == 1] + inits
    for d in inits:
        b.from_network([(d, ("192.0.2.1", 51820))], p.now)
    assert b.drops["replayed_initiation"] > 0

"""The engine's batch fast path (a GRO burst on one session): same results as one by one.

from_network takes a run of transport messages on one keypair from one address through a
shortened path after the first; replays, forgeries, a change of address and stats must come out
exactly as if each message had come alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_engine import A_ADDR, A_IN, B_IN, Net, ipv4  # noqa: E402

from tunnelpy.protocol.actions import Output  # noqa: E402


def burst(n: Net, count: int) -> list[bytes]:
    pkts = [ipv4(A_IN, B_IN, bytes([i]) * 100) for i in range(count)]
    out = n.a.from_tunnel(pkts, n.now)
    ((_, datagrams),) = out.datagrams.items()
    return datagrams


def test_burst_with_replay_forgery_and_roaming_matches_one_by_one():
    results = []
    for batched in (True, False):
        n = Net()
        n.send(n.a, [ipv4(A_IN, B_IN)])  # handshake
        d = burst(n, 8)
        bad = bytearray(d[4])
        bad[-1] ^= 1
        moved = ("10.0.0.99", 51820)
        items = [
            (d[0], A_ADDR), (d[1], A_ADDR), (d[0], A_ADDR), (d[2], A_ADDR), (bytes(bad), A_ADDR),
            (d[3], A_ADDR), (d[5], moved), (d[6], moved), (d[7], A_ADDR), (d[6], A_ADDR),
        ]  # fmt: skip
        stats0 = (n.pb.stats.rx_packets, n.pb.stats.rx_bytes)
        if batched:
            outs = [n.b.from_network(items, n.now)]
        else:
            outs = [n.b.from_network([it], n.now) for it in items]
        packets = [p for o in outs for p in o.packets]
        events = [(e.kind, e.detail) for o in outs for e in o.events]
        stats = (n.pb.stats.rx_packets - stats0[0], n.pb.stats.rx_bytes - stats0[1])
        results.append((packets, events, dict(n.b.drops), stats, n.pb.endpoint))
    assert results[0] == results[1]
    packets, events, drops, stats, endpoint = results[0]
    assert [p[-1] for p in packets] == [0, 1, 2, 3, 5, 6, 7]
    assert drops["replay"] == 2 and drops["bad_auth"] == 1
    assert stats[0] == 7
    assert [k for k, _ in events] == ["roamed", "roamed"]
    assert endpoint == A_ADDR


# ---------------------------------------------------------------- from_network_burst --

from test_engine import ipv6  # noqa: E402

from tunnelpy.protocol import engine as engine_mod  # noqa: E402


def _sealed(n: Net, pkts: list[bytes]) -> list[bytes]:
    out = n.a.from_tunnel(pkts, n.now)
    ((_, datagrams),) = out.datagrams.items()
    return datagrams


def _burst_case(case: str, n: Net) -> tuple[bytes, int]:
    """(GRO buffer, segment size) of one scenario, built on a handshaken pair."""
    full = [ipv4(A_IN, B_IN, bytes([i]) * 1372) for i in range(30)]  # 1392-byte packets
    if case == "padded":  # 101-byte packets travel padded to 112: IP length < plaintext
        full = [ipv4(A_IN, B_IN, bytes([i]) * 81) for i in range(30)]
    elif case == "ipv6":
        full = [ipv6("fd00::1", "fd00::2", bytes([i]) * 1352) for i in range(30)]
    elif case == "spoofed":  # an inner source the peer may not use, mid-burst
        full[11] = ipv4("10.9.9.9", B_IN, bytes([11]) * 1372)
    elif case == "mixed-lengths":  # a shorter inner length behind the same padded size
        full[5] = ipv4(A_IN, B_IN, bytes([5]) * 1370)
    d = _sealed(n, full)
    tail = _sealed(n, [ipv4(A_IN, B_IN, b"t" * 50)])
    if case == "tampered":
        bad = bytearray(d[17])
        bad[40] ^= 1
        d[17] = bytes(bad)
    elif case == "reordered":
        d[8], d[9] = d[9], d[8]
    elif case == "replayed-inside":
        d[20] = d[3]
    elif case == "other-index":  # a message for an index we do not have, mid-burst
        d[12] = d[12][:4] + b"\xee\xee\xee\xee" + d[12][8:]
    elif case == "keepalive-tail":
        n.a.set_persistent_keepalive(n.pa, 1, n.now)
        tail = list(n.a.on_timer(n.now + 1.5).datagrams.values())[0][-1:]
    size = len(d[0])
    assert all(len(x) == size for x in d)
    return b"".join(d + tail), size


CASES = [
    "clean", "padded", "ipv6", "spoofed", "mixed-lengths", "tampered", "reordered",
    "replayed-inside", "other-index", "keepalive-tail", "twice",
]  # fmt: skip


import pytest  # noqa: E402


@pytest.mark.parametrize("case", CASES)
def test_burst_matches_one_by_one(monkeypatch, case):
    # from_network_burst must give exactly what from_network gives for the same datagrams one
    # at a time: packets, drops, events, counters, timers; and take its run path when clean.
    runs: list[int] = []
    real = engine_mod.Engine._transport_run

    def spy(self, *args):
        got = real(self, *args)
        runs.append(got)
        return got

    monkeypatch.setattr(engine_mod.Engine, "_transport_run", spy)
    results = []
    for batched in (True, False):
        n = Net()
        n.send(n.a, [ipv4(A_IN, B_IN)])  # handshake
        buf, size = _burst_case(case, n)
        rounds = 2 if case == "twice" else 1
        outs = []
        for _ in range(rounds):
            if batched:
                outs.append(n.b.from_network_burst(buf, size, A_ADDR, n.now))
            else:
                pieces = [buf[i : i + size] for i in range(0, len(buf), size)]
                outs += [n.b.from_network([(p, A_ADDR)], n.now) for p in pieces]
        s = n.pb.stats
        results.append((
            [p for o in outs for p in o.packets],
            [(e.kind, e.detail) for o in outs for e in o.events],
            dict(n.b.drops), (s.rx_packets, s.rx_bytes), n.pb.send_keepalive_at,
            n.pb.need_another_keepalive, n.b.next_deadline(),
        ))  # fmt: skip
    assert results[0] == results[1]
    packets, _, drops, _, _, _, _ = results[0]
    assert packets, "nothing delivered"
    if case in ("clean", "padded", "ipv6", "twice", "keepalive-tail"):
        assert runs and runs[0] >= 28, runs  # the run path took the burst
    if case == "twice":
        assert drops["replay"] == 31
    if case == "tampered":
        assert drops["bad_auth"] == 1 and len(packets) == 30
    if case == "spoofed":
        assert drops["not_allowed_source"] == 1


def test_replay_accept_run_equals_accepting_one_by_one():
    import random

    from tunnelpy.protocol.replay import WINDOW_SIZE, ReplayWindow

    rng = random.Random(3)
    for _ in range(3000):
        a, b = ReplayWindow(), ReplayWindow()
        for _ in range(rng.randrange(4)):  # some history
            c = rng.randrange(20000)
            a.accept(c)
            b.accept(c)
        first = a.last + rng.choice([-5, 0, 1, 2, 63, 64, 65, 500, WINDOW_SIZE, 10**6])
        last = first + rng.choice([0, 1, 5, 62, 63, 64, 127, 240, WINDOW_SIZE])
        ok = a.accept_run(first, last, limit=10**7)
        if ok:
            assert first > b.last
            assert all(b.accept(c, limit=10**7) for c in range(first, last + 1))
            assert (a._last, a._ring) == (b._last, b._ring)
        else:
            assert first <= b.last or last - first >= WINDOW_SIZE or last >= 10**7
            assert (a._last, a._ring) == (b._last, b._ring)  # untouched


def test_mangled_bursts_never_raise_and_match_one_by_one():
    # Bytes from the network never raise: flipped bytes anywhere (headers, counters, indices,
    # ciphertext), cut bursts and odd sizes, each compared with the one-by-one path.
    import random

    rng = random.Random(11)
    for _ in range(150):
        seed = rng.randrange(1 << 30)
        results = []
        for batched in (True, False):
            r = random.Random(seed)
            n = Net()
            n.send(n.a, [ipv4(A_IN, B_IN)])
            buf, size = _burst_case(r.choice(CASES), n)
            b = bytearray(buf)
            for _ in range(r.randrange(4)):
                b[r.randrange(len(b))] ^= 1 << r.randrange(8)
            b = bytes(b[: r.randrange(size, len(b) + 1)])
            if r.random() < 0.2:
                size = r.choice([1, 16, 31, 32, size - 1, size + 1])
            if batched:
                out = n.b.from_network_burst(b, size, A_ADDR, n.now)
            else:
                out = Output()
                for i in range(0, len(b), size):
                    n.b.from_network([(b[i : i + size], A_ADDR)], n.now, out)
            results.append((out.packets, dict(n.b.drops), n.pb.stats.rx_packets))
        assert results[0] == results[1]

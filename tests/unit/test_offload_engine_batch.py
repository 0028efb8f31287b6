"""The engine's batch fast path (a GRO burst on one session): same results as one by one.

from_network takes a run of transport messages on one keypair from one address through a
shortened path after the first; replays, forgeries, a change of address and stats must come out
exactly as if each message had come alone.
"""

from __future__ import annotations

from tests.harness.engine_pair import A_ADDR, A_IN, B_IN, Net
from tests.harness.packets import ipv4


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
        events = [(type(e).__name__, str(e)) for o in outs for e in o.events]
        stats = (n.pb.stats.rx_packets - stats0[0], n.pb.stats.rx_bytes - stats0[1])
        results.append((packets, events, dict(n.b.drops), stats, n.pb.endpoint))
    assert results[0] == results[1]
    packets, events, drops, stats, endpoint = results[0]
    assert [p[-1] for p in packets] == [0, 1, 2, 3, 5, 6, 7]
    assert drops["replay"] == 2 and drops["bad_auth"] == 1
    assert stats[0] == 7
    assert [k for k, _ in events] == ["Roamed", "Roamed"]
    assert endpoint == A_ADDR

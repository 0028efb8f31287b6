"""Scale: 1 000 peers and 10^5 AllowedIPs prefixes — parse, build, look up; then a real daemon.

Figures (not timed assertions, beyond generous sanity bounds): config parse time, engine build
time and heap, longest-prefix lookups per second (hot addresses through the memo, and cold
random addresses), the daemon's start time and RSS with that config, and how long 100 live peers
driven over real UDP from a test process take to handshake and get an echo reply through it.
"""

from __future__ import annotations

import ipaddress
import json
import random
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from tests.harness.hostile_env import figure, pick
from tests.harness.hostile_scale import b64, big_config, peer_address
from tunnelpy import config
from tunnelpy.protocol.crypto import public_key
from tunnelpy.protocol.engine import Engine

N_PEERS, N_PREFIXES = 1000, 100_000
LIVE = str(Path(__file__).resolve().parent / "live_peers.py")


def build_engine(conf: config.Config) -> Engine:
    e = Engine(conf.interface.private_key, rng=random.Random(1).randbytes, wall=time.time)
    for p in conf.peers:
        e.add_peer(p.public_key, name=p.name, allowed_ips=p.allowed_ips)
    return e


def test_1000_peers_100k_prefixes_parse_build_lookup():
    text, _ = big_config(N_PEERS, N_PREFIXES, name="scale0", port=51820)
    t0 = time.perf_counter()
    conf = config.parse(text, "scale.conf")
    t_parse = time.perf_counter() - t0
    assert sum(len(p.allowed_ips) for p in conf.peers) == N_PREFIXES
    tracemalloc.start()
    t0 = time.perf_counter()
    e = build_engine(conf)
    t_build = time.perf_counter() - t0
    heap = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(e.allowed) == N_PREFIXES
    # correctness on a sample: the longest match wins
    r = random.Random(2)
    nets = [(n, p) for p in conf.peers for n in p.allowed_ips]
    for net, _ in r.sample(nets, 2000):
        addr = net.broadcast_address
        owner = e.allowed.lookup(addr.packed)
        assert owner is not None
        assert any(addr in n and n.prefixlen >= net.prefixlen for n in e.allowed.networks_of(owner))
    # lookup rates
    hot = [ipaddress.ip_address(peer_address(i)).packed for i in range(N_PEERS)]
    cold = [r.randbytes(4) for _ in range(100_000)] + [
        b"\xfd" + r.randbytes(15) for _ in range(20_000)
    ]
    lookup = e.allowed.lookup
    for a in hot:
        lookup(a)
    n_hot = pick(200_000, 2_000_000)
    t0 = time.perf_counter()
    for i in range(n_hot):
        lookup(hot[i % N_PEERS])
    hot_rate = n_hot / (time.perf_counter() - t0)
    uncached = e.allowed.lookup_uncached
    t0 = time.perf_counter()
    for a in cold:
        uncached(a)
    cold_rate = len(cold) / (time.perf_counter() - t0)
    # and through the engine's outbound path (routing + staging; no sessions exist)
    pkts = [bytes([0x45]) + bytes(15) + a + bytes(8) for a in hot[:256]]
    t0 = time.perf_counter()
    for _ in range(pick(20, 200)):
        e.from_tunnel(pkts, 1.0)
        for p in e.peers.values():
            p.staged.clear()
    route_rate = pick(20, 200) * len(pkts) / (time.perf_counter() - t0)
    assert t_parse < 30 and t_build < 30
    assert hot_rate > 100_000 and cold_rate > 10_000
    figure(
        "scale_config_parse_s", round(t_parse, 2), f"s for {N_PEERS} peers, {N_PREFIXES} prefixes"
    )
    figure("scale_engine_build_s", round(t_build, 2), "s")
    figure("scale_engine_heap_MiB", round(heap / 2**20, 1), "MiB (tracemalloc)")
    figure("scale_lookup_hot_per_s", int(hot_rate), "lookups/s (memoised addresses)")
    figure("scale_lookup_cold_per_s", int(cold_rate), "lookups/s (random addresses, no memo)")
    figure("scale_from_tunnel_route_per_s", int(route_rate), "packets/s routed to 256 peers")


@pytest.mark.root
@pytest.mark.parametrize("table", [None, "off"], ids=["routes", "table-off"])
def test_daemon_with_1000_peers_starts_and_100_live_peers_handshake(make_lab, table):
    from tests.harness.hostile_sites import proc_sample
    from tests.harness.netns import WG_RUN_DIR
    from tests.harness.sites import TUNNELPYD

    if table is None and not pick(False, True):
        pytest.skip("10^5 kernel routes: long form only (TUNNELPY_HOSTILE=long)")
    lab = make_lab(1)
    (ns,) = lab.ns
    name = lab.ifname("tp")
    text, keys = big_config(N_PEERS, N_PREFIXES, name=name, port=51820, table=table)
    conf = lab.write_file(f"{name}.conf", text)
    t0 = time.monotonic()
    proc = lab.popen(ns, *TUNNELPYD, "-c", str(conf), "--log-level", "info",
                     log_path=lab.workdir / f"tunnelpyd-{name}.log")  # fmt: skip
    sock = WG_RUN_DIR / f"{name}.sock"
    lab.wait_for(lambda: sock.exists() and "UP" in lab.host("ip", "-n", ns, "-br", "link", "show",
                 name, check=False).stdout, 300, "daemon up", watch=[proc])  # fmt: skip
    start_s = time.monotonic() - t0
    _, rss = proc_sample(proc.pid)
    n_live = pick(100, N_PEERS)
    spec = {
        "server_public": b64(public_key(keys[0])),
        "server": ["127.0.0.1", 51820],
        "target": "10.70.0.254",
        "peers": [[keys[1 + i].hex(), peer_address(i)] for i in range(n_live)],
        "timeout": 120,
    }
    spec_path = lab.write_file("live.json", json.dumps(spec))
    t_live = time.monotonic()
    res = lab.run(ns, sys.executable, LIVE, str(spec_path), timeout=180)
    live = json.loads(res.stdout.strip().splitlines()[-1])
    assert live["handshakes"] == n_live and live["replies"] == n_live, (live, res.stderr[-2000:])
    _, rss_after = proc_sample(proc.pid)
    dump = lab.run(ns, "wg", "show", name, "latest-handshakes").stdout
    assert sum(1 for line in dump.splitlines() if not line.endswith("\t0")) >= n_live
    assert proc.stop() == 0
    # routes are installed before the data path starts: traffic flows from here
    traffic_s = t_live - t0 + live["first"]
    tag = "routes" if table is None else "table_off"
    figure(
        f"scale_daemon_first_traffic_s_{tag}", round(traffic_s, 1), "s from spawn to first reply"
    )
    figure(
        f"scale_daemon_start_s_{tag}",
        round(start_s, 1),
        f"s to UAPI+TUN up, {N_PEERS} peers, {N_PREFIXES} prefixes",
    )
    figure(
        f"scale_daemon_rss_MiB_{tag}",
        {"start": round(rss / 1024), "after_live": round(rss_after / 1024)},
        "MiB",
    )
    figure(f"scale_live_peers_{tag}", live, f"{n_live} engines over real UDP (s from start)")

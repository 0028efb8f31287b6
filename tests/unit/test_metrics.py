"""Prometheus metrics: the collector over status documents, the HTTP server on a real loopback
socket, and the MetricsListen config key."""

from __future__ import annotations

import asyncio
import sys
import time
import urllib.error
import urllib.request

import pytest

from tunnelpy import config as cfgmod
from tunnelpy import keys
from tunnelpy.io import metrics

prometheus_client = pytest.importorskip(
    "prometheus_client", reason="the metrics extra: pip install 'tunnelpy[metrics]'"
)
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

NOW = 1_700_000_100.0


def doc() -> dict:
    return {
        "schema": 1, "name": "tp0", "source": "tunnelpyd", "transport": "wireguard", "pid": 1,
        "public_key": "PUB=", "listen_port": 51820, "fwmark": 0,
        "peers": [
            {"name": "site-b", "public_key": "KB=", "endpoint": "192.0.2.2:51820",
             "allowed_ips": [], "latest_handshake": NOW - 40, "rx_bytes": 1000, "tx_bytes": 2000,
             "rx_packets": 10, "tx_packets": 20, "handshakes": 3, "persistent_keepalive": 0,
             "preshared_key": False, "drops": {"replay": 2, "bad_auth": 1}},
            {"name": "site-c", "public_key": "KC=", "endpoint": None, "allowed_ips": [],
             "latest_handshake": None, "rx_bytes": 0, "tx_bytes": 0, "rx_packets": 0,
             "tx_packets": 0, "handshakes": 0, "persistent_keepalive": 0,
             "preshared_key": False, "drops": {}},
        ],
        "drops": {"replay": 2, "bad_auth": 1, "bad_mac1": 7},
        "segments": [
            {"name": "lab", "vni": 100, "device": "lab0", "bridge": None, "hub": False,
             "peers": None, "fdb_size": 4, "fdb_max": 4096, "fdb_refused": 5, "fdb_moves": 1,
             "fdb": []},
        ],
        "topology": [],
        "reloads": {"ok": 2, "error": 1},
    }  # fmt: skip


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(s: dict, name: str, **labels: str) -> float:
    return s[(name, tuple(sorted(labels.items())))]


def test_collector_values():
    collector = metrics.StatusCollector(lambda: [doc()], wall=lambda: NOW)
    reg = prometheus_client.CollectorRegistry(auto_describe=False)
    reg.register(collector)
    s = samples(metrics.render(reg).decode())
    b = {"interface": "tp0", "peer": "site-b", "public_key": "KB="}
    c = {"interface": "tp0", "peer": "site-c", "public_key": "KC="}
    assert value(s, "tunnelpy_peers", interface="tp0") == 2
    assert value(s, "tunnelpy_info", interface="tp0", transport="wireguard", public_key="PUB=") == 1
    assert value(s, "tunnelpy_peer_receive_bytes_total", **b) == 1000
    assert value(s, "tunnelpy_peer_transmit_bytes_total", **b) == 2000
    assert value(s, "tunnelpy_peer_receive_packets_total", **b) == 10
    assert value(s, "tunnelpy_peer_transmit_packets_total", **b) == 20
    assert value(s, "tunnelpy_peer_handshakes_total", **b) == 3
    assert value(s, "tunnelpy_peer_last_handshake_timestamp_seconds", **b) == NOW - 40
    assert value(s, "tunnelpy_peer_last_handshake_age_seconds", **b) == 40
    assert value(s, "tunnelpy_peer_last_handshake_timestamp_seconds", **c) == 0
    assert ("tunnelpy_peer_last_handshake_age_seconds", tuple(sorted(c.items()))) not in s
    assert value(s, "tunnelpy_peer_drops_total", reason="replay", **b) == 2
    assert value(s, "tunnelpy_drops_total", interface="tp0", reason="bad_mac1") == 7
    seg = {"interface": "tp0", "segment": "lab", "vni": "100"}
    assert value(s, "tunnelpy_segment_fdb_entries", **seg) == 4
    assert value(s, "tunnelpy_segment_fdb_max_entries", **seg) == 4096
    assert value(s, "tunnelpy_segment_fdb_refused_total", **seg) == 5
    assert value(s, "tunnelpy_segment_fdb_moves_total", **seg) == 1
    assert value(s, "tunnelpy_reloads_total", interface="tp0", result="error") == 1


def test_label_values_are_escaped():
    d = doc()
    d["peers"][0]["name"] = 'we"ird\\name'
    reg = metrics.make_registry(lambda: [d])
    s = samples(metrics.render(reg).decode())
    assert any(dict(labels).get("peer") == 'we"ird\\name' for _, labels in s)


def fetch(url: str, method: str = "GET") -> tuple[int, str, bytes]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def test_http_server_on_loopback():
    async def main():
        srv = metrics.MetricsServer("127.0.0.1", 0, lambda: [doc()])
        await srv.start()
        loop = asyncio.get_running_loop()
        base = srv.url.removesuffix("/metrics")
        try:
            return [
                await loop.run_in_executor(None, fetch, srv.url),
                await loop.run_in_executor(None, fetch, base + "/"),
                await loop.run_in_executor(None, fetch, base + "/nope"),
                await loop.run_in_executor(None, fetch, srv.url, "POST"),
                await loop.run_in_executor(None, fetch, srv.url, "HEAD"),
            ]
        finally:
            await srv.close()

    (m, root, nope, post, head) = asyncio.run(main())
    assert m[0] == 200 and m[1].startswith("text/plain; version=0.0.4")
    s = samples(m[2].decode())
    assert value(s, "tunnelpy_peers", interface="tp0") == 2
    # process metrics come from prometheus-client's ProcessCollector (CPU, memory)
    assert ("process_cpu_seconds_total", ()) in s
    assert s[("process_resident_memory_bytes", ())] > 0
    assert root[0] == 200 and b"/metrics" in root[2]
    assert nope[0] == 404 and post[0] == 405
    assert head[0] == 200 and head[2] == b""


def test_slow_client_does_not_block_the_loop():
    async def main():
        srv = metrics.MetricsServer("127.0.0.1", 0, lambda: [doc()])
        await srv.start()
        try:
            _, w = await asyncio.open_connection("127.0.0.1", srv.port)
            w.write(b"GET /metrics HTTP/1.1\r\n")  # and never finishes the request
            t = time.monotonic()
            status = await asyncio.get_running_loop().run_in_executor(None, fetch, srv.url)
            w.close()
            return status[0], time.monotonic() - t
        finally:
            await srv.close()

    status, took = asyncio.run(main())
    assert status == 200 and took < 3


def test_missing_prometheus_client_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(metrics.MetricsUnavailable, match=r"pip install 'tunnelpy\[metrics\]'"):
        metrics.make_registry(lambda: [])


@pytest.mark.parametrize(
    "host,loop", [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False),
                  ("192.0.2.1", False), ("::", False)],
)  # fmt: skip
def test_is_loopback(host, loop):
    assert metrics.is_loopback(host) is loop


# ------------------------------------------------------------------- config: MetricsListen --

PRIV = keys.generate_private()


def listen(value: str):
    text = f"[Interface]\nPrivateKey = {PRIV}\nMetricsListen = {value}\n"
    return cfgmod.parse(text, "site.conf").interface.metrics_listen


@pytest.mark.parametrize(
    "value,expected",
    [
        ("9586", ("127.0.0.1", 9586)),  # a bare port never means a public address
        ("127.0.0.1:9586", ("127.0.0.1", 9586)),
        ("localhost:9100", ("127.0.0.1", 9100)),
        ("[::1]:9586", ("::1", 9586)),
        ("0.0.0.0:9586", ("0.0.0.0", 9586)),  # public: allowed because it is written out
        ("[::]:9586", ("::", 9586)),
    ],
)
def test_metrics_listen_accepts(value, expected):
    assert listen(value) == expected


@pytest.mark.parametrize(
    "value", ["metrics.example:9586", "::1:9586", "127.0.0.1", "0", "70000", "[::1]"]
)
def test_metrics_listen_refuses(value):
    with pytest.raises(cfgmod.ConfigError, match=r"site.conf:3: Interface.MetricsListen: "):
        listen(value)


def test_metrics_off_by_default():
    text = f"[Interface]\nPrivateKey = {PRIV}\n"
    assert cfgmod.parse(text, "site.conf").interface.metrics_listen is None

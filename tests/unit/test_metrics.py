"""Prometheus metrics: the collector over status documents, the HTTP server on a real loopback
socket, and the MetricsListen config key."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

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


def render(docs, wall=lambda: NOW) -> str:
    return metrics.Renderer(wall).render(docs)


def test_document_values():
    d = doc()
    d["metrics_refused"] = {"busy": 4, "timeout": 1, "bad_request": 0}
    s = samples(render([d]))
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
    assert value(s, "tunnelpy_peer_last_handshake_timestamp_seconds", **c) == 0
    # the handshake is a timestamp only (an age computed at scrape time lies when cached)
    assert not any(name.endswith("_age_seconds") for name, _ in s)
    assert value(s, "tunnelpy_peer_drops_total", reason="replay", **b) == 2
    assert value(s, "tunnelpy_drops_total", interface="tp0", reason="bad_mac1") == 7
    seg = {"interface": "tp0", "segment": "lab", "vni": "100"}
    assert value(s, "tunnelpy_segment_fdb_entries", **seg) == 4
    assert value(s, "tunnelpy_segment_fdb_max_entries", **seg) == 4096
    assert value(s, "tunnelpy_segment_fdb_refused_total", **seg) == 5
    assert value(s, "tunnelpy_segment_fdb_moves_total", **seg) == 1
    assert value(s, "tunnelpy_reloads_total", interface="tp0", result="error") == 1
    assert value(s, "tunnelpy_metrics_refused_total", interface="tp0", reason="busy") == 4


def test_families_are_typed_once_and_contiguous():
    # The text format wants each family's samples together under one TYPE line.
    text = render([doc(), {**doc(), "name": "tp1"}])
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert families["tunnelpy_peer_receive_bytes"] == "counter"
    assert families["tunnelpy_peer_last_handshake_timestamp_seconds"] == "gauge"
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(types) == len(set(types))
    seen, current = set(), None
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name != current:
            assert name not in seen, f"{name} is split"
            seen.add(name)
            current = name


def test_label_values_are_escaped():
    d = doc()
    d["peers"][0]["name"] = 'we"ird\\name\nline'
    s = samples(render([d]))
    assert any(dict(labels).get("peer") == 'we"ird\\name\nline' for _, labels in s)


def test_label_cache_follows_renamed_and_removed_peers():
    r = metrics.Renderer(lambda: NOW)
    d = doc()
    r.render([d])
    d["peers"][0]["name"] = "renamed"
    del d["peers"][1]
    s = samples(r.render([d]))
    names = {dict(labels).get("peer") for _, labels in s} - {None}
    assert names == {"renamed"}
    assert len(r._labels) == 1


def big_doc(n: int) -> dict:
    d = doc()
    base = d["peers"][0]
    d["peers"] = [{**base, "name": f"p{i}", "public_key": f"{i:043d}="} for i in range(n)]
    return d


def test_render_is_sliced_and_cached():
    """5 000 peers: the loop keeps ticking every millisecond during the render (it yields every
    SLICE_SECONDS), and concurrent and later requests within CACHE_SECONDS share one render."""
    calls = []

    def snapshot():
        calls.append(1)
        return [big_doc(5000)]

    async def main():
        srv = metrics.MetricsServer(("127.0.0.1", 0), snapshot)
        ticks: list[float] = []
        stop = False

        async def ticker():
            while not stop:
                ticks.append(time.perf_counter())
                await asyncio.sleep(0.001)

        t = asyncio.get_running_loop().create_task(ticker())
        await asyncio.sleep(0.01)
        t0 = time.perf_counter()
        docs = await asyncio.gather(*(srv.document() for _ in range(5)))
        took = time.perf_counter() - t0
        again = await srv.document()
        stop = True
        await t
        during = sum(1 for x in ticks if t0 < x < t0 + took)
        return docs, again, took, during, srv.renders

    docs, again, took, ticks_during, renders = asyncio.run(main())
    assert len(calls) == 1 and renders == 1
    assert all(d is docs[0] for d in docs) and again is docs[0]  # the same bytes object
    assert len(docs[0]) > 1_000_000
    # the render took several slices, and the loop ran other tasks between them (rendered in
    # one piece, the ticker could not have run at all until it was done)
    assert took > 5 * metrics.SLICE_SECONDS
    assert ticks_during >= 3, (ticks_during, took)


def test_cache_expires(monkeypatch):
    monkeypatch.setattr(metrics, "CACHE_SECONDS", 0.05)
    n = [0]

    def snapshot():
        n[0] += 1
        d = doc()
        d["peers"][0]["rx_bytes"] = n[0]
        return [d]

    async def main():
        srv = metrics.MetricsServer(("127.0.0.1", 0), snapshot)
        first = await srv.document()
        await asyncio.sleep(0.1)
        return first, await srv.document()

    first, second = asyncio.run(main())
    lbl = 'interface="tp0",peer="site-b",public_key="KB="'
    assert f"tunnelpy_peer_receive_bytes_total{{{lbl}}} 1\n".encode() in first
    assert f"tunnelpy_peer_receive_bytes_total{{{lbl}}} 2\n".encode() in second


def fetch(url: str, method: str = "GET") -> tuple[int, str, bytes]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def test_http_server_on_loopback():
    async def main():
        srv = metrics.MetricsServer(("127.0.0.1", 0), lambda: [doc()])
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
        srv = metrics.MetricsServer(("127.0.0.1", 0), lambda: [doc()])
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


def closed_by_peer(s: socket.socket, within: float) -> float | None:
    """Seconds until the server closed or reset `s` (reading what it sent), or None."""
    s.settimeout(0.05)
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        try:
            if s.recv(1 << 16) == b"":
                return time.monotonic() - t0
        except TimeoutError:
            continue
        except ConnectionError:
            return time.monotonic() - t0
    return None


def test_connection_cap_read_timeout_and_request_size(monkeypatch):
    monkeypatch.setattr(metrics, "READ_TIMEOUT", 0.5)

    async def main():
        srv = metrics.MetricsServer(("127.0.0.1", 0), lambda: [doc()])
        await srv.start()
        loop = asyncio.get_running_loop()

        def clients():
            idle = [
                socket.create_connection(("127.0.0.1", srv.port))
                for _ in range(metrics.MAX_CONNECTIONS)
            ]
            time.sleep(0.1)
            extra = socket.create_connection(("127.0.0.1", srv.port))
            extra_closed = closed_by_peer(extra, 2)  # over the cap: closed at once
            idle_closed = [closed_by_peer(s, 2) for s in idle]  # then the read timeout
            big = socket.create_connection(("127.0.0.1", srv.port))
            big.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * (metrics.MAX_REQUEST + 10))
            big_closed = closed_by_peer(big, 2)
            ok = fetch(srv.url)[0]
            for s in [*idle, extra, big]:
                s.close()
            return extra_closed, idle_closed, big_closed, ok

        try:
            result = await loop.run_in_executor(None, clients)
            for _ in range(100):  # the last exchange ends after its client has read everything
                if not srv._active:
                    break
                await asyncio.sleep(0.01)
            return (*result, dict(srv.refused), len(srv._active))
        finally:
            await srv.close()

    extra, idle, big, ok, refused, active = asyncio.run(main())
    assert extra is not None and extra < 0.45  # before READ_TIMEOUT: closed for the cap
    assert all(t is not None for t in idle)
    assert big is not None and big < 0.45
    assert ok == 200
    assert refused == {"busy": 1, "timeout": metrics.MAX_CONNECTIONS, "bad_request": 1}
    assert active == 0


def test_client_that_never_reads_is_reset_within_the_write_timeout(monkeypatch):
    """A 4 KiB receive buffer and no reads: the reply backs up, the write times out, the
    connection is reset (the kernel's copy discarded too) and its slot is free again."""
    monkeypatch.setattr(metrics, "WRITE_TIMEOUT", 0.5)

    async def main():
        srv = metrics.MetricsServer(("127.0.0.1", 0), lambda: [big_doc(5000)])
        await srv.start()

        def client():
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", srv.port))
            s.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
            t0 = time.monotonic()
            while time.monotonic() - t0 < 5:
                state = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
                if state == 7:  # TCP_CLOSE: reset by the server, nothing read
                    break
                time.sleep(0.02)
            took = time.monotonic() - t0
            s.close()
            return took

        try:
            took = await asyncio.get_running_loop().run_in_executor(None, client)
            return took, dict(srv.refused), len(srv._active)
        finally:
            await srv.close()

    took, refused, active = asyncio.run(main())
    assert took < 3, took
    assert refused["timeout"] == 1 and active == 0


def test_unix_socket_listener(tmp_path):
    path = str(tmp_path / "tp0.metrics")

    def get(p: str) -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(p)
            s.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
            out = b""
            while chunk := s.recv(1 << 16):
                out += chunk
            return out

    async def main():
        srv = metrics.MetricsServer(path, lambda: [doc()], group=os.getgid())
        await srv.start()
        mode = stat.S_IMODE(os.stat(path).st_mode)
        try:
            reply = await asyncio.get_running_loop().run_in_executor(None, get, path)
            # a second server on the same live path is refused
            other = metrics.MetricsServer(path, lambda: [doc()])
            with pytest.raises(OSError, match="in use"):
                await other.start()
        finally:
            await srv.close()
        return srv.url, mode, reply

    url, mode, reply = asyncio.run(main())
    assert url == f"unix:{path}" and mode == 0o660
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert value(samples(body.decode()), "tunnelpy_peers", interface="tp0") == 2
    assert not os.path.exists(path)  # removed on close

    # a stale socket (nobody listening) is taken over; a regular file is never removed
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()

    async def again():
        srv = metrics.MetricsServer(path, lambda: [doc()])
        await srv.start()
        await srv.close()

    asyncio.run(again())
    Path(path).write_text("not a socket")
    with pytest.raises(OSError, match="not a socket"):
        asyncio.run(again())
    assert Path(path).read_text() == "not a socket"


NO_IMPORTS = """
import asyncio, sys, urllib.request
from tunnelpy.io import metrics

class NoImports:
    # After the drop to User the interpreter's directories may be unreadable: any import
    # a scrape still needs would fail there. Here every new import fails.
    def find_spec(self, name, path=None, target=None):
        raise ImportError(f"late import of {name}")

async def main():
    srv = metrics.MetricsServer(("127.0.0.1", 0), lambda: [DOC])
    await srv.start()
    sys.meta_path.insert(0, NoImports())
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(b"GET /metrics HTTP/1.1\\r\\n\\r\\n")
    reply = await reader.read()
    writer.close()
    await srv.close()
    print(reply.split(b"\\r\\n", 1)[0].decode())
    print(b"tunnelpy_peer_handshakes_total" in reply, b"process_cpu_seconds_total" in reply)

DOC = %r
asyncio.run(main())
"""


def test_a_scrape_imports_nothing_after_start_up():
    res = subprocess.run(
        [sys.executable, "-c", NO_IMPORTS % (doc(),)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:2] == ["HTTP/1.1 200 OK", "True True"], res.stdout


def test_missing_prometheus_client_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(metrics.MetricsUnavailable, match=r"pip install 'tunnelpy\[metrics\]'"):
        metrics.MetricsServer(("127.0.0.1", 0), lambda: [])


# ------------------------------------------------------------------- config: MetricsListen --

PRIV = keys.generate_private()


def parse(value: str) -> cfgmod.Config:
    return cfgmod.parse(f"[Interface]\nPrivateKey = {PRIV}\nMetricsListen = {value}\n", "site.conf")


def listen(value: str):
    return parse(value).interface.metrics_listen


@pytest.mark.parametrize(
    "value,expected",
    [
        ("9586", ("127.0.0.1", 9586)),  # a bare port never means a public address
        ("127.0.0.1:9586", ("127.0.0.1", 9586)),
        ("localhost:9100", ("127.0.0.1", 9100)),
        ("[::1]:9586", ("::1", 9586)),
        ("0.0.0.0:9586", ("0.0.0.0", 9586)),  # public: allowed because it is written out
        ("[::]:9586", ("::", 9586)),
        ("unix:/run/tunnelpy/site.metrics", "/run/tunnelpy/site.metrics"),
    ],
)
def test_metrics_listen_accepts(value, expected):
    assert listen(value) == expected


@pytest.mark.parametrize(
    "value",
    ["metrics.example:9586", "::1:9586", "127.0.0.1", "0", "70000", "[::1]", "unix:",
     "unix:relative/site.metrics", "unix:/" + "x" * 107],
)  # fmt: skip
def test_metrics_listen_refuses(value):
    with pytest.raises(cfgmod.ConfigError, match=r"site.conf:3: Interface.MetricsListen: "):
        listen(value)


def test_metrics_off_by_default():
    text = f"[Interface]\nPrivateKey = {PRIV}\n"
    assert cfgmod.parse(text, "site.conf").interface.metrics_listen is None


@pytest.mark.parametrize(
    "value,warned",
    [("9586", False), ("[::1]:9586", False), ("unix:/run/tunnelpy/site.metrics", False),
     ("0.0.0.0:9586", True), ("[::]:9586", True), ("192.0.2.1:9586", True)],
)  # fmt: skip
def test_metrics_listen_warns_off_loopback(value, warned):
    # The warning is the config's: `tunnelpy check` prints it and the daemon logs it at start.
    warnings = parse(value).warnings
    assert bool(warnings) is warned
    if warned:
        (w,) = warnings
        assert w.startswith("site.conf:3: Interface.MetricsListen: ") and "not a loopback" in w


def test_the_wireguard_exporters_names_are_there_too():
    """Dashboards built for mdlayher/wireguard_exporter and MindFlavor's exporter work."""
    s = samples(render([doc()]))
    assert value(s, "tunnelpy_build_info", version=metrics.VERSION) == 1
    assert value(s, "wireguard_device_info", device="tp0", public_key="PUB=") == 1
    dl = {"device": "tp0", "public_key": "KB="}
    assert value(s, "wireguard_peer_receive_bytes_total", **dl) == 1000
    assert value(s, "wireguard_peer_transmit_bytes_total", **dl) == 2000
    assert value(s, "wireguard_peer_last_handshake_seconds", **dl) == NOW - 40
    ml = {"interface": "tp0", "public_key": "KB=", "friendly_name": "site-b"}
    assert value(s, "wireguard_received_bytes_total", **ml) == 1000
    assert value(s, "wireguard_sent_bytes_total", **ml) == 2000
    assert value(s, "wireguard_latest_handshake_seconds", **ml) == NOW - 40


def test_kernel_multicast_is_counted_apart_from_drops():
    d = {**doc(), "unrouted": {"tun_multicast": 3}}
    s = samples(render([d]))
    assert value(s, "tunnelpy_tun_unrouted_total", interface="tp0", reason="tun_multicast") == 3
    assert ("tunnelpy_drops_total", (("interface", "tp0"), ("reason", "tun_multicast"))) not in s

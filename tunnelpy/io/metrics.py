"""Prometheus metrics over HTTP, for ``[Interface] MetricsListen = 127.0.0.1:9586``.

Off by default. The text exposition format is produced by prometheus-client (the optional
``metrics`` extra: ``pip install 'tunnelpy[metrics]'``) from a custom collector that reads the
same status document ``tunnelpy show --json`` prints (control.device_status), plus
prometheus-client's standard ``process_*`` metrics (CPU seconds, resident memory, open fds).

The HTTP side is a minimal asyncio server on the daemon's own loop — no thread — so a scrape
reads the engine's state between two batches, never during one. It answers ``GET /metrics``
(and ``HEAD``), ``GET /`` with a pointer, 404 for other paths and 405 for other methods; one
request per connection, bounded header size and a short read timeout.

Where it listens is the config's business (config.py parses ``MetricsListen``: a bare port means
127.0.0.1; a non-loopback address must be written out, so a public listener is never a default);
:func:`is_loopback` lets the daemon log a warning when it was asked for one.

Metric names (all labelled with ``interface``; per-peer ones with ``peer`` and ``public_key``):

==============================================  =======  =====================================
tunnelpy_info{transport,public_key}             gauge    1 per interface
tunnelpy_peers                                  gauge    configured peers
tunnelpy_peer_receive_bytes_total               counter  decrypted payload bytes received
tunnelpy_peer_transmit_bytes_total              counter  bytes sent (as ``wg`` counts them)
tunnelpy_peer_receive_packets_total             counter
tunnelpy_peer_transmit_packets_total            counter
tunnelpy_peer_handshakes_total                  counter  completed handshakes
tunnelpy_peer_last_handshake_timestamp_seconds  gauge    unix time, 0 = never
tunnelpy_peer_last_handshake_age_seconds        gauge    absent until the first handshake
tunnelpy_peer_drops_total{reason}               counter  drops attributed to a peer
tunnelpy_drops_total{reason}                    counter  all drops of the interface
tunnelpy_segment_fdb_entries{segment,vni}       gauge    learnt + static MACs
tunnelpy_segment_fdb_max_entries{segment,vni}   gauge
tunnelpy_segment_fdb_refused_total{segment,vni} counter  learns refused (table full)
tunnelpy_segment_fdb_moves_total{segment,vni}   counter  MACs that moved to another peer
tunnelpy_reloads_total{result}                  counter  result = ok | error
process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, …  (prometheus-client)
==============================================  =======  =====================================
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_PORT = 9586
MAX_HEADER = 8192
READ_TIMEOUT = 5.0

Snapshot = Callable[[], list[dict[str, Any]]]
# The classic text format every Prometheus version reads (our names are plain ASCII, so the
# output is the same as prometheus-client's newer 1.0.0 text format).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsUnavailable(RuntimeError):
    """MetricsListen is set but prometheus-client is not installed."""


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class StatusCollector:
    """A prometheus-client collector over status documents (see the module docstring)."""

    def __init__(self, snapshot: Snapshot, wall: Callable[[], float] = time.time) -> None:
        self.snapshot = snapshot
        self.wall = wall

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        docs = self.snapshot()
        now = self.wall()
        pl = ["interface", "peer", "public_key"]
        sl = ["interface", "segment", "vni"]
        info = GaugeMetricFamily(
            "tunnelpy_info", "tunnelpyd interface", labels=["interface", "transport", "public_key"]
        )
        peers = GaugeMetricFamily("tunnelpy_peers", "Configured peers", labels=["interface"])
        rxb = CounterMetricFamily("tunnelpy_peer_receive_bytes", "Bytes received", labels=pl)
        txb = CounterMetricFamily("tunnelpy_peer_transmit_bytes", "Bytes sent", labels=pl)
        rxp = CounterMetricFamily("tunnelpy_peer_receive_packets", "Packets received", labels=pl)
        txp = CounterMetricFamily("tunnelpy_peer_transmit_packets", "Packets sent", labels=pl)
        hs = CounterMetricFamily("tunnelpy_peer_handshakes", "Completed handshakes", labels=pl)
        hs_ts = GaugeMetricFamily(
            "tunnelpy_peer_last_handshake_timestamp_seconds",
            "Unix time of the latest handshake (0: never)", labels=pl,
        )  # fmt: skip
        hs_age = GaugeMetricFamily(
            "tunnelpy_peer_last_handshake_age_seconds",
            "Seconds since the latest handshake (absent: never)", labels=pl,
        )  # fmt: skip
        pdrops = CounterMetricFamily(
            "tunnelpy_peer_drops", "Dropped packets attributed to a peer, by reason",
            labels=[*pl, "reason"],
        )  # fmt: skip
        drops = CounterMetricFamily(
            "tunnelpy_drops", "Dropped packets by reason", labels=["interface", "reason"]
        )
        fdb = GaugeMetricFamily("tunnelpy_segment_fdb_entries", "FDB entries", labels=sl)
        fdb_max = GaugeMetricFamily(
            "tunnelpy_segment_fdb_max_entries", "FDB capacity (learnt entries)", labels=sl
        )
        fdb_ref = CounterMetricFamily(
            "tunnelpy_segment_fdb_refused", "MAC learns refused because the FDB was full", labels=sl
        )
        fdb_mov = CounterMetricFamily(
            "tunnelpy_segment_fdb_moves", "MACs that moved to another peer", labels=sl
        )
        reloads = CounterMetricFamily(
            "tunnelpy_reloads", "Config reloads by result", labels=["interface", "result"]
        )
        for d in docs:
            ifn = d["name"]
            info.add_metric([ifn, d.get("transport", ""), d.get("public_key") or ""], 1)
            peers.add_metric([ifn], len(d["peers"]))
            for p in d["peers"]:
                lv = [ifn, p["name"], p.get("public_key") or ""]
                rxb.add_metric(lv, p["rx_bytes"])
                txb.add_metric(lv, p["tx_bytes"])
                rxp.add_metric(lv, p.get("rx_packets", 0))
                txp.add_metric(lv, p.get("tx_packets", 0))
                hs.add_metric(lv, p.get("handshakes", 0))
                last = p.get("latest_handshake") or 0
                hs_ts.add_metric(lv, last)
                if last:
                    hs_age.add_metric(lv, max(0.0, now - last))
                for reason, n in p.get("drops", {}).items():
                    pdrops.add_metric([*lv, reason], n)
            for reason, n in d.get("drops", {}).items():
                drops.add_metric([ifn, reason], n)
            for s in d.get("segments", []):
                lv = [ifn, s["name"], str(s["vni"])]
                fdb.add_metric(lv, s["fdb_size"])
                fdb_max.add_metric(lv, s["fdb_max"])
                fdb_ref.add_metric(lv, s["fdb_refused"])
                fdb_mov.add_metric(lv, s["fdb_moves"])
            for result, n in d.get("reloads", {}).items():
                reloads.add_metric([ifn, result], n)
        yield from (info, peers, rxb, txb, rxp, txp, hs, hs_ts, hs_age, pdrops, drops)
        yield from (fdb, fdb_max, fdb_ref, fdb_mov, reloads)


def make_registry(snapshot: Snapshot) -> Any:
    """A private CollectorRegistry with the status collector and the process collector."""
    try:
        from prometheus_client import CollectorRegistry, ProcessCollector
    except ImportError:
        raise MetricsUnavailable(
            "MetricsListen needs prometheus-client: pip install 'tunnelpy[metrics]'"
        ) from None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(snapshot))
    ProcessCollector(registry=registry)
    return registry


def render(registry: Any) -> bytes:
    from prometheus_client import generate_latest

    return generate_latest(registry)


class MetricsServer:
    """``GET /metrics`` on ``host:port`` from the running loop (see the module docstring)."""

    def __init__(self, host: str, port: int, snapshot: Snapshot) -> None:
        self.host = host
        self.port = port
        self.registry = make_registry(snapshot)
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=MAX_HEADER, reuse_address=True
        )
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]  # the real port when 0 was asked for

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return
            method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, body, ctype = "405 Method Not Allowed", b"GET only\n", "text/plain"
            elif path == "/metrics":
                status, body, ctype = "200 OK", render(self.registry), CONTENT_TYPE
            elif path == "/":
                status, body, ctype = "200 OK", b"tunnelpyd: metrics at /metrics\n", "text/plain"
            else:
                status, body, ctype = "404 Not Found", b"not found\n", "text/plain"
            header = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            writer.write(header + (b"" if method == "HEAD" else body))
            await writer.drain()
        except ConnectionError:
            pass
        except Exception:
            log.exception("metrics request failed")
        finally:
            writer.close()

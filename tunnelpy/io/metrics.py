"""Prometheus metrics over HTTP, for ``[Interface] MetricsListen = 127.0.0.1:9587`` or
``MetricsListen = unix:/run/tunnelpy/NAME.metrics``.

Off by default. The endpoint is open to every local user who can connect (any user, for a TCP
port), so it is built to cost the daemon little whatever clients do, and never to cost the data
path more than a couple of milliseconds at a time (docs/hostile.md, "Metrics endpoint"):

* **One document per interval, shared.** The text is rendered at most once per
  ``CACHE_SECONDS`` and the same ``bytes`` object is sent to every client of that interval;
  requests that arrive while it is being rendered wait for that render.
* **Rendered in slices.** The document is built from :func:`tunnelpy.control.metrics_status`
  (the ``show`` document's fields, counters only, peers read lazily) by a generator that the
  server drives for at most ``SLICE_SECONDS`` at a time before it yields to the event loop, so
  packet batches run between slices. It formats the text itself (label strings of unchanged
  peers are reused between renders): prometheus-client's collector objects cost ~0.2 s per
  render with 5 000 peers, this ~0.03 s. The ``process_*`` metrics still come from
  prometheus-client's ProcessCollector.
* **Bounded clients.** At most ``MAX_CONNECTIONS`` at once; more are closed at once (so held
  connections cannot eat the daemon's fds and starve the UAPI socket). A request head must
  arrive within ``READ_TIMEOUT`` and fit in ``MAX_REQUEST`` bytes. The reply is written in
  ``CHUNK`` slices of the shared document, each of which must leave within ``WRITE_TIMEOUT``,
  and the whole exchange must end within ``CONNECTION_TIMEOUT``: a client that never reads is
  aborted (RST, its buffer freed) after a few seconds, and one client buffers at most about
  two chunks in the daemon.
* **Imports at start-up.** :func:`preload` imports everything a scrape needs; the service
  calls it before the drop to ``User``, after which the interpreter's directories may be
  unreadable (a lazy import would then fail on the first scrape).

The HTTP side is a minimal asyncio server on the daemon's own loop: ``GET /metrics`` (and
``HEAD``), ``GET /`` with a pointer, 404 for other paths and 405 for other methods; one request
per connection. A unix socket is created with mode 0660 (owner root; group the ``User``'s
primary group when there is one): who may read the metrics is then a file permission.

Where it listens is the config's business (config.py parses ``MetricsListen``: a bare port means
127.0.0.1; a non-loopback address must be written out and draws a config warning, so a public
listener is never a default).

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
tunnelpy_tun_unrouted_total{reason}             counter  kernel multicast on the TUN, not drops
tunnelpy_build_info{version}                    gauge    1
wireguard_* (mdlayher's and MindFlavor's exporter names: device/interface, public_key labels)
tunnelpy_peer_drops_total{reason}               counter  drops attributed to a peer
tunnelpy_drops_total{reason}                    counter  all drops of the interface
tunnelpy_segment_fdb_entries{segment,vni}       gauge    learnt + static MACs
tunnelpy_segment_fdb_max_entries{segment,vni}   gauge
tunnelpy_segment_fdb_refused_total{segment,vni} counter  learns refused (table full)
tunnelpy_segment_fdb_moves_total{segment,vni}   counter  MACs that moved to another peer
tunnelpy_reloads_total{result}                  counter  result = ok | error
tunnelpy_metrics_refused_total{reason}          counter  metrics connections cut: busy (over
                                                         the cap), timeout, bad_request
process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, …  (prometheus-client)
==============================================  =======  =====================================
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Generator, Iterable
from typing import Any

from .unixsock import bind_private, remove_stale


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tunnelpy")
    except PackageNotFoundError:
        return "unknown"


VERSION = _version()  # tunnelpy_build_info{version}

log = logging.getLogger(__name__)

DEFAULT_PORT = 9587  # not 9586: the WireGuard exporters' own, so both can run side by side
MAX_REQUEST = 8192  # bytes of request head (request line + headers)
MAX_CONNECTIONS = 8  # served at once; more are closed as they arrive
READ_TIMEOUT = 5.0  # for the whole request head
WRITE_TIMEOUT = 5.0  # for each CHUNK to leave the daemon's buffer
CONNECTION_TIMEOUT = 20.0  # for the whole exchange (a slow reader cannot keep a slot)
CACHE_SECONDS = 1.0  # at most one render per interval; every client in it gets those bytes
SLICE_SECONDS = 0.002  # rendering work between two yields to the event loop
CHUNK = 64 * 1024
# The kernel's send buffer per client (it doubles this). Without a cap, autotuning lets it grow
# to megabytes: a whole document would then sit in the kernel for a client that never reads
# (after a close that looked successful), instead of the write timing out and being reset.
SNDBUF = 128 * 1024
UNIX_MODE = 0o660

Snapshot = Callable[[], list[dict[str, Any]]]
Listen = tuple[str, int] | str  # (IP, port) or a unix socket path
# The classic text format every Prometheus version reads (our names are plain ASCII, so the
# output is the same as prometheus-client's newer 1.0.0 text format).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REFUSED_REASONS = ("busy", "timeout", "bad_request")


class MetricsUnavailable(RuntimeError):
    """MetricsListen is set but prometheus-client is not installed."""


def preload() -> None:
    """Import everything a scrape will need (MetricsUnavailable without prometheus-client).

    Call before dropping privileges: afterwards the interpreter's library directories may not
    be readable, and a first import during a scrape would fail with ModuleNotFoundError.
    """
    try:
        import prometheus_client  # noqa: F401
        import prometheus_client.exposition  # noqa: F401
        import prometheus_client.process_collector  # noqa: F401
        import prometheus_client.registry  # noqa: F401
    except ImportError:
        raise MetricsUnavailable(
            "MetricsListen needs prometheus-client: pip install 'tunnelpy[metrics]'"
        ) from None


# --------------------------------------------------------------------------------------------
# The document


def _escape(value: str) -> str:
    # Label values: backslash, double quote and line feed are escaped (exposition format).
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")
    return value


def _num(v: float) -> str:
    return str(v) if isinstance(v, int) else repr(float(v))


class _Family:
    __slots__ = ("head", "lines", "name")

    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name = name
        self.head = f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n"
        self.lines: list[str] = []

    def add(self, labels: str, value: float) -> None:
        self.lines.append(f"{self.name}{{{labels}}} {_num(value)}\n")


class Renderer:
    """Turns status documents (control.metrics_status) into the exposition text, one peer per
    step. Label strings are kept between renders, keyed by (interface, name, key): with
    thousands of peers, escaping and joining them is a good part of the cost."""

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self.wall = wall
        # (interface, peer, key) -> its label strings: ours, mdlayher's, MindFlavor's
        self._labels: dict[tuple[str, str, str], tuple[str, str, str]] = {}

    def steps(self, docs: Iterable[dict[str, Any]]) -> Generator[None, None, str]:
        """Yields after every peer; returns the text (the server drives it in time slices)."""
        old, labels = self._labels, {}
        fams = {
            "info": _Family("tunnelpy_info", "gauge", "tunnelpyd interface"),
            "peers": _Family("tunnelpy_peers", "gauge", "Configured peers"),
            "rxb": _Family("tunnelpy_peer_receive_bytes_total", "counter", "Bytes received"),
            "txb": _Family("tunnelpy_peer_transmit_bytes_total", "counter", "Bytes sent"),
            "rxp": _Family("tunnelpy_peer_receive_packets_total", "counter", "Packets received"),
            "txp": _Family("tunnelpy_peer_transmit_packets_total", "counter", "Packets sent"),
            "hs": _Family("tunnelpy_peer_handshakes_total", "counter", "Completed handshakes"),
            "hs_ts": _Family(
                "tunnelpy_peer_last_handshake_timestamp_seconds", "gauge",
                "Unix time of the latest handshake (0: never)",
            ),
            "build": _Family("tunnelpy_build_info", "gauge", "tunnelpy version (always 1)"),
            "unrouted": _Family(
                "tunnelpy_tun_unrouted_total", "counter",
                "Multicast the kernel sent on the TUN by itself, with no peer for it (not drops)",
            ),
            # The WireGuard exporters' names, so existing dashboards work unchanged:
            # mdlayher/wireguard_exporter (device, public_key) ...
            "wg_dev": _Family("wireguard_device_info", "gauge", "Metadata about a device."),
            "wg_rx": _Family(
                "wireguard_peer_receive_bytes_total", "counter",
                "Number of bytes received from a given peer.",
            ),
            "wg_tx": _Family(
                "wireguard_peer_transmit_bytes_total", "counter",
                "Number of bytes transmitted to a given peer.",
            ),
            "wg_hs": _Family(
                "wireguard_peer_last_handshake_seconds", "gauge",
                "UNIX timestamp for the last handshake with a given peer.",
            ),
            # ... and MindFlavor/prometheus_wireguard_exporter (interface, public_key)
            "mf_tx": _Family("wireguard_sent_bytes_total", "counter", "Bytes sent to the peer"),
            "mf_rx": _Family(
                "wireguard_received_bytes_total", "counter", "Bytes received from the peer"
            ),
            "mf_hs": _Family(
                "wireguard_latest_handshake_seconds", "gauge",
                "UNIX timestamp seconds of the last handshake",
            ),
            "pdrops": _Family(
                "tunnelpy_peer_drops_total", "counter",
                "Dropped packets attributed to a peer, by reason",
            ),
            "drops": _Family("tunnelpy_drops_total", "counter", "Dropped packets by reason"),
            "fdb": _Family("tunnelpy_segment_fdb_entries", "gauge", "FDB entries"),
            "fdb_max": _Family(
                "tunnelpy_segment_fdb_max_entries", "gauge", "FDB capacity (learnt entries)"
            ),
            "fdb_ref": _Family(
                "tunnelpy_segment_fdb_refused_total", "counter",
                "MAC learns refused because the FDB was full",
            ),
            "fdb_mov": _Family(
                "tunnelpy_segment_fdb_moves_total", "counter", "MACs that moved to another peer"
            ),
            "reloads": _Family("tunnelpy_reloads_total", "counter", "Config reloads by result"),
            "refused": _Family(
                "tunnelpy_metrics_refused_total", "counter",
                "Metrics connections closed early, by reason",
            ),
        }  # fmt: skip
        f = fams
        rxb, txb, rxp, txp = f["rxb"].lines, f["txb"].lines, f["rxp"].lines, f["txp"].lines
        hs, hs_ts = f["hs"].lines, f["hs_ts"].lines
        wg_rx, wg_tx, wg_hs = f["wg_rx"].lines, f["wg_tx"].lines, f["wg_hs"].lines
        mf_rx, mf_tx, mf_hs = f["mf_rx"].lines, f["mf_tx"].lines, f["mf_hs"].lines
        f["build"].add(f'version="{_escape(VERSION)}"', 1)
        for d in docs:
            ifn = _escape(d["name"])
            il = f'interface="{ifn}"'
            pub = _escape(d.get("public_key") or "")
            f["info"].add(
                f'{il},public_key="{pub}",transport="{_escape(d.get("transport", ""))}"', 1
            )
            f["peers"].add(il, len(d["peers"]))
            wireguard = d.get("transport", "wireguard") == "wireguard"
            if wireguard:
                f["wg_dev"].add(f'device="{ifn}",public_key="{pub}"', 1)
            for p in d["peers"]:
                key = (ifn, p["name"], p.get("public_key") or "")
                cached = old.get(key)
                if cached is None:
                    pk = _escape(key[2])
                    cached = (
                        f'{il},peer="{_escape(key[1])}",public_key="{pk}"',
                        f'device="{ifn}",public_key="{pk}"',
                        f'{il},public_key="{pk}",friendly_name="{_escape(key[1])}"',
                    )
                labels[key] = cached
                lv, dv, mv = cached
                # The hot loop: eight lines per peer, formatted directly.
                rxb.append(f"tunnelpy_peer_receive_bytes_total{{{lv}}} {p['rx_bytes']}\n")
                txb.append(f"tunnelpy_peer_transmit_bytes_total{{{lv}}} {p['tx_bytes']}\n")
                rxp.append(f"tunnelpy_peer_receive_packets_total{{{lv}}} {p['rx_packets']}\n")
                txp.append(f"tunnelpy_peer_transmit_packets_total{{{lv}}} {p['tx_packets']}\n")
                hs.append(f"tunnelpy_peer_handshakes_total{{{lv}}} {p['handshakes']}\n")
                last = _num(p.get("latest_handshake") or 0)
                hs_ts.append(f"tunnelpy_peer_last_handshake_timestamp_seconds{{{lv}}} {last}\n")
                if wireguard:
                    wg_rx.append(f"wireguard_peer_receive_bytes_total{{{dv}}} {p['rx_bytes']}\n")
                    wg_tx.append(f"wireguard_peer_transmit_bytes_total{{{dv}}} {p['tx_bytes']}\n")
                    wg_hs.append(f"wireguard_peer_last_handshake_seconds{{{dv}}} {last}\n")
                    mf_rx.append(f"wireguard_received_bytes_total{{{mv}}} {p['rx_bytes']}\n")
                    mf_tx.append(f"wireguard_sent_bytes_total{{{mv}}} {p['tx_bytes']}\n")
                    mf_hs.append(f"wireguard_latest_handshake_seconds{{{mv}}} {last}\n")
                for reason, n in p.get("drops", {}).items():
                    f["pdrops"].add(f'{lv},reason="{_escape(reason)}"', n)
                yield
            for reason, n in d.get("drops", {}).items():
                f["drops"].add(f'{il},reason="{_escape(reason)}"', n)
            for reason, n in d.get("unrouted", {}).items():
                f["unrouted"].add(f'{il},reason="{_escape(reason)}"', n)
            for s in d.get("segments", []):
                sl = f'{il},segment="{_escape(s["name"])}",vni="{s["vni"]}"'
                f["fdb"].add(sl, s["fdb_size"])
                f["fdb_max"].add(sl, s["fdb_max"])
                f["fdb_ref"].add(sl, s["fdb_refused"])
                f["fdb_mov"].add(sl, s["fdb_moves"])
            for result, n in d.get("reloads", {}).items():
                f["reloads"].add(f'{il},result="{_escape(result)}"', n)
            for reason, n in d.get("metrics_refused", {}).items():
                f["refused"].add(f'{il},reason="{_escape(reason)}"', n)
        self._labels = labels  # peers that are gone drop out of the cache here
        return "".join(part for fam in fams.values() for part in (fam.head, *fam.lines))

    def render(self, docs: Iterable[dict[str, Any]]) -> str:
        """All steps at once (tests, tools)."""
        gen = self.steps(docs)
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                return str(stop.value)


def process_registry() -> Any:
    """A private registry with prometheus-client's process collector (process_* metrics)."""
    preload()
    from prometheus_client import CollectorRegistry, ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    return registry


def render_registry(registry: Any) -> bytes:
    from prometheus_client import generate_latest

    return bytes(generate_latest(registry))


# --------------------------------------------------------------------------------------------
# The server


class _Refused(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


class MetricsServer:
    """``GET /metrics`` on a TCP address or a unix socket, from the running loop (see the
    module docstring). ``group``: the gid a unix socket is given (None: the process's)."""

    def __init__(self, listen: Listen, snapshot: Snapshot, *, group: int | None = None) -> None:
        self.listen = listen
        self.snapshot = snapshot
        self.group = group
        self.host, self.port = ("", 0) if isinstance(listen, str) else listen
        self.path = listen if isinstance(listen, str) else None
        self.registry = process_registry()  # raises MetricsUnavailable
        self.renderer = Renderer()
        self.refused = dict.fromkeys(REFUSED_REASONS, 0)
        self.renders = 0
        self._doc: bytes | None = None
        self._doc_at = 0.0
        self._pending: asyncio.Future[bytes] | None = None
        self._active: set[asyncio.StreamWriter] = set()
        self._server: asyncio.AbstractServer | None = None
        self._identity: tuple[int, int] | None = None

    # -- life cycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self.path is None:
            self._server = await asyncio.start_server(
                self._serve, self.host, self.port, limit=MAX_REQUEST, reuse_address=True
            )
            self.port = self._server.sockets[0].getsockname()[1]  # the real port for 0
            return
        sock = self._bind_unix(self.path)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, sock=sock, limit=MAX_REQUEST
            )
        except BaseException:
            sock.close()
            raise

    def _bind_unix(self, path: str) -> socket.socket:
        """A 0660 socket at `path`; a stale one (nobody listening) is replaced, a live one or
        any other file is refused (OSError)."""
        remove_stale(path)
        sock, self._identity = bind_private(path, os.path.dirname(path), mode=UNIX_MODE)
        if self.group is not None:
            try:
                os.chown(path, -1, self.group)
            except BaseException:
                sock.close()
                raise
        return sock

    @property
    def url(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for w in list(self._active):
            _reset(w)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5.0)
        if self.path is not None:
            # Only our own file: after the drop to User the directory may not be ours to change
            # (the systemd unit removes it then), and someone may have replaced it meanwhile.
            with contextlib.suppress(FileNotFoundError, PermissionError):
                st = os.lstat(self.path)
                if (st.st_dev, st.st_ino) == self._identity:
                    os.unlink(self.path)

    # -- the document ------------------------------------------------------------------------

    async def document(self) -> bytes:
        """The current document: the cached one if it is younger than CACHE_SECONDS, else the
        one being rendered (started here if none is)."""
        loop = asyncio.get_running_loop()
        if self._doc is not None and loop.time() - self._doc_at < CACHE_SECONDS:
            return self._doc
        if self._pending is None:
            self._pending = loop.create_task(self._render())
        # shield: a client that goes away must not cancel the render the others wait for
        return await asyncio.shield(self._pending)

    async def _render(self) -> bytes:
        loop = asyncio.get_running_loop()
        try:
            docs = self.snapshot()
            for d in docs:
                d.setdefault("metrics_refused", dict(self.refused))
            gen = self.renderer.steps(docs)
            clock = time.perf_counter
            until = clock() + SLICE_SECONDS
            while True:
                try:
                    next(gen)
                except StopIteration as stop:
                    text = str(stop.value)
                    break
                if clock() >= until:
                    await asyncio.sleep(0)  # packet batches run here
                    until = clock() + SLICE_SECONDS
            body = text.encode() + render_registry(self.registry)
            self._doc, self._doc_at = body, loop.time()
            self.renders += 1
            return body
        finally:
            self._pending = None

    # -- connections -------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._active) >= MAX_CONNECTIONS:
            self.refused["busy"] += 1
            _reset(writer)  # the fd is freed now, not when the client gives up
            return
        self._active.add(writer)
        ok = False
        try:
            await asyncio.wait_for(self._exchange(reader, writer), CONNECTION_TIMEOUT)
            ok = True
        except _Refused as e:
            self.refused[e.reason] += 1
        except TimeoutError:
            self.refused["timeout"] += 1
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("metrics request failed")
        finally:
            self._active.discard(writer)
            if ok:
                writer.close()  # everything is in the kernel already (low water mark 0)
            else:
                _reset(writer)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
        except TimeoutError:
            raise _Refused("timeout") from None
        except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, ValueError):
            raise _Refused("bad_request") from None
        method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
        path = rest.split(" ", 1)[0].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            status, body, ctype = "405 Method Not Allowed", b"GET only\n", "text/plain"
        elif path == "/metrics":
            status, body, ctype = "200 OK", await self.document(), CONTENT_TYPE
        elif path == "/":
            status, body, ctype = "200 OK", b"tunnelpyd: metrics at /metrics\n", "text/plain"
        else:
            status, body, ctype = "404 Not Found", b"not found\n", "text/plain"
        header = (
            f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        # drain() waits until everything written has reached the kernel, so the daemon holds
        # at most one CHUNK (a view of the shared document, or a copy of it) per client.
        writer.transport.set_write_buffer_limits(high=CHUNK, low=0)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
        writer.write(header)
        if method != "HEAD":
            view = memoryview(body)
            for off in range(0, len(view), CHUNK):
                writer.write(view[off : off + CHUNK])
                await self._drain(writer)
        await self._drain(writer)

    @staticmethod
    async def _drain(writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
        except TimeoutError:
            raise _Refused("timeout") from None


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close now and for good: a TCP reset that also discards what the kernel still holds for
    the client (a plain close would keep unsent data queued behind a FIN for minutes)."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()

"""tunnelpyd's own control socket: ``/run/tunnelpy/NAME.ctl``, JSON lines, for what the UAPI lacks.

The WireGuard UAPI (io/uapi.py) stays the interface for ``wg`` and ``wg syncconf``; it has no
words for peer names, drop reasons, L2 segments or topology. This socket does:

* Protocol: a client writes one JSON object per line, ``{"cmd": "show"}``; the daemon answers
  each with one line, ``{"ok": true, "result": …}`` or ``{"ok": false, "error": "one line"}``.
* Commands: ``show`` (the status document below), ``reload`` (re-read the config file and apply
  the difference, as SIGHUP does; the result lists the operations applied), ``ping``.
* The socket is mode 0600 (root, or the daemon's ``User``); its directory is 0755. A stale socket
  (nothing listening: the daemon was killed) is taken over; a live one makes start-up fail.

The status document (``show``) is built by :func:`device_status` from the engine. Its schema is
documented in docs/operations.md ("tunnelpy show --json") and is what ``tunnelpy show --json``
prints; the metrics exporter reads :func:`metrics_status`, the same fields from the same
functions without the costly ones it does not export, so the three never disagree. Field names only ever get
added, never renamed or removed, and ``schema`` is bumped if a meaning changes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import inspect
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any

from .io.uapi import format_prefix
from .io.unixsock import NotASocket, SocketInUse, bind_private, remove_stale
from .protocol.fdb import format_mac

log = logging.getLogger(__name__)

DEFAULT_DIRECTORY = "/run/tunnelpy"
SUFFIX = ".ctl"
SCHEMA = 1
MAX_REQUEST = 64 * 1024
# Bounds on what one local client can hold (security review): connections at once (more are
# closed at once), seconds a connection may sit without a complete request, seconds an answer
# may take to be read.
MAX_CONNECTIONS = 16
IDLE_TIMEOUT = 30.0
WRITE_TIMEOUT = 10.0

Handler = Callable[[dict[str, Any]], Any | Awaitable[Any]]


class ControlError(Exception):
    """A request the daemon refuses; ``str(e)`` is the one-line error sent to the client."""


class ControlSocketError(RuntimeError):
    """The control socket cannot be set up (served by a live daemon, path unusable)."""


def socket_path(name: str, directory: str = DEFAULT_DIRECTORY) -> str:
    return os.path.join(directory, name + SUFFIX)


# --------------------------------------------------------------------------------------------
# Status documents


def _b64(key: bytes | None) -> str | None:
    return base64.b64encode(key).decode() if key else None


def _endpoint(ep: tuple[str, int] | None) -> str | None:
    if ep is None:
        return None
    host, port = ep[0], ep[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _drops(counts: Mapping[str, int]) -> dict[str, int]:
    """Drop counts by reason as plain strings (the keys are protocol.drops.Drop members, or
    strings merged from worker reports: the same text either way), sorted."""
    return {str(reason): n for reason, n in sorted(counts.items())}


def peer_counters(p: Any) -> dict[str, Any]:
    """The name, key and counters of one peer, as :func:`peer_status` reports them.

    Shared with the metrics exporter, which needs only these (and not the endpoint or the
    allowed IPs, whose formatting is most of peer_status's cost with thousands of peers).
    """
    stats = getattr(p, "stats", None)
    if stats is None:  # a VxlanPeer: no keys, no sessions
        return {
            "name": p.name, "public_key": None, "latest_handshake": None,
            "rx_bytes": p.rx_bytes, "tx_bytes": p.tx_bytes,
            "rx_packets": p.rx_packets, "tx_packets": p.tx_packets, "handshakes": 0, "drops": {},
        }  # fmt: skip
    return {
        "name": p.name,
        "public_key": _b64(p.public_key),
        "latest_handshake": p.last_handshake_wall or None,
        "rx_bytes": stats.rx_bytes,
        "tx_bytes": stats.tx_bytes,
        "rx_packets": stats.rx_packets,
        "tx_packets": stats.tx_packets,
        "handshakes": stats.handshakes,
        "drops": _drops(stats.drops),
    }


def peer_status(engine: Any) -> list[dict[str, Any]]:
    """One entry per peer of an Engine (WireGuard) or VxlanEngine (plain VXLAN)."""
    peers = []
    for p in engine.peers.values():
        c = peer_counters(p)
        wireguard = getattr(p, "stats", None) is not None
        peers.append({  # in the documented order (docs/operations.md)
            "name": c["name"],
            "public_key": c["public_key"],
            "endpoint": _endpoint(p.endpoint),
            # the UAPI's formatter: as wg writes them, and no ipaddress object per prefix
            "allowed_ips": (
                [format_prefix(n) for n in engine.allowed.prefixes_of(p)] if wireguard else []
            ),
            "latest_handshake": c["latest_handshake"],
            "rx_bytes": c["rx_bytes"],
            "tx_bytes": c["tx_bytes"],
            "rx_packets": c["rx_packets"],
            "tx_packets": c["tx_packets"],
            "handshakes": c["handshakes"],
            "persistent_keepalive": (p.persistent_keepalive or 0) if wireguard else 0,
            "preshared_key": any(p.preshared_key or b"") if wireguard else False,
            "drops": c["drops"],
        })  # fmt: skip
    return peers


class LazyPeers:
    """The engine's peers at one moment, each read by :func:`peer_counters` only when iterated:
    the metrics exporter renders thousands of them a slice at a time, between packet batches."""

    def __init__(self, engine: Any) -> None:
        self._peers = list(engine.peers.values())  # a copy of references: peers may come and go

    def __len__(self) -> int:
        return len(self._peers)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return map(peer_counters, self._peers)


def segment_status(
    engine: Any, segments: Iterable[Any], now: float, *, with_fdb: bool = True
) -> list[dict[str, Any]]:
    """One entry per configured segment (config.SegmentConfig) with its live FDB (the ``fdb``
    list is left out with ``with_fdb=False``: the metrics need only the counts)."""
    out = []
    for conf in segments:
        seg = engine.segments.get(conf.vni)
        fdb = seg.fdb if seg is not None else None
        entries = fdb.entries(now) if fdb is not None else []
        entry = {
            "name": conf.name,
            "vni": conf.vni,
            "device": conf.device,
            "bridge": conf.bridge,
            "hub": conf.hub,
            "peers": None if conf.peers is None else list(conf.peers),
            "fdb_size": len(entries),
            "fdb_max": fdb.max_entries if fdb is not None else conf.max_fdb,
            "fdb_refused": fdb.refused if fdb is not None else 0,
            "fdb_moves": fdb.moves if fdb is not None else 0,
        }
        if with_fdb:
            entry["fdb"] = [
                {"mac": format_mac(mac), "peer": getattr(peer, "name", str(peer)),
                 "age": None if age is None else round(age, 1), "static": age is None}
                for mac, peer, age in entries
            ]  # fmt: skip
        out.append(entry)
    return out


def device_status(
    *,
    name: str,
    engine: Any,
    segments: Iterable[Any] = (),
    now: float,
    listen_port: int = 0,
    fwmark: int = 0,
    transport: str = "wireguard",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``show`` document for one interface (see docs/operations.md for every field)."""
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "name": name,
        "source": "tunnelpyd",
        "transport": transport,
        "pid": os.getpid(),
        "public_key": _b64(getattr(engine, "public_key", None)),
        "listen_port": listen_port,
        "fwmark": fwmark,
        "peers": peer_status(engine),
        "drops": _drops(engine.drops),
        "unrouted": _drops(getattr(engine, "unrouted", {})),  # kernel multicast, not drops
        "segments": segment_status(engine, segments, now),
        "topology": [],
    }
    if extra:
        doc.update(extra)
    return doc


def metrics_status(
    *,
    name: str,
    engine: Any,
    segments: Iterable[Any] = (),
    now: float,
    transport: str = "wireguard",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The part of the ``show`` document the metrics exporter reads, made cheap: the same field
    names and values, but ``peers`` is a :class:`LazyPeers` (counters only, read while the
    exporter iterates) and segments have no ``fdb`` list."""
    doc: dict[str, Any] = {
        "name": name,
        "transport": transport,
        "public_key": _b64(getattr(engine, "public_key", None)),
        "peers": LazyPeers(engine),
        "drops": _drops(engine.drops),
        "unrouted": _drops(getattr(engine, "unrouted", {})),
        "segments": segment_status(engine, segments, now, with_fdb=False),
    }
    if extra:
        doc.update(extra)
    return doc


# --------------------------------------------------------------------------------------------
# Server


class ControlServer:
    """Serves JSON-line requests on ``DIRECTORY/NAME.ctl``; ``handlers`` maps cmd -> callable.

    A handler gets the request object and returns the result (or an awaitable of it); raising
    ControlError sends its message as the error. Requests are served one at a time.
    """

    def __init__(
        self, name: str, handlers: dict[str, Handler], directory: str = DEFAULT_DIRECTORY
    ) -> None:
        if not name or "/" in name or "\0" in name or name in (".", ".."):
            raise ValueError(f"not a usable interface name for a socket path: {name!r}")
        self.name = name
        self.directory = directory
        self.path = socket_path(name, directory)
        self.handlers = dict(handlers)
        self.handlers.setdefault("ping", lambda req: "pong")
        self._lock = asyncio.Lock()
        self._server: asyncio.AbstractServer | None = None
        self._identity: tuple[int, int] | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.refused = 0  # connections closed at once: MAX_CONNECTIONS were open

    async def start(self) -> None:
        self._remove_stale()
        try:
            sock, self._identity = bind_private(self.path, self.directory)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ControlSocketError(self._in_use()) from None
            raise ControlSocketError(f"cannot create the control socket {self.path}: {e}") from e
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, sock=sock, limit=MAX_REQUEST
            )
        except BaseException:
            sock.close()
            raise

    def _in_use(self) -> str:
        return f"interface {self.name} is already served by another tunnelpyd: {self.path}"

    def _remove_stale(self) -> None:
        try:
            if remove_stale(self.path):
                log.info("removing stale control socket %s", self.path)
        except SocketInUse:
            raise ControlSocketError(self._in_use()) from None
        except NotASocket as e:
            raise ControlSocketError(str(e)) from None
        except OSError as e:
            raise ControlSocketError(f"cannot check the existing socket {self.path}: {e}") from e

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for w in list(self._writers):
            w.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5.0)
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._identity:
                os.unlink(self.path)
        except (FileNotFoundError, PermissionError):
            pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._writers) >= MAX_CONNECTIONS:
            self.refused += 1
            _abort(writer)
            return
        self._writers.add(writer)
        try:
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT)
                except (ValueError, asyncio.LimitOverrunError):
                    writer.write(_encode({"ok": False, "error": "request too long"}))
                    await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
                    return
                if not line:
                    return
                if not line.strip():
                    continue
                answer = await self._answer(line)
                writer.write(_encode(answer))
                await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
        except (ConnectionError, TimeoutError):
            _abort(writer)  # idle, or not reading its answer: free what it holds now
        except Exception:
            log.exception("control connection failed")
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            req = json.loads(line)
        except (ValueError, UnicodeDecodeError, RecursionError):  # (nesting 10^4 deep)
            return {"ok": False, "error": "not a JSON object"}
        if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
            return {"ok": False, "error": 'expected {"cmd": "..."}'}
        handler = self.handlers.get(req["cmd"])
        if handler is None:
            known = ", ".join(sorted(self.handlers))
            return {"ok": False, "error": f"unknown command {req['cmd']!r} (known: {known})"}
        async with self._lock:
            try:
                result = handler(req)
                if inspect.isawaitable(result):
                    result = await result
            except ControlError as e:
                return {"ok": False, "error": str(e)}
            except Exception as e:
                log.exception("control command %s failed", req["cmd"])
                return {"ok": False, "error": f"internal error: {type(e).__name__}: {e}"}
        return {"ok": True, "result": result}


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with a reset: unsent answer bytes are dropped, not kept queued in the kernel."""
    transport = writer.transport
    with contextlib.suppress(Exception):
        transport.abort()


def _encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


# --------------------------------------------------------------------------------------------
# Client


def request(path: str, cmd: str, timeout: float = 10.0, **args: Any) -> Any:
    """Send one command to a daemon's control socket; its result, or ControlError / OSError."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(_encode({"cmd": cmd, **args}))
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(1 << 16)
            if not chunk:
                raise ControlError(f"{path}: connection closed without an answer")
            buf += chunk
    answer = json.loads(buf)
    if not answer.get("ok"):
        raise ControlError(str(answer.get("error", "unknown error")))
    return answer.get("result")


def running(directory: str = DEFAULT_DIRECTORY) -> list[str]:
    """Names that have a control socket in ``directory`` (live or stale), sorted."""
    try:
        return sorted(f[: -len(SUFFIX)] for f in os.listdir(directory) if f.endswith(SUFFIX))
    except (FileNotFoundError, NotADirectoryError):
        return []

"""WireGuard's cross-platform UAPI: the text protocol `wg` speaks on /var/run/wireguard/NAME.sock.

Serving it lets ``wg show``, ``wg set`` and ``wg syncconf`` drive tunnelpyd as they drive
wireguard-go (https://www.wireguard.com/xplatform/). The behaviour follows wireguard-go's
device/uapi.go and ipc/uapi_unix.go, and what wireguard-tools' ipc-uapi.h expects:

* A request is an operation line (``get=1`` or ``set=1``), then ``key=value`` lines, then a
  blank line. Several requests may follow each other on one connection.
* The answer to ``get=1`` is the device's ``key=value`` lines; every answer ends with
  ``errno=N`` and a blank line. Keys are lowercase hex, not base64.
* Errors are sent as *negative* errno values (``errno=-22`` for EINVAL), exactly as wireguard-go
  sends them: ``wg set`` does ``errno = -ret`` on the number it reads, so a positive value would
  make it print "Unknown error -22" instead of "Invalid argument".

The codec (``format_get``, ``parse_set``) is pure. ``parse_set`` validates the whole request
before anything is applied (wireguard-go applies line by line and can stop half-way); the
daemon's ``set`` callback then applies a ``SetRequest`` in order: private key, listen port,
fwmark, replace_peers, then each ``PeerChange`` in turn.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import enum
import errno
import inspect
import ipaddress
import logging
import os
import re
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .unixsock import bind_private

log = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_DIRECTORY = "/var/run/wireguard"
# wireguard-go's ipc.IpcErrorUnknown: the errno it reports for failures that are not its own
# IPC errors. Used here for unexpected exceptions in the daemon's callbacks.
ERRNO_UNKNOWN = 55
MAX_LINE = 64 * 1024  # like wireguard-go's bufio.Scanner default; real lines are < 100 bytes

_ZERO_KEY = bytes(32)
_DIGITS = re.compile(r"[0-9]+")
_HEX_KEY = re.compile(r"[0-9A-Fa-f]{64}")


class Unset(enum.Enum):
    """Marks a field the request did not mention (distinct from None, which means "remove")."""

    UNSET = "unset"


UNSET = Unset.UNSET


class UapiError(Exception):
    """A request the device refuses. ``errno`` is positive (errno.EINVAL...); it is sent negated."""

    def __init__(self, errno_value: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno_value


class UapiSocketError(RuntimeError):
    """The control socket cannot be set up (already served by a live daemon, path unusable)."""


# --------------------------------------------------------------------------------------------
# get


@dataclass
class PeerSnapshot:
    """One peer as ``get=1`` reports it."""

    public_key: bytes
    preshared_key: bytes | None = None
    endpoint: tuple[str, int] | None = None
    persistent_keepalive: int = 0  # seconds; 0 = off
    last_handshake: float = 0.0  # unix wall time; 0 = never
    rx_bytes: int = 0
    tx_bytes: int = 0
    allowed_ips: list[IPNetwork] = field(default_factory=list)


@dataclass
class DeviceSnapshot:
    """The device as ``get=1`` reports it."""

    private_key: bytes | None
    listen_port: int
    fwmark: int = 0
    peers: list[PeerSnapshot] = field(default_factory=list)


def format_endpoint(endpoint: tuple[str, int]) -> str:
    """``host:port``, with brackets around an IPv6 host as wg and wireguard-go write it."""
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def format_get(s: DeviceSnapshot) -> bytes:
    """The complete answer to ``get=1``, ending with ``errno=0`` and the blank line."""
    lines: list[str] = []
    # Same keys, order and omissions as wireguard-go's IpcGetOperation.
    if s.private_key and s.private_key != _ZERO_KEY:
        lines.append(f"private_key={s.private_key.hex()}")
    if s.listen_port:
        lines.append(f"listen_port={s.listen_port}")
    if s.fwmark:
        lines.append(f"fwmark={s.fwmark}")
    for peer in s.peers:
        lines.append(f"public_key={peer.public_key.hex()}")
        lines.append(f"preshared_key={(peer.preshared_key or _ZERO_KEY).hex()}")
        lines.append("protocol_version=1")
        if peer.endpoint is not None:
            lines.append(f"endpoint={format_endpoint(peer.endpoint)}")
        sec, nsec = _split_time(peer.last_handshake)
        lines.append(f"last_handshake_time_sec={sec}")
        lines.append(f"last_handshake_time_nsec={nsec}")
        lines.append(f"tx_bytes={peer.tx_bytes}")
        lines.append(f"rx_bytes={peer.rx_bytes}")
        lines.append(f"persistent_keepalive_interval={peer.persistent_keepalive}")
        lines.extend(f"allowed_ip={network}" for network in peer.allowed_ips)
    lines.append("errno=0")
    return ("\n".join(lines) + "\n\n").encode()


def _split_time(t: float) -> tuple[int, int]:
    if t <= 0:
        return 0, 0
    sec = int(t)
    nsec = min(round((t - sec) * 1e9), 999_999_999)
    return sec, nsec


# --------------------------------------------------------------------------------------------
# set


@dataclass
class PeerChange:
    """The lines of one ``public_key=`` block of a ``set=1`` request.

    remove: delete the peer (the other fields are then to be ignored, as wireguard-go does).
    update_only: change the peer only if it exists; never create it.
    preshared_key: UNSET = unchanged, None = no preshared key (wg sends all zeros), bytes = set.
    endpoint: None = unchanged (the protocol cannot clear an endpoint); hosts are IP literals.
    persistent_keepalive: None = unchanged, 0 = off.
    replace_allowed_ips: drop the peer's allowed IPs before adding ``allowed_ips``.
    A block whose key is the device's own public key is ignored, as wireguard-go does.
    """

    public_key: bytes
    remove: bool = False
    update_only: bool = False
    preshared_key: bytes | None | Unset = UNSET
    endpoint: tuple[str, int] | None = None
    persistent_keepalive: int | None = None
    replace_allowed_ips: bool = False
    allowed_ips: list[IPNetwork] = field(default_factory=list)


@dataclass
class SetRequest:
    """A parsed ``set=1`` request.

    private_key: UNSET = unchanged, None = remove the key (wg sends all zeros), bytes = set.
    listen_port, fwmark: None = unchanged; listen_port 0 = any port, fwmark 0 = off.
    replace_peers: remove every peer before applying ``peers``.
    """

    private_key: bytes | None | Unset = UNSET
    listen_port: int | None = None
    fwmark: int | None = None
    replace_peers: bool = False
    peers: list[PeerChange] = field(default_factory=list)


def _invalid(message: str) -> UapiError:
    return UapiError(errno.EINVAL, message)


def _hex_key(key: str, value: str) -> bytes:
    if not _HEX_KEY.fullmatch(value):
        raise _invalid(f"{key}: expected 64 hex digits")
    return bytes.fromhex(value)


def _uint(key: str, value: str, bits: int) -> int:
    # strconv.ParseUint(value, 10, bits): ASCII digits only, no sign, no spaces, no underscores.
    if not _DIGITS.fullmatch(value) or int(value) >= 1 << bits:
        raise _invalid(f"{key}: expected an integer 0-{(1 << bits) - 1}")
    return int(value)


def _true(key: str, value: str) -> bool:
    if value != "true":
        raise _invalid(f"{key}: the only valid value is true")
    return True


def parse_endpoint(value: str) -> tuple[str, int]:
    """An IP literal and port, ``1.2.3.4:5`` or ``[v6]:5``, as netip.ParseAddrPort takes them."""
    host, colon, port = value.rpartition(":")
    if not colon or not _DIGITS.fullmatch(port) or int(port) > 65535:
        raise _invalid(f"endpoint: expected ip:port or [ipv6]:port, got {value!r}")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        address = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        raise _invalid(f"endpoint: {host!r} is not an IP address") from None
    if bracketed != (address.version == 6):
        raise _invalid(f"endpoint: expected ip:port or [ipv6]:port, got {value!r}")
    return str(address), int(port)


def parse_set(body: str) -> SetRequest:
    """Parse the lines of a ``set=1`` request (a leading ``set=1`` line is allowed and skipped).

    The request ends at the first blank line or at the end of ``body``. Raises UapiError.
    """
    lines = body.split("\n")
    if lines and lines[0] == "set=1":
        lines = lines[1:]
    request = SetRequest()
    peer: PeerChange | None = None
    for index, line in enumerate(lines):
        if line == "":
            if any(lines[index + 1 :]):
                raise _invalid("text after the blank line that ends the request")
            break
        key, eq, value = line.partition("=")
        if not eq:
            # wireguard-go answers a line without '=' with EPROTO rather than EINVAL.
            raise UapiError(errno.EPROTO, f"failed to parse line {line!r}")
        if key == "public_key":
            peer = PeerChange(public_key=_hex_key(key, value))
            request.peers.append(peer)
        elif peer is None:
            _set_device_key(request, key, value)
        else:
            _set_peer_key(peer, key, value)
    return request


def _set_device_key(request: SetRequest, key: str, value: str) -> None:
    if key == "private_key":
        private = _hex_key(key, value)
        request.private_key = None if private == _ZERO_KEY else private
    elif key == "listen_port":
        request.listen_port = _uint(key, value, 16)
    elif key == "fwmark":
        request.fwmark = _uint(key, value, 32)
    elif key == "replace_peers":
        request.replace_peers = _true(key, value)
    else:
        raise _invalid(f"invalid UAPI device key: {key!r}")


def _set_peer_key(peer: PeerChange, key: str, value: str) -> None:
    if key == "remove":
        peer.remove = _true(key, value)
    elif key == "update_only":
        peer.update_only = _true(key, value)
    elif key == "preshared_key":
        psk = _hex_key(key, value)
        peer.preshared_key = None if psk == _ZERO_KEY else psk
    elif key == "endpoint":
        peer.endpoint = parse_endpoint(value)
    elif key == "persistent_keepalive_interval":
        peer.persistent_keepalive = _uint(key, value, 16)
    elif key == "replace_allowed_ips":
        peer.replace_allowed_ips = _true(key, value)
    elif key == "allowed_ip":
        peer.allowed_ips.append(_parse_prefix(value))
    elif key == "protocol_version":
        if value != "1":
            raise _invalid(f"invalid protocol version: {value!r}")
    else:
        raise _invalid(f"invalid UAPI peer key: {key!r}")


def _parse_prefix(value: str) -> IPNetwork:
    # netip.ParsePrefix wants an explicit /bits; host bits may be set and are masked on insert.
    if "/" not in value:
        raise _invalid(f"allowed_ip: expected address/bits, got {value!r}")
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise _invalid(f"allowed_ip: expected address/bits, got {value!r}") from None


def format_errno(errno_value: int) -> bytes:
    """The closing lines of an answer; errors are negated like wireguard-go's (see above)."""
    return f"errno={-abs(errno_value)}\n\n".encode()


# --------------------------------------------------------------------------------------------
# Server

GetCallback = Callable[[], DeviceSnapshot | Awaitable[DeviceSnapshot]]
SetCallback = Callable[[SetRequest], None | Awaitable[None]]


class UapiServer:
    """Serves the UAPI on ``DIRECTORY/IFNAME.sock``.

    ``get`` and ``set`` are the daemon's callbacks; each may be a plain function or return an
    awaitable. ``set`` may raise UapiError to refuse a request with a given errno (EADDRINUSE
    for a port already taken, say). Calls are serialized, like wireguard-go's ipcMutex.
    """

    def __init__(
        self,
        ifname: str,
        get: GetCallback,
        set: SetCallback,  # shadows the builtin: it is the protocol's own name for the operation
        directory: str = DEFAULT_DIRECTORY,
    ) -> None:
        if not ifname or "/" in ifname or "\0" in ifname or ifname in (".", ".."):
            raise ValueError(f"not a usable interface name for a socket path: {ifname!r}")
        self.ifname = ifname
        self.directory = directory
        self.path = os.path.join(directory, f"{ifname}.sock")
        self._get = get
        self._set = set
        self._lock = asyncio.Lock()
        self._server: asyncio.AbstractServer | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of our socket file
        # builtins.set: the parameter `set` shadows the builtin inside this method.
        self._connections: builtins.set[asyncio.Task[None]] = builtins.set()
        self._writers: builtins.set[asyncio.StreamWriter] = builtins.set()

    async def __aenter__(self) -> UapiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Create the directory and socket; take over a stale socket, refuse a live one."""
        await self._remove_stale()
        try:
            sock, self._identity = bind_private(self.path, self.directory)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:  # another daemon bound it between our check and bind
                raise UapiSocketError(self._in_use_message()) from None
            raise UapiSocketError(f"cannot create the control socket {self.path}: {e}") from e
        try:
            self._server = await asyncio.start_unix_server(
                self._serve_connection, sock=sock, limit=MAX_LINE
            )
        except BaseException:
            sock.close()
            raise
        log.debug("UAPI listening on %s", self.path)

    def _in_use_message(self) -> str:
        return f"interface {self.ifname} is already served by another daemon: {self.path}"

    async def _remove_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise UapiSocketError(f"{self.path} exists and is not a socket; refusing to remove it")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_unix_connection(self.path), 2.0)
        except (ConnectionRefusedError, FileNotFoundError):
            pass  # stale: nothing listens (the previous daemon died without cleaning up)
        except TimeoutError:
            raise UapiSocketError(self._in_use_message()) from None  # alive but busy
        except OSError as e:
            raise UapiSocketError(f"cannot check the existing socket {self.path}: {e}") from e
        else:
            writer.close()
            raise UapiSocketError(self._in_use_message())
        log.info("removing stale control socket %s", self.path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def still_bound(self) -> bool:
        """False once our socket file was deleted or replaced: that is how `wg-quick down`
        stops a userspace implementation (it removes the socket), so the daemon exits then."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == self._identity

    def unlink(self) -> None:
        """Remove the socket file now if it is still ours (the interface is gone: a successor
        may start at once); serving itself ends with close()."""
        with contextlib.suppress(FileNotFoundError):
            if self.still_bound():
                os.unlink(self.path)

    async def close(self) -> None:
        """Stop serving, end open connections and remove the socket file (if still ours)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for writer in list(self._writers):
            writer.close()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=5.0)
        await server.wait_closed()
        # Remove the file only if it is still the one we bound: a successor daemon may already
        # have replaced a socket it believed stale, and its socket must survive our exit.
        self.unlink()

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        self._writers.add(writer)
        try:
            while await self._serve_request(reader, writer):
                pass
        except ConnectionError:
            pass  # the client went away; nothing to answer
        except Exception:  # a bug here must not kill the loop or leak; log and drop the client
            log.exception("UAPI connection failed")
        finally:
            self._writers.discard(writer)
            writer.close()
            if task is not None:
                self._connections.discard(task)

    async def _serve_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; False when the connection should end."""
        try:
            op = await reader.readline()
            if not op.endswith(b"\n"):
                return False  # end of stream (possibly mid-line): nothing to answer
            if op == b"\n":
                # A blank line is a whole (empty) request: answer it rather than waiting for
                # a second blank line that may never come.
                writer.write(format_errno(errno.EINVAL))
                await writer.drain()
                return True
            body, complete = await self._read_body(reader)
        except (ValueError, asyncio.LimitOverrunError):
            # A line over MAX_LINE: the stream position is lost, so answer and hang up.
            writer.write(format_errno(errno.EINVAL))
            await writer.drain()
            return False
        if op == b"get=1\n":
            if not complete:
                return False  # as wireguard-go: no blank line, no answer
            answer = await self._answer_get(body)
        elif op == b"set=1\n":
            answer = await self._answer_set(body, complete)
        else:
            log.warning("UAPI: invalid operation %r", op[:40])
            answer = format_errno(errno.EINVAL)
        writer.write(answer)
        await writer.drain()
        return complete

    async def _read_body(self, reader: asyncio.StreamReader) -> tuple[list[bytes], bool]:
        """Lines up to the blank line; complete=False if the stream ended first."""
        lines: list[bytes] = []
        while True:
            line = await reader.readline()
            if line == b"\n":
                return lines, True
            if not line:
                return lines, False
            lines.append(line)

    async def _answer_get(self, body: list[bytes]) -> bytes:
        if body:
            return format_errno(errno.EINVAL)  # get=1 takes no keys
        async with self._lock:
            try:
                snapshot = self._get()
                if inspect.isawaitable(snapshot):
                    snapshot = await snapshot
                return format_get(snapshot)
            except UapiError as e:
                return format_errno(e.errno)
            except Exception:
                log.exception("UAPI get failed")
                return format_errno(ERRNO_UNKNOWN)

    async def _answer_set(self, body: list[bytes], complete: bool) -> bytes:
        if body and not body[-1].endswith(b"\n"):
            # The stream ended mid-line: a cut-off value (10.0.0.0/2 of /24) must not apply.
            return format_errno(errno.EINVAL)
        try:
            request = parse_set(b"".join(body).decode("utf-8"))
        except UnicodeDecodeError:
            return format_errno(errno.EINVAL)
        except UapiError as e:
            log.warning("UAPI set refused: %s", e)
            return format_errno(e.errno)
        async with self._lock:
            try:
                result = self._set(request)
                if inspect.isawaitable(result):
                    await result
            except UapiError as e:
                log.warning("UAPI set refused: %s", e)
                return format_errno(e.errno)
            except Exception:
                log.exception("UAPI set failed")
                return format_errno(ERRNO_UNKNOWN)
        return format_errno(0)

"""WireGuard's cross-platform UAPI: the text protocol `wg` speaks on /var/run/wireguard/NAME.sock.

Serving it lets ``wg show``, ``wg set`` and ``wg syncconf`` drive tunnelpyd as they drive
wireguard-go (https://www.wireguard.com/xplatform/). The behaviour follows wireguard-go's
device/uapi.go and ipc/uapi_unix.go, and what wireguard-tools' ipc-uapi.h expects:

* A request is an operation line (``get=1`` or ``set=1``), then ``key=value`` lines, then a
  blank line. Several requests may follow each other on one connection.
* The answer to ``get=1`` is the device's ``key=value`` lines; every answer ends with
  ``errno=N`` and a blank line. Keys are lowercase hex, not base64.
* Errors are sent as *negative* errno values, with wireguard-go's codes: EPROTO for a line
  without ``=``, EINVAL for a key or value it does not accept (also ``get=1`` followed by
  anything but the blank line), EADDRINUSE when the listen port cannot be bound or the fwmark
  set, EIO when the request cannot be read (a line over 64 KiB; here also a request that
  stalls), 55 for anything else (an exception in the daemon); ENOMEM, our own, for a request
  over ``Limits.max_set_bytes``. ``wg set`` does ``errno = -ret``, so a positive value would make it
  print "Unknown error -22" instead of "Invalid argument". An unknown operation (or an empty
  line where the operation belongs) is not answered: the connection is closed, as
  wireguard-go does.

Theory of operation
-------------------
Nothing is half-applied. wireguard-go applies a ``set=1`` line by line as it reads it, so a
bad line, or a client that dies half-way, leaves the lines before it applied. Here the blank
line commits the request: :class:`SetParser` checks every line as it arrives (incrementally,
so a 130 000-line ``wg setconf`` is parsed while it streams in, between the data path's turns
on the event loop) and only a request that was complete and valid reaches the daemon's ``set``
callback as a :class:`SetRequest`, which the callback applies whole or refuses whole
(``wgapi.apply_set`` does the steps that can fail first). A request that ends before its blank
line (end of stream, a client that stalls past ``request_timeout``) changes nothing.

Nobody waits for anybody else. Each connection is its own task; a request holds the lock that
serialises ``get`` and ``set`` (like wireguard-go's ipcMutex) only while the device is read or
changed, never while bytes are awaited. A ``get=1`` answer is formatted in chunks from a
snapshot taken under the lock and written with ``write_timeout`` per chunk, so a client that
never reads its answer costs its snapshot and one chunk, and is dropped. :class:`Limits` bounds
what one connection may hold: a line (64 KiB, bufio.Scanner's default in wireguard-go), a set
request (``max_set_bytes``), its silence mid-request and between requests, and how many
connections are served at once (more are closed at once).
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
import socket
import stat
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field

from .unixsock import bind_private

log = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_DIRECTORY = "/var/run/wireguard"
# wireguard-go's ipc.IpcErrorUnknown: the errno it reports for failures that are not its own
# IPC errors. Used here for unexpected exceptions in the daemon's callbacks.
ERRNO_UNKNOWN = 55
MAX_LINE = 64 * 1024  # wireguard-go's bufio.Scanner limit; real lines are < 100 bytes
READ_CHUNK = 32 * 1024  # parsed between two turns of the data path: about a millisecond
GET_CHUNK_LINES = 1024  # lines of a get answer formatted (and written) at a time
LINGER = 5.0  # seconds to drain a client's input after hanging up on it (UapiServer._linger)

_ZERO_KEY = bytes(32)
_DIGITS = re.compile(r"[0-9]+")
_HEX_KEY = re.compile(r"[0-9A-Fa-f]{64}")


@dataclass(frozen=True)
class Limits:
    """What one client may cost the daemon (module docstring).

    max_set_bytes: a ``set=1`` body larger than this is refused with ENOMEM and the connection
    closed (32 MiB: a million ``allowed_ip=`` lines; the kernel selftest's 130 560 take 3 MiB).
    request_timeout: seconds without a byte in the middle of a request before it is dropped
    (unapplied; answered EIO). idle_timeout: the same between requests.
    write_timeout: seconds a client may leave an answer unread before it is dropped.
    max_connections: connections served at once; one more is closed without an answer.
    """

    max_set_bytes: int = 32 << 20
    request_timeout: float = 10.0
    idle_timeout: float = 120.0
    write_timeout: float = 10.0
    max_connections: int = 16


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
# allowed_ip values

# A prefix travels as one plain int, (address << 8 | length) << 1 | is_ipv6 with the host bits
# of the address cleared: exactly tunnelpy.protocol.allowedips.Prefix, which AllowedIPs keeps
# as it is (this package may not import that one; tests/unit/test_uapi.py pins the two
# together). Plain ints because 10^5 of them come in one wg setconf: an ipaddress network costs
# ten times as much to parse and print, and tuples cost pauses of the garbage collector.
Prefix = int

_MASKS = {32: [((1 << 32) - 1) ^ ((1 << (32 - n)) - 1) for n in range(33)],
          128: [((1 << 128) - 1) ^ ((1 << (128 - n)) - 1) for n in range(129)]}  # fmt: skip
_MASKS4, _MASKS6 = _MASKS[32], _MASKS[128]
# The prefix lengths netip.ParsePrefix accepts, as written: plain decimal, no sign, no leading
# zero. One dict probe checks the text and converts it.
_PLEN = {str(n): n for n in range(129)}
_pton = socket.inet_pton
_AF_INET, _AF_INET6 = socket.AF_INET, socket.AF_INET6


def parse_prefix(text: str) -> Prefix:
    """``address/bits`` as Go's netip.ParsePrefix reads it (ValueError if not): an explicit
    length in plain decimal (no sign, no leading zero), an IPv4 address in four decimal parts
    without leading zeros or an IPv6 address without a zone; host bits may be set and are
    cleared. inet_pton checks the address: ipaddress would cost ten times as much."""
    addr, _, bits = text.partition("/")
    plen = _PLEN.get(bits)
    try:
        if plen is None:
            pass
        elif ":" in addr:
            if plen <= 128:
                a = int.from_bytes(_pton(_AF_INET6, addr), "big") & _MASKS6[plen]
                return (a << 8 | plen) << 1 | 1
        elif plen <= 32:
            a = int.from_bytes(_pton(_AF_INET, addr), "big") & _MASKS4[plen]
            return (a << 8 | plen) << 1
    except (OSError, ValueError):  # ValueError: an embedded NUL
        raise ValueError(f"not an IP address: {addr[:80]!r}") from None
    raise ValueError(f"expected address/bits (0-32 or 0-128 bits), got {text[:80]!r}")


def format_prefix(p: Prefix) -> str:
    """``address/bits`` as Go's netip.Prefix.String writes it (RFC 5952 for IPv6)."""
    address, plen = p >> 9, (p >> 1) & 0xFF
    if not p & 1:
        return f"{socket.inet_ntop(socket.AF_INET, address.to_bytes(4, 'big'))}/{plen}"
    if address >> 48:
        # The C library's RFC 5952 form; only the forms with 80 leading zero bits (where some
        # libcs print an embedded IPv4 address where Go does not) take the slow path below.
        return f"{socket.inet_ntop(socket.AF_INET6, address.to_bytes(16, 'big'))}/{plen}"
    if address >> 32 == 0xFFFF:
        v4 = socket.inet_ntop(socket.AF_INET, (address & 0xFFFFFFFF).to_bytes(4, "big"))
        return f"::ffff:{v4}/{plen}"  # Go: an IPv4-mapped address keeps its dotted quad
    return f"{ipaddress.IPv6Address(address)}/{plen}"


def prefix_of_network(network: IPNetwork) -> Prefix:
    """The packed prefix of an ``ipaddress`` network."""
    v6 = network.version == 6
    return (int(network.network_address) << 8 | network.prefixlen) << 1 | v6


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
    allowed_ips: Sequence[Prefix | IPNetwork] = field(default_factory=list)


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


def _get_lines(s: DeviceSnapshot) -> Iterator[str]:
    # Same keys, order and omissions as wireguard-go's IpcGetOperation.
    if s.private_key and s.private_key != _ZERO_KEY:
        yield f"private_key={s.private_key.hex()}"
    if s.listen_port:
        yield f"listen_port={s.listen_port}"
    if s.fwmark:
        yield f"fwmark={s.fwmark}"
    for peer in s.peers:
        yield f"public_key={peer.public_key.hex()}"
        yield f"preshared_key={(peer.preshared_key or _ZERO_KEY).hex()}"
        yield "protocol_version=1"
        if peer.endpoint is not None:
            yield f"endpoint={format_endpoint(peer.endpoint)}"
        sec, nsec = _split_time(peer.last_handshake)
        yield f"last_handshake_time_sec={sec}"
        yield f"last_handshake_time_nsec={nsec}"
        yield f"tx_bytes={peer.tx_bytes}"
        yield f"rx_bytes={peer.rx_bytes}"
        yield f"persistent_keepalive_interval={peer.persistent_keepalive}"
        for p in peer.allowed_ips:
            yield "allowed_ip=" + format_prefix(p if type(p) is int else prefix_of_network(p))  # type: ignore[arg-type]
    yield "errno=0"


def format_get_chunks(s: DeviceSnapshot, lines: int = GET_CHUNK_LINES) -> Iterator[bytes]:
    """The answer to ``get=1`` in pieces of ``lines`` lines, formatted as they are asked for."""
    batch: list[str] = []
    for line in _get_lines(s):
        batch.append(line)
        if len(batch) >= lines:
            batch.append("")
            yield "\n".join(batch).encode()
            batch = []
    batch += ["", ""]  # the last line's newline and the blank line that ends the answer
    yield "\n".join(batch).encode()


def format_get(s: DeviceSnapshot) -> bytes:
    """The complete answer to ``get=1``, ending with ``errno=0`` and the blank line."""
    return b"".join(format_get_chunks(s))


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
    allowed_ips: list[Prefix] = field(default_factory=list)


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
    # strconv.ParseUint(value, 10, bits): ASCII digits only, no sign, no spaces, no underscores
    # (and no more than 20 of them: int() of thousands of digits is slow, then refused).
    if len(value) > 20 or not _DIGITS.fullmatch(value) or int(value) >= 1 << bits:
        raise _invalid(f"{key}: expected an integer 0-{(1 << bits) - 1}")
    return int(value)


def _true(key: str, value: str) -> bool:
    if value != "true":
        raise _invalid(f"{key}: the only valid value is true")
    return True


def parse_endpoint(value: str) -> tuple[str, int]:
    """An IP literal and port, ``1.2.3.4:5`` or ``[v6]:5``, as netip.ParseAddrPort takes them."""
    host, colon, port = value.rpartition(":")
    if not colon or len(port) > 5 or not _DIGITS.fullmatch(port) or int(port) > 65535:
        raise _invalid(f"endpoint: expected ip:port or [ipv6]:port, got {value!r}")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        address = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        raise _invalid(f"endpoint: {host!r} is not an IP address") from None
    if bracketed != (address.version == 6):
        raise _invalid(f"endpoint: expected ip:port or [ipv6]:port, got {value!r}")
    return str(address), int(port)


class SetParser:
    """Parses the body of one ``set=1`` request as its bytes arrive (sans-I/O).

    ``feed(data)`` returns how many bytes of ``data`` belong to this request: all of them until
    the blank line that ends it is found; then ``done`` is set and the rest of ``data`` is the
    next request's. The first bad line is remembered (``error``) and everything after it is only
    scanned for the blank line, so a refused request costs no memory. ``fatal`` means the stream
    cannot be followed any further (a line over MAX_LINE, a body over ``max_set_bytes``): answer
    ``error`` and hang up. ``end_of_stream()`` is for a stream that ends before the blank line;
    ``result()`` is the request, or raises ``error``.
    """

    def __init__(self, max_bytes: int = Limits.max_set_bytes) -> None:
        self.done = False
        self.fatal = False
        self.error: UapiError | None = None
        self._request: SetRequest | None = SetRequest()
        self._peer: PeerChange | None = None
        self._partial = b""  # a line not yet ended by its newline
        self._size = 0
        self._max = max_bytes

    def feed(self, data: bytes) -> int:
        if self.done or self.fatal:
            return 0
        offset = len(self._partial)
        buf = self._partial + data if offset else data
        # The blank line: a newline at the start of a line. _partial never holds a newline, so
        # the only line start not after a newline in buf is buf's start, when _partial is empty.
        if buf[:1] == b"\n":
            end = 0
        else:
            end = buf.find(b"\n\n")
            end = end + 1 if end >= 0 else -1
        if end >= 0:
            body, used = buf[:end], end + 1 - offset
            self.done = True
            self._partial = b""
        else:
            cut = buf.rfind(b"\n") + 1
            body, self._partial, used = buf[:cut], buf[cut:], len(data)
            if len(self._partial) > MAX_LINE:
                self._fail(UapiError(errno.EIO, f"a line longer than {MAX_LINE} bytes"), True)
                return used
        self._size += used
        if self._size > self._max:
            self._fail(UapiError(errno.ENOMEM, f"request larger than {self._max} bytes"), True)
        elif body and self.error is None:
            # surrogateescape: bytes that are not UTF-8 fail the check of their value, as they
            # do in wireguard-go, rather than making the whole request undecodable.
            self._parse(body.decode("utf-8", "surrogateescape"))
        return used

    def end_of_stream(self) -> None:
        """The stream ended before the blank line: the request is incomplete, never applied."""
        if not self.done:
            self.done = True
            self._fail(_invalid("the request ended before its blank line"))

    def result(self) -> SetRequest:
        if self.error is not None:
            raise self.error
        assert self.done and self._request is not None
        return self._request

    def _fail(self, error: UapiError, fatal: bool = False) -> None:
        if self.error is None:
            self.error = error
        self.fatal = self.fatal or fatal
        self._request = self._peer = None  # what was parsed is garbage now

    def _parse(self, text: str) -> None:
        request = self._request
        assert request is not None
        peer = self._peer
        lines = text.split("\n")
        lines.pop()  # text ends with a newline: the last piece is empty
        if len(text) > MAX_LINE and max(map(len, lines)) > MAX_LINE:
            # bufio.Scanner's ErrTooLong, which wireguard-go answers with EIO
            self._fail(UapiError(errno.EIO, f"a line longer than {MAX_LINE} bytes"), True)
            return
        try:
            for line in lines:
                key, eq, value = line.partition("=")
                if key == "allowed_ip" and eq and peer is not None:
                    # 10^5 of these in one wg setconf: the one line that has to be fast.
                    try:
                        peer.allowed_ips.append(parse_prefix(value))
                    except ValueError as e:
                        raise _invalid(f"allowed_ip: {e}") from None
                elif not eq:
                    # wireguard-go answers a line without '=' with EPROTO rather than EINVAL.
                    # (The line is not repeated: `private_key <hex>` would put the key in logs.)
                    raise UapiError(errno.EPROTO, "failed to parse a line without '='")
                elif key == "public_key":
                    peer = PeerChange(public_key=_hex_key(key, value))
                    request.peers.append(peer)
                elif peer is None:
                    _set_device_key(request, key, value)
                else:
                    _set_peer_key(peer, key, value)
        except UapiError as e:
            self._fail(e)
            return
        self._peer = peer


def parse_set(body: str) -> SetRequest:
    """Parse the lines of a ``set=1`` request (a leading ``set=1`` line is allowed and skipped).

    The request ends at the first blank line or at the end of ``body``. Raises UapiError.
    """
    data = body.encode("utf-8", "surrogateescape")
    if data.startswith(b"set=1\n") or data == b"set=1":
        data = data[len(b"set=1\n") :]
    parser = SetParser()
    used = parser.feed(data if data.endswith(b"\n") or not data else data + b"\n")
    if not parser.done:
        parser.feed(b"\n")  # the end of body ends the request
    elif data[used:].strip(b"\n"):
        raise _invalid("text after the blank line that ends the request")
    return parser.result()


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
        raise _invalid(f"invalid UAPI device key: {key[:80]!r}")


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
        try:
            peer.allowed_ips.append(parse_prefix(value))
        except ValueError as e:
            raise _invalid(f"allowed_ip: {e}") from None
    elif key == "protocol_version":
        if value != "1":
            raise _invalid(f"invalid protocol version: {value[:80]!r}")
    else:
        raise _invalid(f"invalid UAPI peer key: {key[:80]!r}")


def format_errno(errno_value: int) -> bytes:
    """The closing lines of an answer; errors are negated like wireguard-go's (see above)."""
    return f"errno={-abs(errno_value)}\n\n".encode()


# --------------------------------------------------------------------------------------------
# Server

GetCallback = Callable[[], DeviceSnapshot | Awaitable[DeviceSnapshot]]
SetCallback = Callable[[SetRequest], None | Awaitable[None]]


class _HangUp(Exception):
    """End the connection; ``answer`` (if any) is written first."""

    def __init__(self, answer: bytes | None = None) -> None:
        super().__init__()
        self.answer = answer


class UapiServer:
    """Serves the UAPI on ``DIRECTORY/IFNAME.sock``.

    ``get`` and ``set`` are the daemon's callbacks; each may be a plain function or return an
    awaitable. ``set`` may raise UapiError to refuse a request with a given errno (EADDRINUSE
    for a port already taken, say); it must apply all of the request or none of it. Calls are
    serialized, like wireguard-go's ipcMutex.
    """

    def __init__(
        self,
        ifname: str,
        get: GetCallback,
        set: SetCallback,  # shadows the builtin: it is the protocol's own name for the operation
        directory: str = DEFAULT_DIRECTORY,
        limits: Limits | None = None,
    ) -> None:
        if not ifname or "/" in ifname or "\0" in ifname or ifname in (".", ".."):
            raise ValueError(f"not a usable interface name for a socket path: {ifname!r}")
        self.ifname = ifname
        self.directory = directory
        self.path = os.path.join(directory, f"{ifname}.sock")
        self.limits = limits or Limits()
        self._get = get
        self._set = set
        self._lock = asyncio.Lock()
        self._server: asyncio.AbstractServer | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of our socket file
        # builtins.set: the parameter `set` shadows the builtin inside this method.
        self._connections: builtins.set[asyncio.Task[None]] = builtins.set()
        self._writers: builtins.set[asyncio.StreamWriter] = builtins.set()
        self.refused = 0  # connections closed because max_connections were being served

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
                self._serve_connection, sock=sock, limit=READ_CHUNK
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
            writer.transport.abort()  # an answer nobody reads must not hold the shutdown up
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=5.0)
        await server.wait_closed()
        # Remove the file only if it is still the one we bound: a successor daemon may already
        # have replaced a socket it believed stale, and its socket must survive our exit.
        self.unlink()

    # ---------------------------------------------------------------- one connection

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if len(self._connections) >= self.limits.max_connections:
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warning(
                    "UAPI: %d connections open already; closing a new one (%d so far)",
                    len(self._connections), self.refused,
                )  # fmt: skip
            writer.transport.abort()
            return
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        self._writers.add(writer)
        conn = _Connection(self, reader, writer)
        try:
            while await conn.serve_request():
                pass
        except _HangUp as h:
            await self._linger(reader, writer, h.answer)
        except (ConnectionError, TimeoutError):
            pass  # the client went away or stopped reading; nothing more to say
        except Exception:  # a bug here must not kill the loop or leak; log and drop the client
            log.exception("UAPI connection failed")
        finally:
            self._writers.discard(writer)
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()  # a client that does not read: drop what it left
            else:
                writer.close()
            if task is not None:
                self._connections.discard(task)

    async def _linger(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answer: bytes | None
    ) -> None:
        """Hang up after ``answer``: it and the end of stream are sent, then what the client
        still sends is read and dropped until it closes (for LINGER seconds at most). Closing
        with unread input would reset the connection (the client may lose the answer), and a
        client still writing its request (wg setconf) would die of EPIPE before reading it."""
        if writer.transport.is_closing():
            return
        if answer is not None:
            writer.write(answer)
        with contextlib.suppress(OSError, RuntimeError):
            writer.write_eof()
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(LINGER):
                while await reader.read(READ_CHUNK):
                    pass

    async def answer_get(self) -> DeviceSnapshot | bytes:
        """A snapshot of the device (taken under the lock), or the error answer."""
        async with self._lock:
            try:
                snapshot = self._get()
                if inspect.isawaitable(snapshot):
                    snapshot = await snapshot
                return snapshot
            except UapiError as e:
                return format_errno(e.errno)
            except Exception:
                log.exception("UAPI get failed")
                return format_errno(ERRNO_UNKNOWN)

    async def answer_set(self, request: SetRequest) -> bytes:
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


class _Connection:
    """The requests of one client, read in chunks into ``buf``."""

    def __init__(
        self, server: UapiServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.limits = server.limits
        self.reader = reader
        self.writer = writer
        self.buf = b""

    async def _read(self, timeout: float) -> bytes:
        """The next bytes from the client; b"" at end of stream; TimeoutError when silent."""
        async with asyncio.timeout(timeout):
            return await self.reader.read(READ_CHUNK)

    async def _send(self, data: bytes) -> None:
        if self.writer.transport.is_closing():
            raise ConnectionResetError("the client went away")  # (uvloop would raise)
        self.writer.write(data)
        async with asyncio.timeout(self.limits.write_timeout):
            await self.writer.drain()

    async def serve_request(self) -> bool:
        """Answer one request; False when the connection should end."""
        op = await self._op_line()
        if op is None:
            return False
        if op == b"set=1\n":
            return await self._serve_set()
        if op == b"get=1\n":
            return await self._serve_get()
        # (What the client sent is not logged: it may be anything, a key included.)
        log.warning("UAPI: invalid operation (expected get=1 or set=1)")
        raise _HangUp()  # as wireguard-go: an unknown operation is not answered

    async def _op_line(self) -> bytes | None:
        """The operation line with its newline; None at end of stream, or when idle too long."""
        timeout = self.limits.request_timeout if self.buf else self.limits.idle_timeout
        while True:
            end = self.buf.find(b"\n")
            if end >= 0:
                line, self.buf = self.buf[: end + 1], self.buf[end + 1 :]
                return line
            if len(self.buf) > MAX_LINE:
                log.warning("UAPI: invalid operation (a first line over %d bytes)", MAX_LINE)
                raise _HangUp()
            try:
                data = await self._read(timeout)
            except TimeoutError:
                if self.buf:
                    raise _HangUp(format_errno(errno.EIO)) from None  # stalled mid-line
                return None  # idle too long between requests
            if not data:
                return None
            self.buf += data
            timeout = self.limits.request_timeout

    async def _serve_get(self) -> bool:
        # wireguard-go reads exactly one more byte: the blank line, or EINVAL (and since it then
        # takes what follows for the next operation, which cannot be one, it hangs up).
        if not self.buf:
            try:
                self.buf = await self._read(self.limits.request_timeout)
            except TimeoutError:
                raise _HangUp(format_errno(errno.EIO)) from None
            if not self.buf:
                return False  # no blank line, no answer
        if self.buf[:1] != b"\n":
            raise _HangUp(format_errno(errno.EINVAL))
        self.buf = self.buf[1:]
        snapshot = await self.server.answer_get()
        if isinstance(snapshot, bytes):
            await self._send(snapshot)
            return True
        for chunk in format_get_chunks(snapshot):
            await self._send(chunk)
            await asyncio.sleep(0)  # the data path's turn between chunks of a huge answer
        return True

    async def _serve_set(self) -> bool:
        parser = SetParser(self.limits.max_set_bytes)
        data, self.buf = self.buf, b""
        while True:
            if data:
                used = parser.feed(data)
                if parser.fatal:
                    assert parser.error is not None
                    log.warning("UAPI set refused: %s", parser.error)
                    raise _HangUp(format_errno(parser.error.errno))
                if parser.done:
                    self.buf = data[used:]
                    break
            try:
                data = await self._read(self.limits.request_timeout)
            except TimeoutError:
                log.warning("UAPI: a set request stalled; dropped, nothing applied")
                raise _HangUp(format_errno(errno.EIO)) from None
            if not data:
                parser.end_of_stream()
                break
        try:
            request = parser.result()
        except UapiError as e:
            log.warning("UAPI set refused: %s", e)
            await self._send(format_errno(e.errno))
        else:
            await self._send(await self.server.answer_set(request))
        return not self.reader.at_eof()

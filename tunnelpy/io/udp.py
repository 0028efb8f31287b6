"""The UDP underlay socket: one dual-stack socket, batched receive and send.

One AF_INET6 socket with IPV6_V6ONLY off carries both families (IPv4 peers appear as
::ffff:a.b.c.d, which we normalise to plain dotted quads so the engine and `wg show` see the same
text form whichever family carried the datagram). Hosts with IPv6 disabled get an AF_INET socket.

Offloads (``offload=True``, the default; docs/performance.md): datagrams for one destination
leave in one ``sendmsg`` with UDP_SEGMENT (UDP GSO: the kernel cuts the buffer into equal-size
datagrams, the last may be shorter), and the socket takes UDP_GRO, so one ``recvmsg`` may return
many coalesced datagrams, which are cut again by the segment size the kernel reports in a cmsg.
The wire carries the same datagrams either way. If the kernel or the path refuses GSO (EIO from a
NIC without checksum offload, EINVAL when a segment does not fit the route's MTU) the socket falls
back to one ``sendto`` per datagram for good and says so once in the log.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import struct

from . import knobs
from .offload import forced_off

Addr = tuple[str, int]
# Where to send: protocol.actions.Dest, a (host, port, flow) named tuple; read by position, so a
# plain (host, port) serves too (io/ does not import the protocol package).
Destination = tuple[str, int] | tuple[str, int, int]
_LE = struct.pack("=H", 1) == b"\x01\x00"  # cmsg ints are in host order
SO_MARK = 36
BUFFER_SIZE = 4 << 20  # wireguard-go asks for 7 MiB; 4 MiB absorbs bursts of a 2-core box


def _buffer_size() -> int:
    """BUFFER_SIZE, or the bench knob TUNNELPY_SOCKET_BUFFER (bytes; 0 = the kernel's default),
    which exists so bench/ can measure both ways (docs/performance.md)."""
    return knobs.socket_buffer(BUFFER_SIZE)


SOL_UDP = 17
UDP_SEGMENT = 103  # not named in Python 3.11's socket module
UDP_GRO = 104
GSO_MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS on older kernels (newer ones take 128)
GSO_MAX_BYTES = 65000  # below IPv4's 65507-byte UDP payload limit
GRO_CMSG_SPACE = socket.CMSG_SPACE(4)
RECV_BUFFER = 65535  # a GRO read carries up to 64 KiB
MAX_READS = 64
MAX_DATAGRAMS = 1024
_GSO_REFUSED = (errno.EIO, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOPROTOOPT, errno.EMSGSIZE)

log = logging.getLogger("tunnelpyd")


class UdpError(Exception):
    pass


def _normalise(addr: tuple) -> Addr:
    host = addr[0]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    elif "%" in host:
        host = host.split("%", 1)[0]
    return (host, addr[1])


class UdpSocket:
    def __init__(
        self, port: int | None, fwmark: int | None = None, *, offload: bool = True
    ) -> None:
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            bind: tuple = ("::", port or 0)
            self.v6 = True
        except OSError:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            bind = ("0.0.0.0", port or 0)
            self.v6 = False
        try:
            size = _buffer_size()
            for opt, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):
                if not size:
                    break
                try:
                    sock.setsockopt(socket.SOL_SOCKET, force, size)  # *BUFFORCE as root
                except OSError:
                    sock.setsockopt(socket.SOL_SOCKET, opt, size)
            if fwmark:
                sock.setsockopt(socket.SOL_SOCKET, SO_MARK, fwmark)
            sock.bind(bind)
        except OSError as e:
            sock.close()
            if e.errno == errno.EADDRINUSE:
                raise UdpError(f"UDP port {port} is already in use") from None
            raise UdpError(f"cannot bind UDP port {port}: {e.strerror}") from None
        sock.setblocking(False)
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self.send_errors = 0
        offload = offload and not forced_off()
        self.gso = offload
        self.gro = False
        if offload:
            try:
                sock.setsockopt(SOL_UDP, UDP_GRO, 1)
                self.gro = True
            except OSError:
                log.info("UDP GRO not available on this kernel: one datagram per receive")
        self._gso_sizes: dict[int, bytes] = {}  # segment size -> packed cmsg data
        self._peer_raw: tuple | None = None  # last raw source address and its normal form
        self._peer_norm: Addr = ("", 0)

    @classmethod
    def adopt(cls, fd: int, *, offload: bool) -> UdpSocket:
        """The daemon's socket, inherited by a worker process that only sends on it (the one
        bound port, so peers see one endpoint whichever process encrypted)."""
        self = cls.__new__(cls)
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        self.sock = sock
        self.v6 = sock.family == socket.AF_INET6
        self.port = sock.getsockname()[1]
        self.send_errors = 0
        self.gso = offload and not forced_off()
        self.gro = False
        self._gso_sizes = {}
        self._peer_raw = None
        self._peer_norm = ("", 0)
        return self

    def fileno(self) -> int:
        return self.sock.fileno()

    def set_fwmark(self, mark: int) -> None:
        self.sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)

    def recv_batch(self, max_batch: int = 128) -> list[tuple[bytes, Addr]]:
        if self.gro:
            return self._recv_gro()
        recv = self.sock.recvfrom
        out: list[tuple[bytes, Addr]] = []
        try:
            for _ in range(max_batch):
                data, addr = recv(65535)
                out.append((data, _normalise(addr)))
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            # ICMP errors surface as ECONNREFUSED etc. on the next recv: not fatal for a
            # connectionless socket, the remaining datagrams are read next round.
            pass
        return out

    def _recv_gro(self) -> list[tuple[bytes, Addr]]:
        recvmsg = self.sock.recvmsg
        out: list[tuple[bytes, Addr]] = []
        append = out.append
        try:
            for _ in range(MAX_READS):
                data, anc, _flags, raw = recvmsg(RECV_BUFFER, GRO_CMSG_SPACE)
                if raw != self._peer_raw:  # one flow per batch is the common case
                    self._peer_raw = raw
                    self._peer_norm = _normalise(raw)
                addr = self._peer_norm
                size = 0
                for level, kind, cdata in anc:
                    if level == SOL_UDP and kind == UDP_GRO and len(cdata) >= 4:
                        size = int.from_bytes(cdata[:4], "little" if _LE else "big")
                n = len(data)
                if size and n > size:
                    for at in range(0, n, size):
                        append((data[at : at + size], addr))
                else:
                    append((data, addr))
                if len(out) >= MAX_DATAGRAMS:
                    break
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            pass  # ICMP errors, as in the plain path
        return out

    def _sockaddr(self, dest: Destination) -> Addr:
        """The sendto address of `dest`: always a (host, port) pair, never more. (A third
        element would be read as the IPv6 flowinfo, or refused by an AF_INET socket; the flow
        of a Dest only chooses the socket, see vxlan_socket.py.) IPv4 on the dual-stack
        socket is written as an IPv4-mapped IPv6 address."""
        host, port = dest[0], dest[1]
        if self.v6 and ":" not in host:
            return ("::ffff:" + host, port)
        return (host, port)

    def send(self, dest: Destination, datagrams: list[bytes]) -> None:
        """Send a batch of datagrams to one destination (a Dest; its flow is not used here)."""
        self._send_to(self._sockaddr(dest), datagrams)

    def _send_to(self, sa: Addr, datagrams: list[bytes]) -> None:
        if self.gso and len(datagrams) > 1:
            self._send_gso(sa, datagrams)
            return
        sendto = self.sock.sendto
        for d in datagrams:
            try:
                sendto(d, sa)
            except OSError:
                # EAGAIN (buffer full), ENETUNREACH, EPERM from a firewall: counted, not fatal.
                self.send_errors += 1

    def _send_gso(self, dest: Addr, datagrams: list[bytes]) -> None:
        """Runs of equal-size datagrams (the last of a run may be shorter) in one sendmsg each."""
        sendmsg = self.sock.sendmsg
        sendto = self.sock.sendto
        n = len(datagrams)
        i = 0
        while i < n:
            size = len(datagrams[i])
            total = size
            j = i + 1
            limit = min(n, i + GSO_MAX_SEGMENTS)
            while j < limit:
                m = len(datagrams[j])
                if m > size or total + m > GSO_MAX_BYTES:
                    break
                total += m
                j += 1
                if m < size:
                    break  # a shorter datagram can only end a run
            try:
                if j - i == 1:
                    sendto(datagrams[i], dest)
                else:
                    cmsg = self._gso_sizes.get(size)
                    if cmsg is None:
                        cmsg = self._gso_sizes[size] = struct.pack("=H", size)
                    sendmsg(datagrams[i:j], [(SOL_UDP, UDP_SEGMENT, cmsg)], 0, dest)
            except OSError as e:
                if j - i > 1 and e.errno in _GSO_REFUSED:
                    self.gso = False
                    log.warning(
                        "UDP GSO refused (%s): sending one datagram per syscall from now on",
                        e.strerror,
                    )
                    self._send_to(dest, datagrams[i:])
                    return
                # EAGAIN (buffer full), ENETUNREACH, EPERM from a firewall: counted, not fatal.
                self.send_errors += j - i
            i = j

    def close(self) -> None:
        self.sock.close()


def is_literal(host: str) -> bool:
    """True for an IP address literal (needs no resolution, is never re-resolved)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def resolve(host: str, port: int) -> Addr:
    """Blocking name resolution for an endpoint (run it in an executor)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    if not infos:
        raise OSError(f"no address for {host}")
    # Follow getaddrinfo's order (RFC 6724 via gai.conf), like wg does.
    fam, _, _, _, sa = infos[0]
    return _normalise(sa)

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

Sticky source addresses (``pktinfo=True``, the default; protocol/actions.py says why): the socket
asks for the local address each datagram arrived at (IPV6_RECVPKTINFO; on the dual-stack socket
IPv4 datagrams carry it too, as an IPv4-mapped address in IPV6_PKTINFO, which Linux 6.x was
seen to do) and hands it up as the third element of the source address, ``(host, port, src)``
with ``src = (local address, interface index)``. It shares the one cmsg buffer of a receive with
UDP_GRO's segment size, and parsing it costs a comparison per receive while the sender and the
local address stay the same. A destination with a ``src`` (Dest's fourth element) is sent from
that address with an IP_PKTINFO (IPv4) or IPV6_PKTINFO cmsg, next to UDP_SEGMENT for a GSO send.
The interface index is not forced (except for a link-local source, which the kernel needs it
for): routing picks the way out with the source in hand, so source-based policy rules apply,
while a forced interface without a route to the peer would make the kernel assume the peer
on-link and lose the datagrams without an error. When the address has gone (the kernel refuses
it: EINVAL for IPv6, ENETUNREACH for IPv4), the datagrams are sent at once without it, from the
kernel's choice, and the source is listed in ``lost_sources`` for the owner to tell the engine.

The receive queue is kept short in time (``aqm=True``, the default for the WireGuard socket;
io/codel.py says why): the kernel stamps each arrival (SO_TIMESTAMPNS, one more cmsg in the same
buffer), each read's sojourn goes to a CoDel state machine, and when it says so the read's first
datagram is dropped unopened if it is a transport data message. The drops are counted in
``codel.drops`` for the owner to report as ``queue_delay``.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import struct
import sys
import time
from collections.abc import Sequence
from typing import Literal

from . import accel, knobs
from .codel import CoDel
from .offload import forced_off

Addr = tuple[str, int]
Src = tuple[str, int]  # a local address and interface index (protocol.actions.Src)
Origin = tuple[str, int] | tuple[str, int, Src | None]  # a sender, and where it arrived
# Where to send: protocol.actions.Dest, a (host, port, flow, src) named tuple; read by position,
# so a plain (host, port) serves too (io/ does not import the protocol package).
Destination = tuple[str, int] | tuple[str, int, int] | tuple[str, int, int, Src | None]
_ORDER: Literal["little", "big"] = sys.byteorder  # cmsg ints are in host order
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
IP_PKTINFO = 8  # not named in Python 3.11's socket module
SO_TIMESTAMPNS = 35  # (SO_TIMESTAMPNS_OLD: a struct timespec of two longs; SCM_ is the same)
_TIMESPEC = struct.Struct("@qq")
# One receive's ancillary data: UDP_GRO's int, an in6_pktinfo (an in_pktinfo is smaller) and
# the arrival stamp.
RECV_CMSG_SPACE = socket.CMSG_SPACE(4) + socket.CMSG_SPACE(20) + socket.CMSG_SPACE(16)
_TRANSPORT = b"\x04"  # a WireGuard transport message's first byte (the only kind CoDel drops)
KEEPALIVE_SIZE = 32  # header + tag: a keepalive, never dropped
_V4MAPPED = bytes(10) + b"\xff\xff"
MAX_CACHED_SOURCES = 256  # distinct local (address, interface) pairs: a host has a few
MAX_PLANS = 4096  # destinations whose socket address and cmsg are kept (send): ~1 MiB
RECV_BUFFER = 65535  # a GRO read carries up to 64 KiB
MAX_READS = 64
MAX_DATAGRAMS = 1024
# The compiled cut of a GRO read (io/_segments.pyx), or None (the module global tests switch off).
_cut_datagrams = accel.cut_datagrams
_GSO_REFUSED = (errno.EIO, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOPROTOOPT, errno.EMSGSIZE)
# What sendmsg says of a source address that cannot be used (any more): IPv6 EINVAL (not an
# address of ours), IPv4 ENETUNREACH (no route from it), ENODEV (a link-local source's interface
# is gone), EADDRNOTAVAIL. Resending without the source settles which it was.
_SRC_REFUSED = (errno.EINVAL, errno.ENETUNREACH, errno.ENODEV, errno.EADDRNOTAVAIL)

log = logging.getLogger("tunnelpyd")


class UdpError(Exception):
    pass


def prepare(sock: socket.socket, fwmark: int | None) -> None:
    """Buffers (BUFFER_SIZE, or the bench knob) and the fwmark of an underlay socket, before it
    is bound (OSError if the mark is refused)."""
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


def _normalise(addr: tuple) -> Addr:
    host = addr[0]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    elif "%" in host:
        host = host.split("%", 1)[0]
    return (host, addr[1])


def parse_pktinfo(info: bytes, v6: bool) -> Src | None:
    """The local address and interface index in an IPV6_PKTINFO (``v6``: in6_pktinfo) or
    IP_PKTINFO (in_pktinfo) cmsg a datagram arrived with; None when it is malformed or not a
    unicast address one can send from (multicast, broadcast: replies go from the kernel's
    choice then)."""
    if v6:
        if len(info) != 20:
            return None
        packed = info[:16]
        ifindex = int.from_bytes(info[16:], _ORDER)
        if packed[:12] != _V4MAPPED:
            if packed[0] == 0xFF or packed == bytes(16):  # multicast, unspecified
                return None
            return (socket.inet_ntop(socket.AF_INET6, packed), ifindex)
        packed = packed[12:]
    else:
        if len(info) != 12:
            return None
        ifindex = int.from_bytes(info[:4], _ORDER)
        packed = info[4:8]  # ipi_spec_dst: the local address (for a broadcast, the interface's)
    if packed[0] >= 224 or packed == bytes(4):  # multicast, class E and broadcast, 0.0.0.0
        return None
    return (socket.inet_ntop(socket.AF_INET, packed), ifindex)


def pktinfo_cmsg(src: Src) -> tuple[int, int, bytes]:
    """The sendmsg cmsg that sends from ``src``: IP_PKTINFO for an IPv4 address (the dual-stack
    socket takes it for IPv4-mapped destinations too), IPV6_PKTINFO for IPv6. ValueError or
    OSError for a src that is not an address literal."""
    host, ifindex = src
    if ":" not in host:
        # in_pktinfo: ipi_ifindex 0 (routing chooses), ipi_spec_dst = the source, ipi_addr unused
        packed = socket.inet_pton(socket.AF_INET, host)
        return (socket.IPPROTO_IP, IP_PKTINFO, bytes(4) + packed + bytes(4))
    packed = socket.inet_pton(socket.AF_INET6, host)
    link_local = packed[0] == 0xFE and packed[1] & 0xC0 == 0x80
    index = ifindex if link_local else 0  # (only a link-local address needs its interface)
    return (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, packed + index.to_bytes(4, _ORDER))


class UdpSocket:
    codel: CoDel | None

    def __init__(
        self,
        port: int | None,
        fwmark: int | None = None,
        *,
        offload: bool = True,
        pktinfo: bool = True,
        aqm: bool = True,
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
            prepare(sock, fwmark)
            sock.bind(bind)
        except OSError as e:
            sock.close()
            if e.errno == errno.EADDRINUSE:
                raise UdpError(f"UDP port {port} is already in use") from None
            raise UdpError(f"cannot bind UDP port {port}: {e.strerror}") from None
        sock.setblocking(False)
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self._init_state(offload)
        if self.gso:
            try:
                sock.setsockopt(SOL_UDP, UDP_GRO, 1)
                self.gro = True
            except OSError:
                log.info("UDP GRO not available on this kernel: one datagram per receive")
        if pktinfo:
            try:
                if self.v6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
                else:
                    sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
                self.pktinfo = True
            except OSError:
                log.info("no PKTINFO on this kernel: replies leave from the kernel's choice")
        if aqm and (self.gro or self.pktinfo) and not knobs.aqm_off():
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                self.codel = CoDel()
            except OSError:
                log.info("no SO_TIMESTAMPNS on this kernel: the receive queue is bounded in bytes only")

    def _init_state(self, offload: bool) -> None:
        self.send_errors = 0
        self.gso = offload and not forced_off()
        self.gro = False
        self.pktinfo = False  # receives report the local address (a third address element)
        self.codel = None  # the receive queue's AQM (see the module docstring)
        self._gso_cmsgs: dict[int, tuple[int, int, bytes]] = {}  # segment size -> its cmsg
        self._peer_raw: tuple | None = None  # last raw source address and PKTINFO data, and
        self._info_raw: bytes | None = None  # their Origin
        self._peer_norm: Origin = ("", 0)
        self._pk_level, self._pk_kind = (
            (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO)
            if self.v6
            else (socket.IPPROTO_IP, IP_PKTINFO)
        )
        self._srcs: dict[bytes, Src | None] = {}  # PKTINFO data -> its Src
        self._plans: dict[Destination, tuple[Addr, Src | None, list | None]] = {}  # see send
        # Sources sendmsg refused (see _SRC_REFUSED) since the owner last took them: it tells
        # the engine, which stops naming them; until then sends here skip them.
        self.lost_sources: list[Src] = []

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
        self._init_state(offload)
        return self

    def fileno(self) -> int:
        return self.sock.fileno()

    def set_fwmark(self, mark: int) -> None:
        self.sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)

    def recv_batch(self, max_batch: int = 128) -> list[tuple[bytes, Origin]]:
        if self.gro or self.pktinfo:
            return self._recv_msgs(MAX_READS if self.gro else max_batch)
        recv = self.sock.recvfrom
        out: list[tuple[bytes, Origin]] = []
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

    def _recv_msgs(self, reads: int) -> list[tuple[bytes, Origin]]:
        """Up to `reads` recvmsg calls, each with UDP_GRO's segment size (a coalesced read is
        cut here) and PKTINFO in one cmsg buffer."""
        recvmsg = self.sock.recvmsg
        pk_level, pk_kind = self._pk_level, self._pk_kind
        codel = self.codel
        cut = _cut_datagrams
        out: list[tuple[bytes, Origin]] = []
        append = out.append
        try:
            for _ in range(reads):
                data, anc, _flags, raw = recvmsg(RECV_BUFFER, RECV_CMSG_SPACE)
                size = 0
                info = None
                stamp = None
                for level, kind, cdata in anc:
                    if kind == pk_kind and level == pk_level:
                        info = cdata
                    elif kind == UDP_GRO and level == SOL_UDP and len(cdata) == 4:
                        size = int.from_bytes(cdata, _ORDER)
                    elif kind == SO_TIMESTAMPNS and level == socket.SOL_SOCKET:
                        stamp = cdata
                if (
                    codel is not None
                    and stamp is not None
                    and len(stamp) == 16
                    and data[:1] == _TRANSPORT
                    and (size or len(data)) > KEEPALIVE_SIZE
                ):
                    sec, nsec = _TIMESPEC.unpack(stamp)
                    if codel.observe(time.time() - sec - nsec * 1e-9, time.monotonic()):
                        # The read's first datagram goes, unopened (io/codel.py).
                        if not size or len(data) <= size:
                            continue
                        data = data[size:]
                # One sender at one local address per batch is the common case: the Origin is
                # made again only when either changes.
                if raw != self._peer_raw or info != self._info_raw:
                    self._peer_raw = raw
                    self._info_raw = info
                    self._peer_norm = self._origin(raw, info)
                addr = self._peer_norm
                n = len(data)
                if size and n > size:
                    if cut is not None:
                        cut(data, size, addr, out)
                    else:
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

    def _origin(self, raw: tuple, info: bytes | None) -> Origin:
        host, port = _normalise(raw)
        if not self.pktinfo:
            return (host, port)
        if info is None:
            return (host, port, None)
        srcs = self._srcs
        if info in srcs:
            return (host, port, srcs[info])
        if len(srcs) >= MAX_CACHED_SOURCES:
            srcs.clear()
        src = srcs[info] = parse_pktinfo(info, self.v6)
        return (host, port, src)

    def _sockaddr(self, dest: Destination) -> Addr:
        """The sendto address of `dest`: always a (host, port) pair, never more. (A third
        element would be read as the IPv6 flowinfo, or refused by an AF_INET socket; the flow
        of a Dest only chooses the socket, see vxlan_socket.py.) IPv4 on the dual-stack
        socket is written as an IPv4-mapped IPv6 address."""
        host, port = dest[0], dest[1]
        if self.v6 and ":" not in host:
            return ("::ffff:" + host, port)
        return (host, port)

    def _plan(self, dest: Destination) -> tuple[Addr, Src | None, list | None]:
        """How to send to `dest`: its socket address, its source and the ancillary data that
        sends from it (None: the kernel's choice; also for a source of the other family or
        one that is no address). Made once per destination (see send)."""
        plans = self._plans
        if len(plans) >= MAX_PLANS:
            plans.clear()
        src = dest[3] if len(dest) == 4 else None
        anc = None
        if src is not None:
            try:
                cmsg = pktinfo_cmsg(src)
                if (cmsg[0] == socket.IPPROTO_IPV6) == (":" in dest[0]):
                    anc = [cmsg]
            except (ValueError, OSError, TypeError, OverflowError):
                pass
        plan = plans[dest] = (self._sockaddr(dest), src, anc)
        return plan

    def send(self, dest: Destination, datagrams: Sequence[bytes]) -> None:
        """Send a batch of datagrams to one destination (a Dest; its flow is not used here),
        from its src when it names one (see the module's docstring). What to do for a Dest is
        looked up, not worked out per call: the engine keeps one Dest object per peer path.

        `datagrams` is a list, or the compiled seal's contiguous buffer (protocol.actions.Sealed,
        read here by its attributes: io/ does not import the protocol): its runs of equal-size
        datagrams leave as slices of that one buffer, a GSO send each."""
        plan = self._plans.get(dest)
        if plan is None:
            plan = self._plan(dest)
        sa, src, anc = plan
        if anc is not None and self.lost_sources and src in self.lost_sources:
            src = anc = None
        if type(datagrams) is not list:
            runs = getattr(datagrams, "runs", None)
            if runs is not None and self.gso:
                self._send_runs(sa, datagrams.buf, runs, src, anc)  # type: ignore[attr-defined]
                return
            datagrams = list(datagrams)
        if anc is None:
            self._send_to(sa, datagrams)
        else:
            self._send_to(sa, datagrams, src, anc)

    def _send_runs(
        self, sa: Addr, buf: bytes, runs: list[tuple[int, int, int]], src: Src | None,
        anc: list | None,
    ) -> None:  # fmt: skip
        """The runs (start, end, size) of `buf`, each cut at GSO's limits (64 segments, 65000
        bytes) into one sendmsg with UDP_SEGMENT; a lone datagram as a plain send. Errors as in
        _send_gso: a refused source or a refused GSO resend the rest another way."""
        mv = memoryview(buf)
        sendmsg = self.sock.sendmsg
        sendto = self.sock.sendto
        gso_cmsgs = self._gso_cmsgs
        for r, (start, end, size) in enumerate(runs):
            step = max(1, min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // size)) * size
            at = start
            while at < end:
                stop = min(at + step, end)
                try:
                    if stop - at <= size:
                        if anc is None:
                            sendto(mv[at:stop], sa)
                        else:
                            sendmsg([mv[at:stop]], anc, 0, sa)
                    else:
                        seg = gso_cmsgs.get(size)
                        if seg is None:
                            seg = gso_cmsgs[size] = (SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))
                        sendmsg([mv[at:stop]], [seg] if anc is None else [seg, *anc], 0, sa)
                except OSError as e:
                    if anc is not None and e.errno in _SRC_REFUSED:
                        assert src is not None
                        self._source_refused(src)
                        self._send_to(sa, _datagrams_from(buf, runs, r, at))
                        return
                    if stop - at > size and e.errno in _GSO_REFUSED:
                        self.gso = False
                        log.warning(
                            "UDP GSO refused (%s): sending one datagram per syscall from now on",
                            e.strerror,
                        )
                        self._send_to(sa, _datagrams_from(buf, runs, r, at), src, anc)
                        return
                    # EAGAIN (buffer full), ENETUNREACH, EPERM from a firewall: counted.
                    self.send_errors += -(-(stop - at) // size)
                at = stop

    def _source_refused(self, src: Src) -> None:
        if src not in self.lost_sources:
            self.lost_sources.append(src)

    def _send_to(
        self, sa: Addr, datagrams: list[bytes], src: Src | None = None, anc: list | None = None
    ) -> None:
        """Send to `sa`, from `src` when `anc` (its PKTINFO cmsg, in a list) is given."""
        if self.gso and len(datagrams) > 1:
            self._send_gso(sa, datagrams, src, anc)
            return
        if anc is None:
            sendto = self.sock.sendto
            for d in datagrams:
                try:
                    sendto(d, sa)
                except OSError:
                    # EAGAIN (buffer full), ENETUNREACH, EPERM from a firewall: counted, not fatal.
                    self.send_errors += 1
            return
        assert src is not None
        sendmsg = self.sock.sendmsg
        one = len(datagrams) == 1
        for i in range(len(datagrams)):
            try:
                # (A one-datagram batch is its own buffer list: no list is made per send.)
                sendmsg(datagrams if one else datagrams[i : i + 1], anc, 0, sa)
            except OSError as e:
                if e.errno in _SRC_REFUSED:
                    self._source_refused(src)
                    self._send_to(sa, datagrams[i:])  # this one and the rest: the kernel's choice
                    return
                self.send_errors += 1

    def _send_gso(
        self, dest: Addr, datagrams: list[bytes], src: Src | None = None, anc: list | None = None
    ) -> None:
        """Runs of equal-size datagrams (the last of a run may be shorter) in one sendmsg each,
        from `src` when its cmsg `anc` is given."""
        sendmsg = self.sock.sendmsg
        sendto = self.sock.sendto
        gso_cmsgs = self._gso_cmsgs
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
                    if anc is None:
                        sendto(datagrams[i], dest)
                    else:
                        sendmsg(datagrams[i:j], anc, 0, dest)
                else:
                    seg = gso_cmsgs.get(size)
                    if seg is None:
                        seg = gso_cmsgs[size] = (SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))
                    sendmsg(datagrams[i:j], [seg] if anc is None else [seg, *anc], 0, dest)
            except OSError as e:
                if anc is not None and e.errno in _SRC_REFUSED:
                    # The source first (its EINVAL looks like GSO's): without it, the kernel's
                    # choice; should GSO be the trouble after all, that send finds out.
                    assert src is not None
                    self._source_refused(src)
                    self._send_to(dest, datagrams[i:])
                    return
                if j - i > 1 and e.errno in _GSO_REFUSED:
                    self.gso = False
                    log.warning(
                        "UDP GSO refused (%s): sending one datagram per syscall from now on",
                        e.strerror,
                    )
                    self._send_to(dest, datagrams[i:], src, anc)
                    return
                # EAGAIN (buffer full), ENETUNREACH, EPERM from a firewall: counted, not fatal.
                self.send_errors += j - i
            i = j

    def close(self) -> None:
        self.sock.close()


def _datagrams_from(buf: bytes, runs: list[tuple[int, int, int]], r: int, at: int) -> list[bytes]:
    """The datagrams of a contiguous buffer's runs from offset `at` of run `r` on."""
    out = []
    for start, end, size in runs[r:]:
        for k in range(max(start, at), end, size):
            out.append(buf[k : min(k + size, end)])
    return out


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

"""Fakes of the daemon's devices, for tests that need no root: `FakeTun` and `FakeUdp`.

In the manner of wireguard-go's tun/tuntest (a TUN whose kernel side is a pair of channels) and
conn/bindtest (binds joined in memory): they have the methods and attributes of
`tunnelpy.io.tun.Tun` and `tunnelpy.io.udp.UdpSocket` that the daemon, the data path and the
worker pool use, and behave like them where the daemon can tell, but no kernel device or port
is involved.

Readiness is real: each fake's ``fd`` / ``fileno()`` is one end of a Unix socketpair that is
readable exactly when the fake has something to read, so ``loop.add_reader`` (asyncio or uvloop)
and ``select`` work on it as on the real devices.

- `FakeTun`: the test plays the kernel. ``inject(packet)`` is the kernel writing a packet to the
  TUN (the daemon reads it with ``read_batch``); ``written`` lists what the daemon wrote with
  ``write_batch``, in order. The socketpair is SOCK_SEQPACKET, so packet boundaries are kept as
  a TUN keeps them. No virtio_net_hdr: ``vnet_hdr`` is False and ``offloads`` empty whatever
  ``offload=`` asked (recorded in ``offload_requested``).
- `FakeNetwork` joins `FakeUdp` sockets by (host, port): ``send(dest, datagrams)`` on one
  appears in ``recv_batch`` of the socket bound at dest, with the sender's (host, port) as the
  source. A datagram to an address nobody is bound to is lost, as UDP would lose it, and kept
  in ``network.lost``; every datagram sent is logged in ``network.log``.

``send`` takes any destination with ``.host``/``.port`` or ``[0]``/``[1]``: a plain
(host, port) tuple or a named destination that also carries a flow hash.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tunnelpy.io.tun import MAX_READS, TunError
from tunnelpy.io.udp import UdpError

Addr = tuple[str, int]
EPHEMERAL_PORTS = range(40000, 60000)  # what port 0 / None binds to, lowest free first


def host_port(dest: Any) -> Addr:
    """(host, port) of a destination: an object with .host/.port, or a (host, port, ...) tuple."""
    host = getattr(dest, "host", None)
    if host is not None:
        return (host, int(dest.port))
    return (dest[0], int(dest[1]))


def _normal_host(host: str) -> str:
    # As UdpSocket reports sources: IPv4-mapped IPv6 as a dotted quad, no scope id.
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return host.split("%", 1)[0]


# --------------------------------------------------------------------------------- TUN/TAP --


class FakeTun:
    """A TUN (or, with ``tap=True``, a TAP) whose kernel side is the test."""

    def __init__(
        self, name: str, *, tap: bool = False, offload: bool = False, multi_queue: bool = False
    ) -> None:
        self.name = name
        self.tap = tap
        self.multi_queue = multi_queue
        self.offload_requested = offload
        self.vnet_hdr = False
        self.offloads = ""
        self.uso = False
        self.mtu = 0  # as Tun: set by the Device for a TAP (frames are written as given here)
        self.vouch = False
        self.read_drops = 0
        self.write_drops = 0
        self.gone = False  # as Tun: the kernel deleted the device (see delete())
        self._deleted = False
        self.written: list[bytes] = []
        self.writes_detached = False
        self.queues: list[socket.socket] = []  # kernel ends of the queues open_queue handed out
        self._kernel, self._dev = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._kernel.setblocking(False)
        self._dev.setblocking(False)
        self.fd = self._dev.fileno()

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def inject(self, *packets: bytes) -> None:
        """The kernel writes `packets` to the device: the daemon's fd becomes readable."""
        if self.closed:
            raise TunError(f"{self.name} is closed")
        for p in packets:
            self._kernel.send(p)

    def delete(self) -> None:
        """`ip link del`: the fd stays ready and every read fails, as with a real TUN."""
        self._deleted = True
        self._kernel.send(b"")  # readiness, as EPOLLERR gives a real one

    def read_batch(self, max_batch: int = MAX_READS) -> list[bytes]:
        out: list[bytes] = []
        if self.closed:
            return out
        if self._deleted:
            self.gone = True
            return out
        try:
            for _ in range(max_batch):
                out.append(self._dev.recv(65535 + 14 + 8))
        except BlockingIOError:
            pass
        return out

    def write_batch(self, packets: list[bytes]) -> None:
        if self.closed:
            # A real Tun writes to fd -1 and counts every packet as lost.
            self.write_drops += len(packets)
            return
        self.written.extend(bytes(p) for p in packets)

    def take_written(self) -> list[bytes]:
        """What the daemon wrote since the last call."""
        out, self.written = self.written, []
        return out

    def open_queue(self) -> int:
        """One more queue of a multi-queue TUN: a blocking, non-inheritable fd, as Tun's."""
        if not self.multi_queue or self.tap:
            raise TunError(f"{self.name} was not opened as a multi-queue TUN")
        kernel, queue = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.queues.append(kernel)
        fd = queue.detach()
        os.set_inheritable(fd, False)
        return fd

    def detach_writes(self) -> None:
        self.open_queue()  # refuses as Tun does when there are no queues
        self.writes_detached = True

    def close(self) -> None:
        if self.closed:
            return
        for s in (self._dev, self._kernel, *self.queues):
            s.close()
        self.queues.clear()
        self.fd = -1


# --------------------------------------------------------------------------------- UDP --


@dataclass
class Sent:
    src: Addr
    dst: Addr
    datagram: bytes


@dataclass
class FakeNetwork:
    """In-memory UDP between `FakeUdp` sockets, addressed by (host, port)."""

    sockets: dict[Addr, FakeUdp] = field(default_factory=dict)
    log: list[Sent] = field(default_factory=list)
    lost: list[Sent] = field(default_factory=list)
    # Called for every datagram before delivery; returning False loses it (a lossy path).
    admit: Callable[[Sent], bool] | None = None

    def bind(self, host: str, port: int | None = 0, fwmark: int | None = None) -> FakeUdp:
        """A FakeUdp bound to (host, port) on this network; port 0 or None picks a free one."""
        return FakeUdp(self, host, port, fwmark)

    def factory(self, host: str) -> Callable[..., FakeUdp]:
        """A callable with UdpSocket's signature ``(port, fwmark=None, *, offload=True,
        pktinfo=True, aqm=True)`` that binds on `host`, for code that opens its own sockets."""

        def make(
            port: int | None,
            fwmark: int | None = None,
            *,
            offload: bool = True,
            pktinfo: bool = True,
            aqm: bool = True,
        ) -> FakeUdp:
            return FakeUdp(self, host, port, fwmark, offload=offload, pktinfo=pktinfo, aqm=aqm)

        return make

    def _register(self, sock: FakeUdp, host: str, port: int | None) -> int:
        if port:
            if (host, port) in self.sockets:
                raise UdpError(f"UDP port {port} is already in use")
        else:
            port = next(p for p in EPHEMERAL_PORTS if (host, p) not in self.sockets)
        self.sockets[(host, port)] = sock
        return port

    def _unregister(self, addr: Addr) -> None:
        self.sockets.pop(addr, None)

    def _carry(self, sent: Sent) -> None:
        self.log.append(sent)
        dst = self.sockets.get(sent.dst)
        if dst is None or (self.admit is not None and not self.admit(sent)):
            self.lost.append(sent)
            return
        dst._arrive(sent.datagram, sent.src)


class FakeUdp:
    """A UDP socket bound to (host, port) on a `FakeNetwork`."""

    def __init__(
        self,
        network: FakeNetwork,
        host: str,
        port: int | None = 0,
        fwmark: int | None = None,
        *,
        offload: bool = True,
        pktinfo: bool = True,
        aqm: bool = True,
    ) -> None:
        self.network = network
        self.host = _normal_host(host)
        # No arrival stamps in the memory network, so no receive-queue AQM (io/codel.py).
        self.codel = None
        self.v6 = True  # a dual-stack socket, as UdpSocket's normally is
        self.fwmark = fwmark or 0
        # The memory network takes any batch, so both offloads are simply "on" when asked for.
        self.gso = offload
        self.gro = offload
        self.send_errors = 0
        # Local addresses are not reported (as a kernel without PKTINFO: every source is the
        # 2-tuple (host, port)), so no Dest names a sticky source and none is ever refused.
        self.pktinfo = False
        self.lost_sources: list[tuple[str, int]] = []
        self.sent: list[tuple[Addr, bytes]] = []
        self._queue: deque[tuple[bytes, Addr]] = deque()
        self._ready, self._wake = socket.socketpair()
        self._ready.setblocking(False)
        self._wake.setblocking(False)
        self._armed = False
        try:
            self.port: int = network._register(self, self.host, port)
        except UdpError:
            self._ready.close()
            self._wake.close()
            raise
        self.closed = False

    @property
    def address(self) -> Addr:
        return (self.host, self.port)

    def fileno(self) -> int:
        return self._ready.fileno() if not self.closed else -1

    def set_fwmark(self, mark: int) -> None:
        self.fwmark = mark

    def _arrive(self, data: bytes, src: Addr) -> None:
        self._queue.append((data, src))
        if not self._armed:  # one wake-up byte while anything is queued
            self._wake.send(b"!")
            self._armed = True

    def recv_batch(self, max_batch: int = 128) -> list[tuple[bytes, Addr]]:
        out: list[tuple[bytes, Addr]] = []
        q = self._queue
        while q and len(out) < max_batch:
            out.append(q.popleft())
        if not q and self._armed:
            self._ready.recv(1)
            self._armed = False
        return out

    def send(self, addr: Any, datagrams: list[bytes]) -> None:
        if self.closed:
            # As sendto on a closed socket: EBADF, counted like any send error.
            self.send_errors += len(datagrams)
            return
        host, port = host_port(addr)
        dst = (_normal_host(host), port)
        for d in datagrams:
            d = bytes(d)
            self.sent.append((dst, d))
            self.network._carry(Sent(self.address, dst, d))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.network._unregister(self.address)
        self._queue.clear()
        self._ready.close()
        self._wake.close()

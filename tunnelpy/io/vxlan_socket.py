"""UDP for plain VXLAN: receive on the VXLAN port, send from a pool of flow-hashed source ports.

RFC 7348 §5 recommends an outer source port derived from a hash of the inner frame, so that ECMP
routers in the underlay spread flows while keeping each flow on one path. The Linux vxlan device
picks the port from a range per flow; from userspace we get the same effect with a small pool of
sockets bound to ephemeral ports and choose one by the flow hash the engine computed. Receiving
stays on the one socket bound to the VXLAN port (4789 by default), where peers send.

Plain VXLAN authenticates nothing, so ``host`` (``ListenAddress``) binds every socket to one
local address: the listening socket then takes only datagrams sent to that address (not to
every address of the host, as ``*:4789`` does), and the pool sends from it, which is the source
address the peers recognise us by. The sockets are made here and handed to UdpSocket.adopt
(UdpSocket itself binds the wildcard address only), with its buffer sizes, fwmark and GRO.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Sequence

from .udp import (
    SOL_UDP,
    UDP_GRO,
    Destination,
    Origin,
    Src,
    UdpError,
    UdpSocket,
    prepare,
)

POOL_SIZE = 8


def _bound(host: str, port: int, fwmark: int | None, *, offload: bool, gro: bool) -> UdpSocket:
    """A UdpSocket bound to (host, port) only; IPv6 hosts get a v6-only socket."""
    v6 = ipaddress.ip_address(host).version == 6
    sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if v6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        prepare(sock, fwmark)
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        where = f"[{host}]:{port}" if v6 else f"{host}:{port}"
        if e.errno == errno.EADDRINUSE:
            raise UdpError(f"UDP {where} is already in use") from None
        raise UdpError(f"cannot bind UDP {where}: {e.strerror}") from None
    udp = UdpSocket.adopt(sock.detach(), offload=offload)
    if gro and udp.gso:  # (gso: offload asked for and not forced off)
        try:
            udp.sock.setsockopt(SOL_UDP, UDP_GRO, 1)
            udp.gro = True
        except OSError:
            pass  # one datagram per receive, as UdpSocket does without GRO
    return udp


class VxlanSocket:
    def __init__(
        self,
        port: int | None,
        fwmark: int | None = None,
        pool: int = POOL_SIZE,
        *,
        offload: bool = True,
        host: str | None = None,
    ) -> None:
        # No sticky sources (udp.py): the pool's ports differ from the listening one anyway, and
        # the engine's Dests name none (with ListenAddress, every socket has the one address).
        self.host = host
        if host is None:
            self.listen = UdpSocket(port, fwmark, offload=offload, pktinfo=False, aqm=False)
        else:
            self.listen = _bound(host, port or 0, fwmark, offload=offload, gro=True)
        self.port = self.listen.port
        self.lost_sources: list[Src] = []  # (always empty: see above)
        self.pool: list[UdpSocket] = []
        try:
            for _ in range(pool):
                if host is None:
                    self.pool.append(UdpSocket(0, fwmark, offload=offload, pktinfo=False, aqm=False))
                else:
                    self.pool.append(_bound(host, 0, fwmark, offload=offload, gro=False))
        except Exception:
            self.close()
            raise

    def fileno(self) -> int:
        return self.listen.fileno()

    def recv_batch(self, max_batch: int = 128) -> list[tuple[bytes, Origin]]:
        return self.listen.recv_batch(max_batch)

    def send(self, dest: Destination, datagrams: Sequence[bytes]) -> None:
        """Send from the pool socket that the flow hash (a Dest's third element) picks."""
        flow = dest[2] if len(dest) > 2 else 0
        self.pool[flow % len(self.pool)].send(dest, datagrams)

    def set_fwmark(self, mark: int) -> None:
        for s in (self.listen, *self.pool):
            s.set_fwmark(mark)

    def close(self) -> None:
        for s in (self.listen, *self.pool):
            s.close()

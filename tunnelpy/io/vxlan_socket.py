"""UDP for plain VXLAN: receive on the VXLAN port, send from a pool of flow-hashed source ports.

RFC 7348 §5 recommends an outer source port derived from a hash of the inner frame, so that ECMP
routers in the underlay spread flows while keeping each flow on one path. The Linux vxlan device
picks the port from a range per flow; from userspace we get the same effect with a small pool of
sockets bound to ephemeral ports and choose one by the flow hash the engine computed. Receiving
stays on the one socket bound to the VXLAN port (4789 by default), where peers send.
"""

from __future__ import annotations

from .udp import Destination, Origin, Src, UdpSocket

POOL_SIZE = 8


class VxlanSocket:
    def __init__(
        self,
        port: int | None,
        fwmark: int | None = None,
        pool: int = POOL_SIZE,
        *,
        offload: bool = True,
    ) -> None:
        # No sticky sources (udp.py): the pool's ports differ from the listening one anyway, and
        # the engine's Dests name none.
        self.listen = UdpSocket(port, fwmark, offload=offload, pktinfo=False)
        self.port = self.listen.port
        self.lost_sources: list[Src] = []  # (always empty: see above)
        self.pool: list[UdpSocket] = []
        try:
            for _ in range(pool):
                self.pool.append(UdpSocket(0, fwmark, offload=offload, pktinfo=False))
        except Exception:
            self.close()
            raise

    def fileno(self) -> int:
        return self.listen.fileno()

    def recv_batch(self, max_batch: int = 128) -> list[tuple[bytes, Origin]]:
        return self.listen.recv_batch(max_batch)

    def send(self, dest: Destination, datagrams: list[bytes]) -> None:
        """Send from the pool socket that the flow hash (a Dest's third element) picks."""
        flow = dest[2] if len(dest) > 2 else 0
        self.pool[flow % len(self.pool)].send(dest, datagrams)

    def set_fwmark(self, mark: int) -> None:
        for s in (self.listen, *self.pool):
            s.set_fwmark(mark)

    def close(self) -> None:
        for s in (self.listen, *self.pool):
            s.close()

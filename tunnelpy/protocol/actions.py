"""What an engine call returns: the actions the daemon performs, grouped for batching; and the
address types both directions of the socket share with the engine.

Sticky source addresses: a host may have several local addresses (two on one link, say), and a
peer that reached us at one of them expects the answer from it, or its NAT and firewall drop
the answer and its roaming logic moves its endpoint for us. So the socket layer tells the
engine at which local address (:data:`Src`) each datagram arrived (the third element of an
:data:`Origin`), the engine keeps that of the peer's last authenticated datagram, and every
datagram for the peer names it in its :class:`Dest`; the socket layer sends from it (IP_PKTINFO
/ IPV6_PKTINFO) and falls back to the kernel's choice when the address has gone."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from .events import Event

Src = tuple[str, int]
"""A local address of this host that a datagram arrived at: its text form (IPv4 as a dotted
quad, never IPv4-mapped) and the index of the interface it arrived on."""

Origin = tuple[str, int] | tuple[str, int, Src | None]
"""Where a received datagram came from: the sender's (host, port), and when the socket knows it,
the local address it arrived at (None: the socket could not tell)."""


class Dest(NamedTuple):
    """Where a batch of datagrams goes: the peer's address, for plain VXLAN the flow hash of the
    inner frames, which the socket layer maps to one of its source ports (RFC 7348 §5), and the
    local address to send from (``src``; None: the kernel's choice). Encrypted sessions leave
    ``flow`` 0. Not a socket address: the socket builds that."""

    host: str
    port: int
    flow: int = 0
    src: Src | None = None


@dataclass
class Output:
    """What the daemon must do after one engine call."""

    datagrams: dict[Dest, list[bytes]] = field(default_factory=dict)  # grouped by destination
    packets: list[bytes] = field(default_factory=list)  # to write to the TUN
    frames: dict[int, list[bytes]] = field(default_factory=dict)  # VNI -> frames for its TAP
    events: list[Event] = field(default_factory=list)

    def send(self, dest: Dest, data: bytes) -> None:
        bucket = self.datagrams.get(dest)
        if bucket is None:
            self.datagrams[dest] = [data]
        else:
            bucket.append(data)

    def write_frame(self, vni: int, frame: bytes) -> list[bytes]:
        """Queue `frame` for the TAP of segment `vni`; returns that segment's list of frames."""
        bucket = self.frames.get(vni)
        if bucket is None:
            bucket = self.frames[vni] = [frame]
        else:
            bucket.append(frame)
        return bucket

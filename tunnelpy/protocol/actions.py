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

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, cast, overload

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


class Sealed(Sequence[bytes]):
    """Transport messages in one contiguous buffer, as the compiled seal writes them
    (protocol/_aead.pyx): ``runs`` lists ``(start, end, size)``, the datagrams from ``start`` to
    ``end`` of ``buf`` being ``size`` bytes each, the last possibly shorter. One run is what one
    ``sendmsg`` with UDP_SEGMENT sends as is (the socket cuts it at its own limits, io/udp.py).
    It reads as the sequence of its datagrams, so whoever iterates a batch (workers, tests,
    a socket without GSO) sees bytes as from the Python seal."""

    __slots__ = ("buf", "runs", "n")

    def __init__(self, buf: bytes, runs: list[tuple[int, int, int]], n: int) -> None:
        self.buf = buf
        self.runs = runs
        self.n = n  # datagrams

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[bytes]:
        buf = self.buf
        for start, end, size in self.runs:
            for at in range(start, end, size):
                yield buf[at : min(at + size, end)]

    @overload
    def __getitem__(self, i: int) -> bytes: ...
    @overload
    def __getitem__(self, i: slice) -> list[bytes]: ...
    def __getitem__(self, i: int | slice) -> bytes | list[bytes]:
        if isinstance(i, slice):
            return list(self)[i]
        if i < 0:
            i += self.n
        if 0 <= i < self.n:
            for start, end, size in self.runs:
                n = -(-(end - start) // size)
                if i < n:
                    at = start + i * size
                    return self.buf[at : min(at + size, end)]
                i -= n
        raise IndexError("Sealed index out of range")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sealed | list):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Sealed({self.n} datagrams, {len(self.buf)} bytes)"


Datagrams = list[bytes] | Sealed
"""One destination's datagrams: a list, or the compiled seal's contiguous buffer."""


def add_datagrams(table: dict[Dest, list[bytes]], dest: Dest, datagrams: Datagrams) -> None:
    """Queue ``datagrams`` for ``dest`` after those already there (Output.datagrams, and the
    workers' SendOutput). A second batch for one destination in one call is rare (a handshake
    beside data): a Sealed one then becomes a list.

    Output.datagrams is declared ``dict[Dest, list[bytes]]`` although a value may be a Sealed:
    the plain VXLAN engine (vxlan.py) fills its lists in place through that declaration, and
    every reader here takes any sequence of bytes (the sockets' ``send``, the tests). Only this
    function and Output.send add to a value, and both handle a Sealed; anything else that tried
    (``append``, ``+``) would fail loudly, since a Sealed is no list."""
    bucket = table.get(dest)
    if bucket is None:
        table[dest] = cast(list[bytes], datagrams)
    elif type(bucket) is list:
        bucket.extend(datagrams)
    else:
        table[dest] = [*bucket, *datagrams]


@dataclass
class Output:
    """What the daemon must do after one engine call."""

    # Grouped by destination; a value may be a Sealed (see add_datagrams).
    datagrams: dict[Dest, list[bytes]] = field(default_factory=dict)
    # To write to the TUN. With Engine.tcp_units a write unit (a list of buffers, io/gro.py)
    # may stand among them, which only a TUN with offloads can write; declared list[bytes]
    # for every other reader, since no unit is made without that flag.
    packets: list[bytes] = field(default_factory=list)
    # VNI -> frames for its TAP; with Engine.frame_units write units among them, as above.
    frames: dict[int, list[bytes]] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)

    def send(self, dest: Dest, data: bytes) -> None:
        bucket = self.datagrams.get(dest)
        if bucket is None:
            self.datagrams[dest] = [data]
        elif type(bucket) is list:
            bucket.append(data)
        else:
            self.datagrams[dest] = [*bucket, data]

    def write_frame(self, vni: int, frame: bytes) -> list[bytes]:
        """Queue `frame` for the TAP of segment `vni`; returns that segment's list of frames."""
        bucket = self.frames.get(vni)
        if bucket is None:
            bucket = self.frames[vni] = [frame]
        else:
            bucket.append(frame)
        return bucket

"""What an engine call returns: the actions the daemon performs, grouped for batching."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from .events import Event


class Dest(NamedTuple):
    """Where a batch of datagrams goes: the peer's address, and for plain VXLAN the flow hash
    of the inner frames, which the socket layer maps to one of its source ports (RFC 7348 §5).
    Encrypted sessions leave ``flow`` 0. Not a socket address: the socket builds that."""

    host: str
    port: int
    flow: int = 0


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

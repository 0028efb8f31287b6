"""What an engine call returns: the actions the daemon performs, grouped for batching."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Event:
    """Something worth one log line or a daemon reaction (never carries key material)."""

    kind: str  # handshake_sent, handshake_complete, handshake_failed, roamed, resolve
    peer: str
    detail: str = ""


@dataclass
class Output:
    """What the daemon must do after one engine call."""

    datagrams: dict[Hashable, list[bytes]] = field(default_factory=dict)  # grouped by destination
    packets: list[bytes] = field(default_factory=list)  # to write to the TUN
    frames: dict[int, list[bytes]] = field(default_factory=dict)  # VNI -> frames for its TAP
    events: list[Event] = field(default_factory=list)

    def send(self, addr: Hashable, data: bytes) -> None:
        bucket = self.datagrams.get(addr)
        if bucket is None:
            self.datagrams[addr] = [data]
        else:
            bucket.append(data)

    def merge(self, other: Output) -> None:
        for addr, items in other.datagrams.items():
            self.datagrams.setdefault(addr, []).extend(items)
        self.packets.extend(other.packets)
        for vni, frames in other.frames.items():
            self.frames.setdefault(vni, []).extend(frames)
        self.events.extend(other.events)

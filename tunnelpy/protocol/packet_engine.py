"""The contract the daemon drives an engine by, whichever transport it speaks.

Theory of operation
-------------------
Two engines exist: ``Engine`` (engine.py, WireGuard: keys, handshakes, timers, L3 and L2 over
encrypted sessions) and ``VxlanEngine`` (vxlan.py, plain RFC 7348 to VTEPs: no keys, L2 only).
Both are sans-I/O and are driven the same way, so the data path and the daemon hold a
:class:`PacketEngine` and never ask which one it is for the per-packet work:

* batches in, :class:`~.actions.Output` out: ``from_tunnel`` (TUN packets), ``from_segment``
  (TAP frames of one VNI), ``from_network`` (UDP payloads with their origin: the sender and
  the local address they arrived at), ``on_timer``; ``next_deadline`` says when ``on_timer``
  is due (None: never); ``forget_sources`` is the socket saying it could not send from some
  local addresses (actions.py, sticky sources);
* the tables readers show: ``peers`` (keyed by public key, or by name for VXLAN), ``segments``
  (VNI -> :class:`~.switch.Switch`, with its FDB), ``drops`` (reason -> count, see drops.py);
* the changes every transport has: segments added (replacing one of the same VNI) and removed,
  peers removed and moved to a new endpoint.

Adding a peer stays engine-specific (a WireGuard peer is a key with AllowedIPs, a VXLAN peer a
name with an address), as do the WireGuard-only settings (private key, AllowedIPs, keepalives).

``UNSET`` is the "leave unchanged" value of ``update_peer`` keywords: ``None`` is a value there
(no preshared key, no endpoint), so it cannot mean "unchanged".
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from .actions import Origin, Output, Src
from .switch import Switch

Addr = tuple[str, int]


class Unset(enum.Enum):
    """The type of UNSET (an enum, so type checkers narrow ``x is UNSET`` / isinstance)."""

    UNSET = "unset"

    def __repr__(self) -> str:
        return "UNSET"


UNSET = Unset.UNSET


class PacketEngine(Protocol):
    @property
    def peers(self) -> Mapping[Any, Any]: ...
    @property
    def segments(self) -> Mapping[int, Switch[Any]]: ...
    @property
    def drops(self) -> Counter[str]: ...

    def from_tunnel(self, packets: Sequence[bytes], now: float) -> Output: ...
    def from_segment(self, vni: int, frames: Sequence[bytes], now: float) -> Output: ...
    def from_network(self, datagrams: Iterable[tuple[bytes, Origin]], now: float) -> Output: ...
    def forget_sources(self, srcs: Iterable[Src]) -> Output: ...
    def on_timer(self, now: float) -> Output: ...
    def next_deadline(self) -> float | None: ...

    def add_segment(
        self,
        vni: int,
        peers: Iterable[Any] | None = None,
        *,
        hub: bool = ...,
        aging: float = ...,
        max_fdb: int = ...,
        max_frame: int = ...,
        static: Iterable[tuple[bytes, Any]] = ...,
        allowed_macs: Iterable[tuple[bytes, int, Any]] = ...,
        max_per_peer: int | None = ...,
        move_hold: float = ...,
    ) -> Switch[Any]: ...
    def remove_segment(self, vni: int) -> None: ...
    def remove_peer(self, key: Any, /) -> None: ...
    def update_peer(self, key: Any, /, *, endpoint: Addr | Unset = ..., now: float) -> Any: ...

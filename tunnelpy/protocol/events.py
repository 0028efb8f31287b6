"""What happened to a peer that deserves a log line or a reaction of the daemon.

Theory of operation
-------------------
An engine call returns, besides the packets to send and write, a list of events in the order they
happened (``Output.events``). Each is a frozen dataclass naming the peer by its public key (the
identity the daemon keys its own state by; for a plain-VXLAN peer, its name encoded) and by its
name (for the log). The daemon dispatches on the class: ``isinstance`` or ``match``. ``str(event)``
is the human detail of the log line. Events never carry secrets; the public key is left out of
``repr`` and ``str`` all the same, so a log line is the same whoever reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Addr = tuple[str, int]
Src = tuple[str, int]  # (local address, interface index), as actions.Src


def format_addr(addr: Addr | None) -> str:
    """An endpoint as wg prints it: host:port, [v6]:port, or (none)."""
    if addr is None:
        return "(none)"
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class PeerEvent:
    peer_key: bytes = field(repr=False)  # the peer's public key (plain VXLAN: name.encode())
    peer_name: str


@dataclass(frozen=True, slots=True)
class HandshakeSent(PeerEvent):
    """We sent a handshake initiation (retry: the retransmit timer's, not a fresh one)."""

    retry: bool

    def __str__(self) -> str:
        return "retry" if self.retry else ""


@dataclass(frozen=True, slots=True)
class HandshakeComplete(PeerEvent):
    """A new session is in use; role is ours in its handshake."""

    role: str  # "initiator" | "responder"

    def __str__(self) -> str:
        return self.role


@dataclass(frozen=True, slots=True)
class HandshakeFailed(PeerEvent):
    """No response after REKEY_ATTEMPT_TIME: staged packets dropped, retries stopped."""

    attempts: int

    def __str__(self) -> str:
        return f"{self.attempts} attempts"


@dataclass(frozen=True, slots=True)
class Roamed(PeerEvent):
    """An authenticated message came from another address: the endpoint moved there."""

    old: Addr | None
    new: Addr

    def __str__(self) -> str:
        return f"{format_addr(self.old)} -> {format_addr(self.new)}"


@dataclass(frozen=True, slots=True)
class SourceChanged(PeerEvent):
    """The local address we send to the peer from (its sticky source) changed: an authenticated
    message arrived at another of our addresses (``new``), or the socket found ``old`` gone and
    the kernel chooses again (``new`` None)."""

    old: Src | None
    new: Src | None

    def __str__(self) -> str:
        def text(src: Src | None) -> str:
            return "(kernel's choice)" if src is None else src[0]

        return f"{text(self.old)} -> {text(self.new)}"


@dataclass(frozen=True, slots=True)
class ResolveEndpoint(PeerEvent):
    """The peer does not answer: an endpoint given as a host name is worth resolving again."""

    reason: str  # "no handshake response" | "peer went quiet"

    def __str__(self) -> str:
        return self.reason


Event = (
    HandshakeSent | HandshakeComplete | HandshakeFailed | Roamed | SourceChanged | ResolveEndpoint
)

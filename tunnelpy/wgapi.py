"""The UAPI's two operations on a running :class:`~tunnelpy.device.Device`.

``get=1`` reads a :class:`DeviceSnapshot`; ``set=1`` applies a parsed :class:`SetRequest` in
wireguard-go's order (device/uapi.go): private key, listen port, fwmark, then each peer block
(remove, create or update, preshared key, endpoint, allowed IPs, keepalive). Both only call
Device methods, so ``wg set`` changes the interface exactly the way a reload or start-up does,
and the whole request flushes once (one timer run, one worker sync).

All or nothing: the only steps that can fail are binding the new listen port and setting the
fwmark (wireguard-go answers both with EADDRINUSE). They are done first, on a socket that is
not in use yet (or, for a lone fwmark, as the first change), so a refused request has changed
nothing; what follows (keys, peers, allowed IPs) cannot fail.
"""

from __future__ import annotations

import errno
import logging
from typing import cast

from .device import Device
from .io.uapi import UNSET, DeviceSnapshot, PeerChange, PeerSnapshot, SetRequest, UapiError
from .io.udp import UdpError, UdpSocket
from .io.vxlan_socket import VxlanSocket
from .keys import is_low_order
from .protocol.allowedips import Prefix
from .protocol.engine import Engine
from .protocol.packet_engine import UNSET as KEEP

log = logging.getLogger("tunnelpyd")


def snapshot(device: Device) -> DeviceSnapshot:
    e = device.engine
    assert isinstance(e, Engine)  # the UAPI is served for Transport = wireguard only
    peers = [
        PeerSnapshot(
            public_key=p.public_key,
            preshared_key=p.preshared_key if any(p.preshared_key) else None,
            endpoint=p.endpoint,
            persistent_keepalive=p.persistent_keepalive,
            last_handshake=p.last_handshake_wall,
            rx_bytes=p.stats.rx_bytes,
            tx_bytes=p.stats.tx_bytes,
            allowed_ips=e.allowed.prefixes_of(p),
        )
        for p in e.peers.values()
    ]
    return DeviceSnapshot(
        private_key=e.private_key,
        listen_port=device.listen_port,
        fwmark=device.fwmark or 0,
        peers=peers,
    )


def apply_set(device: Device, req: SetRequest) -> None:
    """Apply all of ``req`` or, raising UapiError, none of it."""
    for ch in req.peers:
        # Refused where keys enter (before anything changes): no handshake with such a key can
        # ever complete, and WireGuard refuses the all-zero shared secret it gives.
        if not (ch.remove or ch.update_only) and is_low_order(ch.public_key):
            raise UapiError(errno.EINVAL, "public_key: a low-order point, which WireGuard refuses")
    new_socket = _open_listen_port(device, req.listen_port)
    try:
        if req.fwmark is not None:
            _check_fwmark(device, new_socket, req.fwmark)
    except BaseException:
        if new_socket is not None:
            new_socket.close()
        raise
    with device.batch():
        if isinstance(req.private_key, bytes):
            _set_private_key(device, req.private_key)
        elif req.private_key is None:
            # `private_key=` with 64 zeros: as wireguard-go, the interface has no key (and so
            # sends and answers no handshake) until it gets one.
            _set_private_key(device, b"")
        if new_socket is not None:
            device.replace_socket(new_socket)
        if req.fwmark is not None and new_socket is not None:
            device.set_fwmark(req.fwmark)  # the new socket has it already; the Device records it
        if req.replace_peers:
            device.remove_all_peers()
        for change in req.peers:
            _apply_peer(device, change)


def _set_private_key(device: Device, key: bytes) -> None:
    device.set_private_key(key)
    e = device.engine
    if isinstance(e, Engine) and e.public_key and device.has_peer(e.public_key):
        device.remove_peer(e.public_key)  # wireguard-go: a peer with our own key goes


def _open_listen_port(device: Device, port: int | None) -> UdpSocket | VxlanSocket | None:
    """The socket to move to, bound already; None when the port stays as it is."""
    if port is None or device.udp is None or (port and port == device.udp.port):
        return None  # (0 is "any port": wireguard-go rebinds then, and so does the Device)
    try:
        return device.open_socket(port)
    except (UdpError, OSError) as e:
        raise UapiError(errno.EADDRINUSE, f"listen_port={port}: {e}") from None


def _check_fwmark(device: Device, new_socket: UdpSocket | VxlanSocket | None, mark: int) -> None:
    """Set the mark on the socket about to be used (the new one, else the Device's: then this
    is the request's first change, and the last that can fail)."""
    try:
        if new_socket is not None:
            new_socket.set_fwmark(mark)
        else:
            device.set_fwmark(mark)
    except OSError as e:
        raise UapiError(errno.EADDRINUSE, f"fwmark={mark}: {e.strerror or e}") from None


def _apply_peer(device: Device, ch: PeerChange) -> None:
    e = device.engine
    assert isinstance(e, Engine)
    if ch.public_key == e.public_key:
        return  # wireguard-go ignores a peer block carrying our own key; so do we
    if ch.remove:
        if device.has_peer(ch.public_key):
            device.remove_peer(ch.public_key)
        return
    if not device.has_peer(ch.public_key):
        if ch.update_only:
            return
        device.add_peer(ch.public_key)
    device.update_peer(
        ch.public_key,
        preshared_key=KEEP if ch.preshared_key is UNSET else ch.preshared_key,
        # an endpoint set over the UAPI is a literal: it replaces a configured host name
        endpoint=KEEP if ch.endpoint is None else ch.endpoint,
        hostname=KEEP if ch.endpoint is None else None,
        allowed_ips=_prefixes(ch) if ch.replace_allowed_ips else KEEP,
        add_allowed_ips=() if ch.replace_allowed_ips else _prefixes(ch),
        persistent_keepalive=(KEEP if ch.persistent_keepalive is None else ch.persistent_keepalive),
    )


def _prefixes(ch: PeerChange) -> list[Prefix]:
    # The UAPI codec packs prefixes exactly as AllowedIPs keeps them (io/uapi.py cannot import
    # the protocol package, so its ints are only typed as int): no conversion, no copy.
    return cast(list[Prefix], ch.allowed_ips)

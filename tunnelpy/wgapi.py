"""The UAPI's two operations on a running :class:`~tunnelpy.device.Device`.

``get=1`` reads a :class:`DeviceSnapshot`; ``set=1`` applies a parsed :class:`SetRequest` in
wireguard-go's order (device/uapi.go): private key, listen port, fwmark, then each peer block
(remove, create or update, preshared key, endpoint, allowed IPs, keepalive). Both only call
Device methods, so ``wg set`` changes the interface exactly the way a reload or start-up does,
and the whole request flushes once (one timer run, one worker sync).
"""

from __future__ import annotations

import logging

from .device import Device
from .io.uapi import UNSET, DeviceSnapshot, PeerChange, PeerSnapshot, SetRequest
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
            allowed_ips=e.allowed.networks_of(p),
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
    with device.batch():
        if isinstance(req.private_key, bytes):
            device.set_private_key(req.private_key)
        elif req.private_key is None:
            log.warning("UAPI: removing the private key is not supported; key kept")
        if req.listen_port is not None and device.udp is not None:
            device.set_listen_port(req.listen_port)
        if req.fwmark is not None:
            device.set_fwmark(req.fwmark)
        if req.replace_peers:
            device.remove_all_peers()
        for change in req.peers:
            _apply_peer(device, change)


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
        allowed_ips=list(ch.allowed_ips) if ch.replace_allowed_ips else KEEP,
        add_allowed_ips=() if ch.replace_allowed_ips else ch.allowed_ips,
        persistent_keepalive=(KEEP if ch.persistent_keepalive is None else ch.persistent_keepalive),
    )

"""`tunnelpy show`: read running interfaces over the WireGuard UAPI and print them.

It speaks the same `get=1` protocol as `wg show`, so it lists tunnelpyd and wireguard-go
interfaces alike. The JSON form (``--json``) is stable: a list of interfaces, each
``{"name", "public_key", "listen_port", "fwmark", "peers": [{"public_key", "endpoint",
"allowed_ips", "latest_handshake", "rx_bytes", "tx_bytes", "persistent_keepalive",
"preshared_key": bool}]}``; ``latest_handshake`` is unix seconds or null.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import sys
import time
from typing import Any

from .keys import public_from_private


def uapi_get(path: str, timeout: float = 3.0) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(b"get=1\n\n")
        buf = b""
        while not (b"errno=" in buf and buf.endswith(b"\n\n")):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return parse_get(buf.decode())


def _b64(hexkey: str) -> str:
    return base64.b64encode(bytes.fromhex(hexkey)).decode()


def parse_get(text: str) -> dict[str, Any]:
    dev: dict[str, Any] = {"public_key": None, "listen_port": 0, "fwmark": 0, "peers": []}
    peer: dict[str, Any] | None = None
    hs_sec = hs_nsec = 0
    for line in text.splitlines():
        if not line or "=" not in line:
            continue
        k, v = line.split("=", 1)
        if k == "errno":
            if v != "0":
                raise OSError(int(v), f"UAPI error {v}")
            continue
        if k == "public_key":
            peer = {
                "public_key": _b64(v),
                "endpoint": None,
                "allowed_ips": [],
                "latest_handshake": None,
                "rx_bytes": 0,
                "tx_bytes": 0,
                "persistent_keepalive": 0,
                "preshared_key": False,
            }
            dev["peers"].append(peer)
            continue
        if peer is None:
            if k == "private_key":
                dev["public_key"] = public_from_private(_b64(v))
            elif k in ("listen_port", "fwmark"):
                dev[k] = int(v)
            continue
        if k == "endpoint":
            peer["endpoint"] = v
        elif k == "allowed_ip":
            peer["allowed_ips"].append(v)
        elif k == "preshared_key":
            peer["preshared_key"] = any(bytes.fromhex(v))
        elif k == "last_handshake_time_sec":
            hs_sec = int(v)
        elif k == "last_handshake_time_nsec":
            hs_nsec = int(v)
            peer["latest_handshake"] = hs_sec + hs_nsec / 1e9 if hs_sec else None
        elif k in ("rx_bytes", "tx_bytes"):
            peer[k] = int(v)
        elif k == "persistent_keepalive_interval":
            peer["persistent_keepalive"] = int(v)
    return dev


def _ago(t: float | None) -> str:
    if not t:
        return "never"
    d = int(time.time() - t)
    parts = []
    for unit, n in (("h", 3600), ("m", 60), ("s", 1)):
        if d >= n or unit == "s":
            parts.append(f"{d // n}{unit}")
            d %= n
    return " ".join(parts) + " ago"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def render(dev: dict[str, Any]) -> str:
    lines = [
        f"interface: {dev['name']}",
        f"  public key: {dev['public_key']}",
        f"  listening port: {dev['listen_port']}",
    ]
    if dev["fwmark"]:
        lines.append(f"  fwmark: {dev['fwmark']:#x}")
    for p in dev["peers"]:
        lines += [
            "",
            f"peer: {p['public_key']}",
            f"  endpoint: {p['endpoint'] or '(none)'}",
            f"  allowed ips: {', '.join(p['allowed_ips']) or '(none)'}",
            f"  latest handshake: {_ago(p['latest_handshake'])}",
            f"  transfer: {_size(p['rx_bytes'])} received, {_size(p['tx_bytes'])} sent",
        ]
        if p["persistent_keepalive"]:
            lines.append(f"  persistent keepalive: every {p['persistent_keepalive']} s")
    return "\n".join(lines)


def show(name: str | None, *, as_json: bool, uapi_dir: str) -> int:
    try:
        names = sorted(f[:-5] for f in os.listdir(uapi_dir) if f.endswith(".sock"))
    except FileNotFoundError:
        names = []
    if name is not None:
        if name not in names:
            print(f"tunnelpy: no running interface {name} (no {uapi_dir}/{name}.sock)", file=sys.stderr)
            return 1
        names = [name]
    devices = []
    for n in names:
        try:
            dev = uapi_get(os.path.join(uapi_dir, n + ".sock"))
        except OSError as e:
            if name is not None:
                print(f"tunnelpy: {n}: {e}", file=sys.stderr)
                return 1
            continue  # a stale socket of a dead daemon: not running, not listed
        dev["name"] = n
        devices.append(dev)
    if as_json:
        print(json.dumps(devices, indent=2))
    else:
        print("\n\n".join(render(d) for d in devices) if devices else "no running interfaces")
    return 0

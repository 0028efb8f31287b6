"""`tunnelpy show [NAME] [--json]`: the state of running interfaces, as a table or as JSON.

Where it looks, per interface name:

1. tunnelpyd's control socket ``/run/tunnelpy/NAME.ctl`` (control.py): everything — peer names,
   packets, handshakes, drops by reason, each segment's FDB, the topology;
2. otherwise the WireGuard UAPI socket ``/var/run/wireguard/NAME.sock`` (``get=1``, as ``wg
   show`` does): so wireguard-go interfaces are listed too, with what the UAPI knows (keys,
   endpoints, allowed IPs, handshake time, bytes). Fields the UAPI cannot tell are null.

With no NAME every running interface is listed; a stale socket (its daemon is gone) is skipped.

``--json`` prints a list with one object per interface. The format is stable: fields are only
ever added; ``schema`` (now 1) changes if a meaning does. docs/operations.md documents it:

``{"schema", "name", "source": "tunnelpyd"|"uapi", "transport", "pid", "public_key",
"listen_port", "fwmark", "peers": [...], "drops": {reason: n}, "segments": [...],
"topology": [...]}``, and from tunnelpyd also ``config``, ``started``, ``reloads``.
A peer: ``{"name", "public_key", "endpoint", "allowed_ips", "latest_handshake" (unix seconds
or null), "rx_bytes", "tx_bytes", "rx_packets", "tx_packets", "handshakes",
"persistent_keepalive", "preshared_key" (bool), "drops": {reason: n}}``. A segment: ``{"name",
"vni", "device", "bridge", "hub", "peers", "fdb_size", "fdb_max", "fdb_refused", "fdb_moves",
"fdb": [{"mac", "peer", "age" (seconds, null if static), "static"}]}``.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import sys
import time
from typing import Any

from . import control
from .keys import public_from_private

SCHEMA = control.SCHEMA


# --------------------------------------------------------------------------------------------
# UAPI (wireguard-go, or a tunnelpyd without its control socket)


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
    """A ``get=1`` answer as a status document (source "uapi"; unknown fields null)."""
    dev: dict[str, Any] = {
        "schema": SCHEMA, "name": None, "source": "uapi", "transport": "wireguard", "pid": None,
        "public_key": None, "listen_port": 0, "fwmark": 0, "peers": [], "drops": {},
        "segments": [], "topology": [],
    }  # fmt: skip
    peer: dict[str, Any] | None = None
    hs_sec = hs_nsec = 0
    for line in text.splitlines():
        if not line or "=" not in line:
            continue
        k, v = line.split("=", 1)
        if k == "errno":
            if v != "0":
                raise OSError(abs(int(v)), f"UAPI error {v}")
            continue
        if k == "public_key":
            peer = {
                "name": None, "public_key": _b64(v), "endpoint": None, "allowed_ips": [],
                "latest_handshake": None, "rx_bytes": 0, "tx_bytes": 0, "rx_packets": None,
                "tx_packets": None, "handshakes": None, "persistent_keepalive": 0,
                "preshared_key": False, "drops": {},
            }  # fmt: skip
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


# --------------------------------------------------------------------------------------------
# Collecting


def running_names(uapi_dir: str, control_dir: str) -> list[str]:
    """Every name with a control or UAPI socket (live or stale), sorted."""
    try:
        uapi = {f[:-5] for f in os.listdir(uapi_dir) if f.endswith(".sock")}
    except (FileNotFoundError, NotADirectoryError):
        uapi = set()
    return sorted(uapi | set(control.running(control_dir)))


def get_status(name: str, *, uapi_dir: str, control_dir: str) -> dict[str, Any]:
    """One interface's document: control socket first, UAPI second; OSError if neither answers."""
    ctl = control.socket_path(name, control_dir)
    errors: list[str] = []
    if os.path.exists(ctl):
        try:
            doc = control.request(ctl, "show", timeout=5.0)
            if isinstance(doc, dict):
                return doc
        except (OSError, ValueError, control.ControlError) as e:
            errors.append(f"{ctl}: {e}")
    sock = os.path.join(uapi_dir, name + ".sock")
    if os.path.exists(sock) or not errors:
        try:
            doc = uapi_get(sock)
            doc["name"] = name
            return doc
        except OSError as e:
            errors.append(f"{sock}: {e.strerror or e}")
    raise OSError("; ".join(errors))


def collect(
    name: str | None, *, uapi_dir: str, control_dir: str
) -> tuple[list[dict[str, Any]], str | None]:
    """(documents, error): error is the one line to print when NAME is not running."""
    names = running_names(uapi_dir, control_dir)
    if name is not None:
        if name not in names:
            return [], (
                f"no running interface {name} (no {control.socket_path(name, control_dir)} "
                f"or {uapi_dir}/{name}.sock)"
            )
        names = [name]
    docs = []
    for n in names:
        try:
            docs.append(get_status(n, uapi_dir=uapi_dir, control_dir=control_dir))
        except OSError as e:
            if name is not None:
                return [], f"{n}: {e}"
            # a stale socket of a dead daemon: not running, not listed
    return docs, None


# --------------------------------------------------------------------------------------------
# Human form


def _ago(t: float | None, now: float | None = None) -> str:
    if not t:
        return "never"
    d = max(0, int((time.time() if now is None else now) - t))
    parts = []
    for unit, n in (("h", 3600), ("m", 60), ("s", 1)):
        if d >= n or unit == "s":
            parts.append(f"{d // n}{unit}")
            d %= n
    return " ".join(parts[:2]) + " ago"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return str(n)


def _drops(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "-"


def _table(header: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    fmt = indent + "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*header).rstrip()] + [fmt.format(*r).rstrip() for r in rows]


def render(dev: dict[str, Any], now: float | None = None) -> str:
    """A readable block for one interface: header, peer table, drops, segments with FDB."""
    src = "tunnelpyd" if dev.get("source") == "tunnelpyd" else "UAPI"
    head = f"interface: {dev['name']}  ({src}"
    if dev.get("version"):
        head += f" {dev['version']}"
    if dev.get("pid"):
        head += f", pid {dev['pid']}"
    if dev.get("transport") and dev["transport"] != "wireguard":
        head += f", transport {dev['transport']}"
    lines = [head + ")"]
    if dev.get("public_key"):
        lines.append(f"  public key: {dev['public_key']}")
    lines.append(f"  listening port: {dev['listen_port']}")
    if dev.get("fwmark"):
        lines.append(f"  fwmark: {dev['fwmark']:#x}")
    if dev.get("config"):
        lines.append(f"  config: {dev['config']}")
    peers = dev.get("peers", [])
    lines.append("")
    if peers:
        rows = [
            [
                p.get("name") or (p.get("public_key") or "")[:8],
                p.get("endpoint") or "(none)",
                ", ".join(p.get("allowed_ips") or []) or "-",
                _ago(p.get("latest_handshake"), now),
                _size(p.get("rx_bytes")),
                _size(p.get("tx_bytes")),
                _drops(p.get("drops") or {}),
            ]
            for p in peers
        ]
        lines += _table(["PEER", "ENDPOINT", "ALLOWED IPS", "HANDSHAKE", "RX", "TX", "DROPS"], rows)
        lines.append("")
        for p in peers:
            if p.get("public_key"):
                ka = (
                    f", keepalive {p['persistent_keepalive']} s"
                    if p["persistent_keepalive"]
                    else ""
                )
                psk = ", preshared key" if p.get("preshared_key") else ""
                label = p.get("name") or "peer"
                lines.append(f"  {label}: {p['public_key']}{psk}{ka}")
    else:
        lines.append("  no peers")
    if dev.get("drops"):
        lines += ["", f"  drops: {_drops(dev['drops'])}"]
    for s in dev.get("segments", []):
        members = ", ".join(s["peers"]) if s.get("peers") is not None else "all peers"
        bridge = f", bridge {s['bridge']}" if s.get("bridge") else ""
        lines += [
            "",
            f"  segment {s['name']}: VNI {s['vni']}, device {s['device']}{bridge}, {members}; "
            f"FDB {s['fdb_size']}/{s['fdb_max']}"
            + (f", {s['fdb_refused']} refused" if s.get("fdb_refused") else ""),
        ]
        if s.get("fdb"):
            rows = [
                [e["mac"], e["peer"], "static" if e.get("static") else f"{e['age']:.0f} s"]
                for e in s["fdb"]
            ]
            lines += _table(["MAC", "PEER", "AGE"], rows, indent="    ")
    if dev.get("topology"):
        lines += ["", "  topology:"]
        for link in dev["topology"]:
            where = f" in {link['namespace']}" if link.get("namespace") else ""
            lines.append(f"    {link.get('kind', '?')} {link.get('name', '?')}{where}")
    return "\n".join(lines)


def show(
    name: str | None,
    *,
    as_json: bool,
    uapi_dir: str,
    control_dir: str = control.DEFAULT_DIRECTORY,
) -> int:
    docs, error = collect(name, uapi_dir=uapi_dir, control_dir=control_dir)
    if error:
        print(f"tunnelpy: {error}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(docs, indent=2, sort_keys=True))
    elif docs:
        print("\n\n".join(render(d) for d in docs))
    else:
        print("no running interfaces")
    return 0

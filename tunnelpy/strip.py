"""`tunnelpy strip FILE`: the part of a config that `wg setconf` and `wg syncconf` accept.

`wg-quick strip` removes wg-quick's own keys and leaves everything else, so on a tunnelpy
config it leaves `Name`, `PrivateKeyFile`, `MetricsListen` or `[Segment]`, which `wg` refuses
(docs/operations.md advised `wg syncconf X <(wg-quick strip X)`, which failed on every tunnelpy
file). This prints instead only what the UAPI knows, from the parsed config — so the file is
checked exactly as the daemon checks it, and key files are read with the daemon's trust rules:

``[Interface]``  PrivateKey (also from PrivateKeyFile), ListenPort, FwMark
``[Peer]``       PublicKey, PresharedKey (also from PresharedKeyFile), Endpoint, AllowedIPs,
                 PersistentKeepalive

Everything else is dropped: wg-quick's keys (Address, DNS, MTU, Table, hooks, SaveConfig),
tunnelpy's extensions (Name, LogLevel, LogFormat, Transport, MetricsListen, User, Offload,
Workers), `[Segment]` and the topology sections. Endpoints are written as the file has them
(a host name stays a name: `wg` resolves it as it would in a wg0.conf). The output holds the
private key, as `wg-quick strip`'s does: feed it to `wg` through a pipe or `<(…)`, not a file.
"""

from __future__ import annotations

from . import config as cfgmod
from . import keys

# What `wg setconf` knows of each section (wg(8), CONFIGURATION FILE FORMAT); the man page
# tunnelpy.conf(5) marks these keys "as in wg(8)".
WG_KEYS: dict[str, tuple[str, ...]] = {
    "Interface": ("PrivateKey", "ListenPort", "FwMark"),
    "Peer": ("PublicKey", "PresharedKey", "Endpoint", "AllowedIPs", "PersistentKeepalive"),
}


class StripError(Exception):
    """The config has nothing `wg` could take (plain VXLAN has no WireGuard keys)."""


def _endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def strip(conf: cfgmod.Config) -> str:
    """The `wg setconf` text for a parsed config (see the module docstring)."""
    ic = conf.interface
    if ic.transport != cfgmod.TRANSPORT_WIREGUARD:
        raise StripError(
            f"{conf.path}: Transport = {ic.transport} has no WireGuard keys: nothing for wg"
        )
    lines = ["[Interface]", f"PrivateKey = {keys.encode_key(ic.private_key)}"]
    if ic.listen_port:
        lines.append(f"ListenPort = {ic.listen_port}")
    if ic.fwmark:
        lines.append(f"FwMark = 0x{ic.fwmark:x}")
    for p in conf.peers:
        lines += ["", "[Peer]", f"PublicKey = {keys.encode_key(p.public_key)}"]
        if p.preshared_key:
            lines.append(f"PresharedKey = {keys.encode_key(p.preshared_key)}")
        if p.endpoint is not None:
            lines.append(f"Endpoint = {_endpoint(*p.endpoint)}")
        if p.allowed_ips:
            lines.append(f"AllowedIPs = {', '.join(str(n) for n in p.allowed_ips)}")
        if p.persistent_keepalive:
            lines.append(f"PersistentKeepalive = {p.persistent_keepalive}")
    return "\n".join(lines) + "\n"

"""A big site.conf for the scale tests: N peers sharing P AllowedIPs prefixes, made reproducibly.

Peer i owns ``10.70.<i // 250>.<i % 250 + 1>/32`` (the address its live-driver engine sends from,
inside the daemon's 10.70.0.0/16 so the kernel routes replies to the TUN even with Table = off)
plus its share of random distinct prefixes of mixed lengths (IPv4 /8-/32 in 10/8 and
100.64/10, IPv6 /32-/128 in fd00::/8), all distinct after normalisation.
"""

from __future__ import annotations

import base64
import ipaddress
import random

from tunnelpy.protocol.crypto import generate_private_key, public_key

SELF_ADDR = "10.70.0.0/16"


def peer_address(i: int) -> str:
    return f"10.70.{i // 250}.{i % 250 + 1}"


def b64(k: bytes) -> str:
    return base64.b64encode(k).decode()


def make_prefixes(r: random.Random, n: int) -> list[str]:
    seen: set = set()
    out: list[str] = []
    self_net = ipaddress.ip_network(SELF_ADDR)
    while len(out) < n:
        if r.random() < 0.8:
            plen = r.choice([8 + r.randrange(25), 24, 32, 32, 28])
            base = r.choice([(10 << 24, 8), ((100 << 24) | (64 << 16), 10)])
            addr = base[0] | r.getrandbits(32 - base[1])
            plen = max(plen, base[1])
            net = ipaddress.IPv4Network((addr, plen), strict=False)
            if net.overlaps(self_net):
                continue
        else:
            plen = r.choice([32 + r.randrange(97), 48, 64, 128])
            addr = (0xFD << 120) | r.getrandbits(120)
            net = ipaddress.IPv6Network((addr, plen), strict=False)
        if net in seen:
            continue
        seen.add(net)
        out.append(str(net))
    return out


def big_config(
    n_peers: int, n_prefixes: int, *, name: str, port: int, seed: int = 1, table: str | None = None
) -> tuple[str, list[bytes]]:
    """(config text, the peers' private keys): the caller can be any of the peers."""
    r = random.Random(seed)
    me = generate_private_key(r.randbytes)
    keys = [generate_private_key(r.randbytes) for _ in range(n_peers)]
    extra = make_prefixes(r, max(0, n_prefixes - n_peers))
    per = len(extra) // n_peers
    lines = ["[Interface]", f"Name = {name}", f"PrivateKey = {b64(me)}", f"ListenPort = {port}",
             f"Address = {SELF_ADDR.replace('0.0/16', '0.254/16')}"]  # fmt: skip
    if table:
        lines.append(f"Table = {table}")
    for i, k in enumerate(keys):
        mine = [f"{peer_address(i)}/32", *extra[i * per : (i + 1) * per]]
        lines += ["", "[Peer]", f"Name = p{i}", f"PublicKey = {b64(public_key(k))}",
                  f"AllowedIPs = {', '.join(mine)}"]  # fmt: skip
    return "\n".join(lines) + "\n", [me, *keys]

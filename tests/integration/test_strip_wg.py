"""`tunnelpy strip FILE` fed to the real `wg setconf` and `wg syncconf`, against a running
tunnelpyd in a namespace: a full tunnelpy file (Name, key files, LogFormat, Workers, a
[Segment], a topology section) is refused by `wg` as it is, and accepted once stripped, and the
daemon ends up with exactly the file's WireGuard state."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.harness.netns import genkey, genpsk, pubkey
from tests.harness.sites import new_site, start

pytestmark = pytest.mark.root


def strip(path) -> str:
    res = subprocess.run(
        [sys.executable, "-m", "tunnelpy", "strip", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return res.stdout


def dump(lab, ns: str, ifname: str) -> tuple[list[str], dict[str, list[str]]]:
    """`wg show IF dump`: the interface row (private key, public key, port, fwmark) and one row
    per peer by public key (psk, endpoint, allowed IPs sorted, keepalive)."""
    rows = [line.split("\t") for line in lab.wg_show(ns, ifname, "dump").splitlines()]
    iface = rows[0]
    peers = {r[0]: [r[1], r[2], ",".join(sorted(r[3].split(","))), r[7]] for r in rows[1:]}
    return iface, peers


def test_stripped_tunnelpy_file_is_what_wg_setconf_and_syncconf_take(lab):
    a_ns, _ = lab.ns
    site = new_site(lab, a_ns, 51820, ["10.64.0.1/24"])
    start(lab, site)  # running with no peers, port 51820

    key = genkey()
    lab.write_file("site.key", key + "\n")
    kb, kc = pubkey(genkey()), pubkey(genkey())
    psk = genpsk()
    lab.write_file("b.psk", psk + "\n")
    br = lab.ifname("br")
    full = f"""[Interface]
Name = {site.ifname}
PrivateKeyFile = site.key
ListenPort = 51821
FwMark = 0x5182
Address = 10.64.0.1/24
MTU = 1400
LogLevel = debug
LogFormat = json
Workers = 1
DNS = 10.64.0.53
PostUp = true

[Peer]
Name = site-b
PublicKey = {kb}
PresharedKeyFile = b.psk
Endpoint = 192.0.2.2:51820
AllowedIPs = 10.64.0.2/32, fd64::2/128
PersistentKeepalive = 25

[Peer]
Name = site-c
PublicKey = {kc}
Endpoint = [2001:db8::3]:51823
AllowedIPs = 10.64.3.0/24

[Segment lab]
VNI = 100
Peers = site-b

[Bridge {br}]
"""
    path = lab.write_file("full.conf", full)
    # As it is, wg refuses the file on the first tunnelpy key.
    raw = lab.run(a_ns, "wg", "setconf", site.ifname, str(path), check=False)
    assert raw.returncode != 0 and "Name" in raw.stderr, raw.stderr

    stripped = lab.write_file("full.wg", strip(path))
    lab.run(a_ns, "wg", "setconf", site.ifname, str(stripped))
    iface, peers = dump(lab, a_ns, site.ifname)
    assert iface[0] == key and iface[2] == "51821" and iface[3] == "0x5182"
    assert peers == {
        kb: [psk, "192.0.2.2:51820", "10.64.0.2/32,fd64::2/128", "25"],
        kc: ["(none)", "[2001:db8::3]:51823", "10.64.3.0/24", "off"],
    }

    # syncconf: site-c leaves, site-b moves; the running device follows exactly.
    full2 = full.replace("Endpoint = 192.0.2.2:51820", "Endpoint = 192.0.2.22:51820")
    start_c = full2.index("[Peer]\nName = site-c")
    full2 = full2[:start_c] + full2[full2.index("[Segment lab]") :]
    path2 = lab.write_file("full.conf", full2)
    stripped2 = lab.write_file("full.wg", strip(path2))
    lab.run(a_ns, "wg", "syncconf", site.ifname, str(stripped2))
    iface, peers = dump(lab, a_ns, site.ifname)
    assert iface[2] == "51821"
    assert peers == {kb: [psk, "192.0.2.22:51820", "10.64.0.2/32,fd64::2/128", "25"]}
    assert site.proc.alive

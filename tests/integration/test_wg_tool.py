"""`tunnelpyd IFNAME` configured by the `wg` tool alone, as wg-quick and the recipes do it:
setconf, addconf, syncconf, showconf, set (private-key, listen-port rebound live, fwmark, peers,
PSKs, endpoints, keepalive, allowed-ips replaced and removed), and the kernel selftest's scale
cases: 130 561 allowed-IP tokens in one setconf and back, and 40 peers x 52 prefixes."""

from __future__ import annotations

import ipaddress
import random
import re
import sys
import time

from tests.harness.hostile_env import figure
from tests.harness.netns import Lab, genkey, genpsk, pubkey

DAEMON = [sys.executable, "-m", "tunnelpy.tunnelpyd"]


def _conf(lab: Lab, name: str, lines: list[str]) -> str:
    return str(lab.write_file(name, "\n".join(lines) + "\n"))


def test_wg_set_setconf_addconf_syncconf_showconf():
    with Lab(1) as lab:
        (ns,) = lab.ns
        ifname = lab.ifname("wt")
        lab.run(ns, *DAEMON, ifname)
        key, psk = genkey(), genpsk()
        p1, p2, p3 = (pubkey(genkey()) for _ in range(3))
        base = [
            "[Interface]", f"PrivateKey = {key}", "ListenPort = 40111", "FwMark = 0x77",
            "[Peer]", f"PublicKey = {p1}", f"PresharedKey = {psk}", "Endpoint = 127.0.0.1:1111",
            "AllowedIPs = 10.1.0.0/16, fd01::/64", "PersistentKeepalive = 25",
        ]  # fmt: skip
        lab.run(ns, "wg", "setconf", ifname, _conf(lab, "base.conf", base))
        show = lab.run(ns, "wg", "showconf", ifname).stdout
        assert f"PrivateKey = {key}" in show and "ListenPort = 40111" in show
        assert "FwMark = 0x77" in show and f"PresharedKey = {psk}" in show
        assert "AllowedIPs = 10.1.0.0/16, fd01::/64" in show
        assert "PersistentKeepalive = 25" in show and "Endpoint = 127.0.0.1:1111" in show
        ss = lab.run(ns, "ss", "-uaen").stdout
        assert re.search(r":40111\s.*fwmark:0x77", ss), ss  # SO_MARK on the socket

        lab.run(ns, "wg", "addconf", ifname, _conf(lab, "add.conf", [
            "[Peer]", f"PublicKey = {p2}", "AllowedIPs = 10.2.0.0/16",
        ]))  # fmt: skip
        assert p2 in lab.run(ns, "wg", "show", ifname, "peers").stdout

        # listen-port rebinds live; allowed-ips replaced; a peer removed
        lab.run(ns, "wg", "set", ifname, "listen-port", "40112", "peer", p1, "allowed-ips",
                "10.9.0.0/24", "peer", p2, "remove")  # fmt: skip
        assert lab.run(ns, "wg", "show", ifname, "listen-port").stdout.strip() == "40112"
        assert ":40112 " in lab.run(ns, "ss", "-uan").stdout
        ips = lab.run(ns, "wg", "show", ifname, "allowed-ips").stdout
        assert f"{p1}\t10.9.0.0/24" in ips and p2 not in ips

        # syncconf: to exactly this file (p1 goes, p3 comes), the private key kept
        lab.run(ns, "wg", "syncconf", ifname, _conf(lab, "sync.conf", [
            "[Interface]", f"PrivateKey = {key}", "ListenPort = 40112",
            "[Peer]", f"PublicKey = {p3}", "AllowedIPs = 10.3.0.0/16",
        ]))  # fmt: skip
        peers = lab.run(ns, "wg", "show", ifname, "peers").stdout.split()
        assert peers == [p3]
        # a zero key removes the key (wireguard-go does the same)
        lab.run(ns, "wg", "set", ifname, "private-key", "/dev/null")
        assert lab.run(ns, "wg", "show", ifname, "private-key").stdout.strip() == "(none)"
        lab.host("ip", "-n", ns, "link", "del", ifname)


def test_kernel_selftest_scale_130561_allowed_ips_and_40_by_52():
    with Lab(1) as lab:
        (ns,) = lab.ns
        ifname = lab.ifname("ws")
        lab.run(ns, *DAEMON, ifname)
        # netns.sh: one peer, every a.b.0.0/16 and a::b/128 for a in 1..255, b in 0..255
        lines = [
            "[Interface]",
            f"PrivateKey = {genkey()}",
            "[Peer]",
            f"PublicKey = {pubkey(genkey())}",
        ]
        lines += [f"AllowedIPs = {a}.{b}.0.0/16,{a:x}::{b:x}/128" for a in range(1, 256)
                  for b in range(256)]  # fmt: skip
        path = _conf(lab, "big.conf", lines)
        t = time.monotonic()
        lab.run(ns, "wg", "setconf", ifname, path, timeout=120)
        t_set = time.monotonic() - t
        t = time.monotonic()
        out = lab.run(ns, "wg", "show", ifname, "allowed-ips", timeout=120).stdout
        t_show = time.monotonic() - t
        assert len(out.split()) == 255 * 256 * 2 + 1  # the peer's key, then every prefix
        figure("uapi_setconf_130560_prefixes_s", round(t_set, 2), "s")
        figure("uapi_show_130560_prefixes_s", round(t_show, 2), "s")
        assert t_set < 30 and t_show < 30, (t_set, t_show)

        # netns.sh's 40 peers x 52 prefixes, set again and again, read back exactly
        r = random.Random(40)
        peers = {}
        for _ in range(40):
            nets = set()
            while len(nets) < 52:
                if r.random() < 0.5:
                    nets.add(
                        ipaddress.ip_network((r.getrandbits(32), r.randint(8, 32)), strict=False)
                    )
                else:
                    nets.add(
                        ipaddress.ip_network((r.getrandbits(128), r.randint(16, 128)), strict=False)
                    )
            peers[pubkey(genkey())] = nets
        lines = ["[Interface]", f"PrivateKey = {genkey()}"]
        for k, nets in peers.items():
            lines += ["[Peer]", f"PublicKey = {k}", "AllowedIPs = " + ", ".join(map(str, nets))]
        path = _conf(lab, "forty.conf", lines)
        for _ in range(3):
            lab.run(ns, "wg", "setconf", ifname, path)
        got: dict[str, set] = {}
        for line in lab.run(ns, "wg", "show", ifname, "allowed-ips").stdout.splitlines():
            k, *nets = line.split()
            got[k] = {ipaddress.ip_network(n) for n in nets}
        # (overlapping prefixes across peers: the later peer wins, as in the kernel)
        assert set(got) == set(peers) and sum(map(len, got.values())) <= 40 * 52
        for k in got:
            assert got[k] <= peers[k]
        lab.host("ip", "-n", ns, "link", "del", ifname)

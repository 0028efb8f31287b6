"""Real tunnelpyd processes in network namespaces, carrying real traffic."""

from __future__ import annotations

import time

import pytest

from tests.harness.netns import WG_RUN_DIR
from tests.harness.sites import new_site, run_once, start

pytestmark = pytest.mark.root

UA, UB, UC = "10.31.0.1", "10.31.0.2", "10.31.0.3"


def two_sites(lab, *, keepalive_b: int | None = None, psk: str | None = None, v6: bool = False):
    a_ns, b_ns = lab.ns
    lab.veth(a_ns, b_ns, [f"{UA}/24", "fd31::1/64"], [f"{UB}/24", "fd31::2/64"])
    a = new_site(lab, a_ns, 51820, ["10.30.0.1/24", "fd30::1/64"])
    b = new_site(lab, b_ns, 51820, ["10.30.0.2/24", "fd30::2/64"])
    ea, eb = ("[fd31::1]:51820", "[fd31::2]:51820") if v6 else (f"{UA}:51820", f"{UB}:51820")
    a.peers.append(b.peer_block(eb, ["10.30.0.2/32", "fd30::2/128"], name="site-b", psk=psk))
    b.peers.append(a.peer_block(ea, ["10.30.0.1/32", "fd30::1/128"], name="site-a",
                                keepalive=keepalive_b, psk=psk))
    return a, b


@pytest.mark.parametrize("underlay", ["v4", "v6"])
def test_two_sites_ping_v4_v6_and_tcp(lab, underlay):
    a, b = two_sites(lab, v6=underlay == "v6")
    start(lab, a)
    start(lab, b)
    assert lab.ping(a.ns, "10.30.0.2")
    assert lab.ping(b.ns, "10.30.0.1")
    assert lab.ping(a.ns, "fd30::2")
    assert lab.ping(b.ns, "fd30::1")
    assert lab.tcp_transfer(a.ns, b.ns, "10.30.0.2", 8 << 20), lab.notes
    assert lab.tcp_transfer(b.ns, a.ns, "fd30::1", 4 << 20), lab.notes
    hs = lab.latest_handshakes(a.ns, a.ifname)
    assert hs[b.public_key] > time.time() - 60
    endpoint = lab.wg_show(a.ns, a.ifname, "endpoints").split()[1]
    assert endpoint == ("[fd31::2]:51820" if underlay == "v6" else f"{UB}:51820")


def test_preshared_key(lab):
    from tests.harness.netns import genpsk

    a, b = two_sites(lab, psk=genpsk())
    start(lab, a)
    start(lab, b)
    assert lab.ping(a.ns, "10.30.0.2")


def test_sigterm_removes_everything(lab):
    a, b = two_sites(lab)
    start(lab, a)
    start(lab, b)
    assert lab.ping(a.ns, "10.30.0.2")
    assert a.proc.stop() == 0
    assert not lab.link_exists(a.ns, a.ifname)
    assert not (WG_RUN_DIR / f"{a.ifname}.sock").exists()
    routes = lab.run(a.ns, "ip", "route", "show", "table", "all").stdout
    assert a.ifname not in routes and "10.30.0." not in routes
    addrs = lab.run(a.ns, "ip", "addr").stdout
    assert "10.30.0.1" not in addrs and "fd30::1" not in addrs


def test_peer_restart_traffic_resumes(lab):
    a, b = two_sites(lab, keepalive_b=5)
    start(lab, a)
    start(lab, b)
    assert lab.ping(a.ns, "10.30.0.2")
    assert b.proc.stop() == 0
    start(lab, b)
    # B's persistent keepalive makes it handshake at once; A accepts the new session.
    assert lab.ping(a.ns, "10.30.0.2", count=2, timeout=20)
    assert lab.tcp_transfer(a.ns, b.ns, "10.30.0.2", 1 << 20), lab.notes


def test_underlay_address_change_is_followed(lab):
    a, b = two_sites(lab, keepalive_b=None)
    a.peers[0] = a.peers[0].replace("[Peer]", "[Peer]\nPersistentKeepalive = 2", 1)
    start(lab, a)
    start(lab, b)
    assert lab.ping(b.ns, "10.30.0.1")
    veth_a = lab.run(a.ns, "ip", "-br", "addr").stdout
    dev = next(line.split()[0].split("@")[0] for line in veth_a.splitlines() if UA in line)
    # (deleting first: removing a primary address also removes its secondaries)
    lab.run(a.ns, "ip", "addr", "del", f"{UA}/24", "dev", dev)
    lab.run(a.ns, "ip", "addr", "add", "10.31.0.77/24", "dev", dev)
    t0 = time.monotonic()
    lab.wait_for(
        lambda: "10.31.0.77:51820" in lab.wg_show(b.ns, b.ifname, "endpoints"),
        10, "B follows A's new underlay address",
    )
    assert time.monotonic() - t0 < 10
    assert lab.ping(b.ns, "10.30.0.1")


def test_hub_and_spokes(make_lab):
    lab = make_lab(3)
    hub_ns, s1_ns, s2_ns = lab.ns
    lab.veth(hub_ns, s1_ns, "10.32.1.1/24", "10.32.1.2/24")
    lab.veth(hub_ns, s2_ns, "10.32.2.1/24", "10.32.2.2/24")
    lab.run(hub_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    hub = new_site(lab, hub_ns, 51820, ["10.33.0.1/24"])
    s1 = new_site(lab, s1_ns, 51820, ["10.33.0.2/24"])
    s2 = new_site(lab, s2_ns, 51820, ["10.33.0.3/24"])
    hub.peers += [
        s1.peer_block(None, ["10.33.0.2/32"], name="spoke1"),
        s2.peer_block(None, ["10.33.0.3/32"], name="spoke2"),
    ]
    s1.peers.append(hub.peer_block("10.32.1.1:51820", ["10.33.0.0/24"], name="hub", keepalive=10))
    s2.peers.append(hub.peer_block("10.32.2.1:51820", ["10.33.0.0/24"], name="hub", keepalive=10))
    for s in (hub, s1, s2):
        start(lab, s)
    assert lab.ping(s1.ns, "10.33.0.1")
    assert lab.ping(s1.ns, "10.33.0.3")  # spoke to spoke, through the hub
    assert lab.ping(s2.ns, "10.33.0.2")
    assert lab.tcp_transfer(s1.ns, s2.ns, "10.33.0.3", 2 << 20), lab.notes


BAD_CONFIGS = {
    "unknown_key": ("[Interface]\nPrivateKey = {k}\nListenPort = 1\n[Peer]\nPublicKey = {p}\nAllowedIP = 10.0.0.0/8\n", 6, "AllowedIPs"),
    "bad_key": ("[Interface]\nPrivateKey = notbase64\n", 2, "PrivateKey"),
    "bad_cidr": ("[Interface]\nPrivateKey = {k}\n[Peer]\nPublicKey = {p}\nAllowedIPs = 10.0.0.0/33\n", 5, "AllowedIPs"),
    "port_range": ("[Interface]\nPrivateKey = {k}\nListenPort = 70000\n", 3, "ListenPort"),
    "no_port": ("[Interface]\nPrivateKey = {k}\n[Peer]\nPublicKey = {p}\nEndpoint = 10.0.0.1\n", 5, "Endpoint"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_refused_without_touching_host(lab, case):
    from tests.harness.netns import genkey, pubkey

    text, line, key = BAD_CONFIGS[case]
    before_links = lab.run(lab.ns[0], "ip", "-br", "link").stdout
    res = run_once(lab, lab.ns[0], text.format(k=genkey(), p=pubkey(genkey())), f"bad{case}.conf")
    assert res.returncode != 0
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"bad{case}.conf:{line}:" in err and key in err, err
    assert lab.run(lab.ns[0], "ip", "-br", "link").stdout == before_links


def test_interface_name_in_use_refused(lab):
    a, b = two_sites(lab)
    start(lab, a)
    clash = new_site(lab, a.ns, 51821, ["10.30.9.1/24"])
    clash.ifname = a.ifname
    proc = start(lab, clash, wait=False)
    assert proc.popen.wait(15) == 1
    assert "already" in proc.log()
    assert lab.ping(a.ns, "10.30.0.1", count=1)  # the first daemon is untouched


def test_default_route_through_tunnel_with_policy_rules(lab):
    """AllowedIPs = 0.0.0.0/0 with Table = auto: wg-quick's fwmark rules keep the underlay out
    of the tunnel while everything else goes in; SIGTERM removes the rules."""
    a, b = two_sites(lab)
    a.peers[0] = a.peers[0].replace("AllowedIPs = 10.30.0.2/32, fd30::2/128", "AllowedIPs = 0.0.0.0/0")
    start(lab, a)
    start(lab, b)
    lab.run(b.ns, "ip", "addr", "add", "198.18.0.1/32", "dev", "lo")  # "the internet", behind B
    rules = lab.run(a.ns, "ip", "rule").stdout
    assert "not from all fwmark 0xca6c lookup 51820" in rules
    assert "suppress_prefixlength 0" in rules
    assert lab.ping(a.ns, "198.18.0.1")  # only reachable through the tunnel
    assert lab.ping(a.ns, "10.30.0.2")
    assert a.proc.stop() == 0
    rules = lab.run(a.ns, "ip", "rule").stdout
    assert "51820" not in rules and "suppress_prefixlength" not in rules

"""tunnelpyd against wireguard-go (the Debian package), configured by `wg`."""

from __future__ import annotations

import time

import pytest

from tests.harness.netns import WgPeer, genkey, genpsk, pubkey
from tests.harness.sites import new_site, start

pytestmark = [pytest.mark.root, pytest.mark.interop]

UT, UW = "10.41.0.1", "10.41.0.2"  # underlay: tunnelpyd side, wireguard-go side
IT, IW = "10.40.0.1", "10.40.0.2"  # inner


def setup(lab, *, psk: str | None = None, tp_initiates: bool = True):
    t_ns, w_ns = lab.ns
    lab.veth(t_ns, w_ns, f"{UT}/24", f"{UW}/24")
    site = new_site(lab, t_ns, 51820, [f"{IT}/24", "fd40::1/64"])
    wkey = genkey()
    # Only the initiating side knows the other's endpoint, so the handshake direction is forced.
    site.peers.append(
        "[Peer]\nName = wggo\n"
        f"PublicKey = {pubkey(wkey)}\n"
        + (f"PresharedKey = {psk}\n" if psk else "")
        + (f"Endpoint = {UW}:51821\n" if tp_initiates else "")
        + f"AllowedIPs = {IW}/32, fd40::2/128\n"
    )
    start(lab, site)
    wg = lab.wggo(
        w_ns, lab.ifname("wg"), wkey, 51821, [f"{IW}/24", "fd40::2/64"],
        WgPeer(site.public_key, allowed_ips=[f"{IT}/32", "fd40::1/128"],
               endpoint=None if tp_initiates else f"{UT}:51820", preshared_key=psk),
    )  # fmt: skip
    return site, wg


def test_tunnelpyd_initiates(lab):
    site, wg = setup(lab, tp_initiates=True)
    assert lab.ping(site.ns, IW)
    assert lab.ping(wg.ns, IT)
    assert lab.ping(site.ns, "fd40::2")
    assert lab.tcp_transfer(site.ns, wg.ns, IW, 4 << 20), lab.notes
    assert lab.tcp_transfer(wg.ns, site.ns, IT, 4 << 20), lab.notes


def test_wireguard_go_initiates(lab):
    site, wg = setup(lab, tp_initiates=False)
    assert lab.ping(wg.ns, IT)
    assert lab.ping(site.ns, IW)
    assert lab.tcp_transfer(wg.ns, site.ns, IT, 4 << 20), lab.notes
    assert lab.tcp_transfer(site.ns, wg.ns, "fd40::2", 2 << 20), lab.notes


def test_preshared_key(lab):
    site, wg = setup(lab, psk=genpsk())
    assert lab.ping(site.ns, IW)
    assert lab.ping(wg.ns, IT)


def test_wrong_preshared_key_never_completes(lab):
    t_ns, w_ns = lab.ns
    site, wg = setup(lab, psk=genpsk())
    lab.wg_set(w_ns, wg.ifname, WgPeer(site.public_key, preshared_key=genpsk()))
    lab.run(w_ns, "wg", "set", wg.ifname, "peer", site.public_key, "remove")
    lab.wg_set(w_ns, wg.ifname, WgPeer(site.public_key, allowed_ips=[f"{IT}/32"], preshared_key=genpsk()))
    assert not lab.ping(site.ns, IW, count=1, timeout=3)
    lab.notes.clear()


def test_wg_show_against_tunnelpyd(lab):
    site, wg = setup(lab)
    assert lab.ping(site.ns, IW, count=5)
    dump = lab.wg_show(site.ns, site.ifname, "dump").splitlines()
    iface = dump[0].split("\t")
    assert iface[1] == site.public_key and iface[2] == "51820"
    peer = dump[1].split("\t")
    # public-key, preshared-key, endpoint, allowed-ips, latest-handshake, rx, tx, keepalive
    assert peer[0] == wg.public_key
    assert peer[2] == f"{UW}:51821"
    assert set(peer[3].split(",")) == {f"{IW}/32", "fd40::2/128"}
    assert int(peer[4]) > time.time() - 60
    assert int(peer[5]) > 5 * 84 and int(peer[6]) > 5 * 84  # five pings each way, encrypted
    # and the same counters from wireguard-go's side, for the symmetric view
    wdump = lab.wg_show(wg.ns, wg.ifname, "dump").splitlines()[1].split("\t")
    assert int(wdump[5]) > 0 and int(wdump[6]) > 0
    human = lab.run(site.ns, "wg", "show", site.ifname).stdout
    assert "latest handshake" in human and "transfer" in human


def test_wg_set_and_showconf_against_tunnelpyd(lab):
    site, wg = setup(lab)
    other = pubkey(genkey())
    lab.run(site.ns, "wg", "set", site.ifname, "peer", other, "allowed-ips", "10.77.0.0/16",
            "persistent-keepalive", "15", "endpoint", "10.41.0.9:1234")
    conf = lab.run(site.ns, "wg", "showconf", site.ifname).stdout
    assert other in conf and "10.77.0.0/16" in conf and "PersistentKeepalive = 15" in conf
    assert "Endpoint = 10.41.0.9:1234" in conf
    lab.run(site.ns, "wg", "set", site.ifname, "peer", other, "remove")
    assert other not in lab.run(site.ns, "wg", "showconf", site.ifname).stdout
    # the live tunnel is unaffected by changes to another peer
    assert lab.ping(site.ns, IW)

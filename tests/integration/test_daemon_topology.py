"""tunnelpyd builds the topology around its segments from the same file, and removes it."""

from __future__ import annotations

import pytest

from tests.harness.sites import new_site, start

pytestmark = pytest.mark.root


def test_sites_build_bridge_and_host_veth_then_undo(make_lab):
    lab = make_lab(4)
    sa, sb, ha, hb = lab.ns
    lab.veth(sa, sb, "10.71.0.1/24", "10.71.0.2/24")
    a = new_site(lab, sa, 51820, ["10.70.0.1/24"])
    b = new_site(lab, sb, 51820, ["10.70.0.2/24"])
    a.peers.append(b.peer_block("10.71.0.2:51820", ["10.70.0.2/32"], name="b"))
    b.peers.append(a.peer_block("10.71.0.1:51820", ["10.70.0.1/32"], name="a"))
    taps = {}
    for site, host, addr in ((a, ha, "192.168.77.1/24"), (b, hb, "192.168.77.2/24")):
        taps[site.ns] = lab.ifname("l")
        veth = lab.ifname("h")
        site.extra = (
            f"[Segment lab]\nVNI = 77\nDevice = {taps[site.ns]}\nBridge = brlab\n\n"
            "[Bridge brlab]\n\n"
            f"[Veth {veth}]\nPeer = eth0\nNamespace = {host}\nMaster = brlab\n"
            f"PeerAddress = {addr}\nMTU = 1398\n"
        )
    start(lab, a)
    start(lab, b)
    assert "master brlab" in lab.run(sa, "ip", "link", "show", taps[sa]).stdout
    assert lab.ping(ha, "192.168.77.2")  # host → built veth → built bridge → TAP → tunnel → …
    assert a.proc.stop() == 0
    assert not lab.link_exists(sa, "brlab") and not lab.link_exists(sa, taps[sa])
    assert not lab.link_exists(ha, "eth0")  # the veth we built is gone with its peer
    assert ha in lab.host("ip", "netns").stdout  # the namespace we did not create stays

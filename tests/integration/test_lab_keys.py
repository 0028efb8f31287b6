"""Lab keys against this kernel, in namespaces (issue 20, item 3): loopback up in every
namespace the topology creates, a veth straight between two named namespaces, routes and
forwarding per namespace; each applied, exercised with traffic and undone.

``[Netem]`` needs sch_netem, which this host's kernel lacks: here it must be refused before
anything changes; the VM tier (tests/vm/guest/test_guest_lab.py) measures the RTT it adds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.netns import Lab
from tests.harness.topolab import TopoLab
from tunnelpy.netlink import topology as topomod
from tunnelpy.netlink.topology import TopologyError


@pytest.fixture
def tl(lab: Lab, tmp_path: Path) -> Iterator[TopoLab]:
    with TopoLab(lab, tmp_path / "state") as t:
        yield t


def test_loopback_up_in_created_namespaces_and_restored_in_others(tl: TopoLab) -> None:
    lab, other = tl.lab, tl.lab.ns[1]
    tl.ip(other, "link", "set", "lo", "down")  # a pre-existing namespace, lo down
    made = tl.ns("lo")
    topo = tl.up(
        f"[Veth lv]\nPeer = lvp\nNamespace = {made}\n[Veth ov]\nPeer = ovp\nNamespace = {other}\n"
    )
    for ns in (made, other):
        assert "UP" in tl.ip(ns, "link", "show", "lo").split(">")[0]  # the flags
        assert lab.ping(ns, "127.0.0.1", count=1), lab.notes
    assert topo.undo() == []
    assert "UP" not in tl.ip(other, "link", "show", "lo").split(">")[0]  # back down
    assert made not in topomod.list_netns()


def test_veth_straight_between_two_named_namespaces(tl: TopoLab) -> None:
    a, b = tl.ns("pa"), tl.ns("pb")
    before = tl.links(tl.base)
    topo = tl.up(
        f"[Veth xa]\nPeer = xb\nNamespace = {a}\nPeerNamespace = {b}\n"
        "Address = 10.81.0.1/24\nPeerAddress = 10.81.0.2/24\n"
    )
    assert "xb" not in tl.ip(a, "link") and "xa" in tl.ip(a, "link")
    assert "xa" not in tl.ip(b, "link") and "xb" in tl.ip(b, "link")
    assert tl.links(tl.base) == before  # nothing in tunnelpyd's own namespace
    assert tl.lab.ping(a, "10.81.0.2"), tl.lab.notes
    assert tl.lab.tcp_transfer(a, b, "10.81.0.2", 1 << 20), tl.lab.notes
    assert topo.undo() == []
    assert a not in topomod.list_netns() and b not in topomod.list_netns()


def test_routes_and_forwarding_make_a_routed_lab(tl: TopoLab) -> None:
    lab = tl.lab
    r, a, b = tl.ns("rr"), tl.ns("ra"), tl.ns("rb")
    other = lab.ns[1]  # pre-existing: its routes and forwarding must come back as they were
    tl.ip(other, "link", "set", "lo", "up")
    topo = tl.up(
        f"[Namespace {r}]\nForwarding = yes\n"
        f"[Namespace {a}]\nRoute = 10.82.2.0/24 via 10.82.1.1\nRoute = fd82:2::/64 via fd82:1::1\n"
        f"[Namespace {b}]\nRoute = default via 10.82.2.1\nRoute = default via fd82:2::1\n"
        f"[Namespace {other}]\nForwarding = yes\nRoute = 10.82.9.0/24 via 10.82.3.1\n"
        f"[Veth r1]\nPeer = a1\nNamespace = {r}\nPeerNamespace = {a}\n"
        "Address = 10.82.1.1/24\nAddress = fd82:1::1/64\n"
        "PeerAddress = 10.82.1.2/24\nPeerAddress = fd82:1::2/64\n"
        f"[Veth r2]\nPeer = b2\nNamespace = {r}\nPeerNamespace = {b}\n"
        "Address = 10.82.2.1/24\nAddress = fd82:2::1/64\n"
        "PeerAddress = 10.82.2.2/24\nPeerAddress = fd82:2::2/64\n"
        f"[Veth r3]\nPeer = o3\nNamespace = {r}\nPeerNamespace = {other}\n"
        "Address = 10.82.3.1/24\nPeerAddress = 10.82.3.2/24\n"
    )
    assert "10.82.2.0/24 via 10.82.1.1 dev a1" in tl.ip(a, "route")
    assert "default via 10.82.2.1 dev b2" in tl.ip(b, "route")
    assert "1" == lab.run(r, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip()
    # a -> r -> b and back: only with the routes and the router's forwarding
    assert lab.ping(a, "10.82.2.2"), lab.notes
    # the new IPv6 addresses are tentative until duplicate address detection is done
    lab.wait_for(
        lambda: not any(lab.run(ns, "ip", "-6", "addr", "show", "tentative").stdout.strip()
                        for ns in (a, r, b)),
        15, "IPv6 addresses past DAD",
    )  # fmt: skip
    assert lab.ping(a, "fd82:2::2", timeout=15), lab.notes
    assert "10.82.9.0/24 via 10.82.3.1" in tl.ip(other, "route")
    assert topo.undo() == []
    # the pre-existing namespace: route gone, forwarding off again, the namespace itself kept
    assert "10.82.9.0/24" not in tl.ip(other, "route")
    assert "0" == lab.run(other, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip()
    assert other in topomod.list_netns()
    assert {r, a, b} & topomod.list_netns() == set()


def test_a_route_whose_gateway_is_unreachable_fails_and_undoes(tl: TopoLab) -> None:
    n = tl.ns("gw")
    topo = tl.topology(
        f"[Namespace {n}]\nRoute = 10.83.0.0/16 via 10.99.0.1\n"
        f"[Veth g]\nPeer = gp\nNamespace = {n}\nPeerAddress = 10.83.1.2/24\n"
    )
    topo.validate()
    with pytest.raises(TopologyError) as info:
        topo.apply()
    message = str(info.value)
    assert "route 10.83.0.0/16 via 10.99.0.1 in namespace" in message
    assert f"ip -n {n} route add 10.83.0.0/16 via 10.99.0.1" in message
    assert "every step before it was undone" in message
    assert n not in topomod.list_netns()


def test_netem_without_sch_netem_is_refused_before_anything_changes(tl: TopoLab) -> None:
    if not topomod.probe_kinds({("qdisc:netem", None)}):
        pytest.skip("this kernel has netem (the VM tier measures it)")
    n = tl.ns("nm")
    before = tl.links(tl.base)
    topo = tl.topology(
        f"[Veth nv]\nPeer = nvp\nNamespace = {n}\n[Netem nvp]\nDelay = 20ms\nLoss = 1%\n"
    )
    with pytest.raises(TopologyError) as info:
        topo.validate()
    message = str(info.value)
    assert "this kernel has no netem qdisc" in message and "sch_netem module" in message
    assert "used by [Netem nvp]" in message and message.endswith("nothing was changed")
    assert tl.links(tl.base) == before and n not in topomod.list_netns()

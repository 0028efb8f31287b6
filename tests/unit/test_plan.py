"""Tests for tunnelpy.netlink.plan: step order, namespaces, rendering. No root, no kernel."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunnelpy import config
from tunnelpy.netlink import plan as planmod
from tunnelpy.netlink.plan import ADDRESS, LINK, MASTER, MOVE, NETNS, PRIMARY, TEAMD, UP

HEAD = "[Interface]\nName = tp0\nTransport = vxlan\n"


def build(body: str) -> planmod.Plan:
    return planmod.build(config.parse(HEAD + body, "t.conf"))


def ops(plan: planmod.Plan) -> list[tuple[str, str, str | None]]:
    return [(s.op, s.name, s.ns) for s in plan.steps]


def test_empty_topology_is_an_empty_plan() -> None:
    plan = build("")
    assert plan.steps == ()
    assert "nothing to build" in planmod.render(plan)


def test_bridge_and_veth_into_namespace() -> None:
    plan = build(
        "[Bridge br0]\nAddress = 10.1.0.1/24\n"
        "[Veth v0]\nPeer = v0p\nNamespace = ns1\nMaster = br0\nPeerAddress = 10.1.0.2/24\n"
    )
    assert ops(plan) == [
        (NETNS, "ns1", None),
        (LINK, "br0", None),
        (LINK, "v0", None),
        (MASTER, "v0", None),
        (UP, "lo", "ns1"),  # every namespace named here gets its loopback up
        (UP, "br0", None),
        (UP, "v0", None),
        (UP, "v0p", "ns1"),
        (ADDRESS, "br0", None),
        (ADDRESS, "v0p", "ns1"),
    ]
    cmds = [c for s in plan.steps for c in planmod.commands(s)]
    assert cmds == [
        "ip netns add ns1",
        "ip link add br0 type bridge",
        "ip link add v0 type veth peer name v0p netns ns1",
        "ip link set v0 master br0",
        "ip -n ns1 link set lo up",
        "ip link set br0 up",
        "ip link set v0 up",
        "ip -n ns1 link set v0p up",
        "ip addr add 10.1.0.1/24 dev br0",
        "ip -n ns1 addr add 10.1.0.2/24 dev v0p",
    ]
    assert plan.created == ((None, "br0"), (None, "v0"), ("ns1", "v0p"))
    assert plan.existing == ()
    assert plan.kinds() == {("bridge", None), ("veth", None)}


def test_parents_before_children_regardless_of_file_order() -> None:
    plan = build(
        "[VLAN v.5]\nLink = m0\nId = 5\n[MACVLAN m0]\nLink = vp\nMode = vepa\n[Veth v]\nPeer = vp\n"
    )
    assert [s.name for s in plan.steps if s.op == LINK] == ["v", "m0", "v.5"]
    # ...but the addresses and "up"s keep the order links were made in.
    assert [s.name for s in plan.steps if s.op == UP] == ["v", "vp", "m0", "v.5"]


def test_child_moves_to_its_namespace_before_grandchildren() -> None:
    plan = build(
        "[Veth v]\nPeer = vp\nNamespace = a\n"
        "[MACVLAN m]\nLink = vp\nNamespace = b\nAddress = 10.2.0.1/24\n"
        "[IPVLAN i]\nLink = m\nMode = l2\n"
    )
    assert ops(plan)[:6] == [
        (NETNS, "a", None),
        (NETNS, "b", None),
        (LINK, "v", None),
        (LINK, "m", "a"),  # made beside its parent...
        (MOVE, "m", "a"),  # ...then moved
        (LINK, "i", "b"),  # the grandchild finds it in b (default: the parent's namespace)
    ]
    assert plan.steps[4].get("to") == "b"
    assert planmod.commands(plan.steps[4]) == ["ip -n a link set m netns b"]
    assert (ADDRESS, "m", "b") in ops(plan)
    assert ("b", "m") in plan.created and ("b", "i") in plan.created


def test_masters_before_ports_and_pre_existing_ports() -> None:
    plan = build(
        "[Bond bond0]\nMode = active-backup\nMiimon = 50\nPorts = eth1, eth2\nPrimary = eth2\n"
        "[Bridge br0]\nPorts = bond0\n"
    )
    kinds = [(s.op, s.name) for s in plan.steps]
    assert kinds.index((LINK, "br0")) < kinds.index((MASTER, "bond0"))
    assert kinds.index((MASTER, "eth2")) < kinds.index((PRIMARY, "bond0"))
    assert kinds[-2:] == [(UP, "eth1"), (UP, "eth2")]
    assert plan.existing == ((None, "eth1", 4), (None, "eth2", 4))
    eth1 = next(s for s in plan.steps if s.op == MASTER and s.name == "eth1")
    assert planmod.commands(eth1) == ["ip link set eth1 down", "ip link set eth1 master bond0"]
    primary = next(s for s in plan.steps if s.op == PRIMARY)
    assert planmod.commands(primary) == ["ip link set bond0 type bond primary eth2"]
    bond = next(s for s in plan.steps if s.op == LINK and s.name == "bond0")
    assert planmod.commands(bond) == ["ip link add bond0 type bond mode active-backup miimon 50"]


def test_segment_tap_is_a_port_and_provided() -> None:
    plan = planmod.build(
        config.parse(
            HEAD + "[Peer]\nName = b\nEndpoint = 192.0.2.2:4789\n"
            "[Segment lab]\nVNI = 100\nDevice = lab0\nBridge = br-lab\n[Bridge br-lab]\n",
            "t.conf",
        )
    )
    assert ops(plan) == [(LINK, "br-lab", None), (MASTER, "lab0", None), (UP, "br-lab", None)]
    assert plan.provided == frozenset({"tp0", "lab0"})
    assert plan.existing == ()


def test_segment_bridge_pre_existing() -> None:
    plan = planmod.build(
        config.parse(
            HEAD + "[Peer]\nName = b\nEndpoint = 192.0.2.2:4789\n[Segment lab]\nVNI = 7\n"
            "Bridge = brx\n",
            "t.conf",
        )
    )
    assert ops(plan) == [(MASTER, "lab", None)]
    assert plan.existing == ((None, "brx", 7),)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("[Bridge b]\nSTP = yes\nVLANFiltering = yes\nMTU = 9000\n",
         ["ip link add b mtu 9000 type bridge stp_state 1 vlan_filtering 1"]),
        ("[VLAN eth0.2]\nLink = eth0\nId = 2\n", ["ip link add eth0.2 link eth0 type vlan id 2"]),
        ("[VLAN q]\nLink = eth0\nId = 3\nProtocol = 802.1ad\n",
         ["ip link add q link eth0 type vlan protocol 802.1ad id 3"]),
        # (tunnelpyd's own socket off 4789, or the config refuses the default DstPort)
        ("ListenPort = 4790\n[VXLAN vx]\nVNI = 42\nRemote = 192.0.2.2\nLocal = 192.0.2.1\n"
         "Link = eth0\n",
         ["ip link add vx type vxlan id 42 remote 192.0.2.2 local 192.0.2.1 dstport 4789 dev eth0"]),
        ("[VXLAN vx]\nVNI = 42\nGroup = 239.1.1.1\nDstPort = 8472\n",
         ["ip link add vx type vxlan id 42 group 239.1.1.1 dstport 8472"]),
        ("[MACVLAN m]\nLink = eth0\nMode = private\nMACAddress = 02:00:00:00:00:05\n",
         ["ip link add m link eth0 address 02:00:00:00:00:05 type macvlan mode private"]),
        ("[MACVLAN m]\nLink = eth0\nMode = source\nSourceMACs = 02:00:00:00:00:01\n"
         "SourceMACs = 02:00:00:00:00:02\n",
         ["ip link add m link eth0 type macvlan mode source",
          "ip link set m type macvlan macaddr set 02:00:00:00:00:01 02:00:00:00:00:02"]),
        ("[IPVLAN i]\nLink = eth0\nMode = l3s\n", ["ip link add i link eth0 type ipvlan mode l3s"]),
        ("[Veth v]\nPeer = w\nMTU = 1400\n", ["ip link add v mtu 1400 type veth peer name w mtu 1400"]),
    ],
)  # fmt: skip
def test_link_commands(body: str, expected: list[str]) -> None:
    plan = build(body)
    assert planmod.commands(plan.steps[0]) == expected


def test_team_through_teamd_in_namespace() -> None:
    plan = build(
        "[Team team0]\nRunner = roundrobin\nNamespace = n\nPorts = vp\n[Veth v]\nPeer = vp\n"
        "Namespace = n\n"
    )
    teamd = next(s for s in plan.steps if s.op == TEAMD)
    assert planmod.commands(teamd) == [
        "ip netns exec n teamd -d -t team0 -c "
        '\'{"runner": {"name": "roundrobin"}, "link_watch": {"name": "ethtool"}}\''
    ]
    port = next(s for s in plan.steps if s.op == MASTER)
    assert (port.name, port.ns, port.get("master_kind")) == ("vp", "n", "team")
    assert planmod.commands(port) == [
        "ip -n n link set vp down",
        "ip -n n link set vp master team0",
    ]
    assert ("team", None) in plan.kinds()


def test_kinds_include_modes() -> None:
    plan = build(
        "[MACVLAN a]\nLink = e\nMode = vepa\n[MACVLAN b]\nLink = e\nMode = source\n"
        "SourceMACs = 02:00:00:00:00:01\n[IPVLAN c]\nLink = e\nMode = l2\n"
    )
    assert plan.kinds() == {("macvlan", "vepa"), ("macvlan", "source"), ("ipvlan", "l2")}


def test_steps_carry_file_lines() -> None:
    plan = build("\n[Bridge br0]\n\n[Veth v]\nPeer = vp\nMaster = br0\n")
    assert {s.name: s.line for s in plan.steps if s.op == LINK} == {"br0": 5, "v": 7}


def test_render_lists_steps_and_undo_in_reverse() -> None:
    text = planmod.render(
        build(
            "[Bridge br0]\nPorts = eth9\n[Veth v]\nPeer = vp\nNamespace = n1\n"
            "[MACVLAN m]\nLink = vp\nNamespace = n2\n"
        )
    )
    lines = text.splitlines()
    assert lines[0].startswith("# tunnelpy plan for t.conf: ")
    assert "# 1. namespace n1  [t.conf:6]" in lines
    undo = lines[
        lines.index("# on exit (and on a failed start), in reverse; links it did not create stay:")
        + 1 :
    ]
    assert undo[:8] == [
        "# ip link set eth9 down   # only if it was down",
        "# ip -n n2 link set lo down   # only if it was down",
        "# ip -n n1 link set lo down   # only if it was down",
        "ip link set eth9 nomaster   # its old master, if any, back",
        "ip -n n2 link del m",  # deleted where it ended up, not where it was made
        "ip link del v",
        "ip link del br0",
        "ip netns del n2   # only if tunnelpyd created it",
    ]
    assert "# uses pre-existing eth9 [t.conf:4]: never deleted" in lines


def test_example_lab_overlay_plans() -> None:
    example = Path(__file__).resolve().parents[2] / "conf" / "lab-overlay.conf"
    plan = planmod.build(config.load(str(example)))
    assert plan.steps and all(s.line > 0 for s in plan.steps)
    assert [s.op for s in plan.steps][0] == NETNS

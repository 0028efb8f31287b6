"""Reload as a diff (issue 20, item 6): ``plan.diff`` undoes and applies only what changed."""

from __future__ import annotations

from tunnelpy import config
from tunnelpy import reload as rl
from tunnelpy.netlink import plan as planmod

HEAD = "[Interface]\nName = tp0\nTransport = vxlan\nListenPort = 4790\n"
BASE = (
    "[Bridge br0]\nAddress = 10.1.0.1/24\n"
    "[Veth v0]\nPeer = v0p\nNamespace = n1\nMaster = br0\nPeerAddress = 10.1.0.2/24\n"
    "[MACVLAN m0]\nLink = v0p\nNamespace = n1\nAddress = 10.1.0.3/24\n"
    "[Namespace n1]\nRoute = default via 10.1.0.1\n"
)


def d(old: str, new: str, recreated: frozenset[str] = frozenset()) -> planmod.PlanDiff:
    return planmod.diff(
        planmod.build(config.parse(HEAD + old, "t.conf")),
        planmod.build(config.parse(HEAD + new, "t.conf")),
        recreated,
    )


def undone(diff: planmod.PlanDiff) -> list[tuple[str, str]]:
    return [(s.op, s.name) for s in diff.undone]


def applied(diff: planmod.PlanDiff) -> list[tuple[str, str]]:
    return [(s.op, s.name) for s in diff.apply]


def test_same_file_or_moved_sections_change_nothing() -> None:
    assert not d(BASE, BASE)
    moved = "\n\n" + BASE.split("[Namespace")[0] + "\n[Namespace" + BASE.split("[Namespace")[1]
    assert not d(BASE, moved)


def test_an_address_is_one_step_each_way() -> None:
    diff = d(BASE, BASE.replace("Address = 10.1.0.1/24", "Address = 10.1.0.9/24"))
    # the bridge keeps its ifindex; the route in n1 is not touched (nothing went in n1)
    assert undone(diff) == [("address", "br0")]
    assert applied(diff) == [("address", "br0")]


def test_a_changed_link_takes_what_hangs_on_it() -> None:
    diff = d(BASE, BASE.replace("[Bridge br0]\n", "[Bridge br0]\nSTP = yes\n"))
    assert ("link", "br0") in undone(diff) and ("link", "br0") in applied(diff)
    # its port's enslaving and its address are redone; the veth itself is not
    assert ("master", "v0") in applied(diff) and ("address", "br0") in applied(diff)
    assert ("link", "v0") not in undone(diff)


def test_a_parent_that_changes_takes_its_children_and_their_routes() -> None:
    diff = d(
        BASE, BASE.replace("PeerAddress = 10.1.0.2/24\n", "PeerAddress = 10.1.0.2/24\nMTU = 1400\n")
    )
    gone = undone(diff)
    assert ("link", "v0") in gone and ("link", "m0") in gone  # macvlan goes with its parent
    assert ("route", "0.0.0.0/0") in gone  # in n1, where links went
    again = applied(diff)
    assert (
        again.index(("link", "v0"))
        < again.index(("link", "m0"))
        < again.index(("route", "0.0.0.0/0"))
    )
    assert ("netns", "n1") not in gone  # the namespace stays


def test_removed_and_added_sections() -> None:
    diff = d(BASE, BASE.replace("[MACVLAN m0]\nLink = v0p\nNamespace = n1\nAddress = 10.1.0.3/24\n", "")
             + "[Veth v2]\nPeer = v2p\nNamespace = n2\n[Netem v2p]\nDelay = 5ms\n")  # fmt: skip
    assert {("link", "m0"), ("address", "m0"), ("up", "m0")} <= set(undone(diff))
    assert ("link", "v0") not in undone(diff)
    assert applied(diff)[0] == ("netns", "n2")
    assert {("link", "v2"), ("qdisc", "v2p"), ("up", "lo")} <= set(applied(diff))


def test_a_route_or_forwarding_alone() -> None:
    diff = d(BASE, BASE.replace("default via 10.1.0.1", "10.9.0.0/16 via 10.1.0.1"))
    assert undone(diff) == [("route", "0.0.0.0/0")] and applied(diff) == [("route", "10.9.0.0/16")]
    diff = d(BASE, BASE + "Forwarding = yes\n")
    assert undone(diff) == [] and applied(diff) == [("sysctl", "n1")]


def test_a_recreated_tap_gets_its_steps_again() -> None:
    seg = "[Peer]\nName = b\nEndpoint = 192.0.2.2:4790\n[Segment s]\nVNI = 5\nDevice = tap5\nBridge = br0\n"
    diff = d(seg + BASE, seg + BASE, frozenset({"tap5"}))
    assert undone(diff) == [("master", "tap5")] and applied(diff) == [("master", "tap5")]


def test_reload_diff_names_sections_and_the_reshape() -> None:
    old = config.parse(HEAD + BASE, "t.conf")
    new = config.parse(
        HEAD
        + BASE.replace("default via 10.1.0.1", "default via 10.1.0.254")
        + "[Netem v0]\nLoss = 1%\n",
        "t.conf",
    )
    ops = [str(op) for op in rl.diff(old, new).operations]
    assert ops == [
        "change namespace n1: routes",
        "add netem v0",
        "topology: 1 step(s) undone, 2 applied",
    ]

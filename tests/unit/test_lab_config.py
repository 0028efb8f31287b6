"""Config checks for lab overlays (issue 20): listeners on one UDP port, found before anything
changes, with file:line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tunnelpy import config

ROOT = Path(__file__).resolve().parents[2]
VX = "[Interface]\nName = tp0\nTransport = vxlan\n"


def refused(text: str) -> str:
    with pytest.raises(config.ConfigError) as info:
        config.parse(text, "t.conf")
    return str(info.value)


def test_kernel_vxlan_on_tunnelpyds_default_vxlan_port() -> None:
    message = refused(VX + "[VXLAN vx]\nVNI = 200\nRemote = 192.0.2.3\n")
    assert message.startswith("t.conf:4: VXLAN.DstPort: UDP port 4789 (DstPort's default) is ")
    assert "the port Transport = vxlan binds by default (line 1)" in message
    assert "'vx' could not bind it" in message and "8472" in message


def test_kernel_vxlan_on_the_listen_port_names_both_lines() -> None:
    message = refused(VX + "ListenPort = 5555\n[VXLAN vx]\nVNI = 2\nDstPort = 5555\n")
    assert message.startswith("t.conf:7: VXLAN.DstPort: UDP port 5555 is already tunnelpyd's")
    assert "[Interface] ListenPort (line 4)" in message


def test_wireguard_listen_port_clashes_too(tmp_path: Path) -> None:
    key = tmp_path / "k"
    key.write_text("YJQzBLYxsR6J+rjmjmcd4JpZ+DtMgtQiE0UOKY6QJmU=\n")
    key.chmod(0o600)
    text = (
        f"[Interface]\nName = wg0\nPrivateKeyFile = {key}\nListenPort = 8472\n"
        "[VXLAN vx]\nVNI = 2\nDstPort = 8472\n"
    )
    assert "UDP port 8472 is already tunnelpyd's own, [Interface] ListenPort (line 4)" in refused(
        text
    )
    # a port the kernel picks (no ListenPort) cannot collide
    config.parse(text.replace("ListenPort = 8472\n", ""), "t.conf")


@pytest.mark.parametrize(
    "body",
    [
        "Namespace = far\n",  # made in its namespace: its socket is there
        "Link = vp\n",  # made beside its parent, the veth end in namespace far
        "DstPort = 8472\n",
    ],
)
def test_no_clash_elsewhere_or_on_another_port(body: str) -> None:
    config.parse(
        VX + "[Veth v]\nPeer = vp\nNamespace = far\n[VXLAN vx]\nVNI = 2\n" + body, "t.conf"
    )


def test_moved_vxlan_keeps_its_socket_where_it_was_made() -> None:
    # Link = eth0 (here) and Namespace = far: made here, then moved; the socket stays here.
    message = refused(VX + "[VXLAN vx]\nVNI = 2\nLink = eth0\nNamespace = far\n")
    assert "UDP port 4789 (DstPort's default) is already tunnelpyd's own" in message


def test_two_kernel_vxlans_one_vni_one_port_one_namespace() -> None:
    head = VX + "ListenPort = 4790\n"
    message = refused(
        head + "[VXLAN a]\nVNI = 9\nRemote = 192.0.2.1\n[VXLAN b]\nVNI = 9\nRemote = 192.0.2.2\n"
    )
    assert message.startswith("t.conf:8: VXLAN.DstPort: VNI 9 on UDP port 4789 is already taken")
    assert "[VXLAN a] (line 5) in tunnelpyd's namespace" in message
    # one port, two VNIs: the kernel shares the socket; other family or namespace: separate
    config.parse(head + "[VXLAN a]\nVNI = 9\n[VXLAN b]\nVNI = 10\n", "t.conf")
    config.parse(
        head + "[VXLAN a]\nVNI = 9\nRemote = 192.0.2.1\n[VXLAN b]\nVNI = 9\nRemote = fd00::2\n",
        "t.conf",
    )
    config.parse(head + "[VXLAN a]\nVNI = 9\n[VXLAN b]\nVNI = 9\nNamespace = far\n", "t.conf")


def test_shipped_example_passes_check() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "tunnelpy", "check", "-c", str(ROOT / "conf" / "lab-overlay.conf")],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr


# ------------------------------------------------------------------------------ lab keys

LAB = (
    VX + "ListenPort = 4790\n"
    "[Namespace r]\nForwarding = yes\n"
    "[Namespace a]\nRoute = default via 10.1.0.1\nRoute = fd00:9::/64 via fd00:1::1\n"
    "[Veth ra]\nPeer = ar\nNamespace = r\nPeerNamespace = a\n"
    "Address = 10.1.0.1/24\nPeerAddress = 10.1.0.2/24\n"
    "[Netem ar]\nDelay = 20ms\nJitter = 5ms\nLoss = 0.5%\nRate = 10mbit\nLimit = 500\n"
)


def test_lab_keys_parse() -> None:
    conf = config.parse(LAB, "t.conf")
    r, a = conf.namespaces
    assert (r.name, r.forwarding, r.routes) == ("r", True, ())
    assert [str(route) for route in a.routes] == [
        "default via 10.1.0.1",
        "fd00:9::/64 via fd00:1::1",
    ]
    assert a.routes[0].line == 8
    (veth,) = conf.topology
    assert (veth.local_namespace, veth.namespace) == ("r", "a")
    (netem,) = conf.netem
    assert (netem.delay, netem.jitter, netem.loss, netem.rate, netem.limit) == (
        20_000, 5_000, 0.5, 10_000_000, 500,
    )  # fmt: skip
    assert netem.describe() == "limit 500 delay 20ms 5ms loss 0.5% rate 10mbit"


def test_lab_keys_plan_in_order_with_commands() -> None:
    from tunnelpy.netlink import plan as planmod

    plan = planmod.build(config.parse(LAB, "t.conf"))
    cmds = [c for step in plan.steps for c in planmod.commands(step)]
    assert cmds == [
        "ip netns add r",
        "ip netns add a",
        "ip -n r link add ra type veth peer name ar netns a",
        "ip -n r link set lo up",
        "ip -n a link set lo up",
        "ip -n r link set ra up",
        "ip -n a link set ar up",
        "ip -n r addr add 10.1.0.1/24 dev ra",
        "ip -n a addr add 10.1.0.2/24 dev ar",
        "tc -n a qdisc add dev ar root netem limit 500 delay 20ms 5ms loss 0.5% rate 10mbit",
        "ip netns exec r sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1",
        "ip -n a route add default via 10.1.0.1",
        "ip -n a -6 route add fd00:9::/64 via fd00:1::1",
    ]
    assert plan.created == (("r", "ra"), ("a", "ar"))
    assert plan.kinds() == {("veth", None), ("qdisc:netem", None)}
    text = planmod.render(plan)
    for undo in (
        "ip -n a -6 route del fd00:9::/64 via fd00:1::1   # if the namespace stays",
        "tc -n a qdisc del dev ar root",
        "ip -n r link del ra",
    ):
        assert undo in text.splitlines(), undo


def test_lab_keys_drawn() -> None:
    from tunnelpy import topology_cli as tc

    text = tc.render_text(tc.build_picture(config.parse(LAB, "t.conf")))
    lines = text.splitlines()
    assert lines[1:] == [
        "namespace r (created and removed by tunnelpyd; lo up):",
        "   forwarding on",
        "└─ ra  veth  10.1.0.1/24  <=> ar [namespace a]",
        "namespace a (created and removed by tunnelpyd; lo up):",
        "   route default via 10.1.0.1",
        "   route fd00:9::/64 via fd00:1::1",
        "└─ ar  veth  10.1.0.2/24  netem limit 500 delay 20ms 5ms loss 0.5% rate 10mbit  "
        "<=> ra [namespace r]",
    ]
    dot = tc.render_dot(tc.build_picture(config.parse(LAB, "t.conf")))
    assert (
        'label="namespace a\\nroute default via 10.1.0.1\\nroute fd00:9::/64 via fd00:1::1"' in dot
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("[Namespace a]\nRoute = 10.0.0.0/8\n", "t.conf:6: Namespace.Route: '10.0.0.0/8' is not a route, expected PREFIX via ADDRESS"),
        ("[Namespace a]\nRoute = 10.0.0.1/8 via 10.1.0.1\n", "'10.0.0.1/8' is not a prefix with its host bits zero"),
        ("[Namespace a]\nRoute = fd00::/8 via 10.1.0.1\n", "fd00::/8 and 10.1.0.1 are of different IP versions"),
        ("[Namespace a]\nRoute = default via 10.0.0.1\nRoute = 0.0.0.0/0 via 10.0.0.2\n", "t.conf:7: Namespace.Route: a route to default is already given on line 6"),
        ("[Namespace a]\n[Namespace a]\n", "t.conf:6: Namespace: [Namespace a] is already given on line 5"),
        ("[Namespace a/b]\n", "'a/b' is not a usable namespace name"),
        ("[Netem eth0]\nDelay = 1ms\n", "t.conf:5: Netem: 'eth0' is not a link this file makes"),
        ("[Bridge b]\n[Netem b]\nJitter = 1ms\nLoss = 1%\n", "t.conf:7: Netem.Jitter: varies no delay, expected a Delay = line too"),
        ("[Bridge b]\n[Netem b]\nLimit = 10\n", "t.conf:6: Netem: shapes nothing, expected at least one of Delay, Loss and Rate"),
        ("[Bridge b]\n[Netem b]\nDelay = 2min\n", "'2min' is not a time, expected e.g. 20ms"),
        ("[Bridge b]\n[Netem b]\nDelay = 61s\n", "'61s' is out of range, expected 1us to 60s"),
        ("[Bridge b]\n[Netem b]\nLoss = 101%\n", "'101%' is out of range"),
        ("[Bridge b]\n[Netem b]\nRate = 10mbps\n", "'10mbps' is not a rate, expected e.g. 10mbit"),
        ("[Bridge b]\n[Netem b]\nDelay = 1ms\n[Netem b]\nLoss = 1%\n", "t.conf:8: Netem: [Netem b] is already given on line 6"),
        ("[Veth v]\nPeer = p\nPeerNamespace = x/y\n", "'x/y' is not a usable namespace name"),
    ],
)  # fmt: skip
def test_lab_keys_refused(body: str, expected: str) -> None:
    assert expected in refused(VX + "ListenPort = 4790\n" + body)


def test_netem_on_the_tun_and_a_tap_but_not_a_plain_vxlan_tun(tmp_path: Path) -> None:
    key = tmp_path / "k"
    key.write_text("YJQzBLYxsR6J+rjmjmcd4JpZ+DtMgtQiE0UOKY6QJmU=\n")
    key.chmod(0o600)
    conf = config.parse(
        f"[Interface]\nName = wg0\nPrivateKeyFile = {key}\n[Netem wg0]\nLoss = 1%\n", "t.conf"
    )
    assert conf.netem[0].link == "wg0"
    assert "'tp0' is not a link this file makes" in refused(VX + "[Netem tp0]\nLoss = 1%\n")
    config.parse(
        VX + "[Peer]\nName = b\nEndpoint = 192.0.2.2:4789\n[Segment s]\nVNI = 5\nDevice = tap5\n"
        "[Netem tap5]\nRate = 1mbit\n",
        "t.conf",
    )


def test_veth_peer_namespace_checks_master_placement() -> None:
    # the local end is in r now: a master in tunnelpyd's namespace is refused
    message = refused(
        VX + "ListenPort = 4790\n[Bridge br]\n"
        "[Veth v]\nPeer = p\nNamespace = r\nPeerNamespace = a\nMaster = br\n"
    )
    assert "'v' (namespace r) and its master 'br' (namespace of tunnelpyd)" in message
    config.parse(
        VX + "[Bridge br]\nNamespace = r\n[Veth v]\nPeer = p\nNamespace = r\nPeerNamespace = a\n"
        "Master = br\n",
        "t.conf",
    )

"""reload.diff: old Config vs new Config -> the operations a reload applies (pure)."""

from __future__ import annotations

import pytest

from tunnelpy import config as cfgmod
from tunnelpy import keys
from tunnelpy import reload as rl

PRIV = keys.generate_private()
KB, KC, KD = (keys.public_from_private(keys.generate_private()) for _ in range(3))
PSK = keys.generate_psk()


def conf(body: str, head: str = "", *, vxlan: bool = False) -> cfgmod.Config:
    if vxlan:
        iface = "[Interface]\nName = tp0\nTransport = vxlan\n"
    else:
        iface = f"[Interface]\nName = tp0\nPrivateKey = {PRIV}\nListenPort = 51820\n"
    return cfgmod.parse(iface + head + "\n" + body, "site.conf")


def peer(key: str, name: str, allowed: str = "10.0.0.2/32", extra: str = "") -> str:
    return f"[Peer]\nName = {name}\nPublicKey = {key}\nAllowedIPs = {allowed}\n{extra}\n"


BASE = peer(KB, "b", "10.0.0.2/32", "Endpoint = 192.0.2.2:51820") + peer(KC, "c", "10.0.0.3/32")


def test_identical_configs_give_no_operations():
    plan = rl.diff(conf(BASE), conf(BASE))
    assert not plan and plan.operations == [] and plan.summary() == "no changes"


def test_reordered_sections_and_allowed_ips_change_nothing():
    a = conf(peer(KB, "b", "10.0.0.2/32, 10.1.0.0/16") + peer(KC, "c"))
    b = conf("# moved\n" + peer(KC, "c") + peer(KB, "b", "10.1.0.0/16, 10.0.0.2/32"))
    assert rl.diff(a, b).operations == []


def test_add_and_remove_peers():
    old = conf(BASE)
    new = conf(peer(KB, "b", "10.0.0.2/32", "Endpoint = 192.0.2.2:51820") + peer(KD, "d"))
    plan = rl.diff(old, new)
    assert [type(op) for op in plan.operations] == [rl.RemovePeer, rl.AddPeer]
    assert plan.operations[0].peer.name == "c"
    assert plan.operations[1].peer.name == "d"
    assert plan.summary() == "remove peer c; add peer d"


def test_changed_peer_fields_only_the_changed_peer():
    new = conf(
        peer(
            KB,
            "b",
            "10.0.0.2/32, 10.2.0.0/24",
            "Endpoint = 192.0.2.9:51821\nPersistentKeepalive = 25",
        )
        + peer(KC, "c", "10.0.0.3/32", f"PresharedKey = {PSK}")
    )
    plan = rl.diff(conf(BASE), new)
    ups = plan.of(rl.UpdatePeer)
    assert len(ups) == 2 and plan.operations == ups
    b, c = ups
    assert b.fields == ("endpoint", "allowed_ips", "persistent_keepalive")
    assert dict(b.changes)["endpoint"] == ("192.0.2.9", 51821)
    assert dict(b.changes)["persistent_keepalive"] == 25
    assert c.fields == ("preshared_key",)
    assert PSK not in plan.summary()  # secrets never in the log line


def test_renamed_peer_is_an_update_not_a_new_peer():
    new = conf(
        peer(KB, "site-b", "10.0.0.2/32", "Endpoint = 192.0.2.2:51820")
        + peer(KC, "c", "10.0.0.3/32")
    )
    plan = rl.diff(conf(BASE), new)
    assert [str(op) for op in plan.operations] == ["update peer site-b: name"]


def test_removed_endpoint_and_keepalive_are_updates_to_none():
    old = conf(peer(KB, "b", "10.0.0.2/32", "Endpoint = 192.0.2.2:51820\nPersistentKeepalive = 5"))
    new = conf(peer(KB, "b", "10.0.0.2/32"))
    (op,) = rl.diff(old, new).operations
    assert dict(op.changes) == {"endpoint": None, "persistent_keepalive": None}


def test_interface_changes_live_and_restart_needed():
    old = conf(BASE)
    new_priv = keys.generate_private()
    text = (
        f"[Interface]\nName = tp1\nPrivateKey = {new_priv}\nListenPort = 51821\nMTU = 1380\n"
        "Address = 10.0.0.1/24\nLogLevel = debug\nMetricsListen = 9586\nUser = nobody\n"
        "Table = off\n\n" + BASE
    )
    plan = rl.diff(old, cfgmod.parse(text, "site.conf"))
    fields = [op.field for op in plan.of(rl.SetInterface)]
    assert fields == [
        "private_key", "listen_port", "mtu", "addresses", "log_level", "metrics_listen",
    ]  # fmt: skip
    assert plan.restart_needed == ["name", "table", "user"]
    assert new_priv not in plan.summary() and "private_key -> (changed)" in plan.summary()
    assert "needs a restart to change name, table, user" in plan.summary()


SEG = "[Segment lab]\nVNI = 100\n{extra}\n"


def test_segments_added_removed_updated_replaced():
    old = conf(BASE, SEG.format(extra="Peers = b") + "[Segment old]\nVNI = 300\n")
    new = conf(
        BASE,
        SEG.format(extra="Peers = b, c\nHub = yes\nAgingTime = 60")
        + "[Segment new]\nVNI = 200\nMaxFDBEntries = 16\n",
    )
    plan = rl.diff(old, new)
    assert [str(op) for op in plan.operations] == [
        "remove segment old (VNI 300)",
        "add segment new (VNI 200)",
        "update segment lab: peers, hub, aging",
    ]
    # a new VNI or device means a new TAP: remove and add again
    moved = conf(BASE, "[Segment lab]\nVNI = 101\nPeers = b\n")
    plan = rl.diff(old, moved)
    assert [type(op) for op in plan.operations] == [
        rl.RemoveSegment,
        rl.RemoveSegment,
        rl.AddSegment,
    ]
    assert plan.of(rl.AddSegment)[0].segment.vni == 101


def test_peer_removal_comes_before_segment_changes_that_drop_it():
    old = conf(BASE, SEG.format(extra="Peers = b, c"))
    new = conf(
        peer(KB, "b", "10.0.0.2/32", "Endpoint = 192.0.2.2:51820"), SEG.format(extra="Peers = b")
    )
    kinds = [type(op) for op in rl.diff(old, new).operations]
    assert kinds == [rl.RemovePeer, rl.UpdateSegment]


def test_topology_links():
    old = conf(BASE, "[Bridge br-a]\n[Bridge br-b]\nSTP = yes\n")
    new = conf(BASE, "[Bridge br-b]\n[Bridge br-c]\n")
    ops = [str(op) for op in rl.diff(old, new).operations]
    # removals first, then additions and changes in file order; then what the kernel sees
    assert ops == [
        "remove bridge br-a",
        "change bridge br-b: stp",
        "add bridge br-c",
        "topology: 4 step(s) undone, 4 applied",  # br-a, br-b: made and up; br-b, br-c again
    ]


def test_vxlan_peers_are_identified_by_name():
    def vx(endpoint: str) -> str:
        return f"[Peer]\nName = far\nEndpoint = {endpoint}\n"

    old = conf(vx("192.0.2.7:4789"), vxlan=True)
    new = conf(
        vx("192.0.2.8:4789") + "[Peer]\nName = near\nEndpoint = 192.0.2.9:4789\n", vxlan=True
    )
    assert [str(op) for op in rl.diff(old, new).operations] == [
        "add peer near",
        "update peer far: endpoint",
    ]


# --------------------------------------------------------------------------- config: User --


@pytest.mark.parametrize("value", ["nobody", "tunnelpy", "_tp", "svc-vpn", "1000", "a.b"])
def test_user_key_accepts(value):
    c = cfgmod.parse(f"[Interface]\nPrivateKey = {PRIV}\nUser = {value}\n", "site.conf")
    assert c.interface.user == value


@pytest.mark.parametrize("value", ["-x", "a b", "ro/ot", "x" * 40])
def test_user_key_refuses(value):
    with pytest.raises(cfgmod.ConfigError, match=r"site.conf:3: Interface.User: .*user name"):
        cfgmod.parse(f"[Interface]\nPrivateKey = {PRIV}\nUser = {value}\n", "site.conf")


def test_user_default_is_none():
    assert cfgmod.parse(f"[Interface]\nPrivateKey = {PRIV}\n", "s.conf").interface.user is None

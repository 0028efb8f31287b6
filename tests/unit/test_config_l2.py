"""The L2 security keys: [Segment] AllowedMACs, MaxMACsPerPeer, MoveHoldTime; [Interface]
ListenAddress (plain VXLAN only); and the warnings plain VXLAN gets at start and in `check`."""

from __future__ import annotations

import pytest

from tests.unit.test_config import expect_error, interface, seg_file, vxlan_file
from tunnelpy import config


def test_segment_security_defaults() -> None:
    (seg,) = config.parse(seg_file("[Segment lab]", "VNI = 100")).segments
    assert (seg.allowed_macs, seg.max_per_peer, seg.move_hold) == ((), None, 5.0)


def test_segment_allowed_macs_quota_and_hold() -> None:
    cfg = config.parse(
        seg_file(
            "[Segment lab]",
            "VNI = 100",
            "AllowedMACs = 52:54:00:00:00:00/24@a, 02:00:00:00:00:07@b",
            "AllowedMACs = 02:00:00:aa:bb:cc / 40 @ b",  # host bits cleared, spaces allowed
            "AllowedMACs = 00:00:00:00:00:00/0@a",  # a is the default owner
            "MAC = 52:54:00:00:00:09@a",  # inside a's own prefix: fine
            "MaxMACsPerPeer = 100",
            "MoveHoldTime = 0",
        )
    )
    (seg,) = cfg.segments
    assert seg.allowed_macs == (
        (bytes.fromhex("525400000000"), 24, "a"),
        (bytes.fromhex("020000000007"), 48, "b"),
        (bytes.fromhex("020000aabb00"), 40, "b"),
        (bytes(6), 0, "a"),
    )
    assert (seg.max_per_peer, seg.move_hold) == (100, 0.0)
    assert cfg.warnings == ()


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("52:54:00:00:00:00/24", "expected aa:bb:cc:dd:ee:ff[/LEN]@peername"),
        ("52:54:00/24@a", "is not a MAC address"),
        ("52:54:00:00:00:00/49@a", "expected a prefix length 0-48"),
        ("52:54:00:00:00:00/x@a", "is not a prefix length"),
        ("01:00:5e:00:00:00/24@a", "a group (multicast) prefix is never a source"),
    ],
)
def test_error_allowed_macs_syntax(value: str, fragment: str) -> None:
    expect_error(
        seg_file("[Segment lab]", "VNI = 5", f"AllowedMACs = {value}"),
        11,
        "Segment.AllowedMACs",
        fragment,
    )


def test_error_allowed_macs_peer_not_in_segment() -> None:
    expect_error(
        seg_file("[Segment lab]", "VNI = 5", "Peers = a", "AllowedMACs = 02:00:00:00:00:00/40@b"),
        12,
        "Segment.AllowedMACs",
        "peer 'b' is not in segment 'lab'",
    )


def test_error_allowed_macs_prefix_twice() -> None:
    expect_error(
        seg_file(
            "[Segment lab]",
            "VNI = 5",
            "AllowedMACs = 02:00:00:00:00:00/40@a",
            "AllowedMACs = 02:00:00:00:00:ff/40@b",  # the same prefix once masked
        ),
        12,
        "Segment.AllowedMACs",
        "02:00:00:00:00:00/40 is already given for peer 'a' on line 11",
    )


def test_error_static_mac_inside_another_peers_prefix() -> None:
    expect_error(
        seg_file(
            "[Segment lab]",
            "VNI = 5",
            "AllowedMACs = 02:00:00:00:00:00/40@a",
            "MAC = 02:00:00:00:00:05@b",
        ),
        12,
        "Segment.MAC",
        "02:00:00:00:00:05@b is inside the AllowedMACs of peer 'a'",
    )


@pytest.mark.parametrize(("key", "value"), [("MaxMACsPerPeer", "0"), ("MoveHoldTime", "-1")])
def test_error_quota_and_hold(key: str, value: str) -> None:
    expect_error(seg_file("[Segment lab]", "VNI = 5", f"{key} = {value}"), 11, f"Segment.{key}", "")


# ---------------------------------------------------------------------------------------------
# Plain VXLAN


def test_vxlan_is_warned_unauthenticated_and_hub_relays_unicast_only() -> None:
    text = vxlan_file("Name = b", "Endpoint = 192.0.2.2:4789")
    text += "[Segment lab]\nVNI = 7\nHub = yes\n"
    cfg = config.parse(text, "site.conf")
    assert cfg.warnings == (
        f"site.conf:1: Interface: {config.VXLAN_UNAUTHENTICATED_WARNING}",
        "site.conf:8: Segment.Hub: over Transport = vxlan a hub relays known unicast only: "
        "broadcast, multicast and unknown unicast from a peer are written to the TAP but not "
        "sent to the other peers (an unauthenticated datagram is never multiplied)",
    )
    # An encrypted hub is not warned about: its members hold keys.
    assert config.parse(seg_file("[Segment lab]", "VNI = 5", "Hub = yes")).warnings == ()


def test_vxlan_listen_address() -> None:
    cfg = config.parse(
        vxlan_file("Name = b", "Endpoint = 192.0.2.2:4789", iface=("ListenAddress = 192.0.2.1",))
    )
    assert cfg.interface.listen_address == "192.0.2.1"
    assert config.parse(vxlan_file()).interface.listen_address is None
    six = vxlan_file(
        "Name = b", "Endpoint = [2001:db8::2]:4789", iface=("ListenAddress = 2001:db8::1",)
    )
    assert config.parse(six).interface.listen_address == "2001:db8::1"
    # A host name is resolved later; its family cannot be checked here.
    named = vxlan_file("Name = b", "Endpoint = vtep.example:4789", iface=("ListenAddress = ::1",))
    assert config.parse(named).peers[0].endpoint == ("vtep.example", 4789)


def test_error_listen_address_needs_vxlan() -> None:
    expect_error(
        interface("ListenAddress = 192.0.2.1"),
        3,
        "Interface.ListenAddress",
        "is only for Transport = vxlan",
    )


def test_error_listen_address_not_an_ip() -> None:
    expect_error(
        vxlan_file(iface=("ListenAddress = eth0",)),
        3,
        "Interface.ListenAddress",
        "is not an IP address",
    )


def test_error_listen_address_family_differs_from_endpoint() -> None:
    expect_error(
        vxlan_file("Name = b", "Endpoint = 192.0.2.2:4789", iface=("ListenAddress = 2001:db8::1",)),
        6,
        "Peer.Endpoint",
        "192.0.2.2 cannot be reached from ListenAddress = 2001:db8::1",
    )

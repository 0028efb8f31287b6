"""The namespace harness proven with two reference peers: wireguard-go <-> wireguard-go.

If these fail, the harness (or the machine) is broken, not tunnelpyd: the tunnelpyd <->
wireguard-go tests build on exactly these helpers.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.harness.netns import WG_RUN_DIR, Lab, WgGo, WgPeer, genkey, genpsk, list_netns, pubkey

pytestmark = [pytest.mark.root, pytest.mark.interop]

# Documentation-style private ranges unlikely to clash with anything else a test might add.
UNDERLAY = (["10.201.0.1/24", "fd00:201::1/64"], ["10.201.0.2/24", "fd00:201::2/64"])
INNER_A = ["10.202.0.1/24", "fd00:202::1/64"]
INNER_B = ["10.202.0.2/24", "fd00:202::2/64"]
PORT = 51820


@dataclass
class Pair:
    lab: Lab
    a: WgGo
    b: WgGo


@pytest.fixture(params=["v4-underlay", "v6-underlay"])
def pair(lab: Lab, request: pytest.FixtureRequest) -> Pair:
    """Two wireguard-go peers across a veth; endpoints over IPv4 or IPv6, with a PSK."""
    ns_a, ns_b = lab.ns
    lab.veth(ns_a, ns_b, *UNDERLAY)
    v6 = request.param == "v6-underlay"
    ep_a, ep_b = ("[fd00:201::1]", "[fd00:201::2]") if v6 else ("10.201.0.1", "10.201.0.2")
    key_a, key_b, psk = genkey(), genkey(), genpsk()
    a = lab.wggo(
        ns_a, lab.ifname("wga"), key_a, PORT, INNER_A,
        WgPeer(pubkey(key_b), ["10.202.0.2/32", "fd00:202::2/128"], f"{ep_b}:{PORT}",
               preshared_key=psk),
    )  # fmt: skip
    b = lab.wggo(
        ns_b, lab.ifname("wgb"), key_b, PORT, INNER_B,
        WgPeer(pubkey(key_a), ["10.202.0.1/32", "fd00:202::1/128"], f"{ep_a}:{PORT}",
               preshared_key=psk),
    )  # fmt: skip
    return Pair(lab, a, b)


def test_handshake(pair: Pair) -> None:
    lab, a, b = pair.lab, pair.a, pair.b
    # No traffic and no keepalive yet: wireguard-go must not have shaken hands.
    assert lab.latest_handshakes(a.ns, a.ifname) == {b.public_key: 0}
    assert lab.ping(a.ns, "10.202.0.2", count=1)
    for me, peer in ((a, b), (b, a)):
        lab.wait_for(
            lambda me=me, peer=peer: lab.latest_handshakes(me.ns, me.ifname)[peer.public_key] > 0,
            10, f"handshake seen by {me.ifname}", watch=[a.proc, b.proc],
        )  # fmt: skip


@pytest.mark.parametrize("dst", ["10.202.0.2", "fd00:202::2"])
def test_ping(pair: Pair, dst: str) -> None:
    assert pair.lab.ping(pair.a.ns, dst, count=3), pair.lab.notes


@pytest.mark.parametrize(
    "dst_b,dst_a", [("10.202.0.2", "10.202.0.1"), ("fd00:202::2", "fd00:202::1")]
)
def test_tcp_transfer_sha256(pair: Pair, dst_b: str, dst_a: str) -> None:
    lab, a, b = pair.lab, pair.a, pair.b
    assert lab.tcp_transfer(a.ns, b.ns, dst_b, 8 << 20), lab.notes
    assert lab.tcp_transfer(b.ns, a.ns, dst_a, 1 << 20), lab.notes


def test_tcp_transfer_reports_failure(pair: Pair) -> None:
    # The helper must say False (not hang, not pass) when nothing is reachable: nobody owns .9.
    lab = pair.lab
    assert not lab.tcp_transfer(pair.a.ns, pair.b.ns, "10.202.0.9", 1000, timeout=3)
    assert lab.notes


def test_lab_cleans_up_after_failure(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A failing block still removes namespaces, daemons and UAPI sockets, keeping the logs."""
    with pytest.raises(RuntimeError, match="boom"):
        with Lab(1, workdir=tmp_path) as lab:
            ifname = lab.ifname("wgx")
            wg = lab.wggo(lab.ns[0], ifname, genkey(), PORT, "10.203.0.1/24")
            assert (WG_RUN_DIR / f"{ifname}.sock").exists()
            raise RuntimeError("boom")
    assert lab.ns[0] not in list_netns()
    assert not (WG_RUN_DIR / f"{ifname}.sock").exists()
    assert not wg.proc.alive
    assert wg.proc.log_path.exists()

"""The topology helper against this machine's kernel, in namespaces: behaviour, not existence.

Each test's ``lab.ns[0]`` plays tunnelpyd's own namespace (``Topology(netns=...)``); namespaces
the plan creates carry the lab's tag. Kinds this kernel lacks (VLAN, IPVLAN, bond, team) are
proven in tests/vm instead; here they must fail validation cleanly, with nothing changed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.netns import Lab
from tests.harness.topolab import TopoLab
from tunnelpy.netlink import topology as topomod
from tunnelpy.netlink.topology import Topology, TopologyError

pytestmark = pytest.mark.root


@pytest.fixture
def tl(lab: Lab, tmp_path: Path) -> Iterator[TopoLab]:
    with TopoLab(lab, tmp_path / "state") as t:
        yield t


def veth_in(t: TopoLab, name: str, peer_ns: str, peer: str, addr: str | None = None) -> None:
    """A pre-existing veth (made by the test, not the helper): ``name`` in the base namespace,
    ``peer`` in ``peer_ns``; both up."""
    t.ip(t.base, "link", "add", name, "type", "veth", "peer", "name", peer, "netns", peer_ns)
    t.ip(t.base, "link", "set", name, "up")
    t.ip(peer_ns, "link", "set", peer, "up")
    if addr:
        t.ip(peer_ns, "addr", "add", addr, "dev", peer)


# ------------------------------------------------------------------------------ bridge + veth


def test_bridge_joins_veths_into_namespaces_and_undo_restores(tl: TopoLab) -> None:
    lab, base = tl.lab, tl.base
    # A pre-existing link that becomes a port: it must come back as it was, not be deleted.
    veth_in(tl, "old0", lab.ns[1], "old0p", "10.61.0.9/24")
    tl.ip(base, "link", "set", "old0", "down")
    before_base, before_other = tl.links(base), tl.links(lab.ns[1])
    n1, n2 = tl.ns("n1"), tl.ns("n2")
    topo = tl.up(
        f"[Bridge br0]\nAddress = 10.61.0.1/24\nPorts = old0\n"
        f"[Veth va]\nPeer = va-p\nNamespace = {n1}\nMaster = br0\nPeerAddress = 10.61.0.2/24\n"
        f"[Veth vb]\nPeer = vb-p\nNamespace = {n2}\nMaster = br0\nPeerAddress = 10.61.0.3/24\n"
    )
    assert topo.state.path.exists()
    assert lab.ping(n1, "10.61.0.3"), lab.notes  # namespace to namespace across the bridge
    assert lab.ping(n2, "10.61.0.1"), lab.notes  # to the bridge's own address
    assert lab.ping(n1, "10.61.0.9"), lab.notes  # through the pre-existing port
    assert "master br0" in tl.ip(base, "link", "show", "old0")
    assert lab.tcp_transfer(n1, n2, "10.61.0.3", 1 << 20), lab.notes
    assert topo.undo() == []
    assert tl.links(base) == before_base  # old0 back: no master, down again
    assert tl.links(lab.ns[1]) == before_other
    assert n1 not in topomod.list_netns() and n2 not in topomod.list_netns()
    assert not topo.state.path.exists()


# ------------------------------------------------------------------------------ macvlan modes


def macvlan_pair(tl: TopoLab, mode: str, parent: str, net: str) -> tuple[str, str]:
    a, b = tl.ns(f"{mode[:4]}a"), tl.ns(f"{mode[:4]}b")
    tl.up(
        f"[MACVLAN m{mode[:4]}a]\nLink = {parent}\nMode = {mode}\nNamespace = {a}\n"
        f"Address = {net}.1/24\n"
        f"[MACVLAN m{mode[:4]}b]\nLink = {parent}\nMode = {mode}\nNamespace = {b}\n"
        f"Address = {net}.2/24\n"
    )
    return a, b


def test_macvlan_bridge_siblings_talk(tl: TopoLab) -> None:
    veth_in(tl, "par", tl.lab.ns[1], "par-p")
    a, _ = macvlan_pair(tl, "bridge", "par", "10.62.0")
    assert tl.lab.ping(a, "10.62.0.2"), tl.lab.notes


def test_macvlan_private_siblings_do_not_talk(tl: TopoLab) -> None:
    veth_in(tl, "par", tl.lab.ns[1], "par-p", "10.63.0.9/24")
    a, _ = macvlan_pair(tl, "private", "par", "10.63.0")
    assert not tl.lab.ping(a, "10.63.0.2", count=1, timeout=2)
    assert tl.lab.ping(a, "10.63.0.9"), tl.lab.notes  # ...but the wire outside is reachable


def test_macvlan_vepa_siblings_talk_only_through_a_hairpin_bridge(tl: TopoLab) -> None:
    sw = tl.ns("sw")  # the "external switch": a bridge beyond the parent, in its own namespace
    tl.up(
        f"[Bridge hp]\nNamespace = {sw}\nPorts = up-p\n[Veth up]\nPeer = up-p\nNamespace = {sw}\n"
    )
    a, _ = macvlan_pair(tl, "vepa", "up", "10.64.0")
    assert not tl.lab.ping(a, "10.64.0.2", count=1, timeout=2)  # VEPA: out of the parent, and
    tl.ip(sw, "link", "set", "up-p", "type", "bridge_slave", "hairpin", "on")  # bridge link set
    assert (
        "hairpin on"
        in subprocess.run(
            ["bridge", "-n", sw, "-d", "link", "show", "dev", "up-p"],
            capture_output=True,
            text=True,
        ).stdout
    )
    assert tl.lab.ping(a, "10.64.0.2"), tl.lab.notes  # ...back in through the hairpin port


def test_macvlan_passthru_allows_one_child(tl: TopoLab) -> None:
    veth_in(tl, "par", tl.lab.ns[1], "par-p", "10.65.0.9/24")
    tl.up("[MACVLAN pt0]\nLink = par\nMode = passthru\nAddress = 10.65.0.1/24\n")
    assert tl.lab.ping(tl.base, "10.65.0.9"), tl.lab.notes
    # A second child of the same parent: validation says so before anything changes...
    second = tl.topology("[Bridge brp]\n[MACVLAN pt1]\nLink = par\nMode = passthru\n")
    with pytest.raises(TopologyError, match="par already has the macvlan pt0.*nothing was changed"):
        second.validate()
    # ...and the kernel agrees (what validation spares the user): applied anyway, the step
    # fails and the bridge made before it is undone.
    before = tl.links(tl.base)
    with pytest.raises(TopologyError, match="macvlan pt1 on par, mode passthru failed"):
        second.apply()
    assert tl.links(tl.base) == before
    assert tl.lab.ping(tl.base, "10.65.0.9"), tl.lab.notes  # the first child still works


def test_macvlan_source_mode_accepts_only_listed_macs(tl: TopoLab) -> None:
    lab = tl.lab
    veth_in(tl, "par", lab.ns[1], "par-p", "10.66.0.9/24")
    tl.ip(lab.ns[1], "link", "set", "par-p", "address", "02:00:00:66:00:09")
    listed, unlisted = tl.ns("srca"), tl.ns("srcb")
    tl.up(
        f"[MACVLAN msa]\nLink = par\nMode = source\nSourceMACs = 02:00:00:66:00:09\n"
        f"Namespace = {listed}\nAddress = 10.66.0.1/24\n"
    )
    assert lab.ping(listed, "10.66.0.9"), lab.notes  # replies come from a listed MAC
    tl.up(
        f"[MACVLAN msb]\nLink = par\nMode = source\nSourceMACs = 02:00:00:66:00:77\n"
        f"Namespace = {unlisted}\nAddress = 10.66.0.2/24\n"
    )
    assert not lab.ping(unlisted, "10.66.0.9", count=1, timeout=2)
    mac = tl.ip(unlisted, "-d", "link", "show", "msb")
    assert "mode source" in mac and "02:00:00:66:00:77" in mac


# ------------------------------------------------------------------------------ kernel vxlan


def test_helper_built_kernel_vxlan_carries_traffic(make_lab, tmp_path: Path) -> None:
    lab = make_lab(2)
    a, b = lab.ns
    lab.veth(a, b, "10.67.0.1/24", "10.67.0.2/24")
    with TopoLab(lab, tmp_path / "state") as tl:
        for ns, local, remote, addr in ((a, "1", "2", "1"), (b, "2", "1", "2")):
            tl.up(
                f"[VXLAN vx7]\nVNI = 7007\nLocal = 10.67.0.{local}\nRemote = 10.67.0.{remote}\n"
                f"Address = 172.30.7.{addr}/24\nMTU = 1450\n",
                base=ns,
            )
        details = tl.ip(a, "-d", "link", "show", "vx7")
        assert "vxlan id 7007" in details and "dstport 4789" in details
        assert lab.ping(a, "172.30.7.2"), lab.notes
        assert lab.tcp_transfer(b, a, "172.30.7.1", 1 << 20), lab.notes


def test_helper_built_kernel_vxlan_reaches_tunnelpyd_plain_vxlan(make_lab, tmp_path: Path) -> None:
    from tests.harness.sites import TUNNELPYD

    lab = make_lab(4)
    st, sk, ht, hk = lab.ns  # tunnelpyd site, helper-built kernel-vxlan site, a host behind each
    lab.veth(st, sk, "10.68.0.1/24", "10.68.0.2/24")
    with TopoLab(lab, tmp_path / "state") as tl:
        # tunnelpyd's side: a bridge with a host on it, also built by the helper
        tl.up(
            f"[Bridge br42]\n[Veth hte]\nPeer = eth0\nNamespace = {ht}\nMaster = br42\n"
            "PeerAddress = 172.16.68.1/24\nMTU = 1450\n",
            base=st,
        )
        # the kernel side: vxlan device, bridge and host, all from one topology
        tl.up(
            "[Bridge br42]\n"
            "[VXLAN vx42]\nVNI = 42\nLocal = 10.68.0.2\nRemote = 10.68.0.1\nMaster = br42\n"
            f"[Veth hke]\nPeer = eth0\nNamespace = {hk}\nMaster = br42\n"
            "PeerAddress = 172.16.68.2/24\nMTU = 1450\n",
            base=sk,
        )
        # (the kernel's default offloads: partial inner checksums, TSO super-packets in one
        # datagram, which tunnelpyd finishes and cuts before its TAP: io/checksum.py)
        tap = lab.ifname("x")
        conf = lab.write_file(
            f"vx-{tap}.conf",
            "[Interface]\nTransport = vxlan\nListenPort = 4789\n\n"
            "[Peer]\nName = kernel\nEndpoint = 10.68.0.2:4789\n\n"
            f"[Segment lab]\nVNI = 42\nDevice = {tap}\nBridge = br42\n",
        )
        proc = lab.popen(st, *TUNNELPYD, "-c", str(conf), "--log-level", "debug")
        lab.wait_for(
            lambda: "UP" in lab.run(st, "ip", "-br", "link", "show", tap, check=False).stdout,
            15, "tap up", watch=[proc],
        )  # fmt: skip
        assert lab.ping(hk, "172.16.68.1"), lab.notes
        assert lab.tcp_transfer(ht, hk, "172.16.68.2", 2 << 20), lab.notes
        assert lab.tcp_transfer(hk, ht, "172.16.68.1", 2 << 20), lab.notes
        assert proc.stop() == 0


# ------------------------------------------------------------------------------ validation


def kernel_lacks(kind: str) -> bool:
    return bool(topomod.probe_kinds({(kind, None)}))


@pytest.mark.parametrize("kind", ["vlan", "ipvlan", "bond", "team"])
def test_a_kind_the_kernel_lacks_is_one_clear_error_and_nothing_changes(
    tl: TopoLab, kind: str
) -> None:
    if not kernel_lacks(kind):
        pytest.skip(f"this kernel has {kind} (proven in tests/vm on such kernels)")
    body = {
        "vlan": "[VLAN par.5]\nLink = par\nId = 5\n",
        "ipvlan": "[IPVLAN ipv0]\nLink = par\nMode = l2\n",
        "bond": "[Bond bond0]\nPorts = par\n",
        "team": "[Team team0]\nPorts = par\n",
    }[kind]
    veth_in(tl, "par", tl.lab.ns[1], "par-p")
    n = tl.ns("never")
    before = tl.links(tl.base)
    topo = tl.topology(f"[Bridge brx]\n[Veth vx]\nPeer = vxp\nNamespace = {n}\n{body}")
    module = topomod.KIND_MODULES[kind]
    with pytest.raises(TopologyError) as info:
        topo.validate()
    message = str(info.value)
    assert f"this kernel cannot create {kind}" in message
    assert f"{module} module" in message and message.endswith("nothing was changed")
    assert "\n" not in message
    assert tl.links(tl.base) == before
    assert n not in topomod.list_netns()
    assert not topo.state.path.exists()


def test_existing_name_and_missing_parent_refused(tl: TopoLab) -> None:
    tl.ip(tl.base, "link", "add", "taken", "type", "bridge")
    topo = tl.topology("[Bridge taken]\n[MACVLAN m]\nLink = nosuch\n")
    with pytest.raises(TopologyError) as info:
        topo.validate()
    assert "taken already exists and tunnelpyd did not create it" in str(info.value)
    assert "nosuch does not exist" in str(info.value)
    assert "bridge" in tl.ip(tl.base, "-d", "link", "show", "taken")  # untouched


def test_failure_half_way_undoes_what_was_done(tl: TopoLab) -> None:
    n = tl.ns("half")
    before = tl.links(tl.base)
    # Validation cannot see this one: a macvlan may not have a larger MTU than its parent.
    topo = tl.topology(
        f"[Bridge brh]\n[Veth vh]\nPeer = vhp\nNamespace = {n}\nMTU = 1400\n"
        "[MACVLAN mh]\nLink = vh\nMTU = 9000\n"
    )
    topo.validate()
    with pytest.raises(TopologyError) as info:
        topo.apply()
    message = str(info.value)
    assert ":10: macvlan mh on vh, mode bridge failed" in message
    assert "ip link add mh link vh mtu 9000 type macvlan mode bridge" in message
    assert "every step before it was undone" in message
    assert tl.links(tl.base) == before
    assert n not in topomod.list_netns()
    assert not topo.state.path.exists()


# ------------------------------------------------------------------------------ crash leftovers

_APPLY_AND_WAIT = r"""
import sys, time
from tunnelpy import config
from tunnelpy.netlink.topology import Topology
conf = config.load(sys.argv[1])
topo = Topology(conf, state_dir=sys.argv[2])
topo.validate()
topo.apply()
print("applied", flush=True)
time.sleep(120)
"""


def test_second_start_after_sigkill_removes_leftovers(tl: TopoLab) -> None:
    lab, base = tl.lab, tl.base
    veth_in(tl, "keep0", lab.ns[1], "keep0p")  # pre-existing, enslaved: must stay afterwards
    before = tl.links(base)
    n = tl.ns("crash")
    name = lab.ifname("tp")
    conf = lab.write_file(
        f"{name}.conf",
        f"[Interface]\nName = {name}\nTransport = vxlan\n"
        f"[Bridge brc]\nPorts = keep0\n[Veth vc]\nPeer = vcp\nNamespace = {n}\nMaster = brc\n"
        "[MACVLAN mc]\nLink = vcp\n",
    )
    # The "daemon" runs in the base namespace as tunnelpyd would: nsenter, not ip netns exec.
    proc = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{base}", "--", sys.executable, "-c", _APPLY_AND_WAIT,
         str(conf), str(tl.state_dir)],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "applied"
        assert "master brc" in tl.ip(base, "link", "show", "keep0")
        # A second start while the first still runs is refused.
        live = Topology(tl.conf("", name), netns=base, state_dir=tl.state_dir)
        with pytest.raises(TopologyError, match=f"pid {proc.pid} still runs"):
            live.cleanup_leftovers()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert (tl.state_dir / f"{name}.state").exists()
    assert n in topomod.list_netns()
    again = Topology(tl.conf("", name), netns=base, state_dir=tl.state_dir)
    done = again.cleanup_leftovers()
    assert "brc deleted" in done and "vc deleted" in done and f"namespace {n} removed" in done
    assert "keep0 back without master" in done
    assert tl.links(base) == before
    assert n not in topomod.list_netns()
    assert not (tl.state_dir / f"{name}.state").exists()
    assert again.cleanup_leftovers() == []  # nothing left the second time


def test_runs_from_an_executor_thread_under_uvloop(tl: TopoLab) -> None:
    """As the daemon will call it: sync calls in an executor thread of a uvloop loop (the kind
    probe forks from that thread)."""
    import asyncio

    import uvloop

    topo = tl.topology("[Bridge bru]\n[Veth vu]\nPeer = vup\nMaster = bru\n")

    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, topo.cleanup_leftovers)
        await loop.run_in_executor(None, topo.validate)
        await loop.run_in_executor(None, topo.apply)
        assert "master bru" in tl.ip(tl.base, "link", "show", "vu")
        return await loop.run_in_executor(None, topo.undo)

    started = time.monotonic()
    assert uvloop.run(main()) == []
    assert time.monotonic() - started < 20
    assert "bru" not in " ".join(tl.links(tl.base))

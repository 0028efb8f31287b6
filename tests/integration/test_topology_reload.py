"""Reload applies topology changes as a diff (issue 20, item 6), against this kernel.

A link whose section did not change keeps its ifindex (it is not touched at all); a changed one
is made again, with what hangs on it; the undo journal stays the one the exit runs. A step the
kernel refuses half-way refuses the whole change: what it did is undone, the old steps applied
again. Then the daemon: ``tunnelpy reload`` on a running tunnelpyd, and a refused reload.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import netns as netns_mod
from tests.harness.netns import Lab
from tests.harness.sites import TUNNELPYD
from tests.harness.topolab import TopoLab
from tunnelpy.netlink import topology as topomod
from tunnelpy.netlink.topology import TopologyError

TUNNELPY = [sys.executable, "-m", "tunnelpy"]


@pytest.fixture
def tl(lab: Lab, tmp_path: Path) -> Iterator[TopoLab]:
    with TopoLab(lab, tmp_path / "state") as t:
        yield t


def ifindex(tl: TopoLab, ns: str, name: str) -> int:
    return int(json.loads(tl.ip(ns, "-j", "link", "show", name))[0]["ifindex"])


def test_reload_changes_only_what_changed(tl: TopoLab) -> None:
    lab, base = tl.lab, tl.base
    n1, n2, n3 = tl.ns("r1"), tl.ns("r2"), tl.ns("r3")
    name = lab.ifname("tp")
    old = (
        "[Bridge br0]\nAddress = 10.91.0.1/24\n"
        f"[Veth va]\nPeer = va-p\nNamespace = {n1}\nMaster = br0\nPeerAddress = 10.91.0.2/24\n"
        f"[Veth vb]\nPeer = vb-p\nNamespace = {n2}\nMaster = br0\nPeerAddress = 10.91.0.3/24\n"
        f"[Namespace {n1}]\nRoute = 10.99.0.0/16 via 10.91.0.1\n"
    )
    topo = tl.up(old, name=name)
    before = {x: ifindex(tl, base, x) for x in ("br0", "va", "vb")}
    peer_a = ifindex(tl, n1, "va-p")
    new = (
        old.replace("Address = 10.91.0.1/24", "Address = 10.91.0.254/24")
        .replace("PeerAddress = 10.91.0.3/24\n", "PeerAddress = 10.91.0.3/24\nMTU = 1400\n")
        .replace("10.99.0.0/16 via 10.91.0.1", "10.98.0.0/16 via 10.91.0.254")
        + f"[Veth vc]\nPeer = vc-p\nNamespace = {n3}\nMaster = br0\nPeerAddress = 10.91.0.4/24\n"
    )
    diff = topo.prepare_change(tl.conf(new, name))
    assert diff
    topo.change(diff)
    # untouched: the same devices; the bridge only changed its address
    assert ifindex(tl, base, "va") == before["va"] and ifindex(tl, n1, "va-p") == peer_a
    assert ifindex(tl, base, "br0") == before["br0"]
    assert "10.91.0.254/24" in tl.ip(base, "addr", "show", "br0")
    assert "10.91.0.1/" not in tl.ip(base, "addr", "show", "br0")
    # changed: vb made again (its MTU), enslaved again
    assert ifindex(tl, base, "vb") != before["vb"] and "mtu 1400" in tl.ip(
        base, "link", "show", "vb"
    )
    assert "master br0" in tl.ip(base, "link", "show", "vb")
    # added: vc into a new namespace; the route in n1 replaced
    assert n3 in topomod.list_netns() and "master br0" in tl.ip(base, "link", "show", "vc")
    routes = tl.ip(n1, "route")
    assert "10.98.0.0/16 via 10.91.0.254" in routes and "10.99.0.0/16" not in routes
    assert lab.ping(n1, "10.91.0.3"), lab.notes
    assert lab.ping(n3, "10.91.0.254"), lab.notes
    # the journal is the exit's: everything goes, old and new
    assert topo.undo() == []
    assert not {"br0", "va", "vb", "vc"} & {x.split()[0] for x in tl.links(base)}
    assert {n1, n2, n3} & topomod.list_netns() == set()


def test_a_step_that_fails_refuses_the_whole_change(tl: TopoLab) -> None:
    n = tl.ns("rf")
    name = tl.lab.ifname("tp")
    old = f"[Bridge brh]\nAddress = 10.92.0.1/24\n[Veth vh]\nPeer = vhp\nNamespace = {n}\nMTU = 1400\n"
    topo = tl.up(old, name=name)
    before_base, before_n = tl.links(tl.base), tl.links(n)
    # brh made again (STP), a new bridge, then a macvlan the kernel refuses (MTU above its
    # parent's): validation cannot see that one
    new = (
        old.replace("[Bridge brh]\n", "[Bridge brh]\nSTP = yes\n")
        + "[Bridge brx]\n[MACVLAN mh]\nLink = vh\nMTU = 9000\n"
    )
    diff = topo.prepare_change(tl.conf(new, name))
    with pytest.raises(TopologyError) as info:
        topo.change(diff)
    message = str(info.value)
    assert "macvlan mh on vh, mode bridge failed" in message
    assert "the reload was refused and the old topology restored" in message
    assert tl.links(tl.base) == before_base and tl.links(n) == before_n
    assert "10.92.0.1/24" in tl.ip(tl.base, "addr", "show", "brh")
    assert "stp_state 0" in tl.ip(tl.base, "-d", "link", "show", "brh")
    assert topo.undo() == []  # the journal still describes exactly what exists
    assert "brh" not in " ".join(tl.links(tl.base)) and n not in topomod.list_netns()


def test_validation_refuses_before_anything_changes(tl: TopoLab) -> None:
    name = tl.lab.ifname("tp")
    topo = tl.up("[Bridge brv]\n", name=name)
    tl.ip(tl.base, "link", "add", "taken", "type", "bridge")
    before = tl.links(tl.base)
    with pytest.raises(TopologyError, match="taken already exists and tunnelpyd did not create"):
        topo.prepare_change(tl.conf("[Bridge brv]\nSTP = yes\n[Bridge taken]\n", name))
    assert tl.links(tl.base) == before


# ------------------------------------------------------------------------------ the daemon


def reload(name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TUNNELPY, "reload", name], capture_output=True, text=True, timeout=90)


def test_tunnelpy_reload_applies_the_diff_in_a_running_daemon(lab: Lab) -> None:
    ns = lab.ns[0]
    name = lab.ifname("v")
    far, keep = f"{netns_mod.NS_PREFIX}{lab.tag}-rl", f"{netns_mod.NS_PREFIX}{lab.tag}-rk"
    netns_mod.REGISTRY.netns.update((far, keep))
    head = (
        f"[Interface]\nName = {name}\nTransport = vxlan\nListenPort = 4790\n"
        "[Peer]\nName = b\nEndpoint = 192.0.2.2:4790\n"
        f"[Segment s]\nVNI = 5\nDevice = {lab.ifname('t')}\nBridge = brd\n"
    )
    # (a namespace from the start: a tunnelpyd whose config names none gives up CAP_SYS_ADMIN)
    one = head + f"[Bridge brd]\nAddress = 10.93.0.1/24\n[Namespace {keep}]\n"
    two = one + (
        f"[Veth vd]\nPeer = eth0\nNamespace = {far}\nMaster = brd\nPeerAddress = 10.93.0.2/24\n"
        f"[Namespace {far}]\nRoute = default via 10.93.0.1\n"
    )
    conf = lab.write_file(f"{name}.conf", one)
    proc = lab.popen(ns, *TUNNELPYD, "-c", str(conf), "--log-level", "debug")
    ctl = Path("/run/tunnelpy") / f"{name}.ctl"
    lab.wait_for(ctl.exists, 30, f"tunnelpyd {name} up", watch=[proc])
    bridge = json.loads(lab.run(ns, "ip", "-j", "link", "show", "brd").stdout)[0]["ifindex"]
    try:
        lab.write_file(f"{name}.conf", two)
        res = reload(name)
        assert res.returncode == 0, res.stderr + proc.log()
        assert "add veth vd" in res.stdout and "add namespace" in res.stdout
        assert far in netns_mod.list_netns()
        assert lab.ping(far, "10.93.0.1"), lab.notes  # the new veth, on the kept bridge
        assert (
            json.loads(lab.run(ns, "ip", "-j", "link", "show", "brd").stdout)[0]["ifindex"]
            == bridge
        )
        # a reload the kernel refuses (a name someone else has): nothing changes, it says why
        lab.run(ns, "ip", "link", "add", "taken0", "type", "bridge")
        lab.write_file(f"{name}.conf", two + "[Bridge taken0]\n")
        res = reload(name)
        assert res.returncode == 1 and "taken0 already exists" in res.stderr, res.stderr
        assert lab.ping(far, "10.93.0.1"), lab.notes
        # a new segment whose TAP goes into a new bridge: the TAP exists only after the
        # topology changed, so its port step waits for it
        tap2 = lab.ifname("t")
        lab.write_file(
            f"{name}.conf",
            two + f"[Segment s2]\nVNI = 6\nDevice = {tap2}\nBridge = br2\n[Bridge br2]\n",
        )
        res = reload(name)
        assert res.returncode == 0, res.stderr + proc.log()
        assert "master br2" in lab.run(ns, "ip", "link", "show", tap2).stdout
        # back to one: the veth, the namespace, the second segment and its bridge go
        lab.write_file(f"{name}.conf", one)
        res = reload(name)
        assert res.returncode == 0, res.stderr
        assert "remove veth vd" in res.stdout and far not in netns_mod.list_netns()
        assert (
            json.loads(lab.run(ns, "ip", "-j", "link", "show", "brd").stdout)[0]["ifindex"]
            == bridge
        )
    finally:
        assert proc.stop(timeout=20) == 0, proc.log()
        for left in {far, keep} & netns_mod.list_netns():
            subprocess.run(["ip", "netns", "del", left], capture_output=True, timeout=30)
    assert not lab.link_exists(ns, "brd") and keep not in netns_mod.list_netns()


def test_a_reload_cannot_add_the_first_namespace_without_cap_sys_admin(lab: Lab) -> None:
    ns = lab.ns[0]
    name = lab.ifname("v")
    far = f"{netns_mod.NS_PREFIX}{lab.tag}-nc"
    netns_mod.REGISTRY.netns.add(far)
    head = f"[Interface]\nName = {name}\nTransport = vxlan\nListenPort = 4790\n[Bridge brn]\n"
    conf = lab.write_file(f"{name}.conf", head)
    proc = lab.popen(ns, *TUNNELPYD, "-c", str(conf))
    lab.wait_for((Path("/run/tunnelpy") / f"{name}.ctl").exists, 30, "up", watch=[proc])
    lab.write_file(
        f"{name}.conf", head + "[Bridge brm]\n" + f"[Veth vn]\nPeer = vnp\nNamespace = {far}\n"
    )
    res = reload(name)
    assert res.returncode == 1, res.stdout
    assert (
        f"making namespace {far} needs CAP_SYS_ADMIN" in res.stderr and "restart it" in res.stderr
    )
    assert not lab.link_exists(ns, "brm") and far not in netns_mod.list_netns()
    # without namespaces a reload adds links, unprobed (the probe needs CAP_SYS_ADMIN too)
    lab.write_file(f"{name}.conf", head + "[Bridge brm]\n[Veth vm]\nPeer = vmp\nMaster = brm\n")
    res = reload(name)
    assert res.returncode == 0, res.stderr + proc.log()
    assert "master brm" in lab.run(ns, "ip", "link", "show", "vm").stdout
    assert proc.stop(timeout=20) == 0, proc.log()
    assert not lab.link_exists(ns, "vm") and not lab.link_exists(ns, "brm")

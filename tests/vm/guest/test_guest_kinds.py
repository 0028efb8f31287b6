"""Inside the VM (a full Debian kernel): VLAN, IPVLAN l2/l3 and bond (and team when teamd is
installed), built by the topology helper, exercised with traffic, undone.

Run by tests/vm/test_vm_tier.py through virtme-ng; collected only with TUNNELPY_IN_VM=1.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.netns import Lab
from tests.harness.topolab import TopoLab
from tunnelpy.netlink import topology as topomod
from tunnelpy.netlink.topology import TopologyError


@pytest.fixture(scope="session", autouse=True)
def _modules() -> None:
    # The guest kernel has the drivers as modules; autoloading from netlink may not be set up.
    for module in ("8021q", "ipvlan", "bonding", "team", "team_mode_activebackup", "macvlan",
                   "tun", "veth", "bridge"):  # fmt: skip
        subprocess.run(["modprobe", module], capture_output=True)
    # The lab harness wants /dev/net/tun (for tunnelpyd), which a fresh guest may not have.
    if not os.path.exists("/dev/net/tun"):
        os.makedirs("/dev/net", exist_ok=True)
        os.mknod("/dev/net/tun", 0o666 | stat.S_IFCHR, os.makedev(10, 200))


@pytest.fixture
def tl(lab: Lab, tmp_path: Path) -> Iterator[TopoLab]:
    with TopoLab(lab, tmp_path / "state") as t:
        yield t


def test_vm_kernel_has_every_kind() -> None:
    kinds = {("vlan", None), ("ipvlan", "l2"), ("ipvlan", "l3"), ("ipvlan", "l3s"), ("bond", None)}
    assert topomod.probe_kinds(kinds) == {}


def test_vlan_tagged_traffic_between_namespaces(tl: TopoLab) -> None:
    lab = tl.lab
    a, b = lab.ns
    ea, eb = lab.veth(a, b, None, None)
    for ns, end, host in ((a, ea, "1"), (b, eb, "2")):
        tl.up(
            f"[VLAN {end}.20]\nLink = {end}\nId = 20\nAddress = 10.70.20.{host}/24\n"
            f"[VLAN {end}.30]\nLink = {end}\nId = {30 if ns == a else 31}\n"
            f"Address = 10.70.30.{host}/24\n"
            f"[VLAN {end}.40]\nLink = {end}\nId = 40\nProtocol = 802.1ad\n"
            f"Address = 10.70.40.{host}/24\n",
            base=ns,
        )
    assert "vlan protocol 802.1Q id 20" in tl.ip(a, "-d", "link", "show", f"{ea}.20")
    assert "vlan protocol 802.1ad id 40" in tl.ip(a, "-d", "link", "show", f"{ea}.40")
    assert lab.ping(a, "10.70.20.2"), lab.notes  # same VLAN id: through
    assert lab.ping(a, "10.70.40.2"), lab.notes  # 802.1ad (QinQ outer tag) too
    assert not lab.ping(a, "10.70.30.2", count=1, timeout=2)  # tag 30 vs 31: never meet
    # Untagged, the same wire carries nothing addressed: the frames above really were tagged.
    assert "10.70" not in tl.ip(a, "addr", "show", "dev", ea)


def test_ipvlan_l2_siblings_and_outside(tl: TopoLab) -> None:
    lab = tl.lab
    a, b = lab.ns
    parent, outside = lab.veth(a, b, None, "10.71.0.9/24")
    n1, n2 = tl.ns("l2a"), tl.ns("l2b")
    tl.up(
        f"[IPVLAN iva]\nLink = {parent}\nMode = l2\nNamespace = {n1}\nAddress = 10.71.0.1/24\n"
        f"[IPVLAN ivb]\nLink = {parent}\nMode = l2\nNamespace = {n2}\nAddress = 10.71.0.2/24\n"
    )
    assert "ipvlan  mode l2" in tl.ip(n1, "-d", "link", "show", "iva")
    assert lab.ping(n1, "10.71.0.2"), lab.notes  # siblings, switched on the parent
    assert lab.ping(n2, "10.71.0.9"), lab.notes  # and the wire beyond it
    # ipvlan children share the parent's MAC (unlike macvlan)
    mac = tl.ip(a, "link", "show", parent).split("link/ether ")[1].split()[0]
    assert mac in tl.ip(n1, "link", "show", "iva")


def test_ipvlan_l3_routes_between_subnets_without_a_router(tl: TopoLab) -> None:
    lab = tl.lab
    a, b = lab.ns
    parent, _ = lab.veth(a, b, None, None)
    n1, n2 = tl.ns("l3a"), tl.ns("l3b")
    tl.up(
        f"[IPVLAN i3a]\nLink = {parent}\nMode = l3\nNamespace = {n1}\nAddress = 10.72.1.1/24\n"
        f"[IPVLAN i3b]\nLink = {parent}\nMode = l3\nNamespace = {n2}\nAddress = 10.72.2.1/24\n"
    )
    for ns, dev in ((n1, "i3a"), (n2, "i3b")):
        tl.ip(ns, "route", "add", "default", "dev", dev)
    assert lab.ping(n1, "10.72.2.1"), lab.notes  # different subnets: the parent routes (L3)
    neigh = tl.ip(n1, "neigh", "show")
    assert "10.72.2.1" not in neigh  # no ARP in l3 mode: the device is NOARP
    assert "NOARP" in tl.ip(n1, "link", "show", "i3a")


def active_slave(tl: TopoLab, ns: str, bond: str) -> str:
    out = tl.ip(ns, "-d", "link", "show", bond)
    return out.split("active_slave ")[1].split()[0] if "active_slave " in out else ""


def test_bond_active_backup_fails_over_when_a_port_goes_down(tl: TopoLab) -> None:
    lab = tl.lab
    a, b = lab.ns
    p1, q1 = lab.veth(a, b, None, None)
    p2, q2 = lab.veth(a, b, None, None)
    before_a = tl.links(a)
    # The far side: a bridge joining both wires (a switch), built by the helper too.
    tl.up(f"[Bridge sw]\nPorts = {q1}, {q2}\nAddress = 10.73.0.2/24\n", base=b)
    bond = tl.up(
        f"[Bond bond0]\nMode = active-backup\nMiimon = 50\nPorts = {p1}, {p2}\nPrimary = {p1}\n"
        "Address = 10.73.0.1/24\n",
        base=a,
    )
    assert "bond mode active-backup" in tl.ip(a, "-d", "link", "show", "bond0")
    assert lab.ping(a, "10.73.0.2"), lab.notes
    assert active_slave(tl, a, "bond0") == p1
    tl.ip(b, "link", "set", q1, "down")  # the cable of the active port is pulled
    deadline = time.monotonic() + 20
    while active_slave(tl, a, "bond0") != p2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert active_slave(tl, a, "bond0") == p2
    assert lab.ping(a, "10.73.0.2", timeout=20), lab.notes  # traffic moved to the backup
    assert bond.undo() == []
    assert tl.links(a) == before_a  # ports given back: no master, their old state


@pytest.mark.skipif(shutil.which("teamd") is None, reason="teamd not installed (libteam-utils)")
def test_team_active_backup_through_teamd(tl: TopoLab) -> None:
    lab = tl.lab
    a, b = lab.ns
    p1, q1 = lab.veth(a, b, None, None)
    p2, q2 = lab.veth(a, b, None, None)
    tl.up(f"[Bridge sw]\nPorts = {q1}, {q2}\nAddress = 10.74.0.2/24\n", base=b)
    team = tl.up(
        f"[Team team0]\nRunner = activebackup\nPorts = {p1}, {p2}\nAddress = 10.74.0.1/24\n",
        base=a,
    )
    assert lab.ping(a, "10.74.0.2", timeout=20), lab.notes
    assert team.undo() == []
    assert "team0" not in tl.ip(a, "-br", "link")


def test_kinds_validate_here_but_names_still_checked(tl: TopoLab) -> None:
    topo = tl.topology("[VLAN nosuch.5]\nLink = nosuch\nId = 5\n")
    with pytest.raises(TopologyError, match="nosuch does not exist.*nothing was changed"):
        topo.validate()

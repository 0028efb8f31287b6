"""Every file in conf/ starts as written, for real, in namespaces (issue 20, item 2).

Each example is copied and only what must differ on a shared test host is replaced: generated
keys for the placeholders and key paths, host-unique interface and namespace names (their UAPI
and control sockets and /run/netns names are host-wide), the documentation addresses for a lab
underlay. Every replacement is asserted to hit, so an example that changes shape fails here
instead of silently testing something else. Then: `tunnelpy check` and `tunnelpy plan` accept
the copy, tunnelpyd starts under `ip netns exec` (as a user would run it), `tunnelpy show`
answers, and a ping crosses to the example's other end: a second tunnelpyd from the same file
(site.conf, segments.conf), or the kernel's vxlan device that the file's comments describe
(vxlan.conf, lab-overlay.conf, whose hardware VTEP is a kernel vxlan too).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import netns as netns_mod
from tests.harness.netns import Lab, Proc, genkey, pubkey
from tests.harness.sites import TUNNELPYD

CONF = Path(__file__).resolve().parents[2] / "conf"
TUNNELPY = [sys.executable, "-m", "tunnelpy"]
COVERED = {"site.conf", "segments.conf", "vxlan.conf", "lab-overlay.conf"}


def localize(text: str, **swaps: str) -> str:
    """``text`` with each ``old=new`` pair replaced (keyword names are labels): each must hit."""
    for label, pair in swaps.items():
        old, new = pair.split("\0")
        assert old in text, f"{label}: {old!r} is no longer in the example"
        text = text.replace(old, new)
    return text


def swap(old: str, new: str) -> str:
    return f"{old}\0{new}"


def tunnelpy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TUNNELPY, *args], capture_output=True, text=True, timeout=60)


def start(lab: Lab, ns: str, name: str, text: str) -> Proc:
    """Write the copy, check and plan it, start tunnelpyd on it, wait for its control socket."""
    conf = lab.write_file(f"{name}.conf", text)
    for command in ("check", "plan"):
        res = tunnelpy(command, "-c", str(conf))
        assert res.returncode == 0, f"tunnelpy {command}: {res.stderr}"
    proc = lab.popen(ns, *TUNNELPYD, "-c", str(conf), "--log-level", "debug")
    ctl = Path("/run/tunnelpy") / f"{name}.ctl"
    lab.wait_for(ctl.exists, 30, f"tunnelpyd {name} from {conf.name} up", watch=[proc])
    return proc


def shown(name: str) -> dict:
    res = tunnelpy("show", name, "--json")
    assert res.returncode == 0, res.stderr
    (doc,) = json.loads(res.stdout)
    assert doc["name"] == name and doc["source"] == "tunnelpyd"
    assert tunnelpy("show", name).returncode == 0  # the table too
    return doc


def key_file(lab: Lab, name: str) -> tuple[Path, str]:
    private = genkey()
    return lab.write_file(f"{name}.key", private + "\n"), pubkey(private)


def test_every_example_has_a_start_test() -> None:
    assert {p.name for p in CONF.glob("*.conf")} == COVERED


def test_site_conf_two_sites(make_lab) -> None:
    lab = make_lab(2)
    a, b = lab.ns
    lab.veth(a, b, "192.0.2.1/24", "192.0.2.2/24")
    text = (CONF / "site.conf").read_text()
    names = {a: lab.ifname("st"), b: lab.ifname("st")}
    keys = {ns: key_file(lab, names[ns]) for ns in (a, b)}
    procs = []
    for here, there in ((a, b), (b, a)):
        mine = localize(
            text,
            name=swap("Name = site\n", f"Name = {names[here]}\n"),
            key=swap(
                "PrivateKeyFile = /etc/tunnelpy/site.key", f"PrivateKeyFile = {keys[here][0]}"
            ),
            peer=swap("REPLACE-WITH-SITE-B-PUBLIC-KEY", keys[there][1]),
            endpoint=swap("site-b.example.net:51820", f"192.0.2.{2 if here == a else 1}:51820"),
        )
        if here == b:  # site B: the mirror image of site A's addresses
            mine = localize(
                mine,
                address=swap("Address = 10.10.0.1/24, fd10::1/64", "Address = 10.10.0.2/24, fd10::2/64"),
                allowed=swap("AllowedIPs = 10.10.0.2/32, fd10::2/128", "AllowedIPs = 10.10.0.1/32, fd10::1/128"),
                lan=swap("AllowedIPs = 192.168.20.0/24\n", ""),
            )  # fmt: skip
        procs.append(start(lab, here, names[here], mine))
    assert lab.ping(a, "10.10.0.2"), lab.notes
    assert lab.ping(a, "fd10::2"), lab.notes
    doc = shown(names[a])
    assert doc["peers"][0]["name"] == "site-b" and doc["peers"][0]["latest_handshake"]
    for proc in procs:
        assert proc.stop() == 0, proc.log()


def test_segments_conf_two_sites_two_segments(make_lab) -> None:
    lab = make_lab(2)
    a, b = lab.ns
    lab.veth(a, b, "192.0.2.1/24", "192.0.2.2/24")
    text = (CONF / "segments.conf").read_text()
    names = {a: lab.ifname("sg"), b: lab.ifname("sg")}
    keys = {ns: key_file(lab, names[ns]) for ns in (a, b)}
    procs = []
    for here, there, host in ((a, b, "1"), (b, a, "2")):
        # The bridges the file joins are "a bridge you already have": made here first.
        for bridge, net in (("br-lab", "192.168.100"), ("br-iso", "192.168.200")):
            lab.run(here, "ip", "link", "add", bridge, "type", "bridge")
            lab.run(here, "ip", "addr", "add", f"{net}.{host}/24", "dev", bridge)
            lab.run(here, "ip", "link", "set", bridge, "up")
        mine = localize(
            text,
            name=swap("Name = site-a\n", f"Name = {names[here]}\n"),
            key=swap("PrivateKeyFile = /etc/tunnelpy/site-a.key", f"PrivateKeyFile = {keys[here][0]}"),
            peer=swap("REPLACE-WITH-SITE-B-PUBLIC-KEY", keys[there][1]),
        )  # fmt: skip
        if here == b:
            mine = localize(
                mine,
                address=swap("Address = 10.10.0.1/24", "Address = 10.10.0.2/24"),
                allowed=swap("AllowedIPs = 10.10.0.2/32", "AllowedIPs = 10.10.0.1/32"),
                endpoint=swap("Endpoint = 192.0.2.2:51820", "Endpoint = 192.0.2.1:51820"),
                peer_name=swap("Name = site-b\n", "Name = site-a\n"),
            )
        procs.append(start(lab, here, names[here], mine))
    assert lab.ping(a, "10.10.0.2"), lab.notes  # the routed tunnel
    assert lab.ping(a, "192.168.100.2"), lab.notes  # segment lab (VNI 100), bridge to bridge
    assert lab.ping(a, "192.168.200.2"), lab.notes  # segment iso (VNI 200)
    assert {s["vni"] for s in shown(names[a])["segments"]} == {100, 200}
    for proc in procs:
        assert proc.stop() == 0, proc.log()


def test_vxlan_conf_against_the_kernel_vtep_its_comments_describe(make_lab) -> None:
    lab = make_lab(2)
    a, b = lab.ns
    lab.veth(a, b, "192.0.2.1/24", "192.0.2.2/24")
    lab.run(a, "ip", "link", "add", "br42", "type", "bridge")  # the file's pre-existing bridge
    lab.run(a, "ip", "addr", "add", "172.16.42.1/24", "dev", "br42")
    lab.run(a, "ip", "link", "set", "br42", "up")
    # "The other side, with iproute2", as the file says
    for argv in (
        "link add br42 type bridge",
        "link add vx42 type vxlan id 42 local 192.0.2.2 remote 192.0.2.1 dstport 4789",
        "link set vx42 master br42",
        "link set vx42 up",
        "addr add 172.16.42.2/24 dev br42",
        "link set br42 up",
    ):
        lab.run(b, "ip", *argv.split())
    name = lab.ifname("vx")
    text = localize(
        (CONF / "vxlan.conf").read_text(), name=swap("Name = vtep\n", f"Name = {name}\n")
    )
    proc = start(lab, a, name, text)
    assert lab.ping(a, "172.16.42.2"), lab.notes
    assert shown(name)["transport"] == "vxlan"
    assert proc.stop() == 0, proc.log()


@pytest.fixture
def lab_namespaces(lab: Lab) -> Iterator[dict[str, str]]:
    """Host-unique stand-ins for the example's namespaces web and db (always removed)."""
    names = {n: f"{netns_mod.NS_PREFIX}{lab.tag}-{n}" for n in ("web", "db")}
    netns_mod.REGISTRY.netns.update(names.values())
    yield names
    for left in set(names.values()) & netns_mod.list_netns():
        subprocess.run(["ip", "netns", "del", left], capture_output=True, timeout=30)


def test_lab_overlay_conf_with_site_b_and_the_hardware_vtep(
    make_lab, lab_namespaces: dict[str, str]
) -> None:
    lab = make_lab(4)
    sw, a, b, c = lab.ns  # a switch for the underlay; site A (tunnelpyd), site B, the VTEP
    for ns, host in ((a, "1"), (b, "2"), (c, "3")):
        port, _ = lab.veth(sw, ns, None, f"192.0.2.{host}/24")
        if host == "1":
            lab.run(sw, "ip", "link", "add", "sw", "type", "bridge")
            lab.run(sw, "ip", "link", "set", "sw", "up")
        lab.run(sw, "ip", "link", "set", port, "master", "sw")
    # site B: a kernel vxlan on VNI 100 (plain VXLAN, UDP 4789) with a host on its bridge
    # the hardware VTEP: a kernel vxlan on VNI 200, UDP 8472, as the file's vx200 expects
    for ns, vni, port, addr in ((b, 100, 4789, "10.100.0.20/24"), (c, 200, 8472, "10.200.0.2/24")):
        local = "192.0.2.2" if ns == b else "192.0.2.3"
        for argv in (
            "link add brx type bridge",
            f"link add vx type vxlan id {vni} local {local} remote 192.0.2.1 dstport {port}",
            "link set vx master brx",
            "link set vx up",
            f"addr add {addr} dev brx",
            "link set brx up",
        ):
            lab.run(ns, "ip", *argv.split())
    web, db = lab_namespaces["web"], lab_namespaces["db"]
    name = lab.ifname("ov")
    text = localize(
        (CONF / "lab-overlay.conf").read_text(),
        name=swap("Name = lab-a\n", f"Name = {name}\n"),
        web=swap("Namespace = web ", f"Namespace = {web} "),
        web_section=swap("[Namespace web]", f"[Namespace {web}]"),
        db=swap("Namespace = db\n", f"Namespace = {db}\n"),
        db_section=swap("[Namespace db]", f"[Namespace {db}]"),
    )
    proc = start(lab, a, name, text)
    # namespaces the daemon made under `ip netns exec` are the host's (item 4)
    assert {web, db} <= netns_mod.list_netns()
    assert lab.ping(web, "10.100.0.20"), lab.notes  # web -> bridge -> TAP -> VXLAN -> site B
    assert lab.ping(db, "10.100.0.20"), lab.notes
    assert lab.ping(web, "10.100.0.12"), lab.notes  # db-mon, the macvlan beside db0
    assert lab.ping(a, "10.200.0.2"), lab.notes  # vx200 to the "hardware" VTEP on UDP 8472
    assert "default via 10.100.0.1" in lab.run(web, "ip", "route").stdout
    doc = shown(name)
    assert {t["name"] for t in doc["topology"]} >= {"br-lab", "v-web", "v-db", "db-mon", "vx200"}
    assert proc.stop() == 0, proc.log()
    assert not {web, db} & netns_mod.list_netns()
    assert not lab.link_exists(a, "br-lab") and not lab.link_exists(a, "vx200")

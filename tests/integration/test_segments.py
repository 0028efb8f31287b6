"""Layer 2 segments with real tunnelpyd processes: hosts behind bridges at each site.

Every "host" is its own namespace with a veth into a bridge in its site's namespace; the site's
tunnelpyd enslaves its segment TAP to that bridge. So a ping between hosts crosses: host veth →
bridge → TAP → tunnelpyd (encrypt, VXLAN-style header) → UDP underlay → the other site, and back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter

import pytest

from tests.harness.sites import new_site, start

pytestmark = pytest.mark.root


def bridge(lab, ns: str, name: str) -> None:
    lab.run(ns, "ip", "link", "add", name, "type", "bridge")
    lab.run(ns, "ip", "link", "set", name, "up")


def host_on(lab, site_ns: str, host_ns: str, br: str, addr: str, mac: str, mtu: int = 1398) -> None:
    # Hosts on a stretched segment need an MTU that fits the tunnel (as with any VXLAN overlay):
    # frames larger than the TAP's MTU are dropped, never fragmented.
    site_end, host_end = lab.veth(site_ns, host_ns, None, None, mtu=mtu)
    lab.run(site_ns, "ip", "link", "set", site_end, "master", br)
    lab.run(host_ns, "ip", "link", "set", host_end, "down")
    lab.run(host_ns, "ip", "link", "set", host_end, "address", mac)
    lab.run(host_ns, "ip", "link", "set", host_end, "name", "eth0")
    lab.run(host_ns, "ip", "link", "set", "eth0", "up")
    lab.add_addresses(host_ns, "eth0", addr)


def segment(name: str, vni: int, device: str, br: str, extra: str = "") -> str:
    return f"[Segment {name}]\nVNI = {vni}\nDevice = {device}\nBridge = {br}\n{extra}\n"


def neigh_mac(lab, ns: str, addr: str) -> str:
    out = lab.run(ns, "ip", "neigh", "show", addr).stdout.split()
    return out[out.index("lladdr") + 1] if "lladdr" in out else ""


def test_two_sites_two_segments_reachability_and_isolation(make_lab):
    lab = make_lab(6)
    sa, sb, a100, a200, b100, b200 = lab.ns
    lab.veth(sa, sb, "10.51.0.1/24", "10.51.0.2/24")
    for ns in (sa, sb):
        bridge(lab, ns, "br100")
        bridge(lab, ns, "br200")
    # identical subnets in both VNIs: only the VNI keeps them apart
    host_on(lab, sa, a100, "br100", "192.168.7.1/24", "02:00:00:00:01:01")
    host_on(lab, sb, b100, "br100", "192.168.7.2/24", "02:00:00:00:01:02")
    host_on(lab, sa, a200, "br200", "192.168.7.1/24", "02:00:00:00:02:01")
    host_on(lab, sb, b200, "br200", "192.168.7.2/24", "02:00:00:00:02:02")
    a = new_site(lab, sa, 51820, ["10.50.0.1/24"])
    b = new_site(lab, sb, 51820, ["10.50.0.2/24"])
    a.peers.append(b.peer_block("10.51.0.2:51820", ["10.50.0.2/32"], name="site-b"))
    b.peers.append(a.peer_block("10.51.0.1:51820", ["10.50.0.1/32"], name="site-a"))
    ta, tb = lab.ifname("l"), lab.ifname("l")
    ua, ub = lab.ifname("l"), lab.ifname("l")
    a.extra = segment("lab", 100, ta, "br100") + segment("other", 200, ua, "br200")
    b.extra = segment("lab", 100, tb, "br100") + segment("other", 200, ub, "br200")
    start(lab, a)
    start(lab, b)
    assert lab.ping(a100, "192.168.7.2")
    assert neigh_mac(lab, a100, "192.168.7.2") == "02:00:00:00:01:02"
    assert lab.ping(a200, "192.168.7.2")
    assert neigh_mac(lab, a200, "192.168.7.2") == "02:00:00:00:02:02"
    assert lab.tcp_transfer(a100, b100, "192.168.7.2", 4 << 20), lab.notes
    assert lab.tcp_transfer(b200, a200, "192.168.7.1", 2 << 20), lab.notes
    # the IP tunnel still works beside the segments, in the same sessions
    assert lab.ping(sa, "10.50.0.2")
    # TAP MTU defaults to what fits: 1420 - 8 (VXLAN-style header) - 14 (Ethernet)
    assert "mtu 1398" in lab.run(sa, "ip", "link", "show", ta).stdout


def test_sigterm_removes_taps_and_keeps_foreign_bridge(lab):
    sa, sb = lab.ns
    lab.veth(sa, sb, "10.52.0.1/24", "10.52.0.2/24")
    bridge(lab, sa, "brx")
    a = new_site(lab, sa, 51820, ["10.53.0.1/24"])
    b = new_site(lab, sb, 51820, ["10.53.0.2/24"])
    a.peers.append(b.peer_block("10.52.0.2:51820", ["10.53.0.2/32"], name="b"))
    tap = lab.ifname("l")
    a.extra = segment("s", 5, tap, "brx")
    start(lab, a)
    assert "master brx" in lab.run(sa, "ip", "link", "show", tap).stdout
    assert a.proc.stop() == 0
    assert not lab.link_exists(sa, tap)
    assert lab.link_exists(sa, "brx")


def test_missing_bridge_refused_before_anything(lab):
    sa, _ = lab.ns
    a = new_site(lab, sa, 51820, ["10.53.0.1/24"])
    tap = lab.ifname("l")
    a.extra = segment("s", 5, tap, "nosuchbr")
    proc = start(lab, a, wait=False)
    assert proc.popen.wait(15) == 1
    assert "nosuchbr does not exist" in proc.log()
    assert not lab.link_exists(sa, a.ifname) and not lab.link_exists(sa, tap)


def test_three_sites_hub_and_spoke_segment(make_lab):
    lab = make_lab(5)
    hub_ns, s1, s2, h1, h2 = lab.ns
    lab.veth(hub_ns, s1, "10.54.1.1/24", "10.54.1.2/24")
    lab.veth(hub_ns, s2, "10.54.2.1/24", "10.54.2.2/24")
    for ns in (s1, s2):
        bridge(lab, ns, "br0")
    host_on(lab, s1, h1, "br0", "192.168.9.1/24", "02:00:00:00:09:01")
    host_on(lab, s2, h2, "br0", "192.168.9.2/24", "02:00:00:00:09:02")
    hub = new_site(lab, hub_ns, 51820, ["10.55.0.1/24"])
    sp1 = new_site(lab, s1, 51820, ["10.55.0.2/24"])
    sp2 = new_site(lab, s2, 51820, ["10.55.0.3/24"])
    hub.peers += [sp1.peer_block(None, ["10.55.0.2/32"], name="sp1"),
                  sp2.peer_block(None, ["10.55.0.3/32"], name="sp2")]
    sp1.peers.append(hub.peer_block("10.54.1.1:51820", ["10.55.0.1/32"], name="hub", keepalive=5))
    sp2.peers.append(hub.peer_block("10.54.2.1:51820", ["10.55.0.1/32"], name="hub", keepalive=5))
    hub_tap = lab.ifname("l")
    hub.extra = f"[Segment lan]\nVNI = 9\nDevice = {hub_tap}\nHub = yes\n"
    sp1.extra = segment("lan", 9, lab.ifname("l"), "br0")
    sp2.extra = segment("lan", 9, lab.ifname("l"), "br0")
    for s in (hub, sp1, sp2):
        start(lab, s)
    assert lab.ping(h1, "192.168.9.2")  # spoke host to spoke host through the hub's segment
    assert lab.tcp_transfer(h2, h1, "192.168.9.1", 2 << 20), lab.notes


def kernel_vxlan(lab, ns: str, name: str, vni: int, local: str, remote: str, br: str) -> None:
    lab.run(ns, "ip", "link", "add", name, "type", "vxlan", "id", str(vni), "local", local,
            "remote", remote, "dstport", "4789", "nolearning")
    lab.run(ns, "ip", "link", "set", name, "master", br)
    lab.run(ns, "ip", "link", "set", name, "up")


# Receives UDP datagrams on ADDR:PORT until N arrived or SECONDS passed; prints "ready" once
# bound, then each payload on its own line.
UDP_SINK = r"""
import socket, sys, time
addr, port, n, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((addr, port))
print("ready", flush=True)
end = time.monotonic() + seconds
got = 0
while got < n and (left := end - time.monotonic()) > 0:
    s.settimeout(left)
    try:
        data = s.recv(65535)
    except socket.timeout:
        break
    print(data[:16].decode(errors="replace"), len(data), flush=True)
    got += 1
"""

# Sends each hex-encoded datagram of argv[3:] from SRC to DST:4789.
RAW_VXLAN = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
for h in sys.argv[3:]:
    s.sendto(bytes.fromhex(h), (sys.argv[2], 4789))
"""


def udp_sink(lab, ns: str, addr: str, port: int, n: int, seconds: float = 5.0):
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", UDP_SINK, addr, str(port), str(n),
         str(seconds)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def udp_in_csum_errors(lab, ns: str) -> int:
    lines = [line.split() for line in lab.run(ns, "cat", "/proc/net/snmp").stdout.splitlines()]
    names, values = [row for row in lines if row[0] == "Udp:"][:2]
    return int(values[names.index("InCsumErrors")])


def inner_udp_frames(vni: int, dst_mac: str, src_mac: str, src: str, dst: str, port: int):
    """VXLAN datagrams to a host behind tunnelpyd: the same UDP datagram with a correct
    checksum, with the pseudo-header sum only (as a kernel leaves it) and with a wrong one."""
    from tests.harness import packets as pk

    def frame(payload: bytes, how: str) -> bytes:
        ip = pk.ipv4(src, dst, pk.udp(40000, port, payload), pk.PROTO_UDP, csum=True)
        good = pk.with_l4_checksum(ip)
        seg = ip[20:]
        pseudo = 0xFFFF - pk.checksum(ip[12:20] + bytes([0, pk.PROTO_UDP]) + len(seg).to_bytes(2, "big"))
        value = {"good": good[26:28], "partial": pseudo.to_bytes(2, "big"),
                 "corrupt": bytes(b ^ 0x5A for b in good[26:28])}[how]  # fmt: skip
        assert how == "good" or value != good[26:28]
        inner = ip[:26] + value + ip[28:]
        eth = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", ""))
        return bytes([0x08, 0, 0, 0]) + vni.to_bytes(3, "big") + b"\0" + eth + pk.ETH_IPV4 + inner

    return [frame(f"{how}-datagram".encode(), how).hex() for how in ("good", "partial", "corrupt")]


@pytest.mark.parametrize(("first", "offload"), [("tunnelpyd", "auto"), ("kernel", "off")])
def test_plain_vxlan_interop_with_kernel_vxlan(make_lab, first, offload):
    """tunnelpyd's plain VXLAN beside the kernel's vxlan device, with the kernel's default
    offloads on every device (no ethtool): the classic lab. Over the veth underlay the kernel
    leaves inner TCP/UDP checksums partial and sends a TSO super-packet as one datagram;
    tunnelpyd must finish the one and cut the other before its TAP (io/checksum.py,
    io/segmentation.py), through a TAP with a virtio_net_hdr (auto) and without one (off)."""
    lab = make_lab(4)
    st, sk, ht, hk = lab.ns  # tunnelpyd site, kernel-vxlan site, a host behind each
    lab.veth(st, sk, "10.56.0.1/24", "10.56.0.2/24")
    for ns in (st, sk):
        bridge(lab, ns, "br42")
    host_on(lab, st, ht, "br42", ["172.16.42.1/24", "fd42::1/64"], "02:00:00:00:42:01", mtu=1450)
    host_on(lab, sk, hk, "br42", ["172.16.42.2/24", "fd42::2/64"], "02:00:00:00:42:02", mtu=1450)
    kernel_vxlan(lab, sk, "vx42", 42, "10.56.0.2", "10.56.0.1", "br42")
    # The kernel's defaults, as a user has them: checksums and TSO left to "hardware".
    for ns, dev in ((hk, "eth0"), (sk, "vx42")):
        features = lab.run(ns, "ethtool", "-k", dev).stdout
        assert "tx-checksumming: on" in features and "tcp-segmentation-offload: on" in features
    site = new_site(lab, st, 4789, [])
    tap = lab.ifname("x")
    conf = (
        "[Interface]\nTransport = vxlan\nListenPort = 4789\nListenAddress = 10.56.0.1\n"
        f"Offload = {offload}\n\n"
        "[Peer]\nName = kernel\nEndpoint = 10.56.0.2:4789\n\n"
        f"[Segment lab]\nVNI = 42\nDevice = {tap}\nBridge = br42\n"
    )
    site.conf = lab.write_file(f"vx-{tap}.conf", conf)
    from tests.harness.sites import TUNNELPYD

    proc = lab.popen(st, *TUNNELPYD, "-c", str(site.conf), "--log-level", "debug")
    lab.wait_for(lambda: lab.link_exists(st, tap) and "UP" in lab.run(st, "ip", "-br", "link", "show", tap).stdout,
                 15, "tap up", watch=[proc])
    # ListenAddress: bound to the underlay address only, never *:4789; and warned about
    listening = lab.run(st, "ss", "-Hulnp").stdout
    assert "10.56.0.1:4789" in listening and "*:4789" not in listening, listening
    assert "Transport = vxlan is unauthenticated" in proc.log()
    a, b = (ht, hk) if first == "tunnelpyd" else (hk, ht)
    addr = {ht: ("172.16.42.1", "fd42::1"), hk: ("172.16.42.2", "fd42::2")}
    assert lab.ping(a, addr[b][0])
    assert lab.ping(b, addr[a][0])
    # TCP both ways, by hash: every SYN-ACK and ACK partial, the data in super-packets
    assert lab.tcp_transfer(ht, hk, "172.16.42.2", 4 << 20), lab.notes
    assert lab.tcp_transfer(hk, ht, "172.16.42.1", 4 << 20), lab.notes
    assert lab.tcp_transfer(ht, hk, "fd42::2", 1 << 20), lab.notes
    assert lab.tcp_transfer(hk, ht, "fd42::1", 1 << 20), lab.notes
    # UDP from the kernel side: small and large datagrams, IPv4 and IPv6, checksums partial
    for dst in ("172.16.42.1", "fd42::1"):
        sink = udp_sink(lab, ht, dst, 9999, 2)
        lab.run(hk, sys.executable, "-c", "import socket, sys; s = socket.socket("
                f"socket.AF_INET6 if ':' in '{dst}' else socket.AF_INET, socket.SOCK_DGRAM); "
                f"s.sendto(b'small' * 20, ('{dst}', 9999)); s.sendto(b'large' * 280, ('{dst}', 9999))")  # fmt: skip
        out, _ = sink.communicate(timeout=15)
        assert out.split() == ["smallsmallsmalls", "100", "largelargelargel", "1400"], (dst, out)
    # A wrong checksum stays wrong: of three datagrams (correct, partial, corrupt) the host
    # receives two, and its stack counts the third as a checksum error.
    errors = udp_in_csum_errors(lab, ht)
    sink = udp_sink(lab, ht, "172.16.42.1", 9998, 3, seconds=3)
    lab.run(sk, sys.executable, "-c", RAW_VXLAN, "10.56.0.2", "10.56.0.1",
            *inner_udp_frames(42, "02:00:00:00:42:01", "02:00:00:00:42:02", "172.16.42.2",
                              "172.16.42.1", 9998))  # fmt: skip
    out, _ = sink.communicate(timeout=15)
    assert out.split() == ["good-datagram", "13", "partial-datagram", "16"], out
    assert udp_in_csum_errors(lab, ht) == errors + 1
    # the kernel saw RFC 7348 frames from us: its FDB learned the host behind tunnelpyd
    fdb = lab.run(sk, "bridge", "fdb", "show", "dev", "vx42").stdout
    assert "02:00:00:00:42:01" in fdb
    assert proc.stop() == 0
    assert not lab.link_exists(st, tap) and lab.link_exists(st, "br42")


# A macof-style flood from a host on one spoke: random unicast source and destination MACs at a
# fixed rate, written straight onto the host's wire (AF_PACKET). Ethertype 0x88b5 (local
# experimental) so no host stack spends time on it. Prints the number of frames sent.
FLOODER = r"""
import random, socket, sys, time
rate, seconds = float(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
r = random.Random(7)
def mac():
    return bytes([0x02 | (r.randrange(64) << 2)]) + r.randbytes(5)
sent, t0 = 0, time.monotonic()
while (now := time.monotonic() - t0) < seconds:
    while sent < int(now * rate):
        try:
            s.send(mac() + mac() + b"\x88\xb5" + bytes(46))
        except OSError:
            pass  # a full queue drops it, as a wire would
        sent += 1
    time.sleep(0.002)
print(sent, flush=True)
"""

TUNNELPY_CLI = [sys.executable, "-c", "import sys; from tunnelpy.cli import main; sys.exit(main())"]


def show_json(name: str) -> dict:
    res = subprocess.run([*TUNNELPY_CLI, "show", name, "--json"], capture_output=True, text=True,
                         timeout=30)  # fmt: skip
    assert res.returncode == 0, res.stderr
    (doc,) = json.loads(res.stdout)
    return doc


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def hub_refused(site) -> int:
    return show_json(site.ifname)["segments"][0]["fdb_refused"]


def timed_transfer(lab, src: str, dst: str, addr: str, nbytes: int) -> float:
    """Seconds for a TCP transfer (SHA-256 checked), inf if it did not complete in 60 s."""
    t = time.monotonic()
    if not lab.tcp_transfer(src, dst, addr, nbytes, timeout=60):
        return float("inf")
    return time.monotonic() - t


def test_mac_flood_from_one_spoke_does_not_stall_the_others(make_lab):
    """A hub with three spokes; a host behind spoke 3 sprays random source MACs at 7 000
    frames/s (the rate at which the old FDB, scanning its full table for every new MAC,
    saturated a daemon). The hub's per-peer quota (4096 / 3 members) stops learning them
    after 1 365 and drops the rest cheaply, so TCP between the honest spokes keeps going at
    nearly its speed (the old FDB: the transfer did not complete in 60 s)."""
    lab = make_lab(7)
    hub_ns, s1, s2, s3, h1, h2, h3 = lab.ns
    spokes = ((s1, "10.57.1"), (s2, "10.57.2"), (s3, "10.57.3"))
    for ns, net in spokes:
        lab.veth(hub_ns, ns, f"{net}.1/24", f"{net}.2/24")
        bridge(lab, ns, "br0")
    for site_ns, host_ns, n in ((s1, h1, 1), (s2, h2, 2), (s3, h3, 3)):
        host_on(lab, site_ns, host_ns, "br0", f"192.168.57.{n}/24", f"02:00:00:00:57:0{n}")
    hub = new_site(lab, hub_ns, 51820, ["10.58.0.1/24"])
    sites = []
    for i, (ns, net) in enumerate(spokes, 1):
        sp = new_site(lab, ns, 51820, [f"10.58.0.{i + 1}/24"])
        hub.peers.append(sp.peer_block(None, [f"10.58.0.{i + 1}/32"], name=f"sp{i}"))
        sp.peers.append(
            hub.peer_block(f"{net}.1:51820", ["10.58.0.1/32"], name="hub", keepalive=5)
        )
        sp.extra = segment("lan", 9, lab.ifname("l"), "br0")
        sites.append(sp)
    hub.extra = f"[Segment lan]\nVNI = 9\nDevice = {lab.ifname('l')}\nHub = yes\n"
    for s in (hub, *sites):
        start(lab, s, log_level="info")
    assert lab.ping(h1, "192.168.57.2") and lab.ping(h3, "192.168.57.1")
    size = 32 << 20
    timed_transfer(lab, h1, h2, "192.168.57.2", 1 << 20)  # warm-up: ARP, FDBs, TCP
    quiet_runs = [timed_transfer(lab, h1, h2, "192.168.57.2", size) for _ in range(2)]

    rate = 7000
    flooder = subprocess.Popen(
        ["ip", "netns", "exec", h3, sys.executable, "-c", FLOODER, str(rate), "600"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(3)  # the hub's table (or sp3's quota) is full by now
        cpu0, t0, refused0 = cpu_seconds(hub.proc.pid), time.monotonic(), hub_refused(hub)
        flooded_runs = [timed_transfer(lab, h1, h2, "192.168.57.2", size) for _ in range(2)]
        cpu1, t1 = cpu_seconds(hub.proc.pid), time.monotonic()
        doc = show_json(hub.ifname)
    finally:
        flooder.kill()
        flooder.wait()
    (seg,) = doc["segments"]
    by_peer = Counter(e["peer"] for e in seg["fdb"] if not e["static"])
    drops = doc.get("drops", {})
    mib = size / (1 << 20)
    quiet, flooded = max(quiet_runs), max(flooded_runs)  # the slower of each: no lucky run
    print(
        f"\nhonest TCP h1 -> h2 through the hub, {mib:.0f} MiB (the slower of 2 runs): quiet "
        f"{quiet:.2f} s ({mib / quiet:.1f} MiB/s), with {rate} random-MAC frames/s from sp3's "
        f"side {flooded:.2f} s ({mib / flooded:.1f} MiB/s) [runs {quiet_runs} {flooded_runs}]; "
        f"meanwhile the hub refused {(seg['fdb_refused'] - refused0) / (t1 - t0):.0f} flood "
        f"frames/s using {(cpu1 - cpu0) / (t1 - t0):.2f} CPU-s/s; hub FDB {seg['fdb_size']} "
        f"entries {dict(by_peer)}, refused {seg['fdb_refused']}, drops {drops}"
    )
    assert seg["fdb_refused"] > 10_000  # the flood arrived and was refused
    assert drops.get("mac_quota", 0) > 10_000
    assert by_peer["sp3"] <= 4096 // 3 and by_peer["sp1"] >= 1 and by_peer["sp2"] >= 1
    assert quiet < 30, lab.notes
    # nearly full speed: the flood's own decryption shares these 2 cores (64-121 % measured)
    assert flooded < 2 * quiet + 1, lab.notes

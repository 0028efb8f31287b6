"""The Linux kernel's WireGuard selftest (tools/testing/selftests/wireguard/netns.sh) and the
wireguard.com/netns recipe, run against ``tunnelpyd IFNAME``.

The topology is netns.sh's (tests/harness/selftest.py draws it): both daemons start in ns0
with wireguard-go's command line, are configured with ``wg set`` alone, and their TUNs are
moved into ns1 and ns2 with ``ip link set IF netns …``; the encrypted packets cross ns0's
loopback (127.0.0.1 or [::1]), the plaintext lives in ns1 and ns2. The NAT scenario changes the
topology as netns.sh does: ns1 behind a router namespace doing SNAT, ns2 on the far side.

netns.sh's exact numbers are kept where they are about the protocol (10 pings after a fresh
handshake are 1372 bytes in, 1428 or 1460 out, on both sides). Its parts that need a kernel
device are left out: the route-MTU padding check (a TUN does not tell a userspace daemon the
route's MTU; wireguard-go pads to the device MTU too), routing wg through wg, and the netlink
split-response and kmemleak checks.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import time

import pytest

from tests.harness.netns import WG_RUN_DIR, Adopted, Lab, WgPeer, genkey, leaks, pubkey
from tests.harness.selftest import (
    PORTS,
    TUNNELPYD_IF,
    V4,
    V6,
    Iface,
    Selftest,
    catches,
    command_env,
    read_within,
    uapi_pid,
)

pytestmark = pytest.mark.root

JUMBO = 34816
DEFAULT_MTU = 1420
UDP_RATE = "100M"  # iperf3 -u -b: netns.sh's -b 0 only measures how much a flood loses


def need(*tools: str) -> None:
    """These scenarios need the tools .ci/setup installs: a failure in CI, a skip elsewhere."""
    missing = [t for t in tools if shutil.which(t) is None]
    if not missing:
        return
    msg = f"needs {', '.join(missing)} (.ci/setup installs them)"
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


@pytest.fixture
def st(make_lab) -> Selftest:
    # The lab stops the adopted background daemons (SIGTERM, then SIGKILL) before it deletes
    # the namespaces, and removes every socket of the names it handed out: also on failure.
    return Selftest(make_lab(3))


def wait_mtu(st: Selftest, iface: Iface, mtu: int) -> None:
    """The daemon learns the TUN's MTU by rtnetlink in the TUN's namespace: wait for it."""
    st.lab.wait_for(
        lambda: st.show_json(iface).get("mtu") == mtu, 5,
        f"{iface.ifname} to report mtu {mtu}",
    )  # fmt: skip


def exits_within(daemon: Adopted, seconds: float, t0: float) -> float:
    """Seconds from `t0` until the adopted `daemon` exited (fails past `seconds`)."""
    assert daemon.wait(max(0.0, t0 + seconds - time.monotonic())), (
        f"pid {daemon.pid} still running {seconds} s later:\n{daemon.log(20)}"
    )
    return time.monotonic() - t0


# ----------------------------------------------------------------------------- 1. traffic --


def traffic_suite(st: Selftest, a: Iface, b: Iface, mtu: int) -> list[str]:
    """netns.sh's tests(): flood pings v4/v6 both ways, iperf3 TCP and UDP both ways (each
    family one way round, as netns.sh does), plus a hash-checked TCP transfer both ways."""
    n1, n2 = a.ns, b.ns
    figures = []
    st.flood_ping(n2, V4[0])
    st.flood_ping(n1, V4[1])
    st.flood_ping(n2, V6[0])
    st.flood_ping(n1, V6[1])
    for server, client, addr in ((n2, n1, V4[1]), (n1, n2, V6[0])):
        end = st.iperf3(server, client, addr)
        got = end["sum_received"]["bytes"]
        assert got >= 1 << 20, f"TCP {client} -> {addr} at MTU {mtu}: only {got} bytes"
        figures.append(f"TCP ->{addr} {end['sum_received']['bits_per_second'] / 1e6:.0f} Mbit/s")
    for server, client, addr in ((n1, n2, V4[0]), (n2, n1, V6[1])):
        end = st.iperf3(server, client, addr, udp=True, bitrate=UDP_RATE)
        s = end["sum"]
        assert s["packets"] >= 100 and s["lost_percent"] < 20, (
            f"UDP {client} -> {addr} at MTU {mtu}: {s['packets']} sent, {s['lost_percent']:.1f}% lost"
        )
        figures.append(f"UDP ->{addr} {s['lost_percent']:.2f}% lost of {s['packets']}")
    assert st.lab.tcp_transfer(n1, n2, V4[1], 2 << 20), st.lab.notes
    assert st.lab.tcp_transfer(n2, n1, V6[0], 2 << 20), st.lab.notes
    return figures


@pytest.mark.parametrize("outer", ["v4", "v6"])
def test_traffic_at_default_and_jumbo_mtu(st, outer):
    need("iperf3")
    a, b = st.pair(v6=outer == "v6")
    lo = "[::1]" if outer == "v6" else "127.0.0.1"
    assert st.mtu(a) == st.mtu(b) == DEFAULT_MTU
    wait_mtu(st, a, DEFAULT_MTU)
    figures = traffic_suite(st, a, b, DEFAULT_MTU)

    # netns.sh: `ip link set wg0 mtu $big_mtu` in ns1 and ns2, after the move.
    for iface in (a, b):
        st.lab.host("ip", "-n", iface.ns, "link", "set", iface.ifname, "mtu", str(JUMBO))
    for iface in (a, b):
        wait_mtu(st, iface, JUMBO)  # followed by rtnetlink in ns1/ns2, the daemon is in ns0
    for ns, addr in ((b.ns, V4[0]), (a.ns, V4[1]), (b.ns, V6[0]), (a.ns, V6[1])):
        st.flood_ping(ns, addr, count=3, size=30000, dont_fragment=True)
    figures += traffic_suite(st, a, b, JUMBO)

    for iface in (a, b):
        st.lab.host("ip", "-n", iface.ns, "link", "set", iface.ifname, "mtu", str(DEFAULT_MTU))
    for iface in (a, b):
        wait_mtu(st, iface, DEFAULT_MTU)
    st.flood_ping(b.ns, V4[0])
    # The tunnel really ran over the outer family asked for, from both sides.
    assert st.endpoints(a) == {b.public_key: f"{lo}:{b.port}"}
    assert st.endpoints(b) == {a.public_key: f"{lo}:{a.port}"}
    print(f"outer {outer}: " + "; ".join(figures))


# ---------------------------------------------------------------------------- 2. counters --


def test_counters_in_ip_stats_and_wg_transfer(st):
    a, b = st.pair()
    before = {i.ifname: st.link_stats(i) for i in (a, b)}
    assert all(s["rx_packets"] == 0 for s in before.values()), before  # nothing came in yet

    # netns.sh: right after configuring, 10 flood pings ns2 -> ns1 over a fresh handshake.
    st.flood_ping(b.ns, V4[0], count=10, deadline=None)
    # wg show transfer counts wire bytes: ns2 took the response (92) and 10 replies
    # (84 padded to 96, + 32) = 1372, and sent the initiation (148) and 10 requests = 1428
    # (1460 with a keepalive); ns1 the mirror image.
    rx2, tx2 = st.transfer(b)[a.public_key]
    rx1, tx1 = st.transfer(a)[b.public_key]
    assert rx2 == 1372 and tx2 in (1428, 1460), (rx2, tx2)
    assert tx1 == 1372 and rx1 in (1428, 1460), (rx1, tx1)
    assert int(st.wg(a.ns, "show", a.ifname, "latest-handshakes").split()[1]) != 0

    # The TUNs' kernel counters: each daemon wrote exactly the 10 packets of 84 bytes its peer
    # sent; the stack handed each at least its 10 packets (plus IPv6 MLD/RS noise that no peer
    # routes, which the daemon counts apart from drops, as unrouted tun_multicast).
    for iface in (a, b):
        s = st.link_stats(iface)
        doc = st.show_json(iface)
        noise = doc["drops"].get("tun_no_route", 0) + doc.get("unrouted", {}).get("tun_multicast", 0)
        assert (s["rx_packets"], s["rx_bytes"]) == (10, 840), (iface.ifname, s)
        assert 10 <= s["tx_packets"] <= 10 + noise, (iface.ifname, s, noise)
        assert s["rx_dropped"] == s["tx_dropped"] == 0, s

    # The counters grow with bulk traffic, both ways, on both TUNs and in wg show transfer.
    mid = {i.ifname: (st.link_stats(i), st.transfer(i)) for i in (a, b)}
    assert st.lab.tcp_transfer(a.ns, b.ns, V4[1], 1 << 20), st.lab.notes
    assert st.lab.tcp_transfer(b.ns, a.ns, V6[0], 1 << 20), st.lab.notes
    for me, other in ((a, b), (b, a)):
        s0, t0 = mid[me.ifname]
        s1, t1 = st.link_stats(me), st.transfer(me)
        for k in ("rx_bytes", "tx_bytes"):
            assert s1[k] - s0[k] >= 1 << 20, (me.ifname, k, s0[k], s1[k])
        for k in ("rx_packets", "tx_packets"):
            assert s1[k] > s0[k], (me.ifname, k, s0[k], s1[k])
        (rx0, tx0), (rx1, tx1) = t0[other.public_key], t1[other.public_key]
        assert rx1 - rx0 >= 1 << 20 and tx1 - tx0 >= 1 << 20, (me.ifname, t0, t1)


# ----------------------------------------------------------------------------- 3. roaming --


def test_roaming_follows_listen_port_and_loopback_address(st):
    a, b = st.pair()
    n0, n1 = st.ns0, a.ns
    st.flood_ping(n1, V4[1])
    assert st.endpoints(b) == {a.public_key: f"127.0.0.1:{a.port}"}

    # The listen port changes on one side only: the other side's endpoint follows the traffic.
    st.wg(n1, "set", a.ifname, "listen-port", "9999")
    assert st.wg(n1, "show", a.ifname, "listen-port").strip() == "9999"
    st.flood_ping(n1, V6[1], count=1)
    assert st.endpoints(b) == {a.public_key: "127.0.0.1:9999"}

    # ns0's loopback address changes (netns.sh: 127.0.0.1 -> 127.212.121.99): packets now
    # leave from the new address, and the far side follows.
    st.lab.host("ip", "-n", n0, "-4", "addr", "del", "127.0.0.1/8", "dev", "lo")
    st.lab.host("ip", "-n", n0, "-4", "addr", "add", "127.212.121.99/8", "dev", "lo")
    st.flood_ping(n1, V6[1], count=1)
    assert st.endpoints(b) == {a.public_key: "127.212.121.99:9999"}
    # netns.sh's version: the endpoint set again after the change
    st.wg(n1, "set", a.ifname, "peer", b.public_key, "endpoint", f"127.0.0.1:{b.port}")
    st.flood_ping(n1, V6[1], count=1)
    assert st.endpoints(b) == {a.public_key: "127.212.121.99:9999"}

    # Over IPv6 (netns.sh: listen-port 9998, endpoint [::1]:2).
    st.wg(n1, "set", a.ifname, "listen-port", "9998")
    st.wg(n1, "set", a.ifname, "peer", b.public_key, "endpoint", f"[::1]:{b.port}")
    st.flood_ping(n1, V4[1], count=1)
    assert st.endpoints(b) == {a.public_key: "[::1]:9998"}
    # and the roamed-to endpoint carries traffic started from the far side
    st.flood_ping(b.ns, V4[0])


# ------------------------------------------------------------------------ 4. crypto-RP --


def test_cryptokey_routing_and_source_filter(st):
    need("ncat")
    a, b = st.pair()
    n1, n2 = a.ns, b.ns
    st.flood_ping(n1, V4[1])

    # netns.sh: widen ns2's allowed IPs on ns1, a datagram from ns2 arrives.
    st.wg(n1, "set", a.ifname, "peer", b.public_key, "allowed-ips", "192.168.241.0/24")
    nc = st.udp_listener(n1, 1111)
    try:
        st.udp_send(n2, V4[0], 1111, b"X\n")
        assert read_within(nc, 1, 2) == b"X"
    finally:
        nc.kill()
        nc.wait()

    # A third peer with the more specific 192.168.241.2/32: ns2's packets (source
    # 192.168.241.2) no longer belong to ns2's peer on ns1, so they are dropped.
    more_specific = pubkey(genkey())
    st.wg(n1, "set", a.ifname, "peer", more_specific, "allowed-ips", "192.168.241.2/32")
    st.wg(n2, "set", b.ifname, "listen-port", "9997")
    before = st.show_json(a)
    nc = st.udp_listener(n1, 1111)
    try:
        st.udp_send(n2, V4[0], 1111, b"X\n")
        assert read_within(nc, 1, 1.5) == b"", "a packet from outside its peer's allowed-ips"
    finally:
        nc.kill()
        nc.wait()
    after = st.show_json(a)
    dropped = [d["drops"].get("not_allowed_source", 0) for d in (before, after)]
    assert dropped[1] - dropped[0] == 1, (before["drops"], after["drops"])
    peers = {p["public_key"]: p for p in after["peers"]}
    assert peers[b.public_key]["drops"].get("not_allowed_source") == 1, peers[b.public_key]
    # The packet was authentic, so its sender's new endpoint was still learnt (netns.sh).
    assert peers[b.public_key]["endpoint"] == "127.0.0.1:9997"

    # Outbound, the more specific peer takes the traffic for 192.168.241.2: it has no endpoint,
    # so nothing reaches ns2.
    b_rx = st.link_stats(b)["rx_packets"]
    res = st.lab.run(n1, "ping", "-n", "-c", "2", "-i", "0.2", "-W", "1", V4[1], check=False)
    assert res.returncode != 0, res.stdout
    assert st.link_stats(b)["rx_packets"] == b_rx
    peers = {p["public_key"]: p for p in st.show_json(a)["peers"]}
    assert peers[more_specific]["drops"].get("no_endpoint", 0) >= 2, peers[more_specific]

    st.wg(n1, "set", a.ifname, "peer", more_specific, "remove")
    assert st.endpoints(a) == {b.public_key: "127.0.0.1:9997"}
    st.flood_ping(n1, V4[1])
    st.flood_ping(n2, V4[0])


# --------------------------------------------------------------------------------- 5. NAT --


def test_nat_persistent_keepalive_lets_the_far_side_send_first(st):
    """netns.sh's NAT part: ns1 behind ns0, which SNATs 192.168.1.0/24 to 10.0.0.1 with UDP
    conntrack timeouts of 2 s; ns2 on 10.0.0.100. Here each daemon runs in its own site's
    namespace (netns.sh creates these wg0s in ns1 and ns2 directly)."""
    need("iptables")
    lab = st.lab
    n0, n1, n2 = lab.ns
    a, b = (
        Iface(name, genkey(), port, ns, st.start(ns, name))
        for ns, port, name in ((n1, PORTS[0], lab.ifname("wg")), (n2, PORTS[1], lab.ifname("wg")))
    )
    for me, other, i in ((a, b, 1), (b, a, 0)):
        key = lab.write_file(f"{me.ifname}.key", me.private_key + "\n")
        lab.wg_set(
            me.ns, me.ifname,
            WgPeer(other.public_key, preshared_key=st.psk,
                   allowed_ips=[f"{V4[i]}/32", f"{V6[i]}/128"]),
            private_key=key, listen_port=me.port,
        )  # fmt: skip
        lab.add_addresses(me.ns, me.ifname, [f"{V4[1 - i]}/24", f"{V6[1 - i]}/112"])
        lab.host("ip", "-n", me.ns, "link", "set", me.ifname, "up")
    lab.veth(n0, n1, "192.168.1.1/24", "192.168.1.100/24")
    lab.veth(n0, n2, "10.0.0.1/24", "10.0.0.100/24")
    lab.host("ip", "-n", n1, "route", "add", "default", "via", "192.168.1.1")
    lab.run(n0, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    lab.run(n0, "iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "192.168.1.0/24",
            "-d", "10.0.0.0/24", "-j", "SNAT", "--to", "10.0.0.1")  # fmt: skip
    # conntrack exists in ns0 now (the nat rule loaded it); its sysctls are per namespace
    lab.run(n0, "sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=2",
            "net.netfilter.nf_conntrack_udp_timeout_stream=2")  # fmt: skip
    assert st.endpoints(b) == {a.public_key: "(none)"}

    # Only ns1 knows an endpoint. Setting persistent-keepalive sends at once (a handshake),
    # no data needed: ns2 learns ns1's NATed address.
    st.wg(n1, "set", a.ifname, "peer", b.public_key, "endpoint", f"10.0.0.100:{b.port}",
          "persistent-keepalive", "1")  # fmt: skip
    lab.wait_for(
        lambda: st.endpoints(b) == {a.public_key: f"10.0.0.1:{a.port}"}, 5,
        "ns2 to learn ns1's NATed endpoint 10.0.0.1",
    )  # fmt: skip
    # Longer than the conntrack timeout: only the keepalives hold the mapping open.
    rx0 = st.transfer(b)[a.public_key][0]
    time.sleep(3)
    rx1 = st.transfer(b)[a.public_key][0]
    assert rx1 - rx0 >= 2 * 32, f"keepalives: {rx1 - rx0} bytes in 3 s"
    assert st.link_stats(a)["rx_packets"] == 0  # no data has crossed yet in either direction
    st.flood_ping(n2, V4[0], count=3)  # the far side sends first
    st.flood_ping(n2, V6[0], count=3)

    # Control: without the keepalive the mapping expires and the far side cannot reach ns1,
    # so the above really depended on it.
    st.wg(n1, "set", a.ifname, "peer", b.public_key, "persistent-keepalive", "0")
    time.sleep(3.5)
    res = lab.run(n2, "ping", "-n", "-c", "1", "-W", "2", V4[0], check=False)
    assert res.returncode != 0, "reached ns1 through an expired NAT mapping?"


# ------------------------------------------------------------------ 6. delete and recreate --


def test_delete_and_recreate_the_same_name_at_once(st):
    a, b = st.pair()
    st.flood_ping(a.ns, V4[1], count=3)
    old = a.daemon
    log = st.lab.workdir / f"tunnelpyd-{a.ifname}-second.log"
    t0 = time.monotonic()
    st.lab.host("ip", "-n", a.ns, "link", "del", a.ifname)  # the TUN is in ns1
    with open(log, "ab") as out:
        second = subprocess.Popen(
            ["ip", "netns", "exec", st.ns0, *TUNNELPYD_IF, a.ifname], stdout=out, stderr=out,
            stdin=subprocess.DEVNULL, env=command_env({"LOG_LEVEL": "verbose"}),
        )  # fmt: skip
    try:
        took = exits_within(old, 5.0, t0)
        rc = second.wait(30)
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
    new = st.adopt(st.ns0, a.ifname, log) if rc == 0 else None
    print(f"old daemon exited {took * 1000:.0f} ms after ip link del; second start exit {rc}")
    assert "was deleted; shutting down" in old.log(20)
    assert rc == 0, log.read_text()
    assert new is not None and new.pid != old.pid and new.alive
    # A fresh, empty interface in the daemon's namespace, nothing of the old one.
    assert st.lab.link_exists(st.ns0, a.ifname) and not st.lab.link_exists(a.ns, a.ifname)
    assert st.wg(st.ns0, "show", a.ifname, "private-key").strip() == "(none)"
    assert st.wg(st.ns0, "show", a.ifname, "peers").strip() == ""
    assert b.daemon.alive
    assert took < 1.0, f"the old daemon took {took:.2f} s to let go of {a.ifname}"


# --------------------------------------------------------------- 7. socket removed, link deleted --


def test_socket_removal_and_link_deletion_end_the_daemon(st):
    a, b = st.pair()
    st.flood_ping(a.ns, V4[1], count=3)

    # wg-quick down for a userspace interface: delete its UAPI socket. The daemon (in ns0)
    # removes its TUN (in ns1) and exits.
    t0 = time.monotonic()
    (WG_RUN_DIR / f"{a.ifname}.sock").unlink()
    took_sock = exits_within(a.daemon, 5.0, t0)
    assert not st.lab.link_exists(a.ns, a.ifname)
    assert not st.lab.link_exists(st.ns0, a.ifname)
    assert "UAPI socket" in a.daemon.log(20)

    # ip link del on the TUN in ns2: the daemon in ns0 exits and removes its socket.
    t0 = time.monotonic()
    st.lab.host("ip", "-n", b.ns, "link", "del", b.ifname)
    took_del = exits_within(b.daemon, 5.0, t0)
    assert not (WG_RUN_DIR / f"{b.ifname}.sock").exists()
    assert not os.path.exists(f"/run/tunnelpy/{b.ifname}.ctl")
    assert "was deleted; shutting down" in b.daemon.log(20)
    print(f"exit after socket removal {took_sock * 1000:.0f} ms, "
          f"after ip link del {took_del * 1000:.0f} ms")  # fmt: skip
    assert took_sock < 1.0, f"{took_sock:.2f} s after the socket was removed"
    assert took_del < 1.0, f"{took_del:.2f} s after ip link del"


# ------------------------------------------------------------------- 8. the background start --


def state(st: Selftest, ifname: str) -> tuple[object, ...]:
    """What a failed second start must leave alone: who serves the socket, its inode, what wg
    shows, where the link is, and which processes live in ns0."""
    sock = os.lstat(WG_RUN_DIR / f"{ifname}.sock")
    where = tuple(ns for ns in st.lab.ns if st.lab.link_exists(ns, ifname))
    pids = st.lab.host("ip", "netns", "pids", st.ns0).stdout.split()
    return (uapi_pid(ifname), sock.st_ino, st.wg(st.ns0, "show", ifname, "dump"), where,
            sorted(pids))  # fmt: skip


def test_background_start_taken_name_and_log_level(st):
    lab, n0 = st.lab, st.ns0

    # `tunnelpyd IF` returns 0 once ready, with nothing on its output (LOG_LEVEL unset:
    # error, and the child's output is /dev/null, so a captured pipe closes at once) ...
    name = lab.ifname("wg")
    t0 = time.monotonic()
    res = st.run_tunnelpyd(n0, name)
    took = time.monotonic() - t0
    assert res.returncode == 0, res.stderr
    assert (res.stdout, res.stderr) == ("", "")
    daemon = st.adopt(n0, name)
    # ... and wg answers right away: an empty interface, random port, MTU 1420.
    out = st.wg(n0, "show", name, "dump").splitlines()
    priv, pub, port, fwmark = out[0].split("\t")
    assert (priv, pub, fwmark) == ("(none)", "(none)", "off") and int(port) > 0
    assert len(out) == 1  # no peers
    assert st.mtu(Iface(name, "", 0, n0, daemon)) == DEFAULT_MTU
    print(f"tunnelpyd {name} returned ready in {took:.2f} s")

    # A second start for the taken name: exit 1, one line on stderr, nothing changed. Both
    # while the TUN is in ns0 (the name is taken there) and after it moved to ns1 (the name
    # is free in ns0, but the UAPI socket is live).
    for moved in (False, True):
        if moved:
            lab.host("ip", "-n", n0, "link", "set", name, "netns", st.ns1)
        before = state(st, name)
        for env in ({}, {"LOG_LEVEL": "silent"}):
            res = st.run_tunnelpyd(n0, name, env=env)
            assert res.returncode == 1, (moved, env, res)
            lines = res.stderr.splitlines()
            assert len(lines) == 1 and lines[0].startswith("tunnelpyd: ") and name in lines[0], (
                moved, env, res.stderr,
            )  # fmt: skip
            assert res.stdout == ""
            assert state(st, name) == before, (moved, env)
        assert daemon.alive

    # LOG_LEVEL=verbose in the background: the daemon keeps the starter's output (here a
    # file) and logs there after the starter returned.
    name2 = lab.ifname("wg")
    d2 = st.start(n0, name2)
    assert f"{name2} up: listening on UDP" in d2.log()
    assert d2.stop() and "shutting down" in d2.log(5)  # written by the daemon alone
    assert not (WG_RUN_DIR / f"{name2}.sock").exists() and not lab.link_exists(n0, name2)

    # -f (and WG_PROCESS_FOREGROUND=1) stays in the foreground: the process started serves
    # the socket itself; LOG_LEVEL decides what it prints; SIGTERM ends it cleanly.
    cases = [
        (["-f"], {"LOG_LEVEL": "verbose"}, True),
        (["-f"], {"LOG_LEVEL": "silent"}, False),
        ([], {"WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "silent"}, False),
        (["--foreground"], {}, False),  # LOG_LEVEL unset: errors only, and none happen
    ]
    for args, env, logs in cases:
        n = lab.ifname("wg")
        proc = lab.popen(n0, *TUNNELPYD_IF, *args, n, env=command_env(env))
        lab.wait_for(lambda n=n: uapi_pid(n) is not None, 15, f"{n} serving", watch=[proc])
        assert uapi_pid(n) == proc.pid, (args, env)
        # (SIGTERM only once it is handled: see selftest.catches)
        lab.wait_for(lambda p=proc.pid: catches(p, signal.SIGTERM), 5, "a SIGTERM handler")
        assert proc.stop() == 0, proc.log()
        assert not (WG_RUN_DIR / f"{n}.sock").exists() and not lab.link_exists(n0, n)
        text = proc.log_path.read_text()
        if logs:
            assert f"{n} up: listening on UDP" in text and "shutting down" in text, text
        else:
            assert text == "", (args, env, text)


# ---------------------------------------------------------------- the harness's own cleanup --


def test_lab_close_stops_background_daemons(make_lab):
    """Adopted daemons get SIGTERM (their own teardown removes the socket); one the test never
    adopted dies in the namespace sweep, and the lab removes its socket."""
    lab: Lab = make_lab(3)
    st = Selftest(lab)
    adopted = st.start(st.ns0, lab.ifname("wg"))
    stray_name = lab.ifname("wg")
    res = st.run_tunnelpyd(st.ns1, stray_name)
    assert res.returncode == 0, res.stderr
    stray_pid = uapi_pid(stray_name)
    assert stray_pid is not None
    # our own handles: the lab closes its pidfds
    fds = [os.pidfd_open(adopted.pid), os.pidfd_open(stray_pid)]
    try:
        lab.close()
        for fd, who in zip(fds, ("the adopted daemon", "the un-adopted daemon"), strict=True):
            assert select.select([fd], [], [], 5)[0], f"{who} survived the lab"
    finally:
        for fd in fds:
            os.close(fd)
    assert "shutting down" in adopted.log(5)  # SIGTERM: it ran its own teardown
    assert not (WG_RUN_DIR / f"{stray_name}.sock").exists()
    assert not [x for x in leaks() if lab.tag in x], leaks()

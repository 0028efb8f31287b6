"""tunnelpyd as a service, with real daemons in network namespaces: sd_notify (READY only once
the interface is configured, STATUS, WATCHDOG from the loop, RELOADING, STOPPING), live reload
(add, change, remove a peer, a broken file) that leaves untouched sessions alone — checked with
`wg show latest-handshakes` —, `tunnelpy show [--json]` through the control socket, Prometheus
metrics scraped over HTTP inside a namespace, and the drop to an unprivileged User that keeps
CAP_NET_ADMIN."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.harness import sites
from tests.harness.netns import WG_RUN_DIR, Lab, WgPeer, genkey, pubkey, wait_for
from tests.harness.sites import Site, new_site

pytestmark = pytest.mark.root

CONTROL_DIR = Path("/run/tunnelpy")
TUNNELPY = [sys.executable, "-c", "import sys; from tunnelpy.cli import main; sys.exit(main())"]


def start(
    lab: Lab, site: Site, *, env: dict[str, str] | None = None, conf_dir: Path | None = None
) -> None:
    """sites.start with an environment (NOTIFY_SOCKET…) and an optional config directory."""
    if conf_dir is None:
        site.conf = lab.write_file(f"{site.ifname}.conf", site.text())
    else:
        site.conf = conf_dir / f"{site.ifname}.conf"
        site.conf.write_text(site.text())
        site.conf.chmod(0o600)
    site.proc = lab.popen(
        site.ns, *sites.TUNNELPYD, "-c", str(site.conf), "--log-level", "debug",
        log_path=lab.workdir / f"tunnelpyd-{site.ifname}.log", env=env,
    )  # fmt: skip
    lab.wait_for(
        lambda: (CONTROL_DIR / f"{site.ifname}.ctl").exists()
        and (WG_RUN_DIR / f"{site.ifname}.sock").exists(),
        15, f"tunnelpyd {site.ifname} up", watch=[site.proc],
    )  # fmt: skip


def rewrite(site: Site) -> None:
    assert site.conf is not None
    site.conf.write_text(site.text())


def tunnelpy(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([*TUNNELPY, *args], capture_output=True, text=True, timeout=30)
    if check:
        assert res.returncode == 0, res.stderr
    return res


def show_json(name: str) -> dict:
    res = tunnelpy("show", name, "--json", check=True)
    (doc,) = json.loads(res.stdout)
    return doc


def log_has(site: Site, text: str) -> bool:
    assert site.proc is not None
    return text in site.proc.log(400)


@pytest.fixture
def cleanup_ctl():
    names: list[str] = []
    yield names
    for n in names:  # a daemon that dropped privileges cannot unlink its socket in /run/tunnelpy
        (CONTROL_DIR / f"{n}.ctl").unlink(missing_ok=True)
        (CONTROL_DIR / f"{n}.metrics").unlink(missing_ok=True)


# ---------------------------------------------------------------------------------- sd_notify --


def test_sd_notify_ready_status_watchdog_reload_stopping(lab):
    a_ns, b_ns = lab.ns
    lab.veth(a_ns, b_ns, "10.45.1.1/24", "10.45.1.2/24")
    a = new_site(lab, a_ns, 51820, ["10.44.0.1/24"])
    b = new_site(lab, b_ns, 51820, ["10.44.0.2/24"])
    a.peers.append(b.peer_block("10.45.1.2:51820", ["10.44.0.2/32"], name="site-b"))
    b.peers.append(a.peer_block("10.45.1.1:51820", ["10.44.0.1/32"], name="site-a"))
    sockdir = Path(tempfile.mkdtemp(prefix="tpn-"))  # short: sun_path holds 108 bytes
    path = sockdir / "notify"
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        rx.bind(str(path))
        rx.settimeout(15)
        # WATCHDOG_USEC of 0.4 s: the daemon must ping every 0.2 s from its loop. JOURNAL_STREAM
        # names the log file, as systemd names the journal stream: journald-style lines.
        log_path = lab.workdir / f"tunnelpyd-{a.ifname}.log"
        log_path.touch()
        st = log_path.stat()
        env = {
            "NOTIFY_SOCKET": str(path),
            "WATCHDOG_USEC": "400000",
            "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}",
            # the prefixed lines, not journald's native socket, even where journald runs
            # (the native protocol: tests/integration/test_logformat.py)
            "TUNNELPY_TEST_JOURNAL_SOCKET": "none",
        }
        start(lab, a, env=env)

        def next_msg() -> list[str]:
            return rx.recv(4096).decode().split("\n")

        first = next_msg()
        assert first[0] == "READY=1", first
        # READY=1 came only once the device is configured: address and route are there already
        assert "10.44.0.1/24" in lab.run(a_ns, "ip", "-br", "addr", "show", "dev", a.ifname).stdout
        flags = (
            lab.run(a_ns, "ip", "link", "show", "dev", a.ifname).stdout.split("<")[1].split(">")[0]
        )
        assert "UP" in flags.split(","), flags
        assert "10.44.0.2" in lab.run(a_ns, "ip", "route").stdout
        assert first[1].startswith("STATUS=") and "1 peer(s)" in first[1]
        t0, pings = time.monotonic(), 0
        while pings < 5:
            if next_msg() == ["WATCHDOG=1"]:
                pings += 1
        assert time.monotonic() - t0 < 3
        sites.start(lab, b)
        assert lab.ping(a_ns, "10.44.0.2")
        os.kill(a.proc.pid, signal.SIGHUP)
        seen: list[list[str]] = []
        while not (seen and seen[-1][0] == "READY=1"):
            m = next_msg()
            if m != ["WATCHDOG=1"]:
                seen.append(m)
        assert any(m[0] == "RELOADING=1" and m[1].startswith("MONOTONIC_USEC=") for m in seen), seen
        assert a.proc.stop() == 0
        rest = []
        rx.settimeout(1)
        try:
            while True:
                rest.append(next_msg())
        except TimeoutError:
            pass
        assert any(m[0] == "STOPPING=1" for m in rest), rest
        # the journal gets priority prefixes and no timestamps of ours
        lines = log_path.read_text().splitlines()
        assert lines and all(line[:3] in ("<7>", "<6>", "<5>", "<4>", "<3>") for line in lines), (
            lines
        )
        assert any(line.startswith(f"<6>{a.ifname} up: listening on UDP 51820") for line in lines)
    finally:
        rx.close()
        shutil.rmtree(sockdir, ignore_errors=True)


# ------------------------------------------------------------------------------------ reload --


def test_reload_add_change_remove_broken_keeps_untouched_sessions(make_lab):
    lab = make_lab(3)
    a_ns, b_ns, c_ns = lab.ns
    lab.veth(a_ns, b_ns, "10.41.1.1/24", "10.41.1.2/24")
    lab.veth(a_ns, c_ns, "10.41.2.1/24", "10.41.2.3/24")
    a = new_site(lab, a_ns, 51820, ["10.40.0.1/24"])
    b = new_site(lab, b_ns, 51820, ["10.40.0.2/24"])
    c = new_site(lab, c_ns, 51820, ["10.40.0.3/24"])
    b_block = b.peer_block("10.41.1.2:51820", ["10.40.0.2/32"], name="site-b")
    a.peers.append(b_block)
    b.peers.append(a.peer_block("10.41.1.1:51820", ["10.40.0.1/32"], name="site-a"))
    c.peers.append(a.peer_block("10.41.2.1:51820", ["10.40.0.1/32"], name="site-a"))
    for s in (a, b, c):
        start(lab, s)
    assert lab.ping(a_ns, "10.40.0.2")

    def hs_ab() -> tuple[int, int]:
        return (
            lab.latest_handshakes(a_ns, a.ifname)[b.public_key],
            lab.latest_handshakes(b_ns, b.ifname)[a.public_key],
        )

    before = hs_ab()
    assert all(before)
    time.sleep(1.1)  # wg shows whole seconds: a new handshake would now show a later time

    # 1. a broken file is refused as a whole; the daemon keeps the old config
    a.peers.append("[Peer]\nName = bad\nPublicKey = notakey\nAllowedIPs = 10.0.0.0/33\n")
    rewrite(a)
    res = tunnelpy("reload", a.ifname)
    assert res.returncode == 1
    assert f"{a.conf}:" in res.stderr and "PublicKey" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert a.proc.alive and log_has(a, "reload refused, keeping the running config")
    a.peers.pop()

    # 2. add a peer (tunnelpy reload NAME): it works, B's session is untouched
    a.peers.append(c.peer_block(None, ["10.40.0.3/32"], name="site-c"))
    rewrite(a)
    res = tunnelpy("reload", a.ifname, check=True)
    assert "add peer site-c" in res.stdout
    assert lab.ping(c_ns, "10.40.0.1")
    assert lab.ping(a_ns, "10.40.0.2")
    hs_c = lab.latest_handshakes(a_ns, a.ifname)[c.public_key]
    assert hs_c

    # 3. change that peer (SIGHUP): AllowedIPs and keepalive updated, its session kept too
    a.peers[-1] = c.peer_block(None, ["10.40.0.3/32", "10.42.0.0/24"], name="site-c", keepalive=5)
    rewrite(a)
    os.kill(a.proc.pid, signal.SIGHUP)
    lab.wait_for(
        lambda: log_has(a, "update peer site-c: allowed_ips, persistent_keepalive"),
        10, "reload after SIGHUP", watch=[a.proc],
    )  # fmt: skip
    assert "10.42.0.0/24 dev " + a.ifname in lab.run(a_ns, "ip", "route").stdout
    assert "10.42.0.0/24" in lab.wg_show(a_ns, a.ifname, "allowed-ips")
    assert lab.wg_show(a_ns, a.ifname, "persistent-keepalive").count("\t5") == 1
    assert lab.latest_handshakes(a_ns, a.ifname)[c.public_key] == hs_c

    doc = show_json(a.ifname)
    assert doc["source"] == "tunnelpyd" and doc["reloads"] == {"ok": 2, "error": 1}
    assert {p["name"] for p in doc["peers"]} == {"site-b", "site-c"}

    # 4. remove it again: peer, routes and allowed IPs gone
    a.peers.pop()
    rewrite(a)
    res = tunnelpy("reload", a.ifname, check=True)
    assert "remove peer site-c" in res.stdout
    assert c.public_key not in lab.wg_show(a_ns, a.ifname, "peers")
    assert "10.42.0.0/24" not in lab.run(a_ns, "ip", "route").stdout

    # 5. an unchanged file: nothing happens
    assert "no changes" in tunnelpy("reload", a.ifname, check=True).stdout

    # through all of it, A and B kept the session of before: no new handshake on either side
    assert lab.ping(a_ns, "10.40.0.2")
    assert hs_ab() == before
    assert a.proc.alive


# --------------------------------------------------------------------------- show, metrics --


def test_show_and_metrics_over_http_in_a_namespace(lab):
    a_ns, b_ns = lab.ns
    lab.veth(a_ns, b_ns, "10.47.1.1/24", "10.47.1.2/24")
    a = new_site(lab, a_ns, 51820, ["10.46.0.1/24"])
    b = new_site(lab, b_ns, 51820, ["10.46.0.2/24"])
    a.extra = "MetricsListen = 9586\n"
    a.peers.append(b.peer_block("10.47.1.2:51820", ["10.46.0.2/32"], name="site-b"))
    b.peers.append(a.peer_block("10.47.1.1:51820", ["10.46.0.1/32"], name="site-a"))
    start(lab, a)
    start(lab, b)
    assert lab.ping(a_ns, "10.46.0.2")
    # junk from the underlay shows up as a drop by reason
    lab.run(b_ns, sys.executable, "-c",
            "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            "[s.sendto(b'\\x04' + bytes(40), ('10.47.1.1', 51820)) for _ in range(3)]")  # fmt: skip

    # tunnelpy show: the control socket's document, and every running tunnelpyd in the list
    doc = wait_for(
        lambda: (d := show_json(a.ifname))["drops"].get("unknown_index") and d, 5, "drops counted"
    )
    assert doc["peers"][0]["name"] == "site-b" and doc["peers"][0]["handshakes"] >= 1
    assert doc["metrics"] == "http://127.0.0.1:9586/metrics"
    listed = json.loads(tunnelpy("show", "--json", check=True).stdout)
    mine = {d["name"]: d for d in listed if d["name"] in (a.ifname, b.ifname)}
    assert set(mine) == {a.ifname, b.ifname}
    assert all(d["source"] == "tunnelpyd" for d in mine.values())
    text = tunnelpy("show", a.ifname, check=True).stdout
    assert f"interface: {a.ifname}  (tunnelpyd" in text and "site-b" in text and "ago" in text

    # metrics, scraped from inside A's namespace (the listener is on A's loopback only)
    scrape = lab.run(a_ns, sys.executable, "-c",
                     "import urllib.request; print(urllib.request.urlopen("
                     "'http://127.0.0.1:9586/metrics', timeout=5).read().decode())").stdout  # fmt: skip
    lines = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in scrape.splitlines()
        if line and not line.startswith("#")
    }
    lbl = f'interface="{a.ifname}",peer="site-b",public_key="{b.public_key}"'
    assert lines[f"tunnelpy_peer_handshakes_total{{{lbl}}}"] >= 1
    assert lines[f"tunnelpy_peer_receive_bytes_total{{{lbl}}}"] > 0
    assert 0 <= time.time() - lines[f"tunnelpy_peer_last_handshake_timestamp_seconds{{{lbl}}}"] < 60
    assert lines[f'tunnelpy_drops_total{{interface="{a.ifname}",reason="unknown_index"}}'] >= 3
    assert lines["process_cpu_seconds_total"] > 0
    # and it is not reachable from the other namespace
    res = lab.run(b_ns, sys.executable, "-c",
                  "import urllib.request; urllib.request.urlopen('http://10.47.1.1:9586/', timeout=2)",
                  check=False)  # fmt: skip
    assert res.returncode != 0


# ------------------------------------------------------------------------------- privileges --


def test_user_drop_keeps_only_net_admin(lab, cleanup_ctl):
    a_ns, b_ns = lab.ns
    lab.veth(a_ns, b_ns, "10.49.1.1/24", "10.49.1.2/24")
    a = new_site(lab, a_ns, 51820, ["10.48.0.1/24"])
    b = new_site(lab, b_ns, 51820, ["10.48.0.2/24"])
    metrics_path = CONTROL_DIR / f"{a.ifname}.metrics"
    a.extra = f"User = nobody\nMetricsListen = unix:{metrics_path}\n"
    a.peers.append(b.peer_block("10.49.1.2:51820", ["10.48.0.2/32"], name="site-b"))
    b.peers.append(a.peer_block("10.49.1.1:51820", ["10.48.0.1/32"], name="site-a"))
    cleanup_ctl.append(a.ifname)
    # The config stays root's (0600 in a 0700 directory nobody cannot even enter): reloads
    # after the drop go through the root config reader (tunnelpy/confreader.py).
    conf_dir = Path(tempfile.mkdtemp(prefix="tpu-"))
    try:
        conf_dir.chmod(0o700)
        start(lab, a, conf_dir=conf_dir)
        start(lab, b)
        assert lab.ping(a_ns, "10.48.0.2")
        status = Path(f"/proc/{a.proc.pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines())
        assert fields["Uid"].split() == ["65534"] * 4
        assert fields["Gid"].split() == ["65534"] * 4
        assert int(fields["CapEff"], 16) == 1 << 12  # CAP_NET_ADMIN only
        assert int(fields["CapBnd"], 16) == 1 << 12
        assert fields["NoNewPrivs"].strip() == "1" and fields["Groups"].strip() == ""
        assert log_has(a, "running as nobody")
        # the reader: uid 0 (the file's owner) with no capability at all
        kids = Path(f"/proc/{a.proc.pid}/task/{a.proc.pid}/children").read_text().split()
        readers = [
            k for k in kids if b"tunnelpy.confreader" in Path(f"/proc/{k}/cmdline").read_bytes()
        ]
        assert len(readers) == 1
        rs = dict(
            line.split(":", 1)
            for line in Path(f"/proc/{readers[0]}/status").read_text().splitlines()
        )
        assert rs["Uid"].split() == ["0"] * 4
        assert int(rs["CapEff"], 16) == 0 and int(rs["CapBnd"], 16) == 0
        assert rs["NoNewPrivs"].strip() == "1"
        # metrics after the drop: the interpreter's directories (under /root here) are not
        # readable by nobody, so a scrape that still had to import something would fail
        st = metrics_path.stat()
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_uid == 0 and st.st_gid == 65534
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(metrics_path))
            s.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
            reply = b""
            while chunk := s.recv(1 << 16):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 200 OK"), (reply[:200], a.proc.log(40))
        assert b'tunnelpy_peer_handshakes_total{interface="' + a.ifname.encode() in reply
        assert b"process_resident_memory_bytes" in reply
        assert show_json(a.ifname)["metrics"] == f"unix:{metrics_path}"
        # after the drop, a reload still changes routes (CAP_NET_ADMIN kept, in worker threads)
        a.peers[0] = b.peer_block(
            "10.49.1.2:51820", ["10.48.0.2/32", "10.50.0.0/24"], name="site-b"
        )
        rewrite(a)
        res = tunnelpy("reload", a.ifname, check=True)
        assert "update peer site-b: allowed_ips" in res.stdout
        assert "10.50.0.0/24 dev " + a.ifname in lab.run(a_ns, "ip", "route").stdout
        assert lab.ping(a_ns, "10.48.0.2")
        assert a.proc.stop() == 0
        assert not lab.link_exists(a_ns, a.ifname)
    finally:
        shutil.rmtree(conf_dir, ignore_errors=True)


def test_reload_adds_and_removes_a_segment(lab):
    a_ns, b_ns = lab.ns
    lab.veth(a_ns, b_ns, "10.53.1.1/24", "10.53.1.2/24")
    a = new_site(lab, a_ns, 51820, ["10.52.0.1/24"])
    b = new_site(lab, b_ns, 51820, ["10.52.0.2/24"])
    a.peers.append(b.peer_block("10.53.1.2:51820", ["10.52.0.2/32"], name="site-b"))
    b.peers.append(a.peer_block("10.53.1.1:51820", ["10.52.0.1/32"], name="site-a"))
    start(lab, a)
    start(lab, b)
    assert lab.ping(a_ns, "10.52.0.2")
    before = lab.latest_handshakes(a_ns, a.ifname)[b.public_key]
    time.sleep(1.1)
    ta, tb = lab.ifname("l"), lab.ifname("l")
    for site, dev, addr in ((a, ta, "192.168.53.1/24"), (b, tb, "192.168.53.2/24")):
        site.extra = f"[Segment lab]\nVNI = 100\nDevice = {dev}\nAddress = {addr}\n"
        rewrite(site)
        assert "add segment lab (VNI 100)" in tunnelpy("reload", site.ifname, check=True).stdout
    assert lab.link_exists(a_ns, ta) and lab.link_exists(b_ns, tb)
    assert lab.ping(a_ns, "192.168.53.2")  # L2 over the session that was already there
    seg = show_json(a.ifname)["segments"][0]
    assert seg["device"] == ta and seg["fdb_size"] >= 1
    a.extra = ""
    rewrite(a)
    assert "remove segment lab" in tunnelpy("reload", a.ifname, check=True).stdout
    assert not lab.link_exists(a_ns, ta)
    assert show_json(a.ifname)["segments"] == []
    assert lab.ping(a_ns, "10.52.0.2")
    assert lab.latest_handshakes(a_ns, a.ifname)[b.public_key] == before


@pytest.mark.interop
def test_show_lists_wireguard_go_through_the_uapi(lab):
    """`tunnelpy show` names a tunnelpyd and a wireguard-go interface side by side."""
    t_ns, w_ns = lab.ns
    lab.veth(t_ns, w_ns, "10.55.1.1/24", "10.55.1.2/24")
    site = new_site(lab, t_ns, 51820, ["10.54.0.1/24"])
    wkey = genkey()
    site.peers.append(
        f"[Peer]\nName = wggo\nPublicKey = {pubkey(wkey)}\nEndpoint = 10.55.1.2:51821\n"
        "AllowedIPs = 10.54.0.2/32\n"
    )
    start(lab, site)
    wg = lab.wggo(
        w_ns, lab.ifname("wg"), wkey, 51821, "10.54.0.2/24",
        WgPeer(site.public_key, allowed_ips=["10.54.0.1/32"]),
    )  # fmt: skip
    assert lab.ping(t_ns, "10.54.0.2")
    listed = json.loads(tunnelpy("show", "--json", check=True).stdout)
    mine = {d["name"]: d for d in listed if d["name"] in (site.ifname, wg.ifname)}
    assert mine[site.ifname]["source"] == "tunnelpyd"
    assert mine[site.ifname]["peers"][0]["name"] == "wggo"
    w = mine[wg.ifname]
    assert w["source"] == "uapi" and w["public_key"] == pubkey(wkey) and w["listen_port"] == 51821
    (p,) = w["peers"]
    assert p["public_key"] == site.public_key and p["name"] is None
    assert p["latest_handshake"] and p["rx_bytes"] > 0
    text = tunnelpy("show", wg.ifname, check=True).stdout
    assert f"interface: {wg.ifname}  (UAPI)" in text

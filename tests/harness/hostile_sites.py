"""Namespace topologies for the hostile tests: two tunnelpyd sites with the lossy relay between.

    ns A (site a) ── veth ── ns R (relay.py) ── veth ── ns B (site b)
      10.41.1.1                10.41.1.254 | 10.41.2.254              10.41.2.2

Site a's Endpoint for b is the relay's A-side address and site b's Endpoint for a is the relay's
B-side one, so every datagram crosses the relay; R does not forward IP, so there is no other
path. Tunnel addresses: a = 10.40.0.1, b = 10.40.0.2.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.harness.netns import Lab, Proc
from tests.harness.sites import Site, new_site, start

RELAY = str(Path(__file__).resolve().parent / "relay.py")  # run as a script in ns R
TA, TB = "10.40.0.1", "10.40.0.2"
UA, RA, RB, UB = "10.41.1.1", "10.41.1.254", "10.41.2.254", "10.41.2.2"
PORT = 51820


@dataclass
class Relayed:
    lab: Lab
    a: Site
    b: Site
    ns_r: str
    relay: Proc | None = None
    stats_path: Path | None = None
    control_path: Path | None = None

    def start_relay(self, seed: int = 1, **imp: float) -> Proc:
        self.stats_path = self.lab.workdir / "relay-stats.json"
        self.control_path = self.lab.workdir / "relay-control.json"
        args = [f"--{k.replace('_', '-')}={v}" for k, v in imp.items()]
        self.relay = self.lab.popen(
            self.ns_r, sys.executable, RELAY,
            "--a-side", f"{RA}:{PORT}", "--to-a", f"{UA}:{PORT}",
            "--b-side", f"{RB}:{PORT}", "--to-b", f"{UB}:{PORT}",
            f"--seed={seed}", "--stats", str(self.stats_path), "--control", str(self.control_path),
            *args, log_path=self.lab.workdir / "relay.log",
        )  # fmt: skip
        self.lab.wait_for(self.stats_path.exists, 10, "relay up", watch=[self.relay])
        return self.relay

    def set_impairment(self, **changes: float) -> None:
        """Change the running relay's impairments; returns once it has read them."""
        assert self.control_path is not None
        tmp = self.control_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(changes))
        tmp.rename(self.control_path)
        self.lab.wait_for(lambda: not self.control_path.exists(), 5, "relay took the change")
        time.sleep(0.6)  # and wrote stats with them

    def relay_stats(self) -> dict:
        """The relay's counters, fresh (it writes them every half second)."""
        assert self.stats_path is not None
        time.sleep(0.6)
        return json.loads(self.stats_path.read_text())


def relayed_sites(lab: Lab, *, keepalive: int | None = None, extra_b: str = "") -> Relayed:
    ns_a, ns_r, ns_b = lab.ns
    lab.veth(ns_a, ns_r, f"{UA}/24", f"{RA}/24")
    lab.veth(ns_r, ns_b, f"{RB}/24", f"{UB}/24")
    a = new_site(lab, ns_a, PORT, [f"{TA}/24"])
    b = new_site(lab, ns_b, PORT, [f"{TB}/24"])
    b.extra = extra_b
    a.peers.append(b.peer_block(f"{RA}:{PORT}", [f"{TB}/32"], name="site-b", keepalive=keepalive))
    b.peers.append(a.peer_block(f"{RB}:{PORT}", [f"{TA}/32"], name="site-a", keepalive=keepalive))
    return Relayed(lab, a, b, ns_r)


def start_sites(r: Relayed, log_level: str = "info") -> None:
    start(r.lab, r.a, log_level=log_level)
    start(r.lab, r.b, log_level=log_level)


# ------------------------------------------------------------------- UDP sequence stream --

# Sends N datagrams numbered 0..N-1 (paced), or receives and reports how often each arrived.
UDP_SEQ = r"""
import json, socket, sys, time
mode = sys.argv[1]
if mode == "recv":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind(("0.0.0.0", int(sys.argv[2])))
    print("ready", flush=True)
    s.settimeout(float(sys.argv[3]))
    seen = {}
    try:
        while True:
            d = s.recv(2048)
            n = int.from_bytes(d[:4], "big")
            seen[n] = seen.get(n, 0) + 1
            s.settimeout(2.0)
    except socket.timeout:
        pass
    dups = sum(c - 1 for c in seen.values())
    print(json.dumps({"distinct": len(seen), "duplicates": dups}), flush=True)
else:
    addr, port, n, size = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    pad = b"u" * max(0, size - 4)
    for i in range(n):
        s.sendto(i.to_bytes(4, "big") + pad, (addr, port))
        if i % 50 == 49:
            time.sleep(0.005)
"""


def udp_sequence(lab: Lab, ns_src: str, ns_dst: str, dst: str, n: int, size: int = 200) -> dict:
    """Send `n` numbered datagrams through the tunnel; {"distinct", "duplicates"} at the sink."""
    recv = lab.popen(ns_dst, sys.executable, "-c", UDP_SEQ, "recv", "40999", "20",
                     log_path=lab.workdir / "udpseq-recv.log")  # fmt: skip
    lab.wait_for(lambda: "ready" in recv.log(), 10, "udp receiver", watch=[recv])
    lab.run(ns_src, sys.executable, "-c", UDP_SEQ, "send", dst, "40999", str(n), str(size),
            timeout=120)  # fmt: skip
    recv.popen.wait(60)
    return json.loads(recv.log().splitlines()[-1])


# ---------------------------------------------------------------------------- show --json --


def show_json(name: str) -> dict | None:
    """`tunnelpy show NAME --json` (tunnelpyd's control socket): drops by reason, per peer too."""
    import subprocess

    res = subprocess.run(
        [sys.executable, "-c", "import sys; from tunnelpy.cli import main; sys.exit(main())",
         "show", name, "--json"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    if res.returncode != 0:
        return None
    data = json.loads(res.stdout)
    return data[0] if isinstance(data, list) and data else None


# ------------------------------------------------------------------------- process stats --


def proc_sample(pid: int) -> tuple[float, int]:
    """(CPU seconds used so far, RSS in KiB) of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    import os

    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return cpu, rss

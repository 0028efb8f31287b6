#!/usr/bin/env python3
"""Long-form soak: two tunnelpyd sites through the lossy relay, mixed traffic, RSS sampled.

    sudo python3 tools/hostile_soak.py [--minutes 10] [--out soak.json]

Namespaces a ── relay ── b as in tests/harness/hostile_sites.py, the relay at 1 % loss, 2 %
reordering and 1 % duplication. For the whole run: a ping every 0.2 s from a to b; in a loop,
TCP transfers of 16 MiB each way (SHA-256 checked) and a burst of 2 000 numbered UDP datagrams
(checked for duplicates). Every 10 s both daemons' RSS and CPU time and the latest handshake
time are sampled, so the real 120 s rekeys show up. Prints a summary and writes all samples as
JSON. Everything lives in fresh namespaces removed at the end, even on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run by path: the checkout's tests/ and tunnelpy/

from tests.harness.hostile_sites import (  # noqa: E402
    TA,
    TB,
    proc_sample,
    relayed_sites,
    start_sites,
    udp_sequence,
)
from tests.harness.netns import Lab  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--out", default="soak.json")
    ap.add_argument("--xfer-mib", type=int, default=16)
    args = ap.parse_args()
    duration = args.minutes * 60
    with Lab(3) as lab:
        r = relayed_sites(lab)
        r.start_relay(seed=42, loss=0.01, reorder=0.02, duplicate=0.01, delay=0.0005, jitter=0.001)
        start_sites(r)
        if not lab.ping(r.a.ns, TB, count=1, timeout=30):
            print("no initial ping", lab.notes)
            return 1
        t0 = time.monotonic()
        stop = threading.Event()
        samples: list[dict] = []

        def sampler() -> None:
            while not stop.is_set():
                row = {"t": round(time.monotonic() - t0, 1)}
                for name, site in (("a", r.a), ("b", r.b)):
                    cpu, rss = proc_sample(site.proc.pid)
                    row[f"{name}_rss_kib"] = rss
                    row[f"{name}_cpu_s"] = round(cpu, 1)
                hs = lab.latest_handshakes(r.a.ns, r.a.ifname)
                row["a_latest_handshake"] = hs.get(r.b.public_key, 0)
                samples.append(row)
                print(json.dumps(row), flush=True)
                stop.wait(10)

        threading.Thread(target=sampler, daemon=True).start()
        ping_out: dict[str, str] = {}
        pinger = threading.Thread(target=lambda: ping_out.setdefault("out", lab.run(
            r.a.ns, "ping", "-n", "-q", "-i", "0.2", "-w", str(int(duration)), TB,
            check=False, timeout=duration + 60).stdout), daemon=True)  # fmt: skip
        pinger.start()
        xfers = xfer_fail = udp_dups = udp_sent = udp_got = 0
        moved = 0
        while time.monotonic() - t0 < duration:
            size = args.xfer_mib << 20
            for src, dst, addr in ((r.a.ns, r.b.ns, TB), (r.b.ns, r.a.ns, TA)):
                ok = lab.tcp_transfer(src, dst, addr, size, timeout=300)
                xfers += 1
                xfer_fail += not ok
                moved += size if ok else 0
            got = udp_sequence(lab, r.a.ns, r.b.ns, TB, 2000)
            udp_sent += 2000
            udp_got += got["distinct"]
            udp_dups += got["duplicates"]
        pinger.join(duration + 120)
        stop.set()
        time.sleep(0.5)
        relay = r.relay_stats()
        m = re.search(r"(\d+) packets transmitted, (\d+) received", ping_out.get("out", ""))
        rss_a = [s["a_rss_kib"] for s in samples]
        rss_b = [s["b_rss_kib"] for s in samples]
        half = len(samples) // 2
        summary = {
            "minutes": args.minutes,
            "tcp_transfers": xfers,
            "tcp_failed": xfer_fail,
            "tcp_MiB_moved": moved >> 20,
            "udp_sent": udp_sent,
            "udp_distinct_received": udp_got,
            "udp_duplicates_delivered": udp_dups,
            "ping": m.groups() if m else ping_out.get("out"),
            "handshakes_seen": len({s["a_latest_handshake"] for s in samples}),
            "rss_kib_a": {"first": rss_a[0], "min": min(rss_a), "max": max(rss_a), "last": rss_a[-1],
                          "second_half_growth": rss_a[-1] - rss_a[half]},
            "rss_kib_b": {"first": rss_b[0], "min": min(rss_b), "max": max(rss_b), "last": rss_b[-1],
                          "second_half_growth": rss_b[-1] - rss_b[half]},
            "cpu_s": {"a": samples[-1]["a_cpu_s"], "b": samples[-1]["b_cpu_s"]},
            "relay": {d: relay[d] for d in ("a_to_b", "b_to_a")},
        }  # fmt: skip
        Path(args.out).write_text(json.dumps({"summary": summary, "samples": samples}, indent=1))
        print("SUMMARY " + json.dumps(summary), flush=True)
        for site in (r.a, r.b):
            assert site.proc.alive, site.proc.describe()
        return 0 if xfer_fail == 0 and udp_dups == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())

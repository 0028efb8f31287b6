#!/usr/bin/env python3
"""Ratio table for anchors.sh results: each tunnel against the best userspace anchor and raw veth.

Usage: python3 bench/ratios.py RESULTS.tsv...

Reads the TSV lines anchors.sh writes (run, tunnel, metric, value) and prints, per tunnel, the
median of each metric over runs, its ratio to the best userspace anchor's median of that metric
(`/best`: the highest of wireguard-go, fastd, OpenVPN, tinc... measured in the same files) and
to the raw veth (`/raw`); `UDP64 carried` adds to the 64-byte datagrams iperf3 received those
that crossed the tunnel but overflowed the receiving iperf3's socket buffer; and the CPU cost: both daemons' CPU seconds per gigabit moved during
TCP x1 (`CPU s/Gbit`, lower is better). Runs disturbed by other jobs (foreign_pct > 10) are
left out when a clean run of the same tunnel exists: the same rule anchors.sh's own table uses,
so the two tables agree.
"""

from __future__ import annotations

import statistics
import sys
from collections import defaultdict

CLEAN = 10.0  # foreign_pct at or below this counts as an undisturbed run
RAW = "raw"
# Rows that are not userspace VPNs: the ceiling, kernel tunnels, and tunnelpyd itself.
NOT_ANCHORS = ("raw", "raw-nooff", "vxlan", "socat", "socat-buf", "custom")
COLUMNS = [  # (header, metric, format)
    ("TCP x1 Gbit/s", "tcp1_gbps", "{:.2f}"),
    ("TCP x4 Gbit/s", "tcp4_gbps", "{:.2f}"),
    ("UDP64 kpps", "udp64_kpps", "{:.0f}"),
    # received + what crossed the tunnel but overflowed the receiving iperf3's socket
    ("UDP64 carried", "udp64_carried_kpps", "{:.0f}"),
]

Runs = dict[tuple[str, str], dict[str, float]]


def is_anchor(name: str) -> bool:
    return name not in NOT_ANCHORS and not name.startswith("tunnelpyd")


def load(paths: list[str]) -> tuple[Runs, list[str]]:
    """(tunnel, run) -> metric -> value, and tunnels in first-seen order."""
    runs: Runs = defaultdict(dict)
    order: list[str] = []
    for path in paths:
        with open(path) as f:
            for line in f:
                fields = line.rstrip("\n").split("\t", 3)
                if len(fields) != 4:
                    continue
                run, name, metric, value = fields
                if name.startswith("openssl:"):
                    continue  # cipher speed, not a tunnel
                if name not in order:
                    order.append(name)
                try:
                    # "NA" (a failed test) is simply absent; runs from different files stay apart.
                    runs[name, f"{path}:{run}"][metric] = float(value)
                except ValueError:
                    pass
    return runs, order


def medians(runs: Runs) -> dict[tuple[str, str], float]:
    """(tunnel, metric) -> median over the tunnel's clean runs (all runs if none is clean)."""
    by_tunnel: dict[str, list[dict[str, float]]] = defaultdict(list)
    for (name, _run), metrics in runs.items():
        by_tunnel[name].append(metrics)
    out: dict[tuple[str, str], float] = {}
    for name, all_runs in by_tunnel.items():
        clean = [m for m in all_runs if m.get("foreign_pct", 0.0) <= CLEAN] or all_runs
        values: dict[str, list[float]] = defaultdict(list)
        for m in clean:
            for metric, v in m.items():
                values[metric].append(v)
            if m.get("tcp1_gbps") and m.get("daemon_cpu_pct"):  # (raw has no daemon)
                # CPU seconds per second / Gbit per second = CPU seconds per gigabit
                values["cpu_s_per_gbit"].append(m["daemon_cpu_pct"] / 100 / m["tcp1_gbps"])
            if "udp64_kpps" in m and "udp64_appdrop_kpps" in m:  # (results before 2026-11-28)
                values["udp64_carried_kpps"].append(m["udp64_kpps"] + m["udp64_appdrop_kpps"])
        for metric, vs in values.items():
            out[name, metric] = statistics.median(vs)
    return out


def best_anchor(med: dict[tuple[str, str], float], order: list[str], metric: str) -> str | None:
    scored = [(med[n, metric], n) for n in order if is_anchor(n) and med.get((n, metric))]
    return max(scored)[1] if scored else None


def table(runs: Runs, order: list[str]) -> str:
    med = medians(runs)
    header = ["tunnel"]
    for title, _, _ in COLUMNS:
        header += [title, "/best", "/raw"]
    header += ["CPU s/Gbit", "/best", "daemon CPU%", "host CPU s/Gbit", "ping x1 ms"]
    rows = [header]
    best = {metric: best_anchor(med, order, metric) for _, metric, _ in COLUMNS}
    cpu_scored = [
        (med[n, "cpu_s_per_gbit"], n)
        for n in order
        if is_anchor(n) and (n, "cpu_s_per_gbit") in med
    ]
    best_cpu = min(cpu_scored)[1] if cpu_scored else None
    for name in order:
        row = [name]
        for _, metric, fmt in COLUMNS:
            v = med.get((name, metric))
            row.append(fmt.format(v) if v is not None else "-")
            for anchor in (best[metric], RAW):
                ref = med.get((anchor, metric)) if anchor else None
                row.append(f"{v / ref:.2f}" if v is not None and ref else "-")
        cps = med.get((name, "cpu_s_per_gbit"))
        ref = med.get((best_cpu, "cpu_s_per_gbit")) if best_cpu else None
        row.append(f"{cps:.2f}" if cps is not None else "-")
        row.append(f"{cps / ref:.2f}" if cps is not None and ref else "-")
        cpu = med.get((name, "daemon_cpu_pct"))
        row.append(f"{cpu:.0f}" if cpu is not None else "-")
        host = med.get((name, "host_cpu_s_per_gbit"))
        row.append(f"{host:.2f}" if host is not None else "-")
        lat = med.get((name, "ping_load_ms"))
        row.append(f"{lat:.2f}" if lat is not None else "-")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for r in rows:  # tunnel name left-aligned, numbers right-aligned
        cells = [
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells))
    named = ", ".join(f"{t} {best[m] or '-'}" for t, m, _ in COLUMNS)
    lines.append(
        f"\nbest userspace anchor per metric: {named}, CPU s/Gbit {best_cpu or '-'}"
        "\n(medians over clean runs; /best = this tunnel's median divided by that anchor's median"
        " of the same metric (for CPU s/Gbit below 1 is better), /raw = divided by the raw veth;"
        " CPU s/Gbit and daemon CPU% = both daemons during TCP x1; host CPU s/Gbit = the whole"
        " machine's (iperf3 and the kernel included: comparable with kernel tunnels); ping x1 ms = median RTT"
        " through the tunnel while TCP x1 runs)"
    )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    runs, order = load(argv)
    if not order:
        print("ratios.py: no results in " + " ".join(argv), file=sys.stderr)
        return 1
    print(table(runs, order))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

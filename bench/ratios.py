#!/usr/bin/env python3
"""Ratio table for anchors.sh results: each tunnel as a fraction of wireguard-go and raw veth.

Usage: python3 bench/ratios.py RESULTS.tsv...

Reads the TSV lines anchors.sh writes (run, tunnel, metric, value) and prints, per tunnel, the
median of each metric over runs and its ratio to the `wggo` and `raw` medians. Runs disturbed by
other jobs (foreign_pct > 10) are left out when a clean run of the same tunnel exists: the same
rule anchors.sh's own table uses, so the two tables agree.
"""

from __future__ import annotations

import statistics
import sys
from collections import defaultdict

CLEAN = 10.0  # foreign_pct at or below this counts as an undisturbed run
ANCHORS = ("wggo", "raw")
COLUMNS = [  # (header, metric, format)
    ("TCP x1 Gbit/s", "tcp1_gbps", "{:.2f}"),
    ("TCP x4 Gbit/s", "tcp4_gbps", "{:.2f}"),
    ("UDP64 kpps", "udp64_kpps", "{:.0f}"),
]

Runs = dict[tuple[str, str], dict[str, float]]


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
        for metric, vs in values.items():
            out[name, metric] = statistics.median(vs)
    return out


def table(runs: Runs, order: list[str]) -> str:
    med = medians(runs)
    header = ["tunnel"]
    for title, _, _ in COLUMNS:
        header += [title] + [f"/{a}" for a in ANCHORS]
    header.append("daemon CPU%")
    rows = [header]
    for name in order:
        row = [name]
        for _, metric, fmt in COLUMNS:
            v = med.get((name, metric))
            row.append(fmt.format(v) if v is not None else "-")
            for anchor in ANCHORS:
                ref = med.get((anchor, metric))
                row.append(f"{v / ref:.3f}" if v is not None and ref else "-")
        cpu = med.get((name, "daemon_cpu_pct"))
        row.append(f"{cpu:.0f}" if cpu is not None else "-")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for r in rows:  # tunnel name left-aligned, numbers right-aligned
        cells = [
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells))
    lines.append(
        "\n(medians over clean runs; /wggo and /raw = this tunnel's median divided by the"
        " wireguard-go or raw-veth median of the same metric; daemon CPU% = both daemons in %"
        " of one core during TCP x1)"
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

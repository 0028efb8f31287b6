#!/usr/bin/env python3
"""How long ``wg setconf`` and ``wg show IFACE allowed-ips`` take at the kernel selftest's sizes.

The shapes are those of wireguard's tools/testing/selftests/wireguard/netns.sh:

* ``130k``: one peer with 255 x 256 x 2 = 130 560 allowed IPs (``A.B.0.0/16`` and ``A::B/128``);
  ``wg show allowed-ips`` must then list all of them (130 561 words with the key).
* ``40x52``: 40 peers with 52 ``/16`` each, set again ``--repeat`` times (every set replaces
  every peer and every prefix, as ``wg setconf`` does).

Each shape is set with ``wg setconf`` and listed with ``wg show allowed-ips`` ``--repeat`` times,
then synced ``--repeat`` times with ``wg syncconf`` from the same file (which sends every peer's
whole list with replace_allowed_ips: the "nothing changed" case).

A real daemon is started with ``tunnelpyd -c`` (an interface with no peers) in a fresh network
namespace, and the real ``wg`` talks to its UAPI socket; with ``--wggo`` wireguard-go is measured
the same way, for reference. Everything is torn down at the end (tests/harness/netns.Lab).

    sudo python3 bench/uapi_scale.py [--shape 130k|40x52|all] [--repeat 5] [--wggo]
"""

from __future__ import annotations

import argparse
import base64
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness.netns import Lab, genkey  # noqa: E402
from tests.harness.sites import new_site, start  # noqa: E402


def key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def conf_130k() -> tuple[str, int]:
    lines = ["[Interface]", f"PrivateKey = {genkey()}", "[Peer]", f"PublicKey = {key()}"]
    for a in range(1, 256):
        for b in range(256):
            lines.append(f"AllowedIPs = {a}.{b}.0.0/16, {a:x}::{b:x}/128")
    return "\n".join(lines) + "\n", 255 * 256 * 2


def conf_40x52() -> tuple[str, int]:
    lines = ["[Interface]", f"PrivateKey = {genkey()}"]
    for a in range(1, 41):
        lines += ["[Peer]", f"PublicKey = {key()}"]
        lines += [f"AllowedIPs = {a}.{b}.0.0/16" for b in range(1, 53)]
    return "\n".join(lines) + "\n", 40 * 52


def timed(lab: Lab, ns: str, *cmd: str) -> tuple[float, str]:
    t = time.perf_counter()
    out = lab.run(ns, *cmd, timeout=600).stdout
    return time.perf_counter() - t, out


def measure(lab: Lab, ns: str, ifname: str, label: str, shape: str, repeat: int) -> None:
    text, n = conf_130k() if shape == "130k" else conf_40x52()
    path = lab.write_file(f"{ifname}-{shape}.conf", text)
    times: dict[str, list[float]] = {"setconf": [], "show allowed-ips": [], "syncconf": []}
    for _ in range(repeat):
        times["setconf"].append(timed(lab, ns, "wg", "setconf", ifname, str(path))[0])
        dt, out = timed(lab, ns, "wg", "show", ifname, "allowed-ips")
        times["show allowed-ips"].append(dt)
        got = sum(len(line.split()) - 1 for line in out.splitlines())
        if got != n:
            raise SystemExit(f"{label}: wg show listed {got} allowed IPs, expected {n}")
    for _ in range(repeat):  # the same file again: every peer's whole list, nothing changed
        times["syncconf"].append(timed(lab, ns, "wg", "syncconf", ifname, str(path))[0])
    cols = "   ".join(f"{k} " + " ".join(f"{x:.2f}" for x in v) + " s" for k, v in times.items())
    print(f"{label:10} {shape:6} prefixes={n:6}  {cols}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=["130k", "40x52", "all"], default="all")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--wggo", action="store_true", help="also measure wireguard-go")
    ap.add_argument("--profile", metavar="FILE", help="py-spy record the daemon into FILE")
    ap.add_argument("--format", default="flamegraph", help="py-spy's output format (raw, ...)")
    args = ap.parse_args()
    shapes = ["130k", "40x52"] if args.shape == "all" else [args.shape]
    with Lab(1) as lab:
        (ns,) = lab.ns
        site = new_site(lab, ns, 51820, ["10.77.0.1/24"])
        proc = start(lab, site, log_level="info")
        spy = None
        if args.profile:
            spy = subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "-p",
                    str(proc.pid),
                    "-o",
                    args.profile,
                    "-f",
                    args.format,
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1)
        for shape in shapes:
            measure(lab, ns, site.ifname, "tunnelpyd", shape, args.repeat)
        if spy is not None:
            spy.send_signal(2)
            spy.wait(60)
        if args.wggo:
            ifname = lab.ifname("wgg")
            lab.wggo(ns, ifname, genkey(), 51821, "10.78.0.1/24")
            for shape in shapes:
                measure(lab, ns, ifname, "wggo", shape, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Helpers for topology tests: build a Topology inside a Lab namespace and always undo it.

``TopoLab`` wraps a `netns.Lab`: ``lab.ns[0]`` plays tunnelpyd's own namespace (the Topology's
``netns=``), namespaces the plan creates are named ``tp-<labtag>-<name>`` so they are unique on
the host, registered for the session leak check, and removed when the test ends even if it failed
half-way. The state file goes to the test's tmp_path. Used by tests/integration and tests/vm.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path
from types import TracebackType

from tests.harness import netns as netns_mod
from tests.harness.netns import Lab
from tunnelpy import config
from tunnelpy.netlink.topology import Topology


class TopoLab:
    def __init__(self, lab: Lab, state_dir: Path) -> None:
        self.lab = lab
        self.base = lab.ns[0]
        self.state_dir = state_dir
        self.topologies: list[Topology] = []
        self.extra_ns: set[str] = set()

    def ns(self, name: str) -> str:
        """A namespace name for the plan to create, unique on the host and cleaned up."""
        full = f"{netns_mod.NS_PREFIX}{self.lab.tag}-{name}"
        self.extra_ns.add(full)
        netns_mod.REGISTRY.netns.add(full)
        return full

    def conf(self, body: str, name: str | None = None) -> config.Config:
        ifname = name or self.lab.ifname("tp")
        # ListenPort off 4789: there is no tunnelpyd here, and the kernel vxlan devices the
        # tests build want the port (the config refuses two listeners on one port).
        text = f"[Interface]\nName = {ifname}\nTransport = vxlan\nListenPort = 4790\n{body}"
        return config.parse(text, f"{ifname}.conf")

    def topology(self, body: str, *, base: str | None = None, name: str | None = None) -> Topology:
        topo = Topology(self.conf(body, name), netns=base or self.base, state_dir=self.state_dir)
        self.topologies.append(topo)
        return topo

    def up(self, body: str, **kw: str) -> Topology:
        topo = self.topology(body, **kw)
        topo.validate()
        topo.apply()
        return topo

    def ip(self, ns: str, *argv: str, check: bool = True) -> str:
        res = subprocess.run(["ip", "-n", ns, *argv], capture_output=True, text=True, timeout=30)
        if check and res.returncode != 0:
            raise AssertionError(f"ip -n {ns} {' '.join(argv)}: {res.stderr.strip()}")
        return res.stdout

    def links(self, ns: str) -> list[str]:
        """The links of a namespace as sorted "name up|down master" strings: what a topology
        must leave as it found it (no MACs, no carrier: those settle asynchronously)."""
        rows = json.loads(self.ip(ns, "-j", "link") or "[]")
        return sorted(
            f"{r['ifname']} {'up' if 'UP' in r.get('flags', []) else 'down'} {r.get('master', '-')}"
            for r in rows
        )

    def close(self) -> None:
        problems = []
        for topo in reversed(self.topologies):
            problems += topo.undo()
            topo.close()
        existing = netns_mod.list_netns()
        for name in self.extra_ns & existing:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        if problems:
            raise AssertionError(f"undo problems: {problems}")

    def __enter__(self) -> TopoLab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(AssertionError) if exc_type else contextlib.nullcontext():
            self.close()

"""What a lab needs beyond links: routes and forwarding per namespace, and link shaping.

Theory of operation
-------------------
Two section kinds sit beside the link kinds of ``kinds.py``; they make no link, so they are not
``LinkKind``s:

``[Namespace NAME]``  a network namespace (created if missing, like any ``Namespace =``) with
    ``Route = PREFIX via ADDR`` lines (``default via ADDR`` for 0.0.0.0/0 or ::/0, the family
    from ADDR) and ``Forwarding = yes`` (IPv4 and IPv6 forwarding: a router between subnets).
``[Netem LINK]``  the netem qdisc as LINK's root qdisc: ``Delay``, ``Jitter``, ``Loss``, ``Rate``,
    ``Limit`` (``tc qdisc add dev LINK root netem delay 20ms 5ms loss 1% rate 10mbit``). LINK is
    one the file makes (or the TUN, a segment TAP): a qdisc tunnelpyd replaced on someone
    else's link could not be given back as it was.

Every namespace the plan creates also gets its loopback up (``ip -n NS link set lo up``):
without it nothing in the namespace can talk to itself (127.0.0.1, or its own addresses).

This module is pure, like ``kinds``: dataclasses, the steps' attributes, and the steps as the
``ip`` / ``tc`` / ``sysctl`` commands ``tunnelpy plan`` prints. ``config`` parses the sections
into these; ``plan`` orders the steps; ``topology`` applies them with pyroute2.
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass
from typing import Any

from .kinds import in_ns, ip_argv
from .step import QDISC, ROUTE, SYSCTL, Step, attrs

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

NETEM_MODULE = "sch_netem"
FORWARDING = ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding")


@dataclass(frozen=True)
class RouteConfig:
    """``Route = PREFIX via ADDR`` in a ``[Namespace]``."""

    dst: IPNetwork
    via: IPAddress
    line: int = 0

    def __str__(self) -> str:
        return f"{show_prefix(self.dst)} via {self.via}"


@dataclass(frozen=True)
class NamespaceConfig:
    """One ``[Namespace NAME]`` section."""

    name: str
    routes: tuple[RouteConfig, ...] = ()
    forwarding: bool = False
    line: int = 0


@dataclass(frozen=True)
class NetemConfig:
    """One ``[Netem LINK]`` section. Times in microseconds, loss in percent, rate in bit/s."""

    link: str
    delay: int = 0
    jitter: int = 0
    loss: float = 0.0
    rate: int | None = None
    limit: int | None = None  # packets in the qdisc's queue (netem's default: 1000)
    line: int = 0

    def describe(self) -> str:
        """The netem arguments as tc writes them: "delay 20ms 5ms loss 1% rate 10mbit"."""
        return " ".join(netem_args(self.step_attrs()))

    def step_attrs(self) -> dict[str, Any]:
        return {
            "delay": self.delay or None,
            "jitter": self.jitter or None,
            "loss": self.loss or None,
            "rate": self.rate,
            "limit": self.limit,
        }


def show_prefix(net: IPNetwork) -> str:
    return "default" if net.prefixlen == 0 else str(net)


def show_time(us: int) -> str:
    if us % 1_000_000 == 0:
        return f"{us // 1_000_000}s"
    if us % 1000 == 0:
        return f"{us // 1000}ms"
    return f"{us}us"


def show_rate(bits: int) -> str:
    for unit, size in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bits % size == 0:
            return f"{bits // size}{unit}"
    return f"{bits}bit"


def netem_args(step_attrs: dict[str, Any]) -> list[str]:
    out: list[str] = []
    if step_attrs.get("limit"):
        out += ["limit", str(step_attrs["limit"])]
    if step_attrs.get("delay"):
        out += ["delay", show_time(step_attrs["delay"])]
        if step_attrs.get("jitter"):
            out.append(show_time(step_attrs["jitter"]))
    if step_attrs.get("loss"):
        out += ["loss", f"{step_attrs['loss']:g}%"]
    if step_attrs.get("rate"):
        out += ["rate", show_rate(step_attrs["rate"])]
    return out


# --------------------------------------------------------------------------------------------
# Steps


def route_step(ns: str, route: RouteConfig) -> Step:
    return Step(
        ROUTE,
        str(route.dst),
        ns,
        attrs(via=str(route.via)),
        route.line,
        f"route {route} in namespace {ns}",
    )


def forwarding_step(ns: NamespaceConfig) -> Step:
    return Step(
        SYSCTL,
        ns.name,
        ns.name,
        attrs(keys=FORWARDING, value="1"),
        ns.line,
        f"forwarding on in namespace {ns.name}",
    )


def netem_step(netem: NetemConfig, ns: str | None) -> Step:
    return Step(
        QDISC,
        netem.link,
        ns,
        attrs(kind="netem", **netem.step_attrs()),
        netem.line,
        f"netem on {netem.link}: {netem.describe()}",
    )


def pyroute2_netem(step: Step) -> dict[str, Any]:
    """pyroute2's netem parameters (``sched_netem.get_parameters``: microseconds, percent,
    bytes per second)."""
    kw: dict[str, Any] = {}
    if step.get("delay"):
        kw["delay"] = step.get("delay")
    if step.get("jitter"):
        kw["jitter"] = step.get("jitter")
    if step.get("loss"):
        kw["loss"] = step.get("loss")
    if step.get("rate"):
        kw["rate"] = step.get("rate") // 8  # bytes per second, as the kernel holds it
    if step.get("limit"):
        kw["limit"] = step.get("limit")
    return kw


def commands(step: Step) -> list[str]:
    """The shell commands for a ROUTE, SYSCTL or QDISC step."""
    if step.op == ROUTE:
        six = ["-6"] if ":" in step.name else []
        dst = show_prefix(ipaddress.ip_network(step.name))
        return [shlex.join([*ip_argv(step.ns), *six, "route", "add", dst, "via", step.get("via")])]
    if step.op == SYSCTL:
        argv = ["sysctl", "-qw", *(f"{key}={step.get('value')}" for key in step.get("keys"))]
        return [shlex.join(in_ns(step.ns, argv))]
    if step.op == QDISC:
        tc = ["tc"] if step.ns is None else ["tc", "-n", step.ns]
        args = netem_args(dict(step.attrs))
        return [shlex.join([*tc, "qdisc", "add", "dev", step.name, "root", "netem", *args])]
    raise ValueError(f"not a lab step: {step.op!r}")


def undo_commands(step: Step) -> list[str]:
    if step.op == ROUTE:
        six = ["-6"] if ":" in step.name else []
        dst = show_prefix(ipaddress.ip_network(step.name))
        argv = [*ip_argv(step.ns), *six, "route", "del", dst, "via", step.get("via")]
        return [shlex.join(argv) + "   # if the namespace stays"]
    if step.op == SYSCTL:
        return [f"# {' and '.join(step.get('keys'))} back as they were, if {step.ns} stays"]
    if step.op == QDISC:
        tc = ["tc"] if step.ns is None else ["tc", "-n", step.ns]
        return [shlex.join([*tc, "qdisc", "del", "dev", step.name, "root"])]
    raise ValueError(f"not a lab step: {step.op!r}")

"""One step of a topology plan: a frozen record of plain values (what ``plan`` builds, ``kinds``
renders and ``topology`` applies)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Step operations, in the order their phases run.
NETNS = "netns"
LINK = "link"
MOVE = "move"
TEAMD = "teamd"
MASTER = "master"
PRIMARY = "primary"
UP = "up"
ADDRESS = "address"
QDISC = "qdisc"  # [Netem LINK]: tc qdisc add dev LINK root netem ...
SYSCTL = "sysctl"  # [Namespace NAME] Forwarding = yes
ROUTE = "route"  # [Namespace NAME] Route = PREFIX via ADDR
OPS = (NETNS, LINK, MOVE, TEAMD, MASTER, PRIMARY, UP, ADDRESS, QDISC, SYSCTL, ROUTE)


@dataclass(frozen=True)
class Step:
    """One thing to do. ``attrs`` holds the op's details as sorted (key, value) pairs of plain
    JSON-able values, so a Step is hashable, comparable and printable."""

    op: str
    name: str  # the interface acted on (``netns``/``sysctl``: the namespace; ``route``: the prefix)
    ns: str | None = None  # where it runs; None: tunnelpyd's own namespace
    attrs: tuple[tuple[str, Any], ...] = ()
    line: int = 0  # the config line it comes from
    what: str = ""  # one human sentence

    def get(self, key: str, default: Any = None) -> Any:
        for k, v in self.attrs:
            if k == key:
                return v
        return default

    @property
    def kind(self) -> str | None:
        return self.get("kind")


def attrs(**kw: Any) -> tuple[tuple[str, Any], ...]:
    """``Step.attrs`` from keyword arguments: sorted, without the ones that are None or ()."""
    return tuple(sorted((k, v) for k, v in kw.items() if v is not None and v != ()))

"""``DNS =`` applied the way wg-quick applies it, and removed on the way down.

wg-quick hands the interface's resolvers to ``resolvconf``: entries of ``DNS =`` that are IP
addresses become ``nameserver`` lines, the others ``search`` domains, and
``resolvconf -a IFACE -m 0 -x`` takes them (``-x``: exclusive, these servers answer everything;
``-m 0``: first in the metric order); ``resolvconf -d IFACE -f`` removes them. The interface
record is prefixed as ``/etc/resolvconf/interface-order`` wants (its first ``PREFIX*`` line: Debian's
resolvconf orders ``tun*`` interfaces first, so wg-quick registers ``tun.wg0``). tunnelpyd does
the same, so a migrated road-warrior config keeps its DNS.

Hosts with systemd-resolved and no resolvconf get the per-link equivalent: ``resolvectl dns
IFACE …``, ``resolvectl domain IFACE …`` (with ``~.``, the routing-only domain that sends every
query to this link, as ``-x`` does) and ``resolvectl revert IFACE`` at the end. A host with
neither cannot honour ``DNS =``: that is a start-up error, as with wg-quick.

The programs are looked up on PATH (tests put a recording stub first), run without a shell and
with the interface name, addresses and domains as separate arguments.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

INTERFACE_ORDER = "/etc/resolvconf/interface-order"
_PREFIX = re.compile(r"^([A-Za-z0-9-]+)\*$")


class DnsError(Exception):
    """DNS = cannot be applied (one line)."""


def split(entries: Sequence[str]) -> tuple[list[str], list[str]]:
    """(nameservers, search domains) as wg-quick tells them apart."""
    servers, domains = [], []
    for e in entries:
        try:
            servers.append(str(ipaddress.ip_address(e)))
        except ValueError:
            domains.append(e)
    return servers, domains


def resolvconf_prefix(order_file: str = INTERFACE_ORDER) -> str:
    """wg-quick's resolvconf_iface_prefix(): "tun." where interface-order asks for it."""
    try:
        with open(order_file) as f:
            for line in f:
                m = _PREFIX.match(line.strip())
                if m:
                    return m.group(1) + "."
    except OSError:
        pass
    return ""


@dataclass
class Applied:
    """What was set, so exactly that is undone."""

    tool: str  # "resolvconf" or "resolvectl"
    program: str
    record: str  # the resolvconf record name, or the link for resolvectl


def _run(argv: list[str], stdin: str | None = None) -> None:
    try:
        r = subprocess.run(
            argv, input=stdin, text=True, capture_output=True, timeout=30,
            env={**os.environ, "LC_ALL": "C"},
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DnsError(f"{argv[0]}: {e}") from None
    if r.returncode != 0:
        err = " ".join((r.stderr or r.stdout).split())[:200]
        raise DnsError(f"{' '.join(argv[:3])} … failed with status {r.returncode}: {err}")


def apply(ifname: str, entries: Sequence[str]) -> Applied:
    """Point the host's resolver at ``entries`` for ``ifname`` (DnsError if it cannot)."""
    servers, domains = split(entries)
    resolvconf = shutil.which("resolvconf")
    if resolvconf:
        record = resolvconf_prefix() + ifname
        text = "".join(f"nameserver {s}\n" for s in servers)
        if domains:
            text += f"search {' '.join(domains)}\n"
        _run([resolvconf, "-a", record, "-m", "0", "-x"], text)
        return Applied("resolvconf", resolvconf, record)
    resolvectl = shutil.which("resolvectl")
    if resolvectl:
        if servers:
            _run([resolvectl, "dns", ifname, *servers])
        _run([resolvectl, "domain", ifname, *domains, "~."])
        return Applied("resolvectl", resolvectl, ifname)
    raise DnsError(
        "DNS = needs resolvconf or resolvectl, and this host has neither (apt-get install "
        "openresolv, or systemd-resolved; or remove DNS =)"
    )


def undo(applied: Applied) -> None:
    """Remove what :func:`apply` set (DnsError if the tool fails)."""
    if applied.tool == "resolvconf":
        _run([applied.program, "-d", applied.record, "-f"])
    else:
        _run([applied.program, "revert", applied.record])

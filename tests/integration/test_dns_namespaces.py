"""`DNS =` as wg-quick applies it: through resolvconf (or resolvectl), removed on the way down.

The host's own resolver must not change in a test, so a recording stub named `resolvconf` (and
one named `resolvectl`) comes first on the daemon's PATH: it writes its arguments and standard
input to a log. A real daemon runs in a namespace; the test reads what it asked for, at start
and at exit.
"""

from __future__ import annotations

import os
import sys

import pytest

from tests.harness.netns import Lab
from tests.harness.sites import TUNNELPYD, new_site

STUB = """#!/bin/sh
{{ printf '%s' "$(basename "$0")"; for a in "$@"; do printf ' %s' "$a"; done; echo
  if [ "$1" = "-a" ]; then cat; fi; }} >> {log}
"""


def _stub_dir(lab: Lab, *tools: str) -> tuple[str, str]:
    d = lab.workdir / "bin"
    d.mkdir(exist_ok=True)
    log = lab.workdir / "dns.log"
    for t in tools:
        p = d / t
        p.write_text(STUB.format(log=log))
        p.chmod(0o755)
    return str(d), str(log)


@pytest.mark.parametrize("tool", ["resolvconf", "resolvectl"])
def test_dns_set_at_start_and_removed_at_exit(tool: str) -> None:
    with Lab(1) as lab:
        (ns,) = lab.ns
        bindir, log = _stub_dir(lab, tool)
        site = new_site(lab, ns, 51820, ["10.77.0.1/24"])
        site.extra = "DNS = 10.77.0.53, fd77::53, corp.example, lab.example\n"
        conf = lab.write_file(f"{site.ifname}.conf", site.text())
        env = {"PATH": f"{bindir}:/usr/sbin:/usr/bin:/sbin:/bin"}
        proc = lab.popen(ns, *TUNNELPYD, "-c", str(conf), env=env)
        lab.wait_for(lambda: os.path.exists(log) and site.ifname in open(log).read(), 15,
                     "the DNS tool to be called", watch=[proc])  # fmt: skip
        rc = proc.stop()
        assert rc == 0, proc.log()
        text = open(log).read()
        name = site.ifname
        if tool == "resolvconf":
            prefix = "tun." if os.path.exists("/etc/resolvconf/interface-order") else ""
            assert f"resolvconf -a {prefix}{name} -m 0 -x\n" in text
            assert (
                "nameserver 10.77.0.53\nnameserver fd77::53\nsearch corp.example lab.example\n"
                in text
            )
            assert text.rstrip().endswith(f"resolvconf -d {prefix}{name} -f")
        else:
            assert f"resolvectl dns {name} 10.77.0.53 fd77::53\n" in text
            assert f"resolvectl domain {name} corp.example lab.example ~.\n" in text
            assert text.rstrip().endswith(f"resolvectl revert {name}")


def test_dns_without_a_tool_is_a_start_up_error_and_nothing_is_left() -> None:
    with Lab(1) as lab:
        (ns,) = lab.ns
        bindir, _ = _stub_dir(lab)  # no tool at all
        site = new_site(lab, ns, 51820, ["10.78.0.1/24"])
        site.extra = "DNS = 10.78.0.53\n"
        conf = lab.write_file(f"{site.ifname}.conf", site.text())
        res = lab.run(ns, "env", f"PATH={bindir}:/usr/sbin:/usr/bin:/sbin:/bin", *TUNNELPYD,
                      "-c", str(conf), check=False)  # fmt: skip
        assert res.returncode == 1
        assert res.stderr.strip().splitlines()[-1].startswith("tunnelpyd: DNS = needs resolvconf")
        assert not lab.link_exists(ns, site.ifname)
        assert sys.executable  # (the interpreter is named absolutely: PATH is the stub's)

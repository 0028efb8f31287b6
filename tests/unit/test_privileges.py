"""Least privilege in every mode (privileges.py), each run in a child process (a drop cannot be
undone): root without User keeps only what running needs, workers and the config reader keep
nothing, a drop to User clears groups and sets no_new_privs; users of group 0 are refused."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tunnelpy import privileges

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
ROOT = str(Path(__file__).resolve().parents[2])


def _status_after(code: str) -> dict[str, str]:
    script = textwrap.dedent(code) + textwrap.dedent("""
        import subprocess, sys
        # what an executed hook gets: read by a child, after exec
        print(open("/proc/self/status").read())
        sys.stdout.flush()
        subprocess.run(["cat", "/proc/self/status"])
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": ROOT})  # fmt: skip
    assert res.returncode == 0, res.stderr
    own, child = res.stdout.split("Name:\t")[1:3]
    parse = lambda t: dict(  # noqa: E731
        (k, v.strip())
        for k, v in (ln.split(":", 1) for ln in ("Name:" + t).splitlines() if ":" in ln)
    )
    return {"self": parse(own), "exec": parse(child)}  # type: ignore[dict-item]


def test_root_without_user_keeps_only_what_running_needs():
    st = _status_after("""
        from tunnelpy import privileges as p
        p.limit_root((p.CAP_NET_ADMIN, p.CAP_NET_BIND_SERVICE))
    """)
    mask = (1 << 12) | (1 << 10)
    for who in ("self", "exec"):  # a hook executed afterwards inherits no more
        s = st[who]
        assert int(s["CapEff"], 16) == mask and int(s["CapBnd"], 16) == mask, (who, s)
        assert s["NoNewPrivs"] == "1" and s["Uid"].split()[0] == "0"


def test_workers_and_the_reader_keep_nothing():
    st = _status_after("""
        from tunnelpy import privileges as p
        p.drop_all_capabilities()
    """)
    for who in ("self", "exec"):
        s = st[who]
        assert int(s["CapEff"], 16) == 0 and int(s["CapPrm"], 16) == 0
        assert int(s["CapBnd"], 16) == 0 and s["NoNewPrivs"] == "1"


def test_drop_to_user_clears_groups_and_sets_no_new_privs():
    st = _status_after("""
        import os
        os.setgroups([0, 4, 27])  # root's supplementary groups must not survive
        from tunnelpy import privileges as p
        p.drop_privileges("nobody")
    """)
    s = st["self"]
    assert s["Uid"].split() == ["65534"] * 4 and s["Groups"] == ""
    assert s["NoNewPrivs"] == "1" and int(s["CapEff"], 16) == 1 << 12
    assert st["exec"]["NoNewPrivs"] == "1" and int(st["exec"]["CapBnd"], 16) == 1 << 12


def test_a_user_of_group_root_is_refused(monkeypatch):
    monkeypatch.setattr(privileges, "resolve_user", lambda u: privileges.Target(u, 1000, 0, (0,)))
    with pytest.raises(privileges.PrivilegeError, match="gid 0"):
        privileges.drop_privileges("wheelish")
    assert os.geteuid() == 0  # refused before anything changed

"""Log formats of a real daemon: with `LogFormat = json` every line it writes is one JSON
object and a peer's up line names the peer in its own field (what Loki or ELK index without
parsing rules); under systemd the records reach journald's native socket with PEER= and
EVENT= fields."""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from tests.harness.journal import parse_journal
from tests.harness.sites import linked_pair, start

pytestmark = pytest.mark.root


def test_json_lines_with_peer_field(lab):
    a, b = linked_pair(lab, "10.65.0", "10.66.0", "fd66", extra_a="LogFormat = json\n")
    start(lab, a, log_level="info")
    start(lab, b, log_level="info")
    assert lab.ping(a.ns, "10.66.0.2")

    def records() -> list[dict]:
        return [json.loads(line) for line in a.proc.log(1000).splitlines() if line.strip()]

    # the service notices the session within its 5 s status tick
    lab.wait_for(
        lambda: any(r.get("event") == "peer site-b: up" for r in records()), 15, "peer up line"
    )
    docs = records()
    up = next(r for r in docs if r["event"] == "peer site-b: up")
    assert up["peer"] == "site-b" and up["level"] == "info" and up["logger"] == "tunnelpyd"
    start_line = next(r for r in docs if "listening on UDP" in r["event"])
    assert "peer" not in start_line and start_line["time"][10] == "T"
    assert a.proc.stop() == 0
    assert any(r["event"].endswith(" shutting down") for r in records())  # all still JSON


def test_journald_native_fields_from_a_real_daemon(lab):
    """Under systemd (JOURNAL_STREAM names our stderr) the records go to journald's native
    socket with PEER= and EVENT=; here the socket is the test's own (TUNNELPY_TEST_JOURNAL_SOCKET),
    read as journald reads it."""
    a, b = linked_pair(lab, "10.67.0", "10.68.0", "fd68")
    sockdir = Path(tempfile.mkdtemp(prefix="tpj-"))  # short: sun_path holds 108 bytes
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        rx.bind(str(sockdir / "journal"))
        rx.settimeout(20)
        log_path = lab.workdir / f"tunnelpyd-{a.ifname}.log"
        log_path.touch()
        st = log_path.stat()
        env = {
            "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}",
            "TUNNELPY_TEST_JOURNAL_SOCKET": str(sockdir / "journal"),
        }
        start(lab, a, log_level="info", env=env)
        start(lab, b, log_level="info")
        assert lab.ping(a.ns, "10.68.0.2")
        records = []
        while not any(r.get("MESSAGE") == "peer site-b: up" for r in records):
            records.append(parse_journal(rx.recv(1 << 16)))
        up = next(r for r in records if r["MESSAGE"] == "peer site-b: up")
        assert up["PEER"] == "site-b" and up["EVENT"] == "peer %s: up" and up["PRIORITY"] == "6"
        assert up["SYSLOG_IDENTIFIER"] == "tunnelpyd" and up["CODE_FILE"].endswith("service.py")
        ready = next(r for r in records if "listening on UDP" in r["MESSAGE"])
        assert "PEER" not in ready and ready["MESSAGE"].startswith(f"{a.ifname} up")
        assert "listening on UDP" not in log_path.read_text()  # not on stderr as well
    finally:
        rx.close()
        shutil.rmtree(sockdir, ignore_errors=True)

"""`LogFormat = json` on a real daemon: every line it writes is one JSON object, and a peer's
up line names the peer in its own field (what Loki or ELK index without parsing rules)."""

from __future__ import annotations

import json

import pytest

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
    start_line = next(r for r in docs if " up: listening on UDP " in r["event"])
    assert "peer" not in start_line and start_line["time"][10] == "T"
    assert a.proc.stop() == 0
    assert any(r["event"].endswith(" shutting down") for r in records())  # all still JSON

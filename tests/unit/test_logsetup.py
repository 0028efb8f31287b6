"""Logging: plain (RFC 3339 times), JSON and journald (native protocol, and the prefixed lines
it falls back to), one record per event, levels, and the flood rate limit."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
import sys

import pytest

from tests.harness.journal import parse_journal
from tunnelpy import logsetup
from tunnelpy.logsetup import JournalFormatter, PlainFormatter, RateLimitFilter


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def record(
    msg: str, *args: object, level: int = logging.WARNING, name: str = "tunnelpyd", **extra: object
):
    r = logging.LogRecord(name, level, __file__, 1, msg, args, None)
    r.__dict__.update(extra)
    return r


RFC3339_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d")


@pytest.fixture(autouse=True)
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {n: logging.getLogger(n).level for n in logsetup.OUR_LOGGERS}
    yield
    for h in root.handlers:
        if h not in handlers:
            h.close()
    root.handlers[:] = handlers
    root.setLevel(level)
    for n, lv in levels.items():
        logging.getLogger(n).setLevel(lv)


def test_journal_formatter_priority_prefix_no_timestamp_one_line():
    f = JournalFormatter()
    assert f.format(record("peer %s: handshake complete", "b", level=logging.INFO)) == (
        "<6>peer b: handshake complete"
    )
    assert f.format(record("bad", level=logging.WARNING)) == "<4>bad"
    assert f.format(record("x", level=logging.ERROR)) == "<3>x"
    assert f.format(record("x", level=logging.DEBUG)) == "<7>x"
    assert f.format(record("x", level=logging.CRITICAL)) == "<2>x"
    assert f.format(record("two\nlines")) == "<4>two lines"


def test_journal_formatter_traceback_lines_keep_the_prefix():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        r = logging.LogRecord("tunnelpyd", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    lines = JournalFormatter().format(r).splitlines()
    assert lines[0] == "<3>failed"
    assert all(line.startswith("<3>") for line in lines)
    assert any("ValueError: boom" in line for line in lines)


def test_plain_formatter_has_timestamp_and_one_line():
    text = PlainFormatter().format(record("a\nb", level=logging.INFO))
    assert text.endswith(" INFO a b") and "\n" not in text
    assert text[:4].isdigit()


def test_plain_time_is_rfc3339_with_milliseconds_and_zone(monkeypatch):
    import time

    r = record("x", level=logging.INFO)
    r.created = 1767225600.25  # 2026-01-01T00:00:00.250Z
    stamp = PlainFormatter().format(r).split(" ")[0]
    assert RFC3339_MS.fullmatch(stamp), stamp
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # +05:30: the offset is the zone's, not a guess
    time.tzset()
    try:
        assert PlainFormatter().format(r).startswith("2026-01-01T05:30:00.250+05:30 INFO x")
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_json_one_object_per_line_with_peer_and_exception():
    f = logsetup.JsonFormatter()
    r = record("peer %s: up", "site-b", level=logging.INFO, peer="site-b")
    doc = json.loads(f.format(r))
    assert set(doc) == {"time", "level", "event", "peer", "logger"}
    assert RFC3339_MS.fullmatch(doc["time"])
    assert doc["level"] == "info" and doc["event"] == "peer site-b: up" and doc["peer"] == "site-b"
    assert doc["logger"] == "tunnelpyd"
    no_peer = json.loads(f.format(record('two\nlines "quoted"')))
    assert "peer" not in no_peer and no_peer["event"] == 'two lines "quoted"'
    try:
        raise ValueError("boom")
    except ValueError:
        r = logging.LogRecord("tunnelpyd", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    text = f.format(r)
    assert "\n" not in text and "ValueError: boom" in json.loads(text)["exception"]


@pytest.fixture
def journal(tmp_path):
    path = str(tmp_path / "journal.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2)
    yield path, s
    s.close()


def test_journald_native_fields(journal):
    path, s = journal
    out = io.StringIO()
    handler = logsetup.setup_logging("debug", stream=out, journal=True, journal_socket=path)
    assert isinstance(handler, logsetup.JournalHandler)
    log = logging.getLogger("tunnelpyd")
    log.info("peer %s: up", "site-b", extra={"peer": "site-b"})
    f = parse_journal(s.recv(65536))
    assert f["MESSAGE"] == "peer site-b: up" and f["PRIORITY"] == "6"
    assert f["PEER"] == "site-b" and f["EVENT"] == "peer %s: up"
    assert f["SYSLOG_IDENTIFIER"] == "tunnelpyd" and f["CODE_FILE"] == __file__
    assert int(f["CODE_LINE"]) > 0 and f["CODE_FUNC"] == "test_journald_native_fields"
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("reload failed part-way")
    f = parse_journal(s.recv(65536))
    assert f["PRIORITY"] == "3" and "PEER" not in f
    lines = f["MESSAGE"].split("\n")  # the binary encoding carries the traceback's newlines
    assert lines[0] == "reload failed part-way" and lines[-1] == "ValueError: boom"
    assert out.getvalue() == ""


def test_journald_refusal_falls_back_to_prefixed_stderr(journal, tmp_path):
    path, s = journal
    out = io.StringIO()
    handler = logsetup.setup_logging("info", stream=out, journal=True, journal_socket=path)
    s.close()
    os.unlink(path)  # journald went away
    logging.getLogger("tunnelpyd").warning("peer %s: down", "b", extra={"peer": "b"})
    assert out.getvalue() == "<4>peer b: down\n"
    assert isinstance(handler, logsetup.JournalHandler) and handler.fallbacks == 1
    # no socket at start-up: prefixed lines from the start
    gone = logsetup.setup_logging(
        "info", stream=out, journal=True, journal_socket=str(tmp_path / "none")
    )
    assert not isinstance(gone, logsetup.JournalHandler)


def test_set_format_switches_unless_pinned():
    out = io.StringIO()
    logsetup.setup_logging("info", stream=out, journal=False)
    log = logging.getLogger("tunnelpyd")
    log.info("one")
    logsetup.set_format("json")
    log.info("two")
    logsetup.set_format(None)
    log.info("three")
    lines = out.getvalue().splitlines()
    assert lines[0].endswith(" INFO one") and json.loads(lines[1])["event"] == "two"
    assert lines[2].endswith(" INFO three")
    out2 = io.StringIO()
    logsetup.setup_logging("info", fmt="json", pinned=True, stream=out2, journal=False)
    logsetup.set_format("plain")  # a reload's LogFormat: the command line wins
    log.info("four")
    assert json.loads(out2.getvalue())["event"] == "four"


def test_journal_detection_compares_device_and_inode(tmp_path):
    f = open(tmp_path / "log", "w")  # noqa: SIM115
    try:
        st = os.fstat(f.fileno())
        assert logsetup.stderr_is_journal(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not logsetup.stderr_is_journal(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not logsetup.stderr_is_journal(f, {})
        assert not logsetup.stderr_is_journal(f, {"JOURNAL_STREAM": "garbage"})
    finally:
        f.close()


def test_setup_logging_levels_and_format():
    out = io.StringIO()
    logsetup.setup_logging("warning", stream=out, journal=True, journal_socket=None)
    log = logging.getLogger("tunnelpyd")
    log.info("hidden")
    log.warning("shown %d", 1)
    logging.getLogger("tunnelpy.io.uapi").warning("child logger")
    logging.getLogger("pyroute2").info("library chatter")
    assert out.getvalue().splitlines() == ["<4>shown 1", "<4>child logger"]
    logsetup.set_level("debug")
    log.debug("now visible")
    assert out.getvalue().splitlines()[-1] == "<7>now visible"


def test_rate_limit_burst_then_summary():
    clock = Clock()
    f = RateLimitFilter(burst=3, interval=10, clock=clock)
    passed = [f.filter(record("bad packet from %s", f"10.0.0.{i}")) for i in range(100)]
    assert passed[:3] == [True] * 3 and not any(passed[3:])
    assert f.suppressed_total == 97
    # another template is not affected
    assert f.filter(record("peer %s up", "b"))
    clock.t += 10
    r = record("bad packet from %s", "10.0.0.200")
    assert f.filter(r)
    assert r.getMessage() == "bad packet from 10.0.0.200 [97 similar message(s) suppressed]"
    assert f.filter(record("bad packet from %s", "x"))


def test_rate_limit_flush_reports_ended_floods():
    clock = Clock()
    f = RateLimitFilter(burst=1, interval=5, clock=clock)
    for _ in range(10):
        f.filter(record("flood"))
    out = io.StringIO()
    logger = logging.getLogger("test.ratelimit.flush")
    handler = logging.StreamHandler(out)
    handler.addFilter(f)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        assert f.flush(logger) == 0  # the window is not over yet
        clock.t += 5
        assert f.flush(logger) == 1
        assert out.getvalue().strip() == "9 similar message(s) suppressed (tunnelpyd: flood)"
        assert f.flush(logger) == 0
    finally:
        logger.removeHandler(handler)


def test_rate_limit_table_is_bounded():
    clock = Clock()
    f = RateLimitFilter(burst=1, interval=10, clock=clock, max_templates=50)
    for i in range(1000):
        assert f.filter(record(f"unique message {i}"))  # f-string messages: a new template each
    assert len(f._windows) <= 50


def test_end_to_end_flood_costs_few_lines():
    out = io.StringIO()
    logsetup.setup_logging("debug", stream=out, journal=False, burst=5, interval=60)
    log = logging.getLogger("tunnelpyd")
    for i in range(10_000):
        log.warning("peer %s: bad packet", i)
    assert len(out.getvalue().splitlines()) == 5
    assert logsetup.rate_limiter() is not None
    assert logsetup.rate_limiter().suppressed_total == 9995


def test_logformat_key_in_interface():
    from tunnelpy import config as cfgmod
    from tunnelpy import keys

    head = f"[Interface]\nPrivateKey = {keys.generate_private()}\n"
    assert cfgmod.parse(head).interface.log_format is None
    assert cfgmod.parse(head + "LogFormat = JSON\n").interface.log_format == "json"
    with pytest.raises(cfgmod.ConfigError) as e:
        cfgmod.parse(head + "LogFormat = jsno\n")
    assert str(e.value) == (
        "<string>:3: Interface.LogFormat: 'jsno' is not a log format (did you mean json?), "
        "expected one of plain, json"
    )

"""Logging: journald format, one line per event, levels, and the flood rate limit."""

from __future__ import annotations

import io
import logging
import os

import pytest

from tunnelpy import logsetup
from tunnelpy.logsetup import JournalFormatter, PlainFormatter, RateLimitFilter


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def record(msg: str, *args: object, level: int = logging.WARNING, name: str = "tunnelpyd"):
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


@pytest.fixture(autouse=True)
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {n: logging.getLogger(n).level for n in logsetup.OUR_LOGGERS}
    yield
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
    logsetup.setup_logging("warning", stream=out, journal=True)
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

"""Logging for tunnelpyd and tunnelpy: one line per event, journald-friendly, rate-limited.

* **Format.** When stderr is the journal (``$JOURNAL_STREAM`` names the device and inode of our
  stderr, as systemd sets it for ``StandardError=journal``) each line is ``<N>message`` with
  the sd-daemon(3) priority prefix and no timestamp of our own (the journal has better ones).
  Otherwise lines are ``2026-01-01T12:00:00 INFO message``. A message is always one line: embedded
  newlines are folded to spaces; a traceback keeps its lines, each with the priority prefix.
* **Levels.** ``--log-level`` / ``LogLevel =`` set tunnelpy's own loggers (``tunnelpyd``,
  ``tunnelpy``, ``tunnelpy.*``); libraries such as pyroute2 stay at WARNING so a debug log is
  about the tunnel, not netlink internals. :func:`set_level` changes it at run time (reload).
* **Rate limit.** :class:`RateLimitFilter` lets at most ``burst`` records of one message
  template (logger, level, format string) through per ``interval`` seconds and counts the rest;
  the next record let through for that template says how many were suppressed, and
  :meth:`RateLimitFilter.flush` (called from the daemon's periodic timer) reports counts
  of floods that have ended. A flood of bad packets or handshake attempts therefore costs the
  journal a few lines per interval, never one per packet. The table of templates is bounded.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import TextIO

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "silent": logging.CRITICAL + 10,  # wireguard-go's LOG_LEVEL=silent: nothing at all
}
OUR_LOGGERS = ("tunnelpyd", "tunnelpy")

# sd-daemon(3) priorities: <7> debug ... <2> critical.
PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


def _priority(levelno: int) -> int:
    for level in sorted(PRIORITY, reverse=True):
        if levelno >= level:
            return PRIORITY[level]
    return 7


def _one_line(text: str) -> str:
    return " ".join(text.splitlines()) if "\n" in text or "\r" in text else text


class JournalFormatter(logging.Formatter):
    """``<priority>message``: no timestamp, one journal entry per event."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_priority(record.levelno)}>"
        text = prefix + _one_line(record.getMessage())
        if record.exc_info:
            tb = self.formatException(record.exc_info)
            text += "\n" + "\n".join(prefix + line for line in tb.splitlines())
        return text


class PlainFormatter(logging.Formatter):
    """``TIMESTAMP LEVEL message`` for a terminal or a log file."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = _one_line(record.message)
        return super().formatMessage(record)


def stderr_is_journal(stream: TextIO | None = None, environ: dict[str, str] | None = None) -> bool:
    """True when ``$JOURNAL_STREAM`` (``DEV:INODE``) is the stream's file (sd_journal_stream_fd)."""
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    stream = sys.stderr if stream is None else stream
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


class RateLimitFilter(logging.Filter):
    """At most ``burst`` records per message template per ``interval`` seconds (see the module
    docstring). ``clock`` is injectable for tests; ``max_templates`` bounds the table."""

    def __init__(
        self,
        burst: int = 10,
        interval: float = 10.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_templates: int = 1024,
    ) -> None:
        super().__init__()
        self.burst = burst
        self.interval = interval
        self.clock = clock
        self.max_templates = max_templates
        # template -> [window start, records in window, suppressed in window]
        self._windows: dict[tuple[str, int, str], list[float]] = {}
        self.suppressed_total = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "ratelimit_summary", False):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        w = self._windows.get(key)
        if w is None:
            if len(self._windows) >= self.max_templates:
                self._evict(now)
            self._windows[key] = [now, 1, 0]
            return True
        if now - w[0] >= self.interval:
            suppressed = int(w[2])
            w[0], w[1], w[2] = now, 1, 0
            if suppressed:
                record.msg = (
                    f"{_one_line(record.getMessage())} [{suppressed} similar message(s) suppressed]"
                )
                record.args = ()
            return True
        if w[1] < self.burst:
            w[1] += 1
            return True
        w[2] += 1
        self.suppressed_total += 1
        return False

    def _evict(self, now: float) -> None:
        # Drop the windows that are over and hold no pending count; failing that, the oldest.
        stale = [k for k, w in self._windows.items() if now - w[0] >= self.interval and not w[2]]
        for k in stale or [min(self._windows, key=lambda k: self._windows[k][0])]:
            del self._windows[k]

    def flush(self, logger: logging.Logger | None = None) -> int:
        """Report templates whose window is over with suppressed records; returns how many."""
        now = self.clock()
        out = logger or logging.getLogger("tunnelpyd")
        reported = 0
        for (name, level, msg), w in list(self._windows.items()):
            if w[2] and now - w[0] >= self.interval:
                out.log(
                    level,
                    "%d similar message(s) suppressed (%s: %s)",
                    int(w[2]),
                    name,
                    _one_line(msg),
                    extra={"ratelimit_summary": True},
                )
                del self._windows[(name, level, msg)]
                reported += 1
        return reported


_rate_limit: RateLimitFilter | None = None


def rate_limiter() -> RateLimitFilter | None:
    """The filter installed by :func:`setup_logging` (None before it ran)."""
    return _rate_limit


def setup_logging(
    level: str = "info",
    *,
    stream: TextIO | None = None,
    journal: bool | None = None,
    burst: int = 10,
    interval: float = 10.0,
) -> logging.Handler:
    """Install the one handler on the root logger; return it.

    ``journal`` None: detect from ``$JOURNAL_STREAM``. ``burst``/``interval``: the rate limit.
    """
    global _rate_limit
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    if journal is None:
        journal = stderr_is_journal(stream)
    handler.setFormatter(JournalFormatter() if journal else PlainFormatter())
    _rate_limit = RateLimitFilter(burst, interval)
    handler.addFilter(_rate_limit)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    set_level(level)
    return handler


def set_level(level: str) -> None:
    """Set tunnelpy's own loggers to ``level`` (one of LEVELS; unknown names mean info)."""
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(LEVELS.get(level.lower(), logging.INFO))

"""Logging for tunnelpyd and tunnelpy: one record per event, for a terminal, journald or a log
shipper, rate-limited.

* **Formats.** ``plain`` (the default): ``2026-01-01T12:00:00.123+01:00 INFO message``, an
  RFC 3339 time with milliseconds and the local zone's offset. ``json`` (``LogFormat = json``,
  ``--log-format json``): one JSON object a line, ``{"time", "level", "event", "peer",
  "logger"}`` (``peer`` only when the record names one; ``exception`` with a traceback), for
  Loki, ELK or Vector, which need no parsing rules for it.
* **journald.** When stderr is the journal (``$JOURNAL_STREAM`` names the device and inode of
  our stderr, as systemd sets it for ``StandardError=journal``) and the format is ``plain``,
  records go to journald's native socket (``/run/systemd/journal/socket``, the datagram protocol
  of systemd's ``sd_journal_sendv``) with structured fields: ``MESSAGE``, ``PRIORITY``,
  ``SYSLOG_IDENTIFIER``, ``EVENT`` (the message's template, the same for every peer: ``peer %s:
  up``), ``PEER`` (when the record names one), ``CODE_FILE``/``CODE_LINE``/``CODE_FUNC``. A
  datagram the socket refuses (no journald, a message over the socket's size limit, a full
  queue: the socket never blocks the event loop) is written to stderr instead as
  ``<N>message`` with the sd-daemon(3) priority prefix and no timestamp of our own, which the
  journal also understands, only without the extra fields.
* **Peers.** A record names its peer with ``log.info("peer %s: up", name, extra={"peer":
  name})``: the JSON ``peer`` field and journald's ``PEER=`` come from there, not from parsing
  the text.
* A message is always one line: embedded newlines are folded to spaces; a traceback keeps its
  lines (plain: each with the priority prefix under the journal; JSON: in ``exception``).
* **Levels.** ``--log-level`` / ``LogLevel =`` set tunnelpy's own loggers (``tunnelpyd``,
  ``tunnelpy``, ``tunnelpy.*``); libraries such as pyroute2 stay at WARNING so a debug log is
  about the tunnel, not netlink internals. :func:`set_level` changes it at run time (reload),
  :func:`set_format` the format (unless the command line pinned it).
* **Rate limit.** :class:`RateLimitFilter` lets at most ``burst`` records of one message
  template (logger, level, format string) through per ``interval`` seconds and counts the rest;
  the next record let through for that template says how many were suppressed, and
  :meth:`RateLimitFilter.flush` (called from the daemon's periodic timer) reports counts
  of floods that have ended. A flood of bad packets or handshake attempts therefore costs the
  journal a few lines per interval, never one per packet. The table of templates is bounded.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import TextIO

from .io import knobs

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "silent": logging.CRITICAL + 10,  # wireguard-go's LOG_LEVEL=silent: nothing at all
}
OUR_LOGGERS = ("tunnelpyd", "tunnelpy")
FORMATS = ("plain", "json")
JOURNAL_SOCKET = "/run/systemd/journal/socket"

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


def rfc3339(created: float) -> str:
    """``2026-01-01T12:00:00.123+01:00``: milliseconds and the local zone's offset."""
    stamp = datetime.datetime.fromtimestamp(created).astimezone()
    return stamp.isoformat(timespec="milliseconds")


class PlainFormatter(logging.Formatter):
    """``TIME LEVEL message`` for a terminal or a log file (TIME: :func:`rfc3339`)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return rfc3339(record.created)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = _one_line(record.message)
        return super().formatMessage(record)


def record_peer(record: logging.LogRecord) -> str | None:
    """The peer a record names (``extra={"peer": name}``), or None."""
    peer = getattr(record, "peer", None)
    return None if peer is None else str(peer)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (json.dumps escapes every newline)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": rfc3339(record.created),
            "level": record.levelname.lower(),
            "event": _one_line(record.getMessage()),
        }
        peer = record_peer(record)
        if peer is not None:
            doc["peer"] = peer
        doc["logger"] = record.name
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def journal_fields(record: logging.LogRecord, identifier: str) -> list[tuple[str, str]]:
    """The journal fields of one record (see the module docstring)."""
    message = _one_line(record.getMessage())
    if record.exc_info:
        message += "\n" + logging.Formatter().formatException(record.exc_info)
    fields = [
        ("MESSAGE", message),
        ("PRIORITY", str(_priority(record.levelno))),
        ("SYSLOG_IDENTIFIER", identifier),
        ("EVENT", _one_line(str(record.msg))),
    ]
    peer = record_peer(record)
    if peer is not None:
        fields.append(("PEER", peer))
    fields += [
        ("CODE_FILE", record.pathname),
        ("CODE_LINE", str(record.lineno)),
        ("CODE_FUNC", record.funcName or ""),
        ("LOGGER", record.name),
    ]
    return fields


def encode_journal(fields: list[tuple[str, str]]) -> bytes:
    """journald's native datagram: ``KEY=value\\n``, or for a value holding a newline
    ``KEY\\n``, its length as a little-endian 64-bit integer, the value, ``\\n``."""
    out = bytearray()
    for key, value in fields:
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalHandler(logging.Handler):
    """Records to journald's native socket; what it refuses goes to ``fallback`` (stderr)."""

    def __init__(
        self,
        fallback: logging.Handler,
        address: str = JOURNAL_SOCKET,
        identifier: str = "tunnelpyd",
    ) -> None:
        super().__init__()
        self.fallback = fallback
        self.address = address
        self.identifier = identifier
        # Non-blocking: a journald that does not keep up must not stall the data path.
        self.sock = socket.socket(
            socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
        )
        self.fallbacks = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = encode_journal(journal_fields(record, self.identifier))
            self.sock.sendto(data, self.address)
        except OSError:
            self.fallbacks += 1
            self.fallback.emit(record)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)

    def close(self) -> None:
        self.sock.close()
        super().close()


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


_format_pinned = False  # the command line named a format: the config's LogFormat is ignored
_stream: TextIO | None = None
_journal: bool | None = None
_journal_socket: str | None = JOURNAL_SOCKET


def setup_logging(
    level: str = "info",
    *,
    fmt: str | None = None,
    pinned: bool = False,
    stream: TextIO | None = None,
    journal: bool | None = None,
    journal_socket: str | None = JOURNAL_SOCKET,
    burst: int = 10,
    interval: float = 10.0,
) -> logging.Handler:
    """Install the one handler on the root logger; return it.

    ``fmt``: one of FORMATS (None: plain); ``pinned``: it came from the command line, so
    :func:`set_format` (a reload's LogFormat) leaves it. ``journal`` None: detect from
    ``$JOURNAL_STREAM``; ``journal_socket`` None: never the native protocol, prefixed lines on
    the stream instead. ``burst``/``interval``: the rate limit.
    """
    global _rate_limit, _format_pinned, _stream, _journal, _journal_socket
    override = knobs.journal_socket()  # tests: their own listener, or "none"
    if override and journal_socket == JOURNAL_SOCKET:
        journal_socket = None if override == "none" else override
    _stream = sys.stderr if stream is None else stream
    _journal = stderr_is_journal(_stream) if journal is None else journal
    _journal_socket = journal_socket
    _format_pinned = pinned
    _rate_limit = RateLimitFilter(burst, interval)
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    handler = _install(fmt or "plain")
    set_level(level)
    return handler


def _handler(fmt: str) -> logging.Handler:
    stream_handler = logging.StreamHandler(_stream)
    if fmt == "json":
        stream_handler.setFormatter(JsonFormatter())
        return stream_handler
    if not _journal:
        stream_handler.setFormatter(PlainFormatter())
        return stream_handler
    stream_handler.setFormatter(JournalFormatter())
    if _journal_socket is None or not os.path.exists(_journal_socket):
        return stream_handler
    return JournalHandler(stream_handler, _journal_socket)


def _install(fmt: str) -> logging.Handler:
    handler = _handler(fmt)
    if _rate_limit is not None:
        handler.addFilter(_rate_limit)
    root = logging.getLogger()
    for old in root.handlers:
        if isinstance(old, JournalHandler):
            old.close()
    root.handlers[:] = [handler]
    return handler


def set_format(fmt: str | None) -> None:
    """A reload's ``LogFormat``: switch the format, unless ``--log-format`` pinned one."""
    if _format_pinned or _stream is None:
        return
    _install(fmt or "plain")


def set_level(level: str) -> None:
    """Set tunnelpy's own loggers to ``level`` (one of LEVELS; unknown names mean info)."""
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(LEVELS.get(level.lower(), logging.INFO))

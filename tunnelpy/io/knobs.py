"""Every ``TUNNELPY_*`` environment knob, read in one place.

They exist for tests and benchmarks, never for production configuration (docs/testing.md,
docs/performance.md): a knob changes how the daemon runs without touching its config file, so
a whole test suite can run a second time with offloads off, with workers, or with protocol time
sped up. Each function reads the environment when called (a test may set a knob for a child
process it starts) and returns None/False when the knob is unset or malformed; a malformed
value the user clearly meant to set is reported by its caller, not silently ignored.
"""

from __future__ import annotations

import os

MAX_WORKERS = 64  # the config's upper bound for Workers (config.MAX_WORKERS is this)


def _get(name: str) -> str:
    return os.environ.get(name, "").strip()


def time_scale() -> str | None:
    """``TUNNELPY_TEST_TIME_SCALE=S``: protocol timers run 1/S times faster (datapath.ProtocolClock);
    the raw text, which the daemon validates and reports."""
    return _get("TUNNELPY_TEST_TIME_SCALE") or None


def forced_workers() -> int | None:
    """``TUNNELPY_TEST_WORKERS=N`` makes every WireGuard daemon run N data-path processes
    whatever its config says, so a whole test suite can run with workers."""
    value = _get("TUNNELPY_TEST_WORKERS")
    if value.isdigit() and 1 <= int(value) <= MAX_WORKERS:
        return int(value)
    return None


def offload_forced_off() -> bool:
    """``TUNNELPY_TEST_OFFLOAD=off`` turns every offload off whatever the config says, so the
    whole integration suite can run once with offloads and once without."""
    return _get("TUNNELPY_TEST_OFFLOAD").lower() == "off"


def compiled_forced_off() -> bool:
    """``TUNNELPY_TEST_COMPILED=off`` runs the Python segment loops although the compiled module
    is built, so a test run (or a bench row) can compare the two end to end."""
    return _get("TUNNELPY_TEST_COMPILED").lower() == "off"


def aead_copy() -> bool:
    """``TUNNELPY_TEST_AEAD=copy`` replaces the transport cipher by a copy (compiled AEAD only):
    the bench's floor, what the kernel and the rest of the data path cost without the cipher.
    Both ends must run with it; nothing in a config reaches it."""
    return _get("TUNNELPY_TEST_AEAD").lower() == "copy"


def aqm_off() -> bool:
    """``TUNNELPY_TEST_AQM=off``: no CoDel on the receive queue (io/codel.py), so bench/ can
    measure latency under load both ways."""
    return _get("TUNNELPY_TEST_AQM").lower() == "off"


def socket_buffer(default: int) -> int:
    """``TUNNELPY_SOCKET_BUFFER=BYTES`` (0 = the kernel's default) for the UDP socket buffers,
    which exists so bench/ can measure both ways."""
    value = _get("TUNNELPY_SOCKET_BUFFER")
    return int(value) if value.isdigit() else default


def journal_socket() -> str | None:
    """``TUNNELPY_TEST_JOURNAL_SOCKET=PATH``: under systemd, log to a journald native socket at
    PATH (a test's own listener) instead of /run/systemd/journal/socket; ``none``: never the
    native protocol (prefixed lines on stderr, whatever the host runs). Unset: None."""
    return _get("TUNNELPY_TEST_JOURNAL_SOCKET") or None

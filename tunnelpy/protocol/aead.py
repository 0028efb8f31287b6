"""The optional compiled transport AEAD (protocol/_aead.pyx), and whether keypairs use it.

setup.py builds ``_aead`` with Cython at install, linked against OpenSSL's libcrypto; where it
could not be built (no compiler, no Cython, no OpenSSL headers) :data:`BUILT` is False and every
keypair seals and opens with `cryptography`, one call per message (session.seal_batch and the
engine's receive loop), which gives the same bytes and the same drops: tests/unit/test_aead.py
runs both.

Whether new keypairs use the compiled module is :func:`enabled`. The shell turns it off for the
testing knob ``TUNNELPY_TEST_COMPILED=off`` (read in io/knobs.py, which this sans-I/O package
cannot import: Device and the worker call :func:`enable`), so a whole test run or a bench row
can compare the two paths end to end. The choice is made when a keypair is created, so a
switch never changes a live keypair's path halfway.

The bench's floor (``TUNNELPY_TEST_AEAD=copy``, docs/performance.md): :func:`enable` with
``copy=True`` makes new keypairs' compiled AEAD a plain copy with a zero tag, so a run shows
what everything but the cipher costs. Both ends must run so (they do not interoperate with
anything else), and nothing in a config reaches it: it is a testing knob only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

try:
    from ._aead import Opener, Sealer, Window, egress_run, flow_run, same_destination, vxlan_run

    BUILT = True
except ImportError:  # pragma: no cover - depends on the build
    BUILT = False

__all__ = [
    "BUILT", "Opener", "Sealer", "Window", "copying", "destination_runs", "egress_runs", "enable",
    "enabled", "flow_runs", "vxlan_runs",
]  # fmt: skip

_enabled = BUILT
_copy = False


def enable(on: bool, *, copy: bool = False) -> None:
    """Use the compiled module for keypairs made from now on (when it is built); `copy`: the
    floor, no cipher (see above)."""
    global _enabled, _copy
    _enabled = on and BUILT
    _copy = copy and _enabled


def enabled() -> bool:
    """True when new keypairs seal and open with the compiled module."""
    return _enabled


def copying() -> bool:
    """True when new keypairs' "AEAD" is the floor's copy (never outside a bench)."""
    return _copy


def destination_runs() -> Callable[[list[Any], int], int] | None:
    """The compiled scan for runs of one destination (allowedips.route_packets), or None when
    the compiled module is off (the same switch as the AEAD's, so a run with
    TUNNELPY_TEST_COMPILED=off routes in Python throughout)."""
    return same_destination if _enabled else None


def egress_runs() -> Callable[[list[Any], int, bytes, int, list[bytes]], int] | None:
    """The compiled loop of switch.Switch.egress for one run of frames to one destination, or
    None when the compiled module is off (as destination_runs)."""
    return egress_run if _enabled else None


def flow_runs() -> Callable[[list[Any], int, int], int] | None:
    """The compiled scan for runs of frames with one VXLAN flow hash (vxlan.py's send), or None
    when the compiled module is off (as destination_runs)."""
    return flow_run if _enabled else None


def vxlan_runs() -> Callable[[list[Any], int, bytes, object, list[bytes]], tuple[int, int]] | None:
    """The compiled loop of plain VXLAN's receive run (vxlan.py), or None when the compiled
    module is off (as destination_runs)."""
    return vxlan_run if _enabled else None

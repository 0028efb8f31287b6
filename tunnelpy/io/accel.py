"""The optional compiled segment loops (tunnelpy/io/_segments.pyx), or None for each.

setup.py builds the module with Cython at install; where it could not be built, or with the
testing knob ``TUNNELPY_TEST_COMPILED=off`` (so a test run or a bench row can compare the two
end to end), every name is None and segmentation, GRO, the TUN reader and the UDP receive
run their own Python loops, which give the same bytes.
"""

from __future__ import annotations

from . import knobs

try:
    from . import _segments as _built
except ImportError:  # pragma: no cover - depends on the build
    _built = None  # type: ignore[assignment]

_off = knobs.compiled_forced_off()
join_run = None if _built is None or _off else _built.join_run
split_tcp_segments = None if _built is None or _off else _built.split_tcp_segments
read_packets = None if _built is None or _off else _built.read_packets
cut_datagrams = None if _built is None or _off else _built.cut_datagrams
vouch_frames = None if _built is None or _off else _built.vouch_frames
# read_packets' outcomes that its caller acts on (the module's own numbers; unused without it).
READ_SUPER = None if _built is None else _built.READ_SUPER
READ_ERROR = None if _built is None else _built.READ_ERROR

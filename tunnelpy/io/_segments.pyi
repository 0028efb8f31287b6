"""Types of the compiled segment loops (_segments.pyx), for callers checked by mypy.

read_packets' outcome is one of the READ_* numbers.

Offsets that would leave the buffers are refused: `join_run` then takes nothing,
`split_tcp_segments` raises ValueError.
"""

def join_run(
    packets: list[bytes],
    i: int,
    limit: int,
    first: bytes,
    raw: int,
    end: int,
    l3: int,
    t: int,
    h: int,
    v6: bool,
    next_seq: int,
    gso: int,
) -> tuple[int, bool, bytes | None]: ...
def split_tcp_segments(
    buf: bytes | bytearray | memoryview,
    h: int,
    mss: int,
    hdr: bytes,
    ip: int,
    tt: int,
    iphl: int,
    thl: int,
    v6: bool,
    seq0: int,
    flags0: int,
    ipid0: int,
    ip_sum: int,
    base_sum: int,
) -> list[bytes]: ...

READ_DRAINED: int
READ_BUDGET: int
READ_SUPER: int
READ_ERROR: int

def read_packets(
    fd: int, out: list[bytes], max_reads: int, max_out: int, buf: bytearray, vnet: bool
) -> tuple[int, int, int | None, int, int]: ...
def cut_datagrams(data: bytes, size: int, origin: object, out: list) -> None: ...
def vouch_frames(frames: list[bytes]) -> list[bool] | None: ...

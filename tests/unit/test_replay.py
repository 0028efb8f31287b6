"""RFC 6479 replay window: edges, and equivalence with a brute-force model."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tunnelpy.protocol.constants import REJECT_AFTER_MESSAGES
from tunnelpy.protocol.replay import WINDOW_SIZE, ReplayWindow


def test_window_size_matches_wireguard_go() -> None:
    assert WINDOW_SIZE == 8128


def test_first_packet_zero_and_duplicate() -> None:
    w = ReplayWindow()
    assert w.accept(0)
    assert not w.accept(0)
    assert w.accept(1)
    assert not w.accept(1)
    assert not w.accept(0)


def test_first_packet_nonzero_then_zero() -> None:
    w = ReplayWindow()
    assert w.accept(5)
    assert w.accept(0)
    assert w.accept(3)
    assert not w.accept(5)


def test_in_order_run() -> None:
    w = ReplayWindow()
    assert all(w.accept(i) for i in range(20_000))
    assert not any(w.accept(i) for i in range(20_000 - WINDOW_SIZE, 20_000))
    assert w.last == 19_999


def test_out_of_order_within_window() -> None:
    w = ReplayWindow()
    order = [10, 8, 9, 2, 7, 3, 1, 0, 4, 6, 5, 100, 50, 99, 64, 63, 65]
    for c in order:
        assert w.accept(c), c
    for c in order:
        assert not w.accept(c), c
    assert w.accept(11)


def test_exact_window_edge() -> None:
    w = ReplayWindow()
    top = 10_000
    assert w.accept(top)
    assert w.accept(top - WINDOW_SIZE)  # exactly WINDOW_SIZE behind: still inside
    assert not w.accept(top - WINDOW_SIZE)
    assert not w.accept(top - WINDOW_SIZE - 1)  # just outside
    assert w.accept(top - 1)


def test_edge_at_start() -> None:
    w = ReplayWindow()
    assert w.accept(WINDOW_SIZE)
    assert w.accept(0)  # last - 0 == WINDOW_SIZE: inside
    w2 = ReplayWindow()
    assert w2.accept(WINDOW_SIZE + 1)
    assert not w2.accept(0)  # just outside
    assert w2.accept(1)


def test_big_jumps_clear_blocks() -> None:
    w = ReplayWindow()
    for c in range(0, 200):
        assert w.accept(c)
    # Jump by more than the whole ring: every old bit must be forgotten, not misread as seen.
    jump = 200 + 128 * 64 * 3 + 17
    assert w.accept(jump)
    for c in range(jump - WINDOW_SIZE, jump):
        assert w.accept(c), c
    assert not w.accept(jump - WINDOW_SIZE - 1)
    # A jump of exactly one ring of blocks reuses the slot of the current block.
    w = ReplayWindow()
    assert w.accept(64)
    assert w.accept(64 + 128 * 64)
    assert w.accept(64 + 128 * 64 - 1)
    assert not w.accept(64)


def test_jump_of_less_than_a_ring_keeps_recent_bits() -> None:
    w = ReplayWindow()
    for c in (8000, 8001, 8100):
        assert w.accept(c)
    assert w.accept(12_000)
    assert not w.accept(8001)
    assert not w.accept(8100)
    assert w.accept(8002)


def test_limit() -> None:
    w = ReplayWindow()
    assert not w.accept(REJECT_AFTER_MESSAGES)
    assert w.accept(REJECT_AFTER_MESSAGES - 1)
    assert not w.accept(REJECT_AFTER_MESSAGES - 1)
    assert not w.accept(1 << 64)
    w = ReplayWindow()
    assert not w.accept(10, limit=10)
    assert w.accept(9, limit=10)
    assert not w.accept(9, limit=10)
    assert not w.accept(-1)
    assert w.last == 9


def test_reset() -> None:
    w = ReplayWindow()
    assert w.accept(0) and w.accept(100_000)
    w.reset()
    assert w.last == 0
    assert w.accept(0)
    assert w.accept(100_000)


class Model:
    """The window's meaning, stated naively: a set of seen counters and the greatest one."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.last = 0

    def accept(self, c: int, limit: int) -> bool:
        if c >= limit or c in self.seen:
            return False
        if c <= self.last and self.last - c > WINDOW_SIZE:
            return False
        self.seen.add(c)
        self.last = max(self.last, c)
        return True


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.integers(0, 300),
            st.integers(0, 40_000),
            st.integers(0, 1 << 20),
            st.integers(REJECT_AFTER_MESSAGES - 20_000, REJECT_AFTER_MESSAGES + 5),
        ),
        max_size=400,
    )
)
def test_equivalent_to_model(counters: list[int]) -> None:
    w, m = ReplayWindow(), Model()
    for c in counters:
        assert w.accept(c) == m.accept(c, REJECT_AFTER_MESSAGES), c


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 1 << 40), st.lists(st.integers(-9000, 9000), max_size=300))
def test_equivalent_to_model_near_a_moving_edge(base: int, deltas: list[int]) -> None:
    w, m = ReplayWindow(), Model()
    c = base
    for d in deltas:
        c = max(0, c + d)
        assert w.accept(c) == m.accept(c, REJECT_AFTER_MESSAGES), c

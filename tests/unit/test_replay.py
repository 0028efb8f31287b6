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


# The in-order early return of accept(): each case below fails if one part of its condition or
# of what it records is changed (same block, strictly above the last, below the limit; the bit
# set; the last counter moved).


def test_in_order_records_the_bit_and_the_last_counter() -> None:
    w = ReplayWindow()
    assert w.accept(1) and w.accept(2) and w.last == 2
    assert not w.accept(2) and not w.accept(1)  # the bits were set
    assert w.accept(3) and w.last == 3


def test_in_order_takes_only_counters_above_the_last() -> None:
    w = ReplayWindow()
    assert w.accept(5)
    assert not w.accept(5)  # equal: a replay, not in order
    assert w.accept(4)  # below, same block: the bit test, not the early return
    assert w.last == 5


def test_in_order_respects_the_limit_within_a_block() -> None:
    w = ReplayWindow()
    assert w.accept(9, limit=11)
    assert not w.accept(10, limit=10)  # same block as 9, but not below the limit
    assert w.accept(10, limit=11) and w.last == 10
    w = ReplayWindow()
    assert w.accept(REJECT_AFTER_MESSAGES - 2)
    assert not w.accept(REJECT_AFTER_MESSAGES)  # the limit's block is the last one's
    assert w.accept(REJECT_AFTER_MESSAGES - 1)


def test_next_block_is_cleared_not_taken_in_order() -> None:
    """Moving into a new block must zero it: its slot in the ring still holds the bits of the
    block one ring earlier. 8255 and 8256 differ only in their low 7 bits, so a same-block
    test on 128 counters instead of 64 would take the early return and keep those bits."""
    w = ReplayWindow()
    assert w.accept(66)  # block 1; its slot is reused by block 129 (8256..8319)
    assert w.accept(8255)  # block 128: slides over blocks 2..128, block 1's bits stay
    assert w.accept(8257)  # block 129: its slot (block 1's) must be cleared first
    assert w.accept(8260)
    assert w.accept(8258)  # 66 + 128 * 64, out of order: a stale bit would read as a replay
    assert not w.accept(8257) and not w.accept(8258) and not w.accept(8260)


def test_in_order_index_is_the_block_in_the_ring() -> None:
    w = ReplayWindow()
    for c in range(64 * 3 + 5):
        assert w.accept(c)
    for c in range(64 * 3 + 5):
        assert not w.accept(c), c

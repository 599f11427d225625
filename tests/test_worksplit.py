"""The split of a phase over workers: the union of the shares is the 1-worker run."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.config.shapes.base import Schedule, build_schedule
from loadgen.config.shapes.burst import BurstLoad
from loadgen.config.shapes.concurrency import ConcurrencyLoad
from loadgen.config.shapes.poisson import PoissonLoad
from loadgen.engine.workers.split import (
    active_workers,
    even_split,
    proportional_split,
    share_ids,
    split_phase,
)


def _open(n: int, cap: int | None = None, seed: int = 0) -> Schedule:
    load = PoissonLoad(rate=10.0, max_concurrency=cap)
    return build_schedule(load, num_requests=n, duration_s=None, seed=seed)


def _closed(c: int, n: int | None, duration: float | None = None) -> Schedule:
    return build_schedule(
        ConcurrencyLoad(concurrency=c), num_requests=n, duration_s=duration, seed=0
    )


def test_even_split_examples() -> None:
    assert even_split(5, 2) == [3, 2]
    assert even_split(4, 2) == [2, 2]
    assert even_split(0, 3) == [0, 0, 0]
    assert even_split(7, 3) == [3, 2, 2]
    with pytest.raises(ValueError):
        even_split(3, 0)
    with pytest.raises(ValueError):
        even_split(-1, 2)


@given(st.integers(0, 10_000), st.integers(1, 64))
def test_even_split_is_balanced(total: int, parts: int) -> None:
    s = even_split(total, parts)
    assert len(s) == parts and sum(s) == total
    assert max(s) - min(s) <= 1
    assert s == sorted(s, reverse=True)


def test_proportional_split_examples() -> None:
    assert proportional_split(10, [3, 2]) == [6, 4]
    assert proportional_split(7, [3, 2]) == [4, 3]  # 4.2, 2.8: the remainder to the larger part
    assert proportional_split(5, [1, 1]) == [3, 2]  # a tie goes to the lower index
    assert proportional_split(0, [2, 2]) == [0, 0]
    with pytest.raises(ValueError):
        proportional_split(3, [0, 0])
    with pytest.raises(ValueError):
        proportional_split(3, [])


@given(st.integers(0, 10_000), st.lists(st.integers(0, 50), min_size=1, max_size=20))
def test_proportional_split_sums_and_stays_within_one(total: int, weights: list[int]) -> None:
    if sum(weights) == 0:
        return
    s = proportional_split(total, weights)
    assert sum(s) == total
    for got, w in zip(s, weights, strict=True):
        exact = total * w / sum(weights)
        assert exact - 1 < got < exact + 1
        if w == 0:
            assert got == 0


@settings(max_examples=200)
@given(st.integers(1, 500), st.integers(1, 40), st.one_of(st.none(), st.integers(1, 50)))
def test_open_loop_round_robin_union_is_the_schedule(n: int, workers: int, cap: int | None) -> None:
    sched = _open(n, cap)
    shares = split_phase(sched, 0, workers)
    a = len(shares)
    assert a == min(workers, n, cap or workers)
    assert [s.worker for s in shares] == list(range(a))
    # request i goes to worker i mod a, at its absolute offset
    assert sched.offsets is not None
    for s in shares:
        assert s.schedule.offsets is not None
        np.testing.assert_array_equal(s.schedule.offsets, sched.offsets[s.worker :: a])
        assert s.schedule.num_requests == len(s.schedule.offsets)
        assert s.schedule.duration_s == sched.duration_s
        assert (s.id_start, s.id_step) == (s.worker, a)
    # the union (offsets with their ids) is exactly the 1-worker schedule
    pairs = sorted(
        (int(i), float(o))
        for s in shares
        for i, o in zip(share_ids(s, len(s.schedule.offsets)), s.schedule.offsets, strict=True)
    )
    assert [i for i, _ in pairs] == list(range(n))
    np.testing.assert_array_equal([o for _, o in pairs], sched.offsets)
    counts = [len(s.schedule.offsets) for s in shares]
    assert max(counts) - min(counts) <= 1
    if cap is not None:
        assert sum(s.schedule.concurrency for s in shares) == cap
        assert all(s.schedule.concurrency >= 1 for s in shares)
    else:
        assert all(s.schedule.concurrency is None for s in shares)


def test_burst_waves_are_dealt_too() -> None:
    sched = build_schedule(
        BurstLoad(size=4, interval_s=1.0), num_requests=12, duration_s=None, seed=0
    )
    shares = split_phase(sched, 0, 3)
    assert [list(s.schedule.offsets) for s in shares] == [
        [0.0, 0.0, 1.0, 2.0],
        [0.0, 1.0, 1.0, 2.0],
        [0.0, 1.0, 2.0, 2.0],
    ]
    assert sorted(np.concatenate([s.schedule.offsets for s in shares])) == list(sched.offsets)


def test_closed_loop_example_from_the_brief() -> None:
    shares = split_phase(_closed(5, 10), 0, 2)
    assert [s.schedule.concurrency for s in shares] == [3, 2]
    assert [s.schedule.num_requests for s in shares] == [6, 4]
    assert all(s.schedule.closed for s in shares)
    # contiguous id blocks: 0..5 and 6..9
    assert [list(share_ids(s, s.schedule.num_requests)) for s in shares] == [
        [0, 1, 2, 3, 4, 5],
        [6, 7, 8, 9],
    ]


@settings(max_examples=200)
@given(st.integers(1, 300), st.one_of(st.none(), st.integers(1, 1000)), st.integers(1, 40))
def test_closed_loop_split(c: int, n: int | None, workers: int) -> None:
    duration = 5.0 if n is None else None
    sched = _closed(c, n, duration)
    shares = split_phase(sched, 0, workers)
    a = len(shares)
    assert a == min(workers, c, n or c)
    slots = [s.schedule.concurrency for s in shares]
    assert sum(slots) == c and max(slots) - min(slots) <= 1 and min(slots) >= 1
    assert all(s.schedule.duration_s == duration for s in shares)
    if n is None:
        assert all(s.schedule.num_requests is None for s in shares)
        # unbounded: strided ids never collide, and their prefixes cover 0..k
        firsts = sorted(int(i) for s in shares for i in share_ids(s, 50))
        assert firsts == list(range(50 * a))
    else:
        counts = [s.schedule.num_requests for s in shares]
        assert sum(counts) == n
        assert counts == proportional_split(n, slots)
        ids = sorted(int(i) for s in shares for i in share_ids(s, s.schedule.num_requests))
        assert ids == list(range(n))


@given(st.integers(0, 200), st.integers(1, 300), st.integers(1, 16))
def test_warmup_split_covers_the_warmup_ids(warmup: int, n: int, workers: int) -> None:
    shares = split_phase(_open(n), warmup, workers)
    w = [s.warmup_requests for s in shares]
    assert sum(w) == warmup and max(w) - min(w) <= 1
    ids = list(
        itertools.chain.from_iterable(
            range(s.warmup_first_id, s.warmup_first_id + s.warmup_requests) for s in shares
        )
    )
    assert ids == list(range(warmup))


def test_active_workers_limits() -> None:
    assert active_workers(_open(3), 8) == 3
    assert active_workers(_open(100, cap=2), 8) == 2
    assert active_workers(_closed(4, None, 1.0), 8) == 4
    assert active_workers(_closed(64, 3), 8) == 3
    assert active_workers(_closed(64, 100), 8) == 8
    with pytest.raises(ValueError):
        active_workers(_open(3), 0)


def test_one_worker_is_the_schedule_itself() -> None:
    sched = _open(50, cap=7)
    (share,) = split_phase(sched, 3, 1)
    np.testing.assert_array_equal(share.schedule.offsets, sched.offsets)
    assert share.schedule.concurrency == 7
    assert (share.warmup_requests, share.warmup_first_id, share.id_start, share.id_step) == (
        3,
        0,
        0,
        1,
    )

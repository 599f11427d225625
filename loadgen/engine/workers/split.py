"""How one phase's load is shared out among N worker processes (pure functions).

The rule is that the workers' union is the single-process run:

- open loop (poisson, gamma, constant, burst, ramp, trace): the precomputed absolute
  offsets are dealt round-robin, request ``i`` to worker ``i mod A``, so the union of the
  shares is exactly the schedule and each worker keeps the absolute times;
- closed loop (concurrency): the slots are split as evenly as possible (5 over 2: 3 + 2),
  a request count in proportion to the slots (10 over 3 + 2: 6 + 4, so every slot runs
  about as many requests and the loop keeps its concurrency until the end), a duration is
  shared;
- a ``max_concurrency`` cap is split like slots; warmup requests evenly.

``A``, the number of *active* workers, is N or fewer: a worker with no slot, no request
or no cap share would only idle, so a phase uses at most ``min(N, slots, requests, cap)``.

Request ids are the ones a 1-worker run gives (so request ``i`` gets the same prompt, and
the ids stay unique): warmup takes the first ``W`` ids of the phase in contiguous blocks,
measured request ``i`` takes id ``W + i``. A worker's measured ids are therefore the
arithmetic sequence ``id_start, id_start + id_step, ...`` (round-robin: start ``k``,
step ``A``; a closed-loop count: its contiguous block, step 1; a closed loop bounded by
time only: start ``k``, step ``A``, never running out).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from loadgen.config.shapes.base import Schedule


@dataclass(frozen=True)
class WorkerShare:
    """Worker ``worker``'s part of a phase; ids are relative to the phase's first id."""

    worker: int
    schedule: Schedule
    warmup_requests: int
    warmup_first_id: int
    id_start: int  # measured ids: id_start + j * id_step, j = 0, 1, ...
    id_step: int


def even_split(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` integers differing by at most one, larger ones first."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    q, r = divmod(total, parts)
    return [q + (i < r) for i in range(parts)]


def proportional_split(total: int, weights: list[int]) -> list[int]:
    """``total`` in proportion to ``weights`` (largest remainder; ties to the lower index)."""
    if not weights or any(w < 0 for w in weights) or sum(weights) == 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {weights}")
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    wsum = sum(weights)
    floors = [total * w // wsum for w in weights]
    rems = [total * w % wsum for w in weights]
    left = total - sum(floors)
    for i in sorted(range(len(weights)), key=lambda i: (-rems[i], i))[:left]:
        floors[i] += 1
    return floors


def active_workers(schedule: Schedule, workers: int) -> int:
    """How many of ``workers`` get a share of this schedule (at least 1)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    n = workers
    if schedule.concurrency is not None:
        n = min(n, schedule.concurrency)
    if schedule.closed:
        if schedule.num_requests is not None:
            n = min(n, schedule.num_requests)
    else:
        assert schedule.offsets is not None
        n = min(n, len(schedule.offsets))
    return max(n, 1)


def split_phase(schedule: Schedule, warmup_requests: int, workers: int) -> list[WorkerShare]:
    """The active workers' shares of one phase (see the module docstring)."""
    a = active_workers(schedule, workers)
    warm = even_split(warmup_requests, a)
    warm_first = [sum(warm[:k]) for k in range(a)]
    caps = even_split(schedule.concurrency, a) if schedule.concurrency is not None else None
    shares: list[WorkerShare] = []
    if schedule.closed:
        assert caps is not None
        counts: list[int | None]
        if schedule.num_requests is None:
            counts = [None] * a
        else:
            counts = list(proportional_split(schedule.num_requests, caps))
        for k in range(a):
            n = counts[k]
            if n is None:
                start, step = k, a
            else:
                start, step = sum(c or 0 for c in counts[:k]), 1
            sched = Schedule(
                offsets=None,
                concurrency=caps[k],
                num_requests=n,
                duration_s=schedule.duration_s,
            )
            shares.append(WorkerShare(k, sched, warm[k], warm_first[k], start, step))
        return shares
    assert schedule.offsets is not None
    for k in range(a):
        offs = np.ascontiguousarray(schedule.offsets[k::a])
        sched = Schedule(
            offsets=offs,
            concurrency=None if caps is None else caps[k],
            num_requests=len(offs),
            duration_s=schedule.duration_s,
        )
        shares.append(WorkerShare(k, sched, warm[k], warm_first[k], k, a))
    return shares


def share_ids(share: WorkerShare, count: int) -> np.ndarray:
    """The first ``count`` measured ids of a share (relative to the measured id base)."""
    return share.id_start + share.id_step * np.arange(count, dtype=np.int64)

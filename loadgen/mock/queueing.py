"""The mock's queueing mode: a fixed number of slots and a per-token service time.

``--max-num-seqs N`` gives the server N slots: a request beyond them waits, in arrival
order, until one frees (:class:`SlotQueue`: strictly first come, first served, which
``asyncio.Semaphore`` does not promise). ``--token-ms T`` makes each output token take T
ms of its slot (:func:`add_token_time`). With both, and ``ignore_eos`` requests of a fixed
length, the mock is a textbook queue whose numbers are known in advance: request i is
admitted at ``max(arrival_i, the earliest time a slot frees)``, holds its slot for the
service time ``S = ttft + (chunks - 1) * itl + tokens * T`` and gets its first chunk
``ttft + tokens_in_it * T`` after admission. That is the server a capacity search is
tested against: where a latency percentile crosses a bound can be computed (tests/queueing.py)
and the search must find it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque


class SlotQueue:
    """N slots handed out first come, first served, on ``time.monotonic``.

    A freed slot goes straight to the longest waiter, so no newcomer can overtake a queued
    request between the release and the waiter's wake-up. The waiter is admitted when the
    slot's last request was *due* to end (``release(end)``), or when it arrived if that is
    later, not when the event loop got round to waking it: timer lateness (up to a
    millisecond per wake-up) then never adds up along a busy period, and the queue's
    dynamics are exactly the model's.
    """

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self._free = slots
        self._waiters: deque[asyncio.Future[float]] = deque()

    @property
    def waiting(self) -> int:
        """Requests queued for a slot."""
        return sum(1 for f in self._waiters if not f.done())

    async def acquire(self) -> float:
        """Wait for a slot; returns the admission time (``time.monotonic``)."""
        arrived = time.monotonic()
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return arrived
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            freed = await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(fut.result())  # handed a slot as we were cancelled: pass it on
            else:
                self._waiters.remove(fut)
            raise
        return max(arrived, freed)

    def release(self, end: float | None = None) -> None:
        """Free a slot whose request ended (or was due to end) at ``end`` (default: now)."""
        at = time.monotonic() if end is None else end
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(at)
                return
        self._free += 1


def add_token_time(targets: list[float], sizes: list[int], token_s: float) -> list[float]:
    """Chunk due times with ``token_s`` per output token added: chunk i is due
    ``token_s`` times the tokens of chunks 0..i later than it was."""
    if not token_s:
        return targets
    done = itertools.accumulate(sizes)
    return [t + token_s * n for t, n in zip(targets, done, strict=True)]

"""The queue the mock's queueing mode is (loadgen/mock/queueing.py), computed exactly.

N slots served first come, first served, each request holding one for a fixed service time
S: request i starts at ``max(arrival_i, earliest free slot)``. From that, the p-th
percentile of TTFT (wait + the first chunk's time) for any arrival schedule, and the load at
which it crosses a bound, found by bisection on a function that is monotone in the load
(compressing a schedule, or adding clients, can only lengthen the waits).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

import numpy as np

from loadgen.config.shapes.base import build_schedule
from loadgen.config.shapes.poisson import PoissonLoad


def fifo_waits(arrivals: np.ndarray, service_s: float, slots: int) -> np.ndarray:
    """Each request's wait for a slot, arrivals in order (open loop)."""
    free = [0.0] * slots
    out = np.empty(len(arrivals))
    for i, a in enumerate(arrivals):
        start = max(a, heapq.heappop(free))
        out[i] = start - a
        heapq.heappush(free, start + service_s)
    return out


def closed_loop_waits(clients: int, n: int, service_s: float, slots: int) -> np.ndarray:
    """The waits of the first ``n`` requests of ``clients`` closed-loop clients, each sending
    its next request the moment its last one ends (ties broken by client order)."""
    free = [0.0] * slots
    ready = [(0.0, c) for c in range(clients)]  # (send time, client)
    heapq.heapify(ready)
    out = np.empty(n)
    for i in range(n):
        sent, c = heapq.heappop(ready)
        start = max(sent, heapq.heappop(free))
        end = start + service_s
        out[i] = start - sent
        heapq.heappush(free, end)
        heapq.heappush(ready, (end, c))
    return out


def poisson_offsets(rate: float, n: int, seed: int) -> np.ndarray:
    """The send offsets loadgen's poisson shape schedules for ``n`` requests."""
    sched = build_schedule(PoissonLoad(rate=rate), num_requests=n, duration_s=None, seed=seed)
    assert sched.offsets is not None
    return sched.offsets


def crossing(f: Callable[[float], float], bound: float, lo: float, hi: float) -> float:
    """The x in [lo, hi] where the non-decreasing f first exceeds ``bound`` (to 1e-6
    relative): f(x) <= bound below it, > bound above."""
    assert f(lo) <= bound < f(hi), (f(lo), bound, f(hi))
    while hi - lo > 1e-6 * hi:
        mid = (lo + hi) / 2
        if f(mid) <= bound:
            lo = mid
        else:
            hi = mid
    return lo

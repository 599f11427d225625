"""A worker's side of a multi-worker phase, the same in a local process and a Ray actor:
what it is given (:class:`WorkerInit` once, a :class:`PhaseJob` per phase), the run's clock
mapped onto its own (:class:`ClockMap`), and :class:`WorkerCore`, which runs its share
through a :class:`~loadgen.engine.phase.PhaseRunner` and reports a :class:`WorkerResult`.
The protocol as a whole is described in :mod:`loadgen.engine.workers.pool`.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from loadgen.config.shapes.base import Schedule
from loadgen.engine.phase import PhaseRunner, RecordOutput, RequestPlan
from loadgen.engine.stop import StopReason, StopSignal
from loadgen.http.base import Clock
from loadgen.results.records import RequestRecord

STOP_GRACE_S = 15.0  # after a stop, a worker that has not finished by then is killed


class WorkerLost(Exception):
    """A worker died, failed, or stopped answering."""


@dataclass(frozen=True)
class WorkerInit:
    """What every phase of a run shares (sent once to each worker)."""

    requests: RequestPlan
    origin_wall: float  # run.json's epoch_origin: clock value 0 in wall time


@dataclass(frozen=True)
class PhaseJob:
    """One worker's part of one phase."""

    phase_name: str
    schedule: Schedule
    warmup_requests: int
    warmup_first_id: int  # absolute request ids
    id_start: int
    id_step: int
    records_path: str | None  # local workers write here; Ray actors buffer


class ClockMap:
    """The run's clock in a worker: ``perf_counter() + offset``, the offset chosen so that
    the wall-clock start the parent picked reads the parent's clock value for it."""

    def __init__(self, origin_wall: float) -> None:
        self.offset = (time.time() - origin_wall) - time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() + self.offset

    def sync(self, wall: float, at: float) -> None:
        p0 = time.perf_counter()
        t = time.time()
        p1 = time.perf_counter()
        perf_at_wall = (p0 + p1) / 2 + (wall - t)
        self.offset = at - perf_at_wall


Rendezvous = Callable[[], Awaitable[tuple[float, float]]]


class LineBuffer:
    """A record writer that keeps JSON lines until :meth:`drain` (Ray actors)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.count = 0

    def write(self, record: RequestRecord) -> None:
        self.lines.append(record.to_json())
        self.count += 1

    def drain(self) -> list[str]:
        out, self.lines = self.lines, []
        return out


@dataclass(frozen=True)
class WorkerResult:
    """What a worker reports when its part of a phase is over."""

    worker: int
    start: float
    end: float
    sent: int
    finished: int
    failed: int
    late_s: float  # how late the worker started after the shared start
    stop_reason: StopReason | None  # the worker stopped (itself, or told to)
    stop_message: str | None


class WorkerCore:
    """Runs phases in a worker (process or actor): a PhaseRunner on the shared clock."""

    def __init__(self, index: int, init: WorkerInit) -> None:
        self.index = index
        self.init = init
        self.clock = ClockMap(init.origin_wall)

    async def run_phase(
        self, job: PhaseJob, writer: RecordOutput, rendezvous: Rendezvous, stop: StopSignal
    ) -> WorkerResult:
        late = [0.0]

        async def measure_start() -> float:
            wall, at = await rendezvous()
            self.clock.sync(wall, at)
            while not stop.is_set() and (delay := at - self.clock()) > 0:
                await asyncio.sleep(min(delay, 0.25))
            late[0] = max(self.clock() - at, 0.0)
            return at

        runner = PhaseRunner(
            self.init.requests,
            phase_name=job.phase_name,
            clock=self.clock,
            writer=writer,
            sinks=[],
            stop=stop,
            first_request_id=job.warmup_first_id,
            max_error_rate=None,  # the parent keeps the budget over all workers' records
            worker=self.index,
        )
        outcome = await runner.run(
            job.schedule,
            job.warmup_requests,
            measure_start,
            itertools.count(job.id_start, job.id_step),
        )
        return WorkerResult(
            worker=self.index,
            start=outcome.start_s,
            end=outcome.end_s,
            sent=outcome.sent,
            finished=outcome.finished,
            failed=outcome.failed,
            late_s=late[0],
            stop_reason=stop.reason,
            stop_message=stop.message,
        )


async def wait_go_or_stop(
    go: asyncio.Future[tuple[float, float]], stop: StopSignal, clock: Clock
) -> tuple[float, float]:
    """The parent's go, or (stopped before it) "now", so the runner ends at once."""
    waiter = asyncio.ensure_future(stop.event.wait())
    try:
        await asyncio.wait({go, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if go.done() and not go.cancelled():
        return go.result()
    return time.time(), clock()

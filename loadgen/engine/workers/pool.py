"""Several worker processes (or Ray actors) driving one phase on one shared clock.

Why: one Python process can only stamp and parse so many chunks a second; past that its
own lag shows up as server latency (``benchmarks/results/workers_scaling.md``). N workers
each run a :class:`~loadgen.engine.phase.PhaseRunner` over their share of the schedule
(:mod:`loadgen.engine.workers.split`), and the parent merges their records into the one
results directory a 1-worker run writes.

A phase, seen from the parent (:meth:`WorkerPool.run`):

1. each active worker gets its share, connects its clients, runs its part of the warmup
   and says *ready*;
2. when all are ready the parent scrapes ``/metrics`` (the "before" of the deltas), picks a
   wall-clock start ``T`` a little in the future and its own clock's value ``at`` for it,
   and sends ``go(T, at)``;
3. each worker maps its ``perf_counter`` so that wall time ``T`` reads ``at``, sleeps
   until then, and sends ``at + offset`` as a 1-worker run would: all records share the
   parent's timeline (on one host exactly; across hosts, to within NTP);
4. each worker appends every finished record to its own ``requests.w<K>.jsonl`` (Ray
   actors: the driver pulls them every quarter second and appends), which the parent
   tails for live progress and the error budget; at the end the parent merges them.

A stop (Ctrl-C, error budget, health check) is sent to every worker, which cancels what
is in flight as a 1-worker run does. A worker that dies or fails stops the phase with
``worker lost: ...`` (never a hang): the phase is marked incomplete.

The worker's side is :mod:`loadgen.engine.workers.core`; local processes are
:mod:`loadgen.engine.workers.local`, Ray actors :mod:`loadgen.engine.workers.ray_actors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any, Protocol

from loadgen.engine.context import PhasePlan, RunContext
from loadgen.engine.driver import MeasureStart, PhaseRun
from loadgen.engine.stop import ErrorBudget, StopReason, StopSignal
from loadgen.engine.workers.core import (
    STOP_GRACE_S,
    PhaseJob,
    WorkerInit,
    WorkerLost,
    WorkerResult,
)
from loadgen.engine.workers.local import GO_MARGIN_S, LocalWorker
from loadgen.engine.workers.split import WorkerShare, split_phase
from loadgen.http.base import Clock
from loadgen.results.files import (
    REQUESTS_FILE,
    merge_worker_records,
    worker_record_files,
    worker_records_path,
)
from loadgen.results.records import ErrorKind, RequestRecord
from loadgen.results.summary import StreamingSummary

PUMP_INTERVAL_S = 0.25  # how often the parent reads the workers' new records


class WorkerHandle(Protocol):
    """The parent's view of one worker, local process or Ray actor."""

    index: int

    async def init(self, init: WorkerInit) -> None: ...
    async def begin(self, job: PhaseJob, records_path: Path) -> None: ...
    async def ready(self) -> None: ...
    async def go(self, wall: float, at: float) -> None: ...
    def stop(self, reason: StopReason, message: str) -> None: ...
    async def done(self) -> WorkerResult: ...
    async def new_lines(self) -> list[bytes]: ...
    def kill(self) -> None: ...
    async def close(self) -> None: ...


_CANCELLED = f'"error_kind":"{ErrorKind.CANCELLED}"'.encode()


class RecordTally:
    """Counts the records as they come in (live progress, the error budget over all
    workers). Failure and warmup are read off the line without a JSON parse, so the
    parent keeps up with many workers; with a live display, lines are parsed for it."""

    def __init__(self, budget: ErrorBudget, live: Any | None = None) -> None:
        self.budget = budget
        self.live = live if live is not None and getattr(live, "enabled", False) else None
        self.warmup = 0

    def feed(self, lines: list[bytes]) -> None:
        for line in lines:
            if not line.strip():
                continue
            if b'"warmup":true' in line:
                self.warmup += 1
                continue
            bad = b'"error":null' not in line
            if self.live is not None:
                with contextlib.suppress(ValueError, TypeError):
                    self.live.add(RequestRecord.from_dict(json.loads(line)))
            self.budget.count(bad, bad and _CANCELLED in line)


class WorkerPool:
    """N workers for a run, driving each phase over them (a
    :class:`~loadgen.engine.driver.PhaseDriver`)."""

    def __init__(
        self,
        handles: list[Any],
        backend: str,
        go_margin_s: float,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.handles = handles
        self.backend = backend
        self.go_margin_s = go_margin_s
        self.info = info or {}
        self.lost: str | None = None

    @property
    def size(self) -> int:
        return len(self.handles)

    @classmethod
    def start_local(cls, n: int) -> WorkerPool:
        """Start ``n`` worker processes (they import while the parent loads prompts)."""
        return cls([LocalWorker(k) for k in range(n)], "local", GO_MARGIN_S)

    async def init(self, init: WorkerInit) -> None:
        for h in self.handles:
            try:
                await h.init(init)
            except WorkerLost as e:
                self.lost = str(e)

    def describe(self) -> dict[str, Any]:
        return {"count": self.size, "backend": self.backend, **self.info}

    async def prepare(self, ctx: RunContext) -> None:
        await self.init(WorkerInit(ctx.requests, ctx.origin_wall))

    async def run(self, ctx: RunContext, plan: PhasePlan, measure_start: MeasureStart) -> PhaseRun:
        """Steps 1-4 of the module docstring; the records stay in the workers' files
        until :meth:`collect`."""
        stop = ctx.stop
        if self.lost is not None:
            stop.set(StopReason.WORKER_LOST, f"worker lost: {self.lost}")
        phase_dir = ctx.results.phase_dir(plan.slug)
        shares = split_phase(plan.schedule, plan.phase.warmup_requests, self.size)
        set_aside_stale_worker_files(phase_dir)
        active = await self._begin(plan, shares, phase_dir, stop)
        tally = RecordTally(ErrorBudget(ctx.scenario.max_error_rate, stop), ctx.live)
        start, outcomes = await self._drive(active, tally, ctx.clock, stop, measure_start)
        end = max(max([o.end for o in outcomes] or [ctx.clock()]), start)
        late = max([o.late_s for o in outcomes] or [0.0])
        # Fed by collect(), from the merged file in its order (its offset is 0).
        summary = StreamingSummary(phase_dir / REQUESTS_FILE, 0)
        extra = {"workers": len(shares), "workers_start_late_ms": late * 1e3}
        return PhaseRun(summary, max(end - start, 1e-9), extra)

    async def collect(self, ctx: RunContext, plan: PhasePlan, ran: PhaseRun) -> None:
        """Merge the workers' files into one requests.jsonl sorted by send time, feeding
        the summary in that order."""

        def feed(line: bytes) -> None:
            with contextlib.suppress(ValueError, TypeError):
                ran.summary.add(RequestRecord.from_dict(json.loads(line)))

        await asyncio.to_thread(merge_worker_records, ctx.results.phase_dir(plan.slug), feed)

    async def _begin(
        self, plan: PhasePlan, shares: list[WorkerShare], phase_dir: Path, stop: StopSignal
    ) -> list[Any]:
        """Hand each worker its share; the workers that got one."""
        measured_base = plan.first_id + plan.phase.warmup_requests
        active: list[Any] = []
        for h, s in zip(self.handles, shares, strict=False):
            path = worker_records_path(phase_dir, s.worker)
            job = PhaseJob(
                phase_name=plan.phase.name,
                schedule=s.schedule,
                warmup_requests=s.warmup_requests,
                warmup_first_id=plan.first_id + s.warmup_first_id,
                id_start=measured_base + s.id_start,
                id_step=s.id_step,
                records_path=str(path),
            )
            if stop.is_set():
                break
            try:
                await h.begin(job, path)
            except WorkerLost as e:
                self._lose(stop, str(e))
                break
            active.append(h)
        return active

    async def _drive(
        self,
        active: list[Any],
        tally: RecordTally,
        clock: Clock,
        stop: StopSignal,
        measure_start: MeasureStart,
    ) -> tuple[float, list[WorkerResult]]:
        """Ready, measure_start, go, done, with the workers' records pumped into ``tally``
        meanwhile and a stop relayed to them; the shared start and the workers' results."""

        def on_stop() -> None:
            for h in active:
                h.stop(stop.reason or StopReason.INTERRUPTED, stop.message or "stopped")

        pumping = asyncio.Event()
        pumping.set()

        async def pump() -> None:
            # Stopped by clearing ``pumping``, never by cancelling: a cancel landing inside a
            # Ray drain RPC would drop the lines the actor had already handed over.
            while pumping.is_set():
                await asyncio.sleep(PUMP_INTERVAL_S)
                await self._collect(active, tally)

        stop_task = asyncio.create_task(stop.event.wait())
        stop_task.add_done_callback(lambda t: None if t.cancelled() else on_stop())
        pump_task = asyncio.create_task(pump())
        outcomes: list[WorkerResult] = []
        start = clock()
        try:
            if not stop.is_set():
                await self._wait_all(
                    {asyncio.create_task(h.ready()): h for h in active}, stop, None
                )
            if not stop.is_set():
                await measure_start()
                wall = time.time() + self.go_margin_s
                start = clock() + (wall - time.time())
                await asyncio.gather(*(h.go(wall, start) for h in active), return_exceptions=True)
            else:
                start = clock()
            outcomes = await self._wait_all(
                {asyncio.create_task(h.done()): h for h in active}, stop, STOP_GRACE_S
            )
        finally:
            stop_task.cancel()
            pumping.clear()
            with contextlib.suppress(Exception):
                await pump_task
            await self._collect(active, tally)
        return start, outcomes

    def _lose(self, stop: StopSignal, why: str) -> None:
        self.lost = self.lost or why
        stop.set(StopReason.WORKER_LOST, f"worker lost: {why}")

    async def _collect(self, handles: list[Any], tally: RecordTally) -> None:
        for h in handles:
            try:
                lines = await h.new_lines()
            except WorkerLost:
                continue
            tally.feed(lines)

    async def _wait_all(
        self, tasks: dict[asyncio.Task[Any], Any], stop: StopSignal, grace_s: float | None
    ) -> list[WorkerResult]:
        """Results of ``tasks`` (one per worker). A lost worker stops the phase; after a
        stop, ``grace_s`` None returns at once (the tasks are dropped), else a worker still
        running after ``grace_s`` is killed."""
        results: list[WorkerResult] = []
        pending = set(tasks)
        stop_wait = asyncio.create_task(stop.event.wait())
        stopped_at: float | None = None
        try:
            while pending:
                timeout = None
                if stop.is_set():
                    if grace_s is None:
                        break
                    stopped_at = stopped_at or time.monotonic()
                    timeout = max(stopped_at + grace_s - time.monotonic(), 0.0)
                waits = pending if stop.is_set() else pending | {stop_wait}
                done, _ = await asyncio.wait(
                    waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:  # grace over: kill the stragglers
                    for t in pending:
                        tasks[t].kill()
                        t.cancel()
                        self.lost = self.lost or f"worker {tasks[t].index} did not stop"
                    break
                for t in done:
                    if t is stop_wait:
                        continue
                    pending.discard(t)
                    try:
                        res = t.result()
                    except WorkerLost as e:
                        self._lose(stop, str(e))
                        continue
                    if isinstance(res, WorkerResult):
                        results.append(res)
                        if res.stop_reason is not None and not stop.is_set():
                            stop.set(res.stop_reason, res.stop_message or res.stop_reason.value)
        finally:
            stop_wait.cancel()
            for t in pending:
                t.cancel()
        return results

    async def close(self) -> None:
        await asyncio.gather(*(h.close() for h in self.handles), return_exceptions=True)


def set_aside_stale_worker_files(phase_dir: Path) -> None:
    """Per-worker files already in a phase's folder when it starts would be merged into
    its records. A run refuses a directory holding results (--overwrite, the sweep's
    resume move them first), so these appear only through the API: renamed aside, never
    deleted."""
    for stale in worker_record_files(phase_dir):
        stale.rename(stale.with_name(f"{stale.name}.stale-{int(time.time())}"))

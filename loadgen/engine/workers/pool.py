"""Several worker processes (or Ray actors) driving one phase on one shared clock.

Why: one Python process tops out at a few thousand chunks/s; past that its own lag shows
up as server latency. N workers each run a :class:`~loadgen.engine.phase.PhaseRunner` over
their share of the schedule (:mod:`loadgen.engine.workers.split`), and the parent merges their
records into the one results directory a 1-worker run writes.

A phase, seen from the parent (:meth:`WorkerPool.run_phase`):

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

Local workers are fresh ``python`` subprocesses (no fork of a process with a running
event loop, no re-import of the caller's ``__main__``) on a socketpair; they ignore SIGINT,
so a terminal's Ctrl-C reaches them through the parent's orderly stop, and they exit when
the parent's end of the socket closes (the parent died).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

from loadgen.config.arrivals import Schedule
from loadgen.engine.context import PhasePlan, RunContext
from loadgen.engine.driver import MeasureStart, PhaseRun
from loadgen.engine.phase import PhaseRunner, RequestPlan
from loadgen.engine.stop import ErrorBudget, StopReason, StopSignal
from loadgen.engine.workers.split import WorkerShare, split_phase
from loadgen.errors import one_line
from loadgen.http.base import Clock
from loadgen.results.files import (
    REQUESTS_FILE,
    RecordWriter,
    merge_worker_records,
    worker_record_files,
    worker_records_path,
)
from loadgen.results.records import ErrorKind, RequestRecord
from loadgen.results.summary import StreamingSummary

GO_MARGIN_S = 0.1  # local workers: the start is this far ahead of the go message
RAY_GO_MARGIN_S = 0.5
STOP_GRACE_S = 15.0  # after a stop, a worker that has not finished by then is killed
PUMP_INTERVAL_S = 0.25


class WorkerLost(Exception):
    """A worker died, failed, or stopped answering."""


# --- what a worker is given ---------------------------------------------------------


@dataclass(frozen=True)
class WorkerInit:
    """What every phase of a run shares (sent once per worker)."""

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


# --- worker side --------------------------------------------------------------------


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


class RecordSinkWriter(Protocol):
    def write(self, record: RequestRecord) -> None: ...


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
        self, job: PhaseJob, writer: Any, rendezvous: Rendezvous, stop: StopSignal
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
    go: asyncio.Future[tuple[float, float]], stop: StopSignal, clock: Callable[[], float]
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


_PACKAGE_ROOT = str(Path(__file__).resolve().parents[3])
_ENTRY = (
    "import sys; from loadgen.engine.workers.pool import worker_entry; worker_entry(sys.argv[1:])"
)


def worker_entry(argv: list[str]) -> None:
    """``python -c _ENTRY INDEX FD``: a local worker on the socket FD."""
    worker_main(int(argv[0]), Connection(int(argv[1])))


def worker_main(index: int, conn: Connection) -> None:
    """A local worker: serve the parent's messages until it says exit or goes away."""
    # The parent stops us in order (in-flight requests written as cancelled); a signal
    # sent to the whole process group (timeout, systemd, Ctrl-C) must not cut that short.
    # A parent that dies closes our socket, and we exit then.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        import uvloop  # type: ignore[import-not-found]

        uvloop.run(_serve(index, conn))
    except ImportError:
        asyncio.run(_serve(index, conn))


async def _serve(index: int, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    def readable() -> None:
        try:
            while conn.poll():
                inbox.put_nowait(conn.recv())
        except (EOFError, OSError):
            loop.remove_reader(conn.fileno())
            inbox.put_nowait(("eof",))

    def send(*msg: Any) -> None:
        with contextlib.suppress(OSError, ValueError):
            conn.send(msg)

    loop.add_reader(conn.fileno(), readable)
    core: WorkerCore | None = None
    stop: StopSignal | None = None
    go: asyncio.Future[tuple[float, float]] | None = None
    task: asyncio.Task[None] | None = None

    async def run_one(job: PhaseJob, stop: StopSignal, go: asyncio.Future[Any]) -> None:
        assert core is not None
        try:
            assert job.records_path is not None
            with RecordWriter(Path(job.records_path)) as writer:

                async def rendezvous() -> tuple[float, float]:
                    send("ready")
                    return await wait_go_or_stop(go, stop, core.clock)

                outcome = await core.run_phase(job, writer, rendezvous, stop)
            send("done", outcome)
        except Exception as e:
            send("error", one_line(f"{type(e).__name__}: {e}"))

    while True:
        msg = await inbox.get()
        kind = msg[0]
        if kind == "init":
            core = WorkerCore(index, msg[1])
        elif kind == "phase":
            stop, go = StopSignal(), loop.create_future()
            task = asyncio.create_task(run_one(msg[1], stop, go))
        elif kind == "go":
            if go is not None and not go.done():
                go.set_result((msg[1], msg[2]))
        elif kind == "stop":
            if stop is not None:
                stop.set(msg[1], msg[2])
        elif kind in ("exit", "eof"):
            if stop is not None:
                stop.set(StopReason.INTERRUPTED, "parent gone" if kind == "eof" else "exit")
            if task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, STOP_GRACE_S)
            return


# --- parent side --------------------------------------------------------------------


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


class FileTail:
    """New complete lines of a file that another process appends to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pos = 0

    def read(self) -> list[bytes]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._pos)
                data = f.read()
        except FileNotFoundError:
            return []
        cut = data.rfind(b"\n")
        if cut < 0:
            return []
        self._pos += cut + 1
        return data[: cut + 1].splitlines()


def _exit_text(code: int | None) -> str:
    if code is None:
        return "stopped answering"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


class LocalWorker:
    """A worker process on this host: ``python -c`` running :func:`worker_entry`, talked to
    over a socketpair. A plain subprocess, not ``multiprocessing``: that would re-import
    the caller's ``__main__`` in every worker (a script without a main guard would crash)."""

    def __init__(self, index: int) -> None:
        self.index = index
        mine, theirs = socket.socketpair()
        child_fd = theirs.detach()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _ENTRY, str(index), str(child_fd)],
                pass_fds=(child_fd,),
                stdin=subprocess.DEVNULL,
                env=env,
            )
        finally:
            os.close(child_fd)
        self.conn = Connection(mine.detach())
        self._msgs: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self._lost: str | None = None
        self._closing = False
        self._tail: FileTail | None = None
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.conn.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            while self.conn.poll():
                self._msgs.put_nowait(self.conn.recv())
        except (EOFError, OSError):
            self._gone()  # the process ended (its end of the socket closed)

    def _gone(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self.conn.fileno())
        if self._lost is None and not self._closing:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(2.0)
            self._lost = f"worker {self.index} {_exit_text(self.proc.poll())}"
            self._msgs.put_nowait(("lost", self._lost))

    def _send(self, *msg: Any) -> None:
        if self._lost is not None:
            raise WorkerLost(self._lost)
        try:
            self.conn.send(msg)
        except (OSError, ValueError) as e:
            raise WorkerLost(f"worker {self.index}: pipe closed ({e})") from None

    async def _expect(self, kind: str) -> tuple[Any, ...]:
        while True:
            msg = await self._msgs.get()
            if msg[0] == kind:
                return msg
            if msg[0] == "lost":
                self._msgs.put_nowait(msg)  # every later wait fails too
                raise WorkerLost(msg[1])
            if msg[0] == "error":
                self._lost = f"worker {self.index} failed: {msg[1]}"
                self._msgs.put_nowait(("lost", self._lost))
                raise WorkerLost(self._lost)

    async def init(self, init: WorkerInit) -> None:
        self._send("init", init)

    async def begin(self, job: PhaseJob, records_path: Path) -> None:
        self._tail = FileTail(records_path)
        self._send("phase", job)

    async def ready(self) -> None:
        await self._expect("ready")

    async def go(self, wall: float, at: float) -> None:
        self._send("go", wall, at)

    def stop(self, reason: StopReason, message: str) -> None:
        with contextlib.suppress(WorkerLost):
            self._send("stop", reason, message)

    async def done(self) -> WorkerResult:
        return (await self._expect("done"))[1]

    async def new_lines(self) -> list[bytes]:
        return self._tail.read() if self._tail is not None else []

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()

    async def close(self) -> None:
        with contextlib.suppress(WorkerLost):
            self._send("exit")
        self._closing = True
        deadline = time.monotonic() + STOP_GRACE_S
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for end in (self.proc.terminate, self.proc.kill):
            if self.proc.poll() is None:
                end()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    await asyncio.to_thread(self.proc.wait, 3.0)
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self.conn.fileno())
        self.conn.close()


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
        # A killed earlier run into the same directory may have left per-worker files: they
        # would be merged into this phase's records. Set them aside, never delete data.
        for stale in worker_record_files(phase_dir):
            stale.rename(stale.with_name(f"{stale.name}.stale-{int(time.time())}"))
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

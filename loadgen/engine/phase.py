"""Drives one phase: an arrival schedule x the streaming client, records out as they finish.

Open loop (arrival rate): each request is sent at ``phase start + offset``, an absolute time
computed before the phase starts, so a late send never shifts the ones after it. Closed loop
(concurrency): N slots each send their next request as soon as their last one finishes.
Every finished request is written to ``requests.jsonl`` at once; a stop (Ctrl-C, error
budget, dead server) cancels what is in flight and marks those records ``cancelled``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from loadgen.config.prompts.base import Prompt
from loadgen.config.shapes.base import Schedule
from loadgen.engine.conversation import (
    ConversationPlan,
    assistant_message,
    turn_request_id,
    user_message,
)
from loadgen.engine.stop import ErrorBudget, StopReason, StopSignal
from loadgen.http.base import Clock, RequestSettings, make_transport
from loadgen.results.records import ErrorKind, RequestRecord

# This many refused connections in a row mean the server is gone: a closed loop would
# otherwise record thousands of instant failures a second until the run ends.
CONNECT_FAILURES_TO_STOP = 25
_SLEEP_SLICE_S = 0.25
MAX_PREFILLED_CLIENTS = 1024


class RecordSink(Protocol):
    def add(self, record: RequestRecord) -> None: ...


class RecordOutput(Protocol):
    """Where finished records go first: a RecordWriter (a file), or a worker's buffer."""

    def write(self, record: RequestRecord) -> None: ...


@dataclass(frozen=True)
class RequestPlan:
    """How a run's requests are made: the same in every phase, sent once to each worker."""

    settings: RequestSettings
    prompts: list[Prompt]  # request i gets prompts[i % len(prompts)]
    output_tokens: int  # max_tokens where the prompt does not say
    id_prefix: str  # a request's x-request-id is f"{id_prefix}-{request id}"
    transport: str = "raw"  # a loadgen.http.base registry name, as the scenario says
    spin_s: float = 0.0  # the scenario's spin_ms, in seconds
    conversations: ConversationPlan | None = None  # multi-turn replay: a "request" is one


@dataclass
class PhaseOutcome:
    start_s: float
    end_s: float
    sent: int
    finished: int
    failed: int

    @property
    def duration_s(self) -> float:
        return max(self.end_s - self.start_s, 1e-9)


def prefill_size(schedule: Schedule) -> int:
    """How many clients to create up front, before the clock starts (creating one costs
    enough CPU to delay the sends around it): the slots of a closed loop, else a guess
    that the pool grows past on demand."""
    if schedule.concurrency is not None:
        return min(schedule.concurrency, MAX_PREFILLED_CLIENTS)
    n = 0 if schedule.offsets is None else len(schedule.offsets)
    return min(n, 64)


class PhaseRunner:
    """Runs one phase's warmup and measured requests."""

    def __init__(
        self,
        plan: RequestPlan,
        *,
        phase_name: str,
        clock: Clock,
        writer: RecordOutput,
        sinks: list[RecordSink],
        stop: StopSignal,
        first_request_id: int = 0,
        max_error_rate: float | None = None,
        worker: int = 0,
    ) -> None:
        if not plan.prompts:
            raise ValueError("no prompts")
        self.phase_name = phase_name
        self.prompts = plan.prompts
        self.output_tokens = plan.output_tokens
        self.id_prefix = plan.id_prefix
        self.spin_s = plan.spin_s
        self.conversations = plan.conversations
        self._deadline: float | None = None  # multi-turn: no turn starts after it
        self.clock = clock
        self.writer = writer
        self.sinks = sinks
        self.stop = stop
        self.worker = worker
        self._ids = itertools.count(first_request_id)
        self._transport = make_transport(plan.transport, plan.settings, clock)
        self._budget = ErrorBudget(max_error_rate, stop)
        self._connect_streak = 0
        self._sent = 0

    async def run(
        self,
        schedule: Schedule,
        warmup_requests: int = 0,
        on_measure_start: Callable[[], Awaitable[float | None]] | None = None,
        measured_ids: Iterable[int] | None = None,
    ) -> PhaseOutcome:
        """Warm up, then call ``on_measure_start`` (e.g. scrape /metrics), then measure.

        ``on_measure_start`` may return the phase start on ``clock`` (a worker of a
        multi-process run returns the start all workers share); ``measured_ids`` are the
        measured requests' ids in send order (a worker's share of a 1-worker run's ids);
        by default they follow the warmup ids."""
        self._transport.prefill(prefill_size(schedule))
        try:
            await self._transport.connect()
            if warmup_requests:
                conc = schedule.concurrency or min(warmup_requests, 16)
                await self._closed_loop(conc, warmup_requests, None, warmup=True)
            start = None
            if on_measure_start is not None:
                start = await on_measure_start()
            if measured_ids is not None:
                self._ids = iter(measured_ids)
            if start is None:
                start = self.clock()
            if schedule.duration_s:
                self._deadline = start + schedule.duration_s
            if schedule.closed:
                assert schedule.concurrency is not None
                deadline = start + schedule.duration_s if schedule.duration_s else None
                await self._closed_loop(
                    schedule.concurrency, schedule.num_requests, deadline, warmup=False
                )
            else:
                assert schedule.offsets is not None
                await self._open_loop(start, schedule.offsets.tolist(), schedule.concurrency)
            end = self.clock()
        finally:
            await self._transport.aclose()
        budget = self._budget
        return PhaseOutcome(start, end, self._sent, budget.measured, budget.failed)

    # --- load shapes ------------------------------------------------------------------

    async def _open_loop(self, start: float, offsets: list[float], cap: int | None) -> None:
        sem = asyncio.Semaphore(cap) if cap else None
        tasks: set[asyncio.Task[None]] = set()
        for off in offsets:
            if self.stop.is_set():
                break
            scheduled = start + off
            await self._sleep_until(scheduled)
            if self.stop.is_set():
                break
            if sem is not None:
                await sem.acquire()
            task = asyncio.create_task(self._one(scheduled, warmup=False))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            if sem is not None:
                task.add_done_callback(lambda _t: sem.release())
        await self._drain(tasks)

    async def _closed_loop(
        self, concurrency: int, n: int | None, deadline: float | None, *, warmup: bool
    ) -> None:
        counter = itertools.count()

        async def slot() -> None:
            while not self.stop.is_set():
                if n is not None and next(counter) >= n:
                    return
                now = self.clock()
                if deadline is not None and now >= deadline:
                    return
                await self._one(now, warmup=warmup)

        tasks = {asyncio.create_task(slot()) for _ in range(concurrency)}
        await self._drain(tasks)

    async def _drain(self, tasks: set[asyncio.Task[None]]) -> None:
        """Wait for ``tasks``; on stop, cancel what is still in flight."""
        stop_task = asyncio.create_task(self.stop.event.wait())
        try:
            while True:
                pending = {t for t in tasks if not t.done()}
                if not pending or self.stop.is_set():
                    break
                await asyncio.wait(pending | {stop_task}, return_when=asyncio.FIRST_COMPLETED)
            pending = {t for t in tasks if not t.done()}
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        finally:
            stop_task.cancel()

    async def _sleep_until(self, t: float) -> None:
        """Until ``t`` on the loop's timer; the last ``spin_s`` by yielding to the loop
        (ready I/O still runs on each pass), since the timers wake up to a millisecond late
        (uvloop's are in whole milliseconds, asyncio's epoll timeout too)."""
        while not self.stop.is_set():
            delay = t - self.clock()
            if delay <= 0:
                return
            if delay > self.spin_s:
                await asyncio.sleep(min(delay - self.spin_s, _SLEEP_SLICE_S))
            else:
                await asyncio.sleep(0)  # one loop pass: ready I/O runs, then we look again

    # --- one request -------------------------------------------------------------------

    async def _one(self, scheduled: float, *, warmup: bool) -> None:
        rid = next(self._ids)
        prompt = self.prompts[rid % len(self.prompts)]
        if self.conversations is not None:
            await self._conversation(rid, prompt, scheduled, warmup=warmup)
            return
        max_tokens = prompt.output_tokens or self.output_tokens
        rec = RequestRecord(
            request_id=rid,
            phase=self.phase_name,
            scheduled_s=scheduled,
            sent_s=scheduled,
            prompt_tokens=prompt.input_tokens,
            warmup=warmup,
            worker=self.worker,
            category=prompt.category,
            source_row=prompt.row,
        )
        self._sent += not warmup
        cancelled = False
        try:
            await self._transport.send_request(
                rec, prompt.text, max_tokens, f"{self.id_prefix}-{rid}"
            )
        except asyncio.CancelledError:
            cancelled = True
        finally:
            self._finish(rec)
        if cancelled:
            raise asyncio.CancelledError

    async def _conversation(
        self, cid: int, prompt: Prompt, scheduled: float, *, warmup: bool
    ) -> None:
        """Conversation ``cid``'s turns, one after another (see
        :mod:`loadgen.engine.conversation`): each carries the history so far, and is
        scheduled a think time after the previous answer's last byte (its dispatch lag is
        how late the client was against that)."""
        plan = self.conversations
        assert plan is not None
        turns = plan.turns(prompt)
        thinks = plan.think_times(cid, len(turns) - 1)
        history: list[dict[str, str]] = []
        end = scheduled  # the previous answer's last byte (before turn 1: unused)
        for k, text in enumerate(turns, start=1):
            if k > 1:
                scheduled = end + thinks[k - 2]
                await self._sleep_until(scheduled)
                if self.stop.is_set() or (self._deadline and self.clock() >= self._deadline):
                    return
            history.append(user_message(text))
            rid = turn_request_id(cid, k)
            rec = RequestRecord(
                request_id=rid,
                phase=self.phase_name,
                scheduled_s=scheduled,
                sent_s=scheduled,
                prompt_tokens=prompt.input_tokens if k == 1 else None,
                warmup=warmup,
                worker=self.worker,
                category=prompt.category,
                source_row=prompt.row,
                conversation=cid,
                turn=k,
            )
            self._sent += not warmup
            reply: list[str] = []
            try:
                await self._transport.send_request(
                    rec, list(history), self.output_tokens, f"{self.id_prefix}-{rid}", reply
                )
            finally:  # a cancel (the run stopping) still writes the record, then propagates
                self._finish(rec)
            if rec.error is not None or not reply or rec.end_s is None:
                return  # the next turn would need the answer that never came
            history.append(assistant_message(reply[0]))
            end = rec.end_s

    def _finish(self, rec: RequestRecord) -> None:
        self.writer.write(rec)
        for s in self.sinks:
            s.add(rec)
        refused = rec.error_kind == ErrorKind.CONNECT
        self._connect_streak = self._connect_streak + 1 if refused else 0
        if self._connect_streak >= CONNECT_FAILURES_TO_STOP:
            self.stop.set(
                StopReason.SERVER_LOST,
                f"server lost: {self._connect_streak} connections refused in a row ({rec.error})",
            )
        if not rec.warmup:
            self._budget.count(rec.error is not None, rec.error_kind == ErrorKind.CANCELLED)

"""How a phase's requests are sent: from this process, or from a pool of workers.

:mod:`loadgen.engine.run` does what every phase needs around its requests (progress,
``/metrics`` before and after, the gauge sampler, the summary); a :class:`PhaseDriver`
sends them. :class:`InProcess` runs one :class:`~loadgen.engine.phase.PhaseRunner` here;
:class:`~loadgen.engine.workers.pool.WorkerPool` shares the schedule among worker processes
or Ray actors and merges their records.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from loadgen.engine.context import PhasePlan, RunContext
from loadgen.engine.phase import PhaseRunner
from loadgen.results.summary import StreamingSummary

MeasureStart = Callable[[], Awaitable[None]]


@dataclass
class PhaseRun:
    """A phase's requests, sent: the summary they feed, and what the driver adds to it."""

    summary: StreamingSummary
    duration_s: float
    extra: dict[str, Any] = field(default_factory=dict)  # keys for the phase's summary


class PhaseDriver(Protocol):
    def describe(self) -> dict[str, Any]:
        """run.json's ``workers``."""
        ...

    async def prepare(self, ctx: RunContext) -> None:
        """Once, before the first phase."""

    async def run(self, ctx: RunContext, plan: PhasePlan, measure_start: MeasureStart) -> PhaseRun:
        """Warm up, call ``measure_start``, send the measured requests; a stop ends it early."""
        ...

    async def collect(self, ctx: RunContext, plan: PhasePlan, ran: PhaseRun) -> None:
        """After ``/metrics`` was read again: feed ``ran.summary`` what it has not seen."""

    async def close(self) -> None: ...


class InProcess:
    """Every request from this process; records feed the summary as they finish.

    The summary keeps per-request columns only and reads chunk times back from the
    records file, so memory does not grow with every token of a long run."""

    def describe(self) -> dict[str, Any]:
        return {"count": 1, "backend": None}

    async def prepare(self, ctx: RunContext) -> None:
        pass

    async def run(self, ctx: RunContext, plan: PhasePlan, measure_start: MeasureStart) -> PhaseRun:
        with ctx.results.records(plan.slug) as writer:
            summary = StreamingSummary(writer.path, writer.start_offset)
            runner = PhaseRunner(
                ctx.requests,
                phase_name=plan.phase.name,
                clock=ctx.clock,
                writer=writer,
                sinks=[summary, ctx.live],
                stop=ctx.stop,
                first_request_id=plan.first_id,
                max_error_rate=ctx.scenario.max_error_rate,
            )
            outcome = await runner.run(plan.schedule, plan.phase.warmup_requests, measure_start)
        return PhaseRun(summary, outcome.duration_s)

    async def collect(self, ctx: RunContext, plan: PhasePlan, ran: PhaseRun) -> None:
        pass  # fed as the records finished

    async def close(self) -> None:
        pass

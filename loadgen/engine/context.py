"""What a run's phases share (:class:`RunContext`) and what one phase is (:class:`PhasePlan`):
built once by :func:`loadgen.engine.run.run_scenario_async`, read by the phase drivers.
Which phases run, in what order, is a :class:`PhaseStrategy`'s business: a fixed list, or a
search choosing each next phase from what the last ones measured."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from loadgen.config.scenario import Phase, Scenario
from loadgen.config.shapes.base import Schedule, build_schedule
from loadgen.engine.phase import RequestPlan
from loadgen.engine.progress import LiveProgress
from loadgen.engine.server import ServerInfo
from loadgen.engine.stop import StopSignal
from loadgen.http.base import Clock
from loadgen.results.files import ResultsDir, slugify

PHASE_ID_STRIDE = 1_000_000  # phase k's request ids start at k * this


@dataclass(frozen=True)
class RunContext:
    """One run, from the moment its clock starts."""

    scenario: Scenario
    requests: RequestPlan  # settings, prompts, request ids, transport
    results: ResultsDir
    clock: Clock  # seconds since the run's origin (run.json's epoch_origin)
    origin_wall: float  # the clock's origin in wall time
    stop: StopSignal
    live: LiveProgress
    server: ServerInfo
    model: str
    label: str | None
    tokenizer_id: str  # what the summaries name as the tokenizer


@dataclass(frozen=True)
class PhasePlan:
    """One phase of the run, with its schedule and the first of its request ids."""

    phase: Phase
    slug: str  # its directory under the run's
    schedule: Schedule
    first_id: int

    @property
    def total(self) -> int | None:
        """Its measured requests when known in advance (for the progress bar)."""
        s = self.schedule
        return s.num_requests if s.offsets is None else len(s.offsets)


def phase_plan(phase: Phase, index: int, seed: int, slug: str | None = None) -> PhasePlan:
    """The plan of the ``index``-th phase of a run: its schedule from ``seed``, its request
    ids from ``index * PHASE_ID_STRIDE``, its directory ``slug`` (default: from its name)."""
    return PhasePlan(
        phase=phase,
        slug=slug or slugify(phase.name),
        schedule=build_schedule(
            phase.load, num_requests=phase.num_requests, duration_s=phase.duration_s, seed=seed
        ),
        first_id=index * PHASE_ID_STRIDE,
    )


class PhaseHost(Protocol):
    """What a strategy runs its phases through (``run.py``): each phase with progress,
    ``/metrics`` around it and its summary written; the run's summary.json lists it."""

    ctx: RunContext

    async def run(self, plan: PhasePlan, *, listed: bool = True) -> dict[str, Any]:
        """Run one phase, return its summary; ``listed=False`` keeps it out of the run's
        summary.json (a calibration, not a load level)."""
        ...

    def adopt(self, slug: str, summary: dict[str, Any]) -> None:
        """List a phase already on disk (a resumed search's finished probe) as if it ran."""


class PhaseStrategy(Protocol):
    """Which phases a run is made of, decided before or while it runs."""

    async def run(self, host: PhaseHost) -> bool:
        """Run phases through ``host`` until done or ``host.ctx.stop``; True when every
        phase it meant to run finished."""
        ...

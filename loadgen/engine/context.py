"""What a run's phases share (:class:`RunContext`) and what one phase is (:class:`PhasePlan`):
built once by :func:`loadgen.engine.run.run_scenario_async`, read by the phase drivers."""

from __future__ import annotations

from dataclasses import dataclass

from loadgen.config.scenario import Phase, Scenario
from loadgen.config.shapes.base import Schedule
from loadgen.engine.phase import RequestPlan
from loadgen.engine.progress import LiveProgress
from loadgen.engine.server import ServerInfo
from loadgen.engine.stop import StopSignal
from loadgen.http.base import Clock
from loadgen.results.files import ResultsDir


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

"""The saturation sweep: the server's own scale for a latency-vs-load curve.

:class:`SaturationSweep` is the run's strategy for ``search: {kind: saturation}``. Two
calibration phases first, each a closed loop: one request in flight (the *low* rate: what
the server does for a lone user, its request throughput then) and
``search.saturation_concurrency`` in flight (the *maximum*: its request throughput with the
batch full). Then ``search.levels`` phases of the scenario's own open-loop shape at rates
spread evenly from the low rate to the maximum, both included, so the curve covers the
server's range whatever its speed (GuideLLM's "sweep" profile does the same).

The calibration phases are kept under ``RUN_DIR/calibration/`` and left out of the run's
summary.json: they are measurements of another kind (closed loop, requests in flight), and
the report's curves are of offered rate. ``saturation.json`` says what they measured and
which rates followed. With ``search.min`` the low rate is given, not measured.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

from loadgen.config.scenario import Phase
from loadgen.config.search import searched_field
from loadgen.config.shapes.concurrency import ConcurrencyLoad
from loadgen.engine.context import PhaseHost, PhasePlan, RunContext, phase_plan
from loadgen.results.capacity import SATURATION_FILE, VERSION, fmt_level, write_capacity

CALIBRATION_DIR = "calibration"


class SaturationSweep:
    def __init__(self, ctx: RunContext) -> None:
        assert ctx.scenario.search is not None
        self.ctx = ctx
        self.search = ctx.scenario.search
        field = searched_field(ctx.scenario.load)
        assert field is not None
        self.field = field
        self.calibration: dict[str, dict[str, Any]] = {}
        self.rates: list[float] = []
        self.ran: list[str] = []
        self.stop_text: str | None = None
        self._index = 0

    async def run(self, host: PhaseHost) -> bool:
        started = time.monotonic()
        try:
            low = self.search.min
            if low is None:
                low = await self._calibrate(host, "synchronous", 1)
            high = await self._calibrate(host, "throughput", self.search.saturation_concurrency)
            if low is None or high is None:
                return False
            if not high > 0:
                self.stop_text = "no request completed at saturation: no scale to sweep"
                return False
            low = min(low, high)
            self.rates = spread(low, high, self.search.levels)
            self._write()
            _say(f"[saturation] req/s: {', '.join(fmt_level(r) for r in self.rates)}")
            for rate in self.rates:
                limit = self.search.max_search_s
                if limit is not None and time.monotonic() - started >= limit:
                    self.stop_text = "search.max_search_s reached"
                    return True
                if self.ctx.stop.is_set():
                    return False
                plan = self._plan(rate)
                await host.run(plan)
                self.ran.append(plan.slug)
            return not self.ctx.stop.is_set()
        finally:
            self._write()

    async def _calibrate(self, host: PhaseHost, name: str, concurrency: int) -> float | None:
        """Run one closed-loop calibration phase; its request throughput (None if stopped)."""
        if self.ctx.stop.is_set():
            return None
        sc = self.ctx.scenario
        phase = Phase(
            name=f"calibration {name} concurrency={concurrency}",
            load=ConcurrencyLoad(concurrency=concurrency),
            num_requests=sc.num_requests,
            duration_s=sc.duration_s,
            warmup_requests=sc.warmup_requests,
        )
        plan = phase_plan(phase, self._next(), sc.seed, slug=f"{CALIBRATION_DIR}/{name}")
        summary = await host.run(plan, listed=False)
        if self.ctx.stop.is_set():
            return None
        rate = float(summary.get("request_throughput") or 0.0)
        self.calibration[name] = {
            "concurrency": concurrency,
            "dir": plan.slug,
            "request_throughput": rate,
            "completed": summary.get("completed"),
            "failed": summary.get("failed"),
            "p50_e2el_ms": summary.get("median_e2el_ms"),
        }
        _say(f"[saturation] {name}: {concurrency} in flight, {fmt_level(rate)} req/s")
        return rate

    def _plan(self, rate: float) -> PhasePlan:
        sc = self.ctx.scenario
        load = type(sc.load).model_validate({**sc.load.model_dump(), self.field: rate})
        phase = Phase(
            name=load.level_label(),
            load=load,
            num_requests=sc.num_requests,
            duration_s=sc.duration_s,
            warmup_requests=sc.warmup_requests,
        )
        return phase_plan(phase, self._next(), sc.seed)

    def _next(self) -> int:
        self._index += 1
        return self._index - 1

    def _write(self) -> None:
        sc = self.ctx.scenario
        write_capacity(
            self.ctx.results.root,
            {
                "version": VERSION,
                "kind": "saturation",
                "scenario": sc.name,
                "label": self.ctx.label,
                "search": self.search.model_dump(mode="json"),
                "calibration": self.calibration,
                "rates": self.rates,
                "phases": self.ran,
                "stop_text": self.stop_text or self.ctx.stop.message,
            },
            SATURATION_FILE,
        )


def spread(low: float, high: float, levels: int) -> list[float]:
    """``levels`` rates evenly from ``low`` to ``high`` (both included; one level: ``high``),
    to 4 significant digits, without duplicates."""
    if levels == 1:
        return [float(f"{high:.4g}")]
    return list(dict.fromkeys(float(f"{r:.4g}") for r in np.linspace(low, high, levels)))


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)

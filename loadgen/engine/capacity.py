"""The capacity search as a run: probes chosen one at a time, each a measured phase.

:class:`CapacityRun` is the run's :class:`~loadgen.engine.context.PhaseStrategy` when the
scenario has ``search: {kind: capacity}``. It asks the pure state machine
(:class:`~loadgen.engine.search.CapacitySearch`) for the next level, runs it as an ordinary
phase (its warm-up, its ``requests.jsonl`` and ``summary.json``, listed in the run's
summary.json, so reports read it like any phase), judges its records against the SLO
(:mod:`loadgen.results.slo`, pooling the runs of a repeated level), tells the state
machine, and rewrites ``capacity.json`` (:mod:`loadgen.results.capacity`) after every probe.

The steps (:meth:`CapacityRun.begin`, :meth:`CapacityRun.probe`, :meth:`CapacityRun.end`) are
public so that a driver holding several servers can interleave their searches' probes
(server_launch/paired_search.py); it says so in ``alternation``, which capacity.json keeps.

Phase names are the level's (``rate=4.5``, ``concurrency=6``), ``r2``, ``r3`` for the repeats
of a close call (the report folds repeats of a level together). A repeat draws its arrivals
from the next seed, so it is a new sample, not the same one again.

Resume (``resume=True``, server_launch's ``--resume``): the probes an earlier run of the same
scenario finished in the directory are taken back in order while the search asks for
exactly them; from the first difference on, what is left of the earlier run is moved to
``.superseded/``, never appended to.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadgen.config.scenario import Phase
from loadgen.config.search import Search, searched_field
from loadgen.engine.context import PhaseHost, PhasePlan, RunContext, phase_plan
from loadgen.engine.search import CapacitySearch, ProbeRequest
from loadgen.errors import SpecloadError
from loadgen.results.capacity import (
    CAPACITY_FILE,
    VERSION,
    SearchStop,
    fmt_level,
    read_capacity,
    write_capacity,
)
from loadgen.results.files import phase_records
from loadgen.results.slo import LevelSamples, Verdict, judge, level_samples

SUPERSEDED = ".superseded"


class CapacityRun:
    """One capacity search against one server; see the module docstring."""

    def __init__(self, ctx: RunContext, *, resume: bool = False) -> None:
        sc = ctx.scenario
        assert sc.search is not None
        self.ctx = ctx
        self.search: Search = sc.search
        field = searched_field(sc.load)
        assert field is not None
        self.field = field
        closed = type(sc.load).closed
        start = float(getattr(sc.load, field))
        floor = self.search.min or (1.0 if closed else start / 8)
        self.unit = "concurrency" if closed else "req/s"
        self.machine = CapacitySearch(
            start=start,
            cap=self.search.max,
            floor=floor,
            resolution=self.search.resolution,
            integer=closed,
            max_probes=self.search.max_probes,
            repeat_close=self.search.repeat_close,
        )
        self.samples: dict[float, list[LevelSamples]] = {}
        self.probes: list[dict[str, Any]] = []
        self.taken_back: list[str] = []  # slugs of the probes taken from an earlier run
        # set by a driver alternating this search's probes with other servers' searches:
        # who with, in what order (capacity.json's "alternation"; the report marks the row)
        self.alternation: dict[str, Any] | None = None
        self.started = time.monotonic()
        self._replay = deque(self._earlier_probes() if resume else [])

    # --- the run ------------------------------------------------------------------------

    async def run(self, host: PhaseHost) -> bool:
        """The whole search against one server; True unless the run was stopped."""
        self.begin()
        try:
            while await self.probe(host):
                pass
        finally:
            self.end()
        return self.machine.stop is not SearchStop.STOPPED

    def begin(self) -> None:
        """Start the search's clock (``max_search_s``) and write capacity.json."""
        self.started = time.monotonic()
        self.write(done=False)

    async def probe(self, host: PhaseHost) -> bool:
        """Run (or take back) the next probe and judge it; False when the search is over.

        One step, so that a driver holding two servers can alternate their searches' probes
        (baseline, candidate, candidate, baseline, ...) instead of running one after the
        other: ``begin()`` both, ``probe()`` each in turn until both say False, ``end()``."""
        plan = self.next_plan()
        if plan is None:
            return False
        summary = self._take_back(plan, host)
        if summary is None:
            self._clear_dir(plan.slug)
            summary = await host.run(plan)
        if self.ctx.stop.is_set():  # cut short: not a measurement of its level
            self._note_cut(plan, summary)
            self.machine.halt(SearchStop.STOPPED)
            return False
        await self.finish_probe(plan, summary)
        return True

    def end(self) -> None:
        """Close the search: why it stopped, capacity.json final, leftovers moved aside."""
        if self.ctx.stop.is_set():
            self.machine.halt(SearchStop.STOPPED)
        self._supersede_rest()
        self.write(done=True)

    def next_plan(self) -> PhasePlan | None:
        """The next probe's phase, or None when the search is over."""
        if self.ctx.stop.is_set():
            self.machine.halt(SearchStop.STOPPED)
        limit = self.search.max_search_s
        if limit is not None and time.monotonic() - self.started >= limit:
            self.machine.halt(SearchStop.MAX_SEARCH_S)
        req = self.machine.next_probe()
        return None if req is None else self.plan(req)

    def plan(self, req: ProbeRequest) -> PhasePlan:
        sc = self.ctx.scenario
        value: float | int = int(req.level) if self.machine.integer else req.level
        load = type(sc.load).model_validate({**sc.load.model_dump(), self.field: value})
        label = load.level_label()
        phase = Phase(
            name=label if req.run == 1 else f"{label} r{req.run}",
            load=load,
            num_requests=sc.num_requests,
            duration_s=sc.duration_s,
            warmup_requests=sc.warmup_requests,
            repeat=req.run,
        )
        return phase_plan(phase, len(self.probes), sc.seed + req.run - 1)

    async def finish_probe(self, plan: PhasePlan, summary: dict[str, Any]) -> None:
        """Judge a finished probe (with the earlier runs of its level) and record it."""
        level = float(getattr(plan.phase.load, self.field))
        pdir = self.ctx.results.root / plan.slug
        samples = await asyncio.to_thread(lambda: level_samples(phase_records(pdir)))
        runs = self.samples.setdefault(level, [])
        runs.append(samples)
        slo, conf, seed = self.ctx.scenario.slo, self.search.confidence, self.ctx.scenario.seed
        own = judge(slo, samples, confidence=conf, seed=seed)
        pooled = own
        if len(runs) > 1:
            pooled = judge(slo, LevelSamples.pool(runs), confidence=conf, seed=seed)
        self.machine.record(level, pooled.passed, pooled.clear)
        entry = self._entry(plan, summary, level, own, pooled)
        self.probes.append(entry)
        self.write(done=False)
        _say(_probe_line(entry, self.unit, self._tag))

    @property
    def _tag(self) -> str:
        """Its console lines' tag: the server's label too where searches alternate."""
        return "capacity" if self.alternation is None else f"capacity {self.ctx.label}"

    # --- capacity.json -------------------------------------------------------------------

    def write(self, *, done: bool) -> None:
        write_capacity(self.ctx.results.root, self.document(done=done))

    def document(self, *, done: bool) -> dict[str, Any]:
        sc, m = self.ctx.scenario, self.machine
        stop = m.stop
        stop_text = None
        if stop is not None:
            stop_text = stop.describe()
            if stop is SearchStop.STOPPED and self.ctx.stop.message:
                stop_text += f": {self.ctx.stop.message}"
        return {
            "version": VERSION,
            "kind": "capacity",
            "scenario": sc.name,
            "label": self.ctx.label,
            "field": self.field,
            "unit": self.unit,
            "slo": sc.slo.model_dump(mode="json"),
            "slo_text": sc.slo.describe(),
            "search": self.search.model_dump(mode="json"),
            "start": m.start,
            "cap": m.cap,
            "floor": m.floor,
            "status": "done" if done else "running",
            "stop": None if stop is None else stop.value,
            "stop_text": stop_text,
            "capacity": m.capacity(self.unit).as_dict(),
            "probes": self.probes,
            "levels": [
                {"level": s.level, "runs": s.runs, "verdict": _word(s.passed), "clear": s.clear}
                for s in sorted(m.levels.values(), key=lambda s: s.level)
            ],
            "elapsed_s": round(time.monotonic() - self.started, 3),
            "alternation": self.alternation,
            "scenario_dump": sc.model_dump(mode="json"),
        }

    def _entry(
        self,
        plan: PhasePlan,
        summary: dict[str, Any],
        level: float,
        own: Verdict,
        pooled: Verdict,
    ) -> dict[str, Any]:
        return {
            "index": len(self.probes) + 1,
            "phase": plan.phase.name,
            "slug": plan.slug,
            "level": level,
            "run": plan.phase.repeat,
            "seed": self.ctx.scenario.seed + plan.phase.repeat - 1,
            "complete": True,
            "requests": own.n,
            "failed": own.errors.failed,
            "error_rate": own.errors.rate,
            "duration_s": summary.get("duration"),
            "request_throughput": summary.get("request_throughput"),
            "request_goodput": summary.get("request_goodput"),
            "goodput_fraction": summary.get("goodput_fraction"),
            "p99_dispatch_lag_ms": summary.get("p99_dispatch_lag_ms"),
            "elapsed_s": round(time.monotonic() - self.started, 3),
            "percentiles": own.percentiles(),
            "verdict": _word(own.passed),
            "clear": own.clear,
            "failing": own.failing(),
            "pooled": {
                "runs": len(self.samples[level]),
                "requests": pooled.n,
                "percentiles": pooled.percentiles(),
                "error_rate": pooled.errors.rate,
                "verdict": _word(pooled.passed),
                "clear": pooled.clear,
            },
        }

    def _note_cut(self, plan: PhasePlan, summary: dict[str, Any]) -> None:
        self.probes.append(
            {
                "index": len(self.probes) + 1,
                "phase": plan.phase.name,
                "slug": plan.slug,
                "level": float(getattr(plan.phase.load, self.field)),
                "run": plan.phase.repeat,
                "complete": False,
                "requests": summary.get("num_prompts"),
                "verdict": None,
            }
        )

    # --- resume ---------------------------------------------------------------------------

    def _earlier_probes(self) -> list[dict[str, Any]]:
        """The finished probes of an earlier run of this very scenario in the directory."""
        doc = read_capacity(self.ctx.results.root)
        if doc is None or doc.get("scenario_dump") != self.ctx.scenario.model_dump(mode="json"):
            return []
        probes = doc.get("probes")
        if not isinstance(probes, list):
            return []
        out = []
        for p in probes:
            if not (isinstance(p, dict) and p.get("complete") and isinstance(p.get("slug"), str)):
                break
            out.append(p)
        return out

    def _take_back(self, plan: PhasePlan, host: PhaseHost) -> dict[str, Any] | None:
        """The summary of this very probe from the earlier run, adopted; else None (and,
        on the first difference, everything left of the earlier run moved aside)."""
        if not self._replay:
            return None
        head = self._replay[0]
        summary = _read_summary(self.ctx.results.root / plan.slug)
        if head.get("slug") != plan.slug or summary is None or summary.get("complete") is False:
            self._supersede_rest()
            return None
        self._replay.popleft()
        host.adopt(plan.slug, summary)
        self.taken_back.append(plan.slug)
        _say(f"[{self._tag}] {plan.phase.name}: taken from the earlier run")
        return summary

    def _supersede_rest(self) -> None:
        while self._replay:
            self._clear_dir(str(self._replay.popleft().get("slug")))

    def _clear_dir(self, slug: str) -> None:
        """Move an earlier run's directory of this name aside: records are appended, and
        a probe's must be its own."""
        d = self.ctx.results.root / slug
        if not slug or not d.is_dir():
            return
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        base = self.ctx.results.root / SUPERSEDED / f"{Path(slug).name}-{stamp}"
        dest, k = base, 1
        while dest.exists():
            dest, k = base.with_name(f"{base.name}-{k}"), k + 1
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            d.rename(dest)
        except OSError as e:
            raise SpecloadError(f"--output-dir: cannot move {d} aside: {e.strerror}") from None


def _read_summary(phase_dir: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads((phase_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _word(passed: bool) -> str:
    return "pass" if passed else "fail"


def _probe_line(entry: dict[str, Any], unit: str, tag: str = "capacity") -> str:
    """'[capacity] probe 3, rate=4.5 (4.5 req/s): fail, clear: p90 TTFT 612.0 ms > 500'."""
    pooled = entry["pooled"]
    why = "; ".join(entry["failing"]) or "every bound met"
    runs = f", {pooled['runs']} runs pooled: {pooled['verdict']}" if pooled["runs"] > 1 else ""
    clear = "clear" if entry["clear"] else "within noise"
    return (
        f"[{tag}] probe {entry['index']}, {entry['phase']} ({fmt_level(entry['level'])} "
        f"{unit}): {entry['verdict']}, {clear}: {why}{runs}"
    )


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


__all__ = ["CAPACITY_FILE", "CapacityRun"]

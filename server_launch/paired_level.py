"""One load level of a paired comparison: warm every server up, then run rounds of probes in
a balanced order until each candidate's speedups are known well enough (docs/paired.md).

Layout of a level (``LEVEL_DIR = SWEEP_DIR/paired/<group>/<scenario>/<level>/``)::

    LEVEL_DIR/level.json              what happened: warm-up, every probe, the intervals
    LEVEL_DIR/warmup/<label>-w01/     a loadgen results directory per warm-up window
    LEVEL_DIR/round-01/<label>/       a loadgen results directory per measured probe

``level.json`` is replaced atomically after every round, so a level cut short by a lost
server or Ctrl-C keeps every probe it finished; its ``status`` says how it ended.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadgen.report.paired import LEVEL_FILE
from loadgen.report.tables import CI_SPEEDUPS, metrics_of
from loadgen.report.verdict import (
    SpeedupInterval,
    StopReason,
    log_ratio,
    paired_interval,
    stop_reason,
    windows_agree,
)
from loadgen.results.files import atomic_write_json, slugify
from server_launch.pairing import PairedSettings, WarmupSettings
from server_launch.probe import ProbeResult, Resident, balanced_order, run_probe

if TYPE_CHECKING:
    from loadgen.config.scenario import Scenario
    from server_launch.sweep import Runner

WARMUP_METRICS = ("tpot_p50_ms", "output_throughput")


class LevelStatus(StrEnum):
    """How a level's measurement ended (level.json's ``status``)."""

    RUNNING = "running"
    DONE = "done"  # stopped by the adaptive rule: settled, or a cap
    LOST = "lost"  # a server died: the rounds before it are kept
    INTERRUPTED = "interrupted"


@dataclasses.dataclass
class LevelOutcome:
    status: LevelStatus
    pairs: int = 0
    stop_reason: str | None = None
    lost: list[str] = dataclasses.field(default_factory=list)  # labels of dead servers
    reason: str | None = None  # why a probe ended the level (server lost, interrupted)
    intervals: dict[str, dict[str, SpeedupInterval]] = dataclasses.field(default_factory=dict)


# Each round draws its own prompts (and arrival times), the same for every server of the
# round: with one seed for all, every phase after a server's first would find its prompts in
# vLLM's prefix cache and skip most of its prefill, which no real workload does.
ROUND_SEED = 7919
WARMUP_SEED = 104_729


def reseeded(scenario: Scenario, offset: int) -> Scenario:
    return scenario.model_copy(update={"seed": scenario.seed + offset})


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def intervals_for(
    rounds: Sequence[dict[str, Any]], baseline: str, candidate: str, pilot: int
) -> dict[str, SpeedupInterval]:
    """metric -> the candidate's paired interval from ``rounds`` (level.json's), in order."""
    out = {}
    for metric, (_, col, lower_better) in CI_SPEEDUPS.items():
        logs = []
        for rnd in rounds:
            b = rnd["probes"].get(baseline, {}).get("metrics", {}).get(col)
            c = rnd["probes"].get(candidate, {}).get("metrics", {}).get(col)
            logs.append(log_ratio(b, c, lower_better))
        out[metric] = paired_interval(logs, pilot=pilot)
    return out


def _interval_json(iv: SpeedupInterval) -> dict[str, Any]:
    def num(x: float) -> float | None:
        return x if math.isfinite(x) else None

    return {
        "estimate": num(iv.estimate),
        "ci_lo": num(iv.lo),
        "ci_hi": num(iv.hi),
        "pairs": iv.n,
        "half_width_pct": num(iv.half_width_pct),
        "verdict": iv.verdict.value,
    }


def _probe_metrics(probe: ProbeResult) -> dict[str, float | None]:
    if probe.summary is None:
        return {}
    values, _, nothing = metrics_of(probe.summary)
    if nothing:
        return {}
    cols = {col for _, col, _ in CI_SPEEDUPS.values()} | set(WARMUP_METRICS)
    return {c: (v if math.isfinite(v) else None) for c, v in values.items() if c in cols}


class LevelRun:
    """Measures one level for one baseline and its co-resident candidates."""

    def __init__(
        self,
        residents: Sequence[Resident],  # the baseline first
        scenario: Scenario,
        slug: str,
        settings: PairedSettings,
        level_dir: Path,
        *,
        runner: Runner | None = None,
        progress: bool = False,
        say: Callable[[str], None] = lambda _m: None,
        lost: Callable[[], list[str]] | None = None,
    ) -> None:
        self.residents = list(residents)
        self.baseline = self.residents[0].label
        self.candidates = [r.label for r in self.residents[1:]]
        self.scenario, self.slug, self.settings = scenario, slug, settings
        self.dir = level_dir
        self.runner, self.progress, self.say = runner, progress, say
        self.lost = lost or (lambda: [r.label for r in self.residents if not r.alive()])
        phase = next((p.name for p in scenario.phases() if slugify(p.name) == slug), slug)
        self.doc: dict[str, Any] = {
            "scenario": scenario.name,
            "level": slug,
            "phase": phase,
            "pairing": "paired",
            "baseline": self.baseline,
            "candidates": self.candidates,
            "order": [r.label for r in self.residents],
            "status": LevelStatus.RUNNING,
            "started_at": _now(),
            "settings": settings.model_dump(mode="json"),
            "warmup": {},
            "rounds": [],
            "intervals": {},
        }

    # --- the level ---------------------------------------------------------------------

    def run(self) -> LevelOutcome:
        """Warm-up, then rounds until ``stop_reason`` says enough; KeyboardInterrupt passes
        through after level.json records it."""
        supersede(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._save()
        try:
            ended = self._warm_up()
            if ended is None:
                ended = self._rounds()
        except KeyboardInterrupt:
            self._end(LevelOutcome(LevelStatus.INTERRUPTED, reason="interrupted"))
            raise
        return self._end(ended)

    def _end(self, outcome: LevelOutcome) -> LevelOutcome:
        outcome.pairs = len(self.doc["rounds"])
        self.doc.update(
            status=outcome.status,
            stop_reason=outcome.stop_reason,
            ended_at=_now(),
            lost=outcome.lost,
            reason=outcome.reason,
        )
        self._save()
        return outcome

    def _save(self) -> None:
        atomic_write_json(self.dir / LEVEL_FILE, self.doc)

    def _probe(self, r: Resident, scenario: Scenario, out: Path) -> tuple[ProbeResult, Any]:
        """One probe; returns it and, when it ends the level, the outcome."""
        p = run_probe(r, scenario, self.slug, out, runner=self.runner, progress=self.progress)
        if p.jit:
            self.say(f"[{r.label}] {self.slug}: kernel compilation during the phase: {p.jit[0]}")
        if p.interrupted:
            raise KeyboardInterrupt("interrupted during a probe")
        lost = self.lost()
        if p.server_lost or lost:
            lost = lost or [r.label]
            why = p.reason or f"server lost: {', '.join(lost)}"
            why = why if why.startswith("server lost") else f"server lost: {why}"
            return p, LevelOutcome(LevelStatus.LOST, lost=lost, reason=why)
        return p, None

    # --- warm-up -------------------------------------------------------------------------

    def _warm_up(self) -> LevelOutcome | None:
        """Windows on every server in turn until each one's last K windows agree on median
        TPOT and throughput within the tolerance, or a cap (module docstring)."""
        w: WarmupSettings = self.settings.warmup
        scen = self.scenario
        updates: dict[str, Any] = {"warmup_requests": 0}
        if w.window_requests is not None:
            updates.update(num_requests=w.window_requests, duration_s=None)
        scen = scen.model_copy(update=updates)
        info: dict[str, dict[str, Any]] = {
            r.label: {"windows": 0, "seconds": 0.0, "steady": False}
            | {m: [] for m in WARMUP_METRICS}
            for r in self.residents
        }
        self.doc["warmup"] = info
        t0 = time.monotonic()
        k = 0
        while True:
            todo = [
                r
                for r in self.residents
                if not info[r.label]["steady"] and info[r.label]["windows"] < w.max_windows
            ]
            if not todo or time.monotonic() - t0 >= w.max_s:
                break
            for r in balanced_order(k, todo):
                entry = info[r.label]
                out = self.dir / "warmup" / f"{r.label}-w{entry['windows'] + 1:02d}"
                p, ended = self._probe(r, reseeded(scen, WARMUP_SEED + entry["windows"]), out)
                entry["windows"] += 1
                entry["seconds"] = round(entry["seconds"] + p.duration_s, 3)
                values = _probe_metrics(p)
                for m in WARMUP_METRICS:
                    entry[m].append(values.get(m))
                entry["steady"] = all(
                    windows_agree(entry[m], w.windows, w.tolerance_pct) for m in WARMUP_METRICS
                )
                self._save()
                if ended is not None:
                    return ended
            k += 1
        for label, entry in info.items():
            state = "steady" if entry["steady"] else "NOT steady (cap reached)"
            self.say(
                f"[{label}] {self.scenario.name} {self.slug}: warm-up {entry['windows']} "
                f"window(s), {entry['seconds']:.1f} s, {state}"
            )
        return None

    # --- measured rounds ---------------------------------------------------------------

    def _rounds(self) -> LevelOutcome:
        s = self.settings
        t0 = time.monotonic()
        rounds: list[dict[str, Any]] = self.doc["rounds"]
        while True:
            k = len(rounds)
            order = balanced_order(k, self.residents)
            rnd: dict[str, Any] = {"index": k + 1, "order": [r.label for r in order], "probes": {}}
            rounds.append(rnd)
            scen = reseeded(self.scenario, ROUND_SEED * (k + 1))
            for r in order:
                out = self.dir / f"round-{k + 1:02d}" / r.label
                p, ended = self._probe(r, scen, out)
                rnd["probes"][r.label] = {**p.to_json(self.dir), "metrics": _probe_metrics(p)}
                if ended is not None:
                    rounds.pop()  # a round without all its probes is no pair
                    self.doc["abandoned_round"] = rnd
                    self._save()
                    return ended
            ivs = {
                c: intervals_for(rounds, self.baseline, c, s.min_repeats) for c in self.candidates
            }
            self.doc["intervals"] = {
                c: {m: _interval_json(iv) for m, iv in by.items()} for c, by in ivs.items()
            }
            watched = [
                ivs[c][m.value] for c in self.candidates for m in s.stop_on if ivs[c][m.value].n > 0
            ]
            why = stop_reason(
                len(rounds),
                watched,
                target_pct=s.ci_target_pct,
                min_pairs=s.min_repeats,
                max_pairs=s.max_repeats,
                elapsed_s=time.monotonic() - t0,
                max_level_s=s.max_level_s,
            )
            self.doc["elapsed_s"] = round(time.monotonic() - t0, 3)
            self._save()
            self._report_round(len(rounds), ivs)
            if why is not None:
                if why is not StopReason.SETTLED:
                    self.say(f"{self.scenario.name} {self.slug}: not settled ({why.value})")
                return LevelOutcome(LevelStatus.DONE, stop_reason=why.value, intervals=ivs)

    def _report_round(self, n: int, ivs: dict[str, dict[str, SpeedupInterval]]) -> None:
        for c, by in ivs.items():
            parts = []
            for m in ("tpot", "throughput"):
                iv = by[m]
                if math.isfinite(iv.lo):
                    parts.append(f"{m} {iv.estimate:.3f}x [{iv.lo:.3f}-{iv.hi:.3f}]")
            text = ", ".join(parts) or "no interval yet"
            self.say(f"[{c} vs {self.baseline}] {self.scenario.name} {self.slug} pair {n}: {text}")


def supersede(level_dir: Path) -> None:
    """A level measured again starts afresh; what an earlier attempt left is moved aside."""
    if not level_dir.exists():
        return
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    dest = level_dir.parent / ".superseded" / f"{level_dir.name}-{stamp}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        level_dir.rename(dest)

"""Reading a paired sweep back (server_launch's paired mode, docs/paired.md).

A paired sweep keeps each load level in ``SWEEP_DIR/paired/<group>/<scenario>/<level>/``:
``level.json`` (the warm-up, every round's probes, how the level ended) and one loadgen
results directory per probe. :func:`load_paired` turns them into the report's ``Run``
objects: one per (configuration, scenario), whose phases are its probes (``<level> r1``,
``r2``, ... in the order they ran, so the tables' medians and spreads apply), and, on each
candidate's run, the level's pairs (:class:`PairedLevel`), from which the tables compute the
speedups' intervals. The numbers come from the probes' own results, not from the copy the
sweep kept in level.json to decide when to stop.

A search scenario keeps ``SWEEP_DIR/paired/<group>/<scenario>/<kind>/``: ``search.json``
(the timeline of the servers' probes) and one ordinary loadgen results directory per server
(its capacity.json or saturation.json, a phase per probe); :func:`load_searches` reads each
as the run it is. The baseline searched beside several groups (``residents: 2``, several
candidates) is one run per group, labelled ``<baseline>@<group>``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadgen.report.load import Run, load_run
from loadgen.report.verdict import SpeedupInterval, log_ratio, paired_interval

PAIRED_DIR = "paired"  # SWEEP_DIR/paired/...: the paired levels
LEVEL_FILE = "level.json"
SEARCH_FILE = "search.json"  # a search scenario's cell: its servers' searches


@dataclass
class PairedLevel:
    """One level of one candidate measured beside the baseline: per round, both probes'
    metric values (the tables' columns), and how the level went."""

    scenario: str
    level: str
    baseline: str
    candidate: str
    path: Path
    status: str  # done | lost | interrupted | running (level.json)
    stop_reason: str | None  # settled | max_repeats | max_level_s
    pilot: int  # pairs before the adaptive rule's first look (the Stein floor)
    target_pct: float
    base_values: list[Mapping[str, float]] = field(default_factory=list)
    cand_values: list[Mapping[str, float]] = field(default_factory=list)
    warmup: dict[str, dict[str, Any]] = field(default_factory=dict)
    jit: list[str] = field(default_factory=list)  # "<label> round N: <line>"

    @property
    def pairs(self) -> int:
        return len(self.base_values)

    def interval(self, col: str, lower_is_better: bool) -> SpeedupInterval:
        logs = [
            log_ratio(b.get(col), c.get(col), lower_is_better)
            for b, c in zip(self.base_values, self.cand_values, strict=True)
        ]
        return paired_interval(logs, pilot=self.pilot)

    @property
    def settled(self) -> bool:
        return self.stop_reason == "settled"


def is_paired_sweep(root: Path) -> bool:
    d = root / PAIRED_DIR
    return d.is_dir() and (any(d.rglob(LEVEL_FILE)) or any(d.glob(f"*/*/*/{SEARCH_FILE}")))


def _read(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


@dataclass
class _Acc:
    """What a (label, scenario) collects over every level and group before it is a Run."""

    path: Path
    spec: dict[str, Any] | None = None
    phases: dict[str, dict[str, Any]] = field(default_factory=dict)
    levels: dict[str, float | None] = field(default_factory=dict)
    shapes: dict[str, str | None] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    paired: dict[str, list[PairedLevel]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    complete: bool = True


def load_paired(root: Path) -> list[Run]:
    """The runs of the paired sweep at ``root`` (module docstring)."""
    from loadgen.report.tables import metrics_of

    accs: dict[tuple[str, str], _Acc] = {}
    for level_file in sorted((root / PAIRED_DIR).glob(f"*/*/*/{LEVEL_FILE}")):
        doc = _read(level_file)
        if doc is None or not doc.get("baseline"):
            continue
        level_dir = level_file.parent
        scen, base = str(doc.get("scenario")), str(doc["baseline"])
        values: dict[str, list[Mapping[str, float]]] = {}
        for rnd in doc.get("rounds") or []:
            for label, probe in (rnd.get("probes") or {}).items():
                summary, run = _probe(level_dir / str(probe.get("dir", "")))
                acc = accs.setdefault((label, scen), _Acc(level_dir.parent))
                if run is not None and acc.spec is None:
                    acc.spec = run.spec
                if summary is None:
                    acc.notes.append(f"{level_dir.name}: probe {probe.get('dir')} has no result")
                    values.setdefault(label, []).append({})
                    continue
                name = _add_phase(acc, summary, run)
                vals, _, nothing = metrics_of(summary)
                values.setdefault(label, []).append({} if nothing else vals)
                for line in probe.get("jit") or []:
                    acc.notes.append(f"{name}: kernel compilation during the phase: {line}")
        status = str(doc.get("status") or "running")
        for label in doc.get("order") or [base]:
            acc = accs.setdefault((label, scen), _Acc(level_dir.parent))
            if status != "done":
                acc.complete = False
                why = f": {doc['reason']}" if doc.get("reason") else ""
                acc.notes.append(f"level {doc.get('level')} {status}{why}")
        for cand in doc.get("candidates") or []:
            pl = _paired_level(doc, level_dir, base, cand, values)
            accs.setdefault((cand, scen), _Acc(level_dir.parent)).paired.setdefault(
                pl.level, []
            ).append(pl)
            accs[(base, scen)].paired.setdefault(pl.level, []).append(pl)
    return [_run(label, scen, acc) for (label, scen), acc in accs.items()] + load_searches(root)


def load_searches(root: Path) -> list[Run]:
    """The runs of the paired sweep's search scenarios: one per server and search (module
    docstring), with a note where the search did not finish."""
    cells = [(f, _read(f)) for f in sorted((root / PAIRED_DIR).glob(f"*/*/*/{SEARCH_FILE}"))]
    per_base: dict[str, int] = {}  # scenario -> how many groups searched the baseline
    for _, doc in cells:
        if doc is not None:
            per_base[str(doc.get("scenario"))] = per_base.get(str(doc.get("scenario")), 0) + 1
    runs = []
    for path, doc in cells:
        if doc is None:
            continue
        base, scen = str(doc.get("baseline")), str(doc.get("scenario"))
        for label in doc.get("servers") or []:
            run_dir = path.parent / str(label)
            if not (run_dir / "run.json").is_file():
                continue
            run = load_run(run_dir, default_label=str(label))
            run.pairing = "alternated" if doc.get("pairing") == "alternated" else "unpaired"
            if run.label == base and per_base.get(scen, 0) > 1:
                run.label = f"{base}@{doc.get('group')}"
            status = str(doc.get("status") or "running")
            if status != "done":
                why = f": {doc['reason']}" if doc.get("reason") else ""
                run.notes.append(f"{doc.get('kind')} search {status}{why}")
            runs.append(run)
    return runs


def _probe(probe_dir: Path) -> tuple[dict[str, Any] | None, Run | None]:
    """A probe's one phase summary (and its run), or None where it left nothing usable."""
    if not (probe_dir / "run.json").is_file():
        return None, None
    try:
        run = load_run(probe_dir)
    except Exception:  # a damaged probe is one missing pair, not a failed report
        return None, None
    if not run.phases:
        return None, run
    return next(iter(run.phases.values())), run


def _add_phase(acc: _Acc, summary: dict[str, Any], run: Run | None) -> str:
    """The probe as the next repeat of its level: '<level> r<k>'."""
    level = str(summary.get("phase") or "level")
    k = acc.counts.get(level, 0) + 1
    acc.counts[level] = k
    name = f"{level} r{k}"
    acc.phases[name] = {**summary, "phase": name, "repeat": k}
    src = next(iter(run.phases), None) if run else None
    acc.levels[name] = run.levels.get(src) if run and src else summary.get("load_level")
    acc.shapes[name] = run.shapes.get(src) if run and src else summary.get("load_shape")
    return name


def _paired_level(
    doc: Mapping[str, Any],
    level_dir: Path,
    base: str,
    cand: str,
    values: Mapping[str, list[Mapping[str, float]]],
) -> PairedLevel:
    settings = doc.get("settings") or {}
    b, c = values.get(base, []), values.get(cand, [])
    n = min(len(b), len(c))
    level = str(doc.get("phase") or doc.get("level"))
    jit = []
    for rnd in doc.get("rounds") or []:
        for label in (base, cand):
            for line in (rnd.get("probes", {}).get(label) or {}).get("jit") or []:
                jit.append(f"{label} round {rnd.get('index')}: {line}")
    return PairedLevel(
        scenario=str(doc.get("scenario")),
        level=level,
        baseline=base,
        candidate=cand,
        path=level_dir,
        status=str(doc.get("status") or "running"),
        stop_reason=doc.get("stop_reason"),
        pilot=int(settings.get("min_repeats") or 2),
        target_pct=float(settings.get("ci_target_pct") or math.nan),
        base_values=list(b[:n]),
        cand_values=list(c[:n]),
        warmup={k: v for k, v in (doc.get("warmup") or {}).items() if k in (base, cand)},
        jit=jit,
    )


def _run(label: str, scen: str, acc: _Acc) -> Run:
    expected = list(dict.fromkeys(acc.phases))
    return Run(
        path=acc.path,
        label=label,
        scenario=scen,
        spec=acc.spec,
        phases=acc.phases,
        expected_phases=expected,
        levels=acc.levels,
        shapes=acc.shapes,
        complete=acc.complete,
        notes=list(dict.fromkeys(acc.notes)),
        repeat_of={n: s["repeat"] for n, s in acc.phases.items()},
        repeats=max(acc.counts.values(), default=1),
        pairing="paired",
        paired=acc.paired,
    )

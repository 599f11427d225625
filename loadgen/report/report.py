"""Cross-run reports: what speculative decoding buys at each load level.

Reads finished (or interrupted) run directories, lines the configurations up per scenario
and load level against a baseline, finds where speculation stops paying off, and writes
report.md / report.html / report.csv / report.json with figures.

pandas and matplotlib are imported inside functions so ``python -m loadgen`` starts fast.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from loadgen.errors import SpecloadError
from loadgen.report.console import (
    NA,
    as_flag,
    as_float,
    fmt_int,
    fmt_num,
    fmt_pair,
    fmt_pct,
    fmt_rate,
    fmt_speedup,
    fmt_speedup_range,
    fmt_spread,
    pick,
)
from loadgen.results.files import phase_record_files

if TYPE_CHECKING:
    import pandas as pd

    from loadgen.config.scenario import Phase, Scenario

DEFAULT_BASELINE = "none"

# Tidy-table column -> summary keys to try, ours first, then vLLM bench serve's names.
METRIC_KEYS: dict[str, tuple[str, ...]] = {
    "completed": ("completed",),
    "failed": ("failed",),
    "duration_s": ("duration",),
    "request_throughput": ("request_throughput",),
    "output_throughput": ("output_throughput",),
    "ttft_p50_ms": ("p50_ttft_ms", "median_ttft_ms"),
    "ttft_p99_ms": ("p99_ttft_ms",),
    "tpot_p50_ms": ("p50_tpot_ms", "median_tpot_ms"),
    "tpot_p99_ms": ("p99_tpot_ms",),
    # ITL per token: a chunk of k speculated tokens counts as k gaps of gap/k.
    "itl_p50_ms": ("p50_itl_token_ms", "p50_itl_ms", "median_itl_ms"),
    "itl_p99_ms": ("p99_itl_token_ms", "p99_itl_ms"),
    # ITL per chunk (vLLM's definition), kept in the CSV.
    "itl_chunk_p50_ms": ("p50_itl_ms", "median_itl_ms"),
    "itl_chunk_p99_ms": ("p99_itl_ms",),
    "e2el_p50_ms": ("p50_e2el_ms", "median_e2el_ms"),
    "e2el_p99_ms": ("p99_e2el_ms",),
    "tokens_per_chunk": ("mean_tokens_per_chunk",),
    "acceptance_length": ("spec_decode_acceptance_length",),
    "acceptance_rate_pct": ("spec_decode_acceptance_rate",),
    "request_goodput": ("request_goodput",),
    "goodput_fraction": ("goodput_fraction",),
    "dispatch_lag_p99_ms": ("p99_dispatch_lag_ms",),
}
SPEEDUPS = ("tpot_speedup", "throughput_speedup", "e2e_speedup")
# Counts add up over the repeats of a level (how many requests were measured in all);
# every other metric is the median over repeats.
SUMMED = ("completed", "failed", "duration_s")
# Metrics whose min / max over repeats are kept (the speedups' ranges need them).
SPREAD_METRICS = ("ttft_p50_ms", "tpot_p50_ms", "itl_p50_ms", "e2el_p50_ms", "output_throughput")
# speedup column -> (metric it compares, whether lower values of the metric are better)
SPEEDUP_BASIS: dict[str, tuple[str, bool]] = {
    "tpot_speedup": ("tpot_p50_ms", True),
    "throughput_speedup": ("output_throughput", False),
    "e2e_speedup": ("e2el_p50_ms", True),
}
_REPEAT_SUFFIX = re.compile(r"(.+) r([0-9]+)")


# --- discovery ---------------------------------------------------------------------------


@dataclass
class Run:
    """One RUN_DIR: a config label running one scenario, with its per-phase summaries.

    ``phases`` maps phase name -> flat summary, in load order; ``expected_phases`` also
    lists phases the scenario asked for but the run never summarised (interrupted runs).
    """

    path: Path
    label: str
    scenario: str
    spec: dict[str, Any] | None
    phases: dict[str, dict[str, Any]]
    expected_phases: list[str] = field(default_factory=list)
    levels: dict[str, float | None] = field(default_factory=dict)
    shapes: dict[str, str | None] = field(default_factory=dict)
    complete: bool = False
    notes: list[str] = field(default_factory=list)
    repeat_of: dict[str, int] = field(default_factory=dict)
    repeats: int = 1

    @property
    def spec_method(self) -> str | None:
        if not self.spec:
            return None
        return str(self.spec.get("method") or self.spec.get("type") or "spec")

    def level_of(self, phase: str) -> tuple[str, int]:
        """(load level name, repeat) of a phase: 'concurrency=4 r2' -> ('concurrency=4', 2)."""
        return split_repeat(phase, self.repeat_of.get(phase))


def split_repeat(name: str, repeat: int | None = None) -> tuple[str, int]:
    """Strip the ' rN' suffix scenario.py gives repeated phases (pure).

    With ``repeat`` known (the summary's ``repeat`` key), only that suffix is stripped;
    without it, any trailing ' r<digits>' is taken for one (load labels hold no spaces).
    """
    m = _REPEAT_SUFFIX.fullmatch(name)
    if m and (repeat is None or int(m.group(2)) == repeat):
        return m.group(1), int(m.group(2))
    return name, repeat if repeat is not None else 1


def find_runs(paths: Iterable[str | Path]) -> list[Run]:
    """Every run under ``paths``: each is a RUN_DIR (has run.json) or a directory above some.

    Raises SpecloadError (one line) for a path that does not exist or holds no run.
    """
    runs: list[Run] = []
    seen: set[Path] = set()
    for raw in paths:
        root = Path(raw)
        if not root.exists():
            raise SpecloadError(f"{raw}: no such directory")
        if not root.is_dir():
            raise SpecloadError(f"{raw}: not a directory")
        if (root / "run.json").is_file():
            found = [root / "run.json"]
        else:
            found = sorted(root.rglob("run.json"))
        if not found:
            raise SpecloadError(f"{raw}: no run.json in it or below (not a run or sweep directory)")
        for rj in found:
            run_dir = rj.parent.resolve()
            if run_dir in seen:
                continue
            seen.add(run_dir)
            # In a sweep (SWEEP_DIR/<label>/<scenario>/) the label dir names the config.
            default_label = rj.parent.name
            if rj.parent != root and rj.parent.parent != root:
                default_label = rj.parent.parent.name
            runs.append(load_run(rj.parent, default_label=default_label))
    _disambiguate(runs)
    return runs


def _disambiguate(runs: list[Run]) -> None:
    """Runs sharing a label and scenario (two 'none' runs) get the shortest path tail that
    tells them apart appended: 'none@a/none/conc'."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.label, r.scenario), []).append(r)
    for (label, _), group in groups.items():
        if len(group) < 2:
            continue
        depth = max(len(r.path.parts) for r in group)
        k = next(
            (
                k
                for k in range(1, depth + 1)
                if len({r.path.parts[-k:] for r in group}) == len(group)
            ),
            depth,
        )
        for r in group:
            r.label = f"{label}@{'/'.join(r.path.parts[-k:])}"
            r.notes.append(f"label '{label}' is used by several runs; shown as '{r.label}'")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SpecloadError(f"{path}: malformed JSON: {e.msg} (line {e.lineno})") from None
    except OSError as e:
        raise SpecloadError(f"{path}: cannot read: {e.strerror}") from None


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-")


def load_run(run_dir: str | Path, default_label: str | None = None) -> Run:
    """Read one RUN_DIR, tolerating a missing or partial summary.json (noted in ``notes``)."""
    run_dir = Path(run_dir)
    meta = _read_json(run_dir / "run.json")
    if not isinstance(meta, dict):
        raise SpecloadError(f"{run_dir / 'run.json'}: expected a JSON object")
    notes: list[str] = []
    summary: dict[str, Any] = {}
    if (run_dir / "summary.json").is_file():
        try:
            loaded = _read_json(run_dir / "summary.json")
            summary = loaded if isinstance(loaded, dict) else {}
        except SpecloadError as e:
            notes.append(str(e))
    else:
        notes.append("no summary.json (run interrupted?); used the per-phase summaries")

    scen_doc = meta.get("scenario") if isinstance(meta.get("scenario"), dict) else {}
    scenario = str(scen_doc.get("name") or summary.get("scenario") or run_dir.name)
    label = str(meta.get("label") or summary.get("label") or default_label or run_dir.name)
    spec = meta.get("spec") if isinstance(meta.get("spec"), dict) else None

    scen_obj = _parse_scenario(scen_doc)
    phase_objs = {p.name: p for p in scen_obj.phases()} if scen_obj else {}
    expected = list(phase_objs)
    by_slug = {_slug(n): n for n in expected}

    phases: dict[str, dict[str, Any]] = {}
    raw_phases = summary.get("phases")
    if isinstance(raw_phases, dict):
        for slug, s in raw_phases.items():
            if isinstance(s, dict):
                phases[str(s.get("phase") or slug)] = s
    # Per-phase files fill what summary.json lacks (it is written after each phase, or not
    # at all); a phase killed mid-way has only requests.jsonl, summarised here afresh.
    known = {_slug(n) for n in phases}
    for sub in sorted(p for p in run_dir.iterdir() if p.is_dir()):
        if _slug(sub.name) in known:
            continue
        sj = sub / "summary.json"
        if sj.is_file():
            try:
                s = _read_json(sj)
            except SpecloadError as e:
                notes.append(str(e))
                continue
            name = str(s.get("phase") or sub.name) if isinstance(s, dict) else sub.name
            if isinstance(s, dict) and _slug(name) not in known:
                phases[name] = s
                known.add(_slug(name))
        elif files := phase_record_files(sub):
            name = by_slug.get(_slug(sub.name), sub.name)
            # A multi-worker phase killed before its merge has only requests.w<K>.jsonl.
            src = (
                "requests.jsonl"
                if len(files) == 1 and files[0].name == "requests.jsonl"
                else (f"{len(files)} per-worker files (never merged)")
            )
            s = _recompute(sub, name, phase_objs.get(name), scen_obj)
            if s is None:
                notes.append(f"phase '{name}': {src} holds no usable record")
            else:
                phases[name] = s
                known.add(_slug(name))
                notes.append(
                    f"phase '{name}': no summary.json; recomputed from {src} "
                    "(duration = first send to last byte; no acceptance data)"
                )

    # Map summarised phases onto the scenario's names where only the slug differs.
    phases = {by_slug.get(_slug(n), n): s for n, s in phases.items()}
    levels: dict[str, float | None] = {}
    shapes: dict[str, str | None] = {}
    for name, p in phase_objs.items():
        lf = load_fields_of(p.load)
        levels[name], shapes[name] = as_float(lf["load_level"]), lf["load_shape"]
    for name, s in phases.items():
        lvl = as_float(s.get("load_level"))
        if lvl is not None or levels.get(name) is None:
            levels[name] = lvl if lvl is not None else _level_from_name(name)
        if s.get("load_shape") or name not in shapes:
            shapes[name] = s.get("load_shape") or shapes.get(name)
        if s.get("complete") is False:
            why = f" ({s['stop_reason']})" if s.get("stop_reason") else ""
            notes.append(f"phase '{name}' stopped early{why}")
    repeat_of = {n: p.repeat for n, p in phase_objs.items()}
    for name, s in phases.items():
        rep = s.get("repeat")
        if isinstance(rep, int) and not isinstance(rep, bool) and rep >= 1:
            repeat_of[name] = rep
    missing = [n for n in expected if n not in phases]
    if missing:
        notes.append("phases without results: " + ", ".join(missing))
    order = {n: i for i, n in enumerate(expected)}
    ordered = sorted(phases, key=lambda n: _phase_sort_key(levels.get(n), order.get(n, 10**6), n))
    complete = bool(summary.get("complete", False)) and not missing
    if summary and not summary.get("complete", False):
        why = f": {summary['stop_reason']}" if summary.get("stop_reason") else ""
        notes.append(f"run marked incomplete{why}")
    return Run(
        path=run_dir,
        label=label,
        scenario=scenario,
        spec=spec,
        phases={n: phases[n] for n in ordered},
        expected_phases=expected or ordered,
        levels=levels,
        shapes=shapes,
        complete=complete,
        notes=notes,
        repeat_of=repeat_of,
        repeats=scen_obj.repeats
        if scen_obj
        else max([1, *(split_repeat(n, repeat_of.get(n))[1] for n in phases)]),
    )


def _parse_scenario(scen_doc: Mapping[str, Any]) -> Scenario | None:
    """The resolved scenario from run.json, or None for an older or hand-edited one."""
    if not scen_doc:
        return None
    from loadgen.config.scenario import Scenario

    try:
        return Scenario.model_validate(dict(scen_doc))
    except Exception:
        return None


def load_fields_of(load: Any) -> dict[str, Any]:
    """load_shape and load_level as metrics.py defines them (one definition, one place)."""
    from loadgen.results.summary import load_fields

    return load_fields(load)


def _recompute(
    phase_dir: Path, name: str, phase: Phase | None, scen: Scenario | None
) -> dict[str, Any] | None:
    """A flat summary from a phase's records, for a phase that never wrote summary.json."""
    from loadgen.results.files import phase_records
    from loadgen.results.summary import SummaryAccumulator

    # one record at a time into compact arrays: a list of the records themselves takes
    # about 5 times the memory (measured: ~1,190 against ~230 bytes for 13 chunks)
    acc = SummaryAccumulator()
    first, last = math.inf, -math.inf
    try:
        for r in phase_records(phase_dir):
            if r.warmup:
                continue
            acc.add(r)
            first = min(first, r.sent_s)
            last = max(last, r.end_s or r.sent_s, *r.chunk_times)
    except OSError:
        return None
    if not len(acc) or not last > first:
        return None
    return acc.summary(
        duration_s=last - first,
        slo=scen.slo if scen else None,
        phase=name,
        load=phase.load if phase else None,
        extra={"complete": False, "recomputed": True},
        detailed=False,
    )


def _level_from_name(name: str) -> float | None:
    m = re.search(r"=\s*([-+0-9.eE]+)", name) or re.search(r"([0-9]+(?:\.[0-9]+)?)", name)
    return as_float(m.group(1)) if m else None


def _phase_sort_key(level: float | None, index: int, name: str) -> tuple[Any, ...]:
    return (level is None, level if level is not None else 0.0, index, name)


# --- the tidy table ----------------------------------------------------------------------


def resolve_baseline(runs: Sequence[Run], baseline: str | None = DEFAULT_BASELINE) -> str | None:
    """The baseline label: ``baseline`` if some run has it; for the default 'none', else the
    single label whose spec is null. An explicitly named label that no run has is an error."""
    labels = list(dict.fromkeys(r.label for r in runs))
    if baseline and baseline in labels:
        return baseline
    if baseline and baseline != DEFAULT_BASELINE:
        raise SpecloadError(
            f"--baseline: no run labelled '{baseline}' (labels: {', '.join(labels)})"
        )
    plain = list(dict.fromkeys(r.label for r in runs if r.spec is None))
    return plain[0] if plain else None


def level_baseline(at_level: Sequence[Run], base_label: str | None, explicit: bool) -> Run | None:
    """The run a level's speedups compare with (pure): the baseline label's run if it ran
    the level; else, unless the user named the baseline, the first run there without
    speculation."""
    run = next((r for r in at_level if r.label == base_label), None)
    if run is not None or explicit:
        return run
    return next((r for r in at_level if r.spec is None), None)


def build_tables(runs: Sequence[Run], baseline: str | None = DEFAULT_BASELINE) -> pd.DataFrame:
    """One row per (scenario, load level, config label) with latencies, throughput, speedups.

    Repeats of a level (phases 'concurrency=4 r1', 'r2', ... of one run) fold into one row:
    each metric is the median over the repeats (counts are totals), ``n_repeats`` says how
    many had results, and ``<metric>_min/_max/_spread_pct`` keep the spread of
    SPREAD_METRICS. Every config of a scenario gets a row at every level any config reached;
    a missing cell holds NaN and says why in ``note``.

    Speedups compare the medians with the baseline label's at the same scenario and level:
    TPOT and E2E as baseline / config (above 1 is faster), throughput as config / baseline.
    Where the default baseline never ran a level (the original config.yaml starts one server
    per batch size: 'none-bs1' runs only concurrency 1), the level's baseline is the run
    without speculation that did; a run gets no row at a level it never planned.
    ``<speedup>_lo/_hi`` is the range over every pairing of a baseline repeat with a config
    repeat, and ``<speedup>_stable`` is True when that range excludes 1.0 (see
    ``speedup_range``), None when either side has fewer than two repeats.
    """
    import pandas as pd

    base_label = resolve_baseline(runs, baseline)
    rows: list[dict[str, Any]] = []
    scenarios = list(dict.fromkeys(r.scenario for r in runs))
    for scen in scenarios:
        scen_runs = sorted(
            (r for r in runs if r.scenario == scen),
            key=lambda r: (r.label != base_label, r.label),
        )
        rank: dict[str, tuple[Any, ...]] = {}
        levels: dict[str, float | None] = {}
        shapes: dict[str, str | None] = {}
        planned: dict[int, set[str]] = {}
        for r in scen_runs:
            for i, name in enumerate(list(r.phases) + r.expected_phases):
                lvl = r.level_of(name)[0]
                planned.setdefault(id(r), set()).add(lvl)
                levels.setdefault(lvl, r.levels.get(name))
                shapes.setdefault(lvl, r.shapes.get(name))
                key = _phase_sort_key(levels[lvl], i, lvl)
                rank[lvl] = min(rank.get(lvl, key), key)
        for lvl in sorted(rank, key=rank.__getitem__):
            at_level = [r for r in scen_runs if lvl in planned.get(id(r), set())]
            base_run = level_baseline(at_level, base_label, explicit=baseline != DEFAULT_BASELINE)
            lvl_label = base_run.label if base_run else base_label
            base = _collect(base_run, lvl) if base_run else None
            for r in sorted(at_level, key=lambda r: (r.label != lvl_label, r.label)):
                rows.append(_row(scen, lvl, levels.get(lvl), shapes.get(lvl), r, base, lvl_label))
    return pd.DataFrame(rows, columns=_COLUMNS)


_COLUMNS = [
    "scenario",
    "phase",
    "load_shape",
    "load_level",
    "label",
    "spec_method",
    "is_baseline",
    *METRIC_KEYS,
    *SPEEDUPS,
    "acceptance_per_position",
    "run_complete",
    "note",
    "run_dir",
    # repeats (appended so that the columns above keep their places)
    "n_repeats",
    *(f"{m}_{k}" for m in SPREAD_METRICS for k in ("min", "max", "spread_pct")),
    *(f"{s}_{k}" for s in SPEEDUPS for k in ("lo", "hi", "stable")),
    "repeat_phases",
]


@dataclass
class _Level:
    """One run's repeats of one load level: per-repeat metric values, in repeat order."""

    phases: list[str] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    acceptance: list[list[float | None]] = field(default_factory=list)
    none_completed: bool = False  # every repeat with results completed no request

    def median(self, col: str) -> float:
        return aggregate(self.values.get(col, []))[0]


def _collect(run: Run, level: str) -> _Level:
    members = sorted((run.level_of(n)[1], n) for n in run.phases if run.level_of(n)[0] == level)
    out = _Level(values={c: [] for c in METRIC_KEYS})
    tag = run.repeats > 1 or len(members) > 1
    done_any = False
    for rep, name in members:
        s = run.phases[name]
        values, notes, nothing_done = _metrics_of(s)
        done_any |= not nothing_done
        out.phases.append(name)
        for c, v in values.items():
            out.values[c].append(v)
        out.notes += [f"r{rep}: {n}" if tag else n for n in notes]
        pos = s.get("spec_decode_per_position_acceptance_rates")
        if isinstance(pos, list) and pos:
            out.acceptance.append([as_float(x) for x in pos])
    out.none_completed = bool(members) and not done_any
    return out


def _metrics_of(s: Mapping[str, Any]) -> tuple[dict[str, float], list[str], bool]:
    """One phase summary's metric columns (NaN where missing), notes, and 'nothing done'."""
    notes: list[str] = []
    if s.get("complete") is False:
        notes.append("phase incomplete")
    # metrics.py writes 0.0 for a statistic of no samples: with nothing completed, the
    # latencies and throughputs are not measurements.
    nothing_done = as_float(s.get("completed")) == 0
    if nothing_done:
        notes.append("no request completed")
    values: dict[str, float] = {}
    for col, keys in METRIC_KEYS.items():
        v = as_float(pick(s, *keys))
        if nothing_done and col not in SUMMED:
            v = None
        values[col] = math.nan if v is None else v
    if col_missing := [c for c in ("tpot_p50_ms", "output_throughput") if math.isnan(values[c])]:
        notes.append("missing " + ", ".join(col_missing))
    return values, notes, nothing_done


def aggregate(values: Sequence[float | None]) -> tuple[float, float, float, float]:
    """(median, min, max, spread %) over repeats, ignoring missing values (pure).

    min / max / spread are NaN with fewer than two values: one run says nothing about how
    much a figure moves. Spread % is (max - min) / |median| * 100.
    """
    xs = sorted(f for v in values if (f := as_float(v)) is not None)
    if not xs:
        return math.nan, math.nan, math.nan, math.nan
    n = len(xs)
    med = xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2
    if n < 2:
        return med, math.nan, math.nan, math.nan
    spread = 100.0 * (xs[-1] - xs[0]) / abs(med) if med else math.nan
    return med, xs[0], xs[-1], spread


def speedup_range(
    base: Sequence[float | None], config: Sequence[float | None], lower_is_better: bool
) -> tuple[float, float, bool | None]:
    """(lo, hi, stable) of a speedup from each side's repeat values (pure).

    lo..hi spans the speedup of every pairing of one baseline repeat with one config repeat
    (for a latency: min(base) / max(config) .. max(base) / min(config)). ``stable`` is True
    when the range excludes 1.0, i.e. the two sides' min-max ranges do not overlap, so every
    pairing agrees on win or loss; False when it includes 1.0. Both sides need two or more
    values (positive and finite); otherwise (nan, nan, None).
    """
    b = [f for v in base if (f := as_float(v)) is not None and f > 0]
    c = [f for v in config if (f := as_float(v)) is not None and f > 0]
    if len(b) < 2 or len(c) < 2:
        return math.nan, math.nan, None
    if lower_is_better:
        lo, hi = min(b) / max(c), max(b) / min(c)
    else:
        lo, hi = min(c) / max(b), max(c) / min(b)
    return lo, hi, lo > 1.0 or hi < 1.0


def _median_lists(lists: Sequence[Sequence[float | None]]) -> list[float | None] | None:
    """Element-wise median of per-position acceptance rates over repeats."""
    if not lists:
        return None
    n = max(len(x) for x in lists)
    out: list[float | None] = []
    for i in range(n):
        m = aggregate([x[i] for x in lists if i < len(x)])[0]
        out.append(None if math.isnan(m) else m)
    return out


def _row(
    scen: str,
    level: str,
    load_level: float | None,
    shape: str | None,
    run: Run,
    base: _Level | None,
    base_label: str | None,
) -> dict[str, Any]:
    lv = _collect(run, level)
    notes: list[str] = []
    row: dict[str, Any] = {
        "scenario": scen,
        "phase": level,
        "load_shape": shape,
        "load_level": load_level,
        "label": run.label,
        "spec_method": run.spec_method,
        "is_baseline": run.label == base_label,
        "run_complete": run.complete,
        "run_dir": str(run.path),
        "n_repeats": len(lv.phases),
        "repeat_phases": list(lv.phases),
    }
    if not lv.phases:
        notes.append("no results at this level" + ("" if run.complete else " (run incomplete)"))
    elif len(lv.phases) < run.repeats:
        notes.append(f"{len(lv.phases)} of {run.repeats} repeats have results")
    notes += lv.notes
    for col in METRIC_KEYS:
        vals = lv.values[col]
        if col in SUMMED:
            finite = [v for v in vals if not math.isnan(v)]
            row[col] = math.fsum(finite) if finite else math.nan
        else:
            row[col] = aggregate(vals)[0]
    for col in SPREAD_METRICS:
        _, row[f"{col}_min"], row[f"{col}_max"], row[f"{col}_spread_pct"] = aggregate(
            lv.values[col]
        )
    row["acceptance_per_position"] = _median_lists(lv.acceptance)
    is_base = run.label == base_label
    if base_label is None:
        notes.append("no baseline run")
        base = None
    elif base is None or not base.phases:
        base = None
        if not is_base:
            notes.append(f"baseline '{base_label}' has no results at this level")
    elif base.none_completed:
        base = None
        if not is_base:
            notes.append(f"baseline '{base_label}' completed no request at this level")
    for sp, (col, lower_better) in SPEEDUP_BASIS.items():
        b = base.median(col) if base else math.nan
        row[sp] = _ratio(b, row[col]) if lower_better else _ratio(row[col], b)
        if base is None or is_base:
            row[f"{sp}_lo"], row[f"{sp}_hi"], row[f"{sp}_stable"] = math.nan, math.nan, None
        else:
            row[f"{sp}_lo"], row[f"{sp}_hi"], row[f"{sp}_stable"] = speedup_range(
                base.values[col], lv.values[col], lower_better
            )
    if base is not None and not is_base and (len(base.phases) > 1) != (len(lv.phases) > 1):
        notes.append("speedup stability needs 2+ repeats of both this config and the baseline")
    row["note"] = "; ".join(notes)
    return row


def _ratio(num: float | None, den: float | None) -> float:
    n, d = as_float(num), as_float(den)
    if n is None or d is None or n <= 0 or d <= 0:
        return math.nan
    return n / d


# --- crossover ---------------------------------------------------------------------------

CrossoverKind = Literal["crossover", "wins_everywhere", "never_wins", "wins_above", "no_data"]


@dataclass(frozen=True)
class Crossover:
    """Where a speedup series (in increasing load order) stops paying off.

    - ``crossover``: >= 1.0 at some lower level, then below 1.0 first at ``level``
      (``last_win`` is the level just before).
    - ``wins_everywhere`` / ``never_wins``: >= 1.0 at every level / at none.
    - ``wins_above``: below 1.0 at low load, >= 1.0 from ``level`` on and never drops back.
    - ``no_data``: no level had a value.
    Levels without a value are skipped (``gaps`` counts them).
    """

    kind: CrossoverKind
    level: Any = None
    last_win: Any = None
    gaps: int = 0

    def describe(self, what: str = "speculation") -> str:
        gaps = f" ({self.gaps} level(s) without data)" if self.gaps else ""
        text = {
            "crossover": f"{what} stops paying off at {self.level} (last win at {self.last_win})",
            "wins_everywhere": f"{what} wins at every level",
            "never_wins": f"{what} never wins",
            "wins_above": f"{what} loses at low load and wins from {self.level} on",
            "no_data": f"{what}: no data",
        }[self.kind]
        return text + gaps


def find_crossover(levels: Sequence[Any], speedups: Sequence[float | None]) -> Crossover:
    """Classify a speedup series given in increasing load order (pure; NaN/None = no data)."""
    if len(levels) != len(speedups):
        raise ValueError("levels and speedups differ in length")
    points = [(lv, as_float(s)) for lv, s in zip(levels, speedups, strict=True)]
    valid = [(lv, s) for lv, s in points if s is not None]
    gaps = len(points) - len(valid)
    if not valid:
        return Crossover("no_data", gaps=gaps)
    last_win = None
    for lv, s in valid:
        if s >= 1.0:
            last_win = lv
        elif last_win is not None:
            return Crossover("crossover", level=lv, last_win=last_win, gaps=gaps)
    if all(s >= 1.0 for _, s in valid):
        return Crossover("wins_everywhere", gaps=gaps)
    if last_win is None:
        return Crossover("never_wins", gaps=gaps)
    first_win = next(lv for lv, s in valid if s >= 1.0)
    return Crossover("wins_above", level=first_win, gaps=gaps)


def crossovers(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Crossover per (scenario, non-baseline config) for TPOT and throughput speedups.

    It reads the aggregated speedups (medians over repeats). ``stable`` is True when every
    level's speedup is stable (``speedup_range``), so no pairing of repeats would move the
    crossover; False with the levels in ``unstable_levels``; None without repeats.
    """
    out: list[dict[str, Any]] = []
    for (scen, label), g in df.groupby(["scenario", "label"], sort=False):
        if g["is_baseline"].any():
            continue
        for metric, what in (("tpot_speedup", "TPOT"), ("throughput_speedup", "throughput")):
            c = find_crossover(list(g["phase"]), list(g[metric]))
            flags = [
                (phase, flag)
                for phase, v, flag in zip(g["phase"], g[metric], g[f"{metric}_stable"], strict=True)
                if as_float(v) is not None
            ]
            unstable = [str(phase) for phase, flag in flags if flag is False]
            known = bool(flags) and all(flag is not None for _, flag in flags)
            stable = False if unstable else (True if known else None)
            text = c.describe(f"{what} speedup")
            if stable is True:
                text += " [stable: every level's repeat range is clear of 1.0]"
            elif stable is False:
                text += " [unstable: repeat range includes 1.0 at " + ", ".join(unstable) + "]"
            out.append(
                {
                    "scenario": scen,
                    "label": label,
                    "metric": metric,
                    "kind": c.kind,
                    "level": c.level,
                    "last_win": c.last_win,
                    "stable": stable,
                    "unstable_levels": unstable,
                    "text": text,
                }
            )
    return out


# --- writing -----------------------------------------------------------------------------

# (header, cell formatter over a row) for the per-level tables.
_TABLE: list[tuple[str, Any]] = [
    ("config", lambda r: f"{r['label']} (baseline)" if r["is_baseline"] else str(r["label"])),
    ("ok/failed", lambda r: _done(r)),
    ("out tok/s", lambda r: fmt_rate(r["output_throughput"])),
    ("TTFT p50/p99", lambda r: fmt_pair(r["ttft_p50_ms"], r["ttft_p99_ms"])),
    ("TPOT p50/p99", lambda r: fmt_pair(r["tpot_p50_ms"], r["tpot_p99_ms"])),
    ("ITL/token p50/p99", lambda r: fmt_pair(r["itl_p50_ms"], r["itl_p99_ms"])),
    ("E2E p50/p99", lambda r: fmt_pair(r["e2el_p50_ms"], r["e2el_p99_ms"])),
    ("tok/chunk", lambda r: fmt_num(r["tokens_per_chunk"])),
    ("accept len", lambda r: fmt_num(r["acceptance_length"])),
    ("goodput", lambda r: _goodput(r)),
    ("TPOT speedup", lambda r: _speedup_text(r, "tpot_speedup")),
    ("thru speedup", lambda r: _speedup_text(r, "throughput_speedup")),
    ("E2E speedup", lambda r: _speedup_text(r, "e2e_speedup")),
]
# Shown only when some level was repeated: (after this header, (header, formatter)).
_REPEAT_CELLS: list[tuple[str, tuple[str, Any]]] = [
    ("config", ("n", lambda r: fmt_int(r["n_repeats"]))),
    ("out tok/s", ("tok/s spread", lambda r: fmt_spread(r["output_throughput_spread_pct"]))),
    ("TTFT p50/p99", ("TTFT p50 spread", lambda r: fmt_spread(r["ttft_p50_ms_spread_pct"]))),
    ("TPOT p50/p99", ("TPOT p50 spread", lambda r: fmt_spread(r["tpot_p50_ms_spread_pct"]))),
]


def _columns(repeated: bool) -> list[tuple[str, Any]]:
    if not repeated:
        return _TABLE
    extra = dict(_REPEAT_CELLS)
    out: list[tuple[str, Any]] = []
    for col in _TABLE:
        out.append(col)
        if col[0] in extra:
            out.append(extra[col[0]])
    return out


def _repeated(df: pd.DataFrame) -> bool:
    return bool(len(df)) and bool((df["n_repeats"] > 1).any())


def _speedup_text(r: Mapping[str, Any], col: str) -> str:
    return fmt_speedup_range(r[col], r[f"{col}_lo"], r[f"{col}_hi"], r[f"{col}_stable"])


def _done(r: Mapping[str, Any]) -> str:
    if as_float(r["completed"]) is None and as_float(r["failed"]) is None:
        return NA
    return f"{fmt_int(r['completed'])}/{fmt_int(r['failed'])}"


def _goodput(r: Mapping[str, Any]) -> str:
    if as_float(r["request_goodput"]) is None:
        return fmt_pct(r["goodput_fraction"])
    if as_float(r["goodput_fraction"]) is None:
        return f"{fmt_rate(r['request_goodput'])}/s"
    return f"{fmt_rate(r['request_goodput'])}/s ({fmt_pct(r['goodput_fraction'])})"


def _sections(df: pd.DataFrame) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """(scenario, phase, rows) in table order."""
    out = []
    for (scen, phase), g in df.groupby(["scenario", "phase"], sort=False):
        out.append((str(scen), str(phase), g.to_dict("records")))
    return out


def _md_table(rows: Sequence[Mapping[str, Any]], repeated: bool = False) -> str:
    table = _columns(repeated)
    head = [h for h, _ in table]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        cells = [f(r).replace("|", "\\|") for _, f in table]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _html_table(rows: Sequence[Mapping[str, Any]], repeated: bool = False) -> str:
    table = _columns(repeated)
    head = "".join(f"<th>{html.escape(h)}</th>" for h, _ in table)
    body = []
    for r in rows:
        cells = []
        for h, f in table:
            text = f(r)
            cls = ""
            if h.endswith("speedup") and text != NA:
                col = _SPEEDUP_COL[h]
                if as_flag(r[f"{col}_stable"]) is False:
                    cls = ' class="unstable"'
                else:
                    cls = ' class="win"' if as_float(r[col]) >= 1.0 else ' class="loss"'
            elif text == NA:
                cls = ' class="na"'
            cells.append(f"<td{cls}>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


_SPEEDUP_COL = {
    "TPOT speedup": "tpot_speedup",
    "thru speedup": "throughput_speedup",
    "E2E speedup": "e2e_speedup",
}

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f2f2f2}td:first-child{text-align:left}
td.win{color:#06681c;font-weight:600}td.loss{color:#a40000;font-weight:600}td.na{color:#999}
td.unstable{color:#8a6d00;font-style:italic}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}
.note{color:#666;font-size:.85em}
"""


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return _json_safe(value.item())
    return value


def write_report(
    paths: Sequence[str | Path],
    out_dir: str | Path | None = None,
    baseline: str | None = DEFAULT_BASELINE,
    figures: bool = True,
) -> Path:
    """Write report.md, report.html, report.csv, report.json and figures; return report.md.

    ``out_dir`` defaults to ``<first path>/report/``.
    """
    if not paths:
        raise SpecloadError("report: give at least one run or sweep directory")
    runs = find_runs(paths)
    df = build_tables(runs, baseline)
    base_label = resolve_baseline(runs, baseline)
    out = Path(out_dir) if out_dir is not None else Path(paths[0]) / "report"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SpecloadError(f"--out: cannot create {out}: {e.strerror}") from None
    cross = crossovers(df)

    fig_paths: dict[str, list[Path]] = {}
    if figures:
        from loadgen.report import figures as figs

        for scen in dict.fromkeys(df["scenario"]):
            fig_paths[scen] = figs.scenario_figures(df[df["scenario"] == scen], scen, out)

    csv_df = df.copy()
    for col in ("acceptance_per_position", "repeat_phases"):
        csv_df[col] = [json.dumps(v) if isinstance(v, list) else "" for v in csv_df[col]]
    csv_df.to_csv(out / "report.csv", index=False)

    run_info = [
        {
            "label": r.label,
            "scenario": r.scenario,
            "path": str(r.path),
            "spec": r.spec,
            "complete": r.complete,
            "notes": r.notes,
        }
        for r in runs
    ]
    doc = {
        "baseline": base_label,
        "baselines": list(dict.fromkeys(df.loc[df["is_baseline"].astype(bool), "label"])),
        "runs": run_info,
        "rows": df.to_dict("records"),
        "repeats": repeat_rows(runs),
        "crossovers": cross,
        "figures": {s: [p.name for p in ps] for s, ps in fig_paths.items()},
    }
    (out / "report.json").write_text(json.dumps(_json_safe(doc), indent=2) + "\n")

    shown = baseline_text(df, base_label)
    (out / "report.md").write_text(_markdown(df, runs, shown, cross, fig_paths))
    (out / "report.html").write_text(_html(df, runs, shown, cross, fig_paths))
    return out / "report.md"


def baseline_text(df: pd.DataFrame, base_label: str | None) -> str | None:
    """How the report names its baseline: one label, or each level's where they differ."""
    bases = list(dict.fromkeys(df.loc[df["is_baseline"].astype(bool), "label"]))
    if len(bases) < 2:
        return base_label
    return " / ".join(bases) + " (per level: the run without speculation at that level)"


def repeat_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One row per measured phase (each repeat on its own), for report.json: the values
    the aggregated rows were computed from."""
    out: list[dict[str, Any]] = []
    for r in runs:
        for name, s in r.phases.items():
            level, rep = r.level_of(name)
            values, notes, _ = _metrics_of(s)
            out.append(
                {
                    "scenario": r.scenario,
                    "label": r.label,
                    "level": level,
                    "repeat": rep,
                    "phase": name,
                    "load_level": r.levels.get(name),
                    **values,
                    "note": "; ".join(notes),
                }
            )
    return out


def _intro(runs: Sequence[Run], base_label: str | None) -> list[str]:
    lines = [
        f"Baseline: **{base_label}**." if base_label else "Baseline: none found; no speedups.",
        "Speedups: TPOT and E2E = baseline median / config median; throughput = config output "
        "tok/s / baseline's. Above 1.00x the config is better. ITL is per token. "
        "Latencies in ms (p50 / p99).",
    ]
    return lines


HOW_TO_READ = """\
## How to read this

- **Rows.** One row per config and load level. With `repeats: N` in the scenario, each level
  ran N times back to back on the same server (phases `... r1`, `... r2`, ...); the row
  folds them together. `n` is how many repeats have results. Every metric is the
  **median over repeats** (with two repeats, their mean), except ok/failed, which are
  totals over all repeats. A level run once shows its one value, and no spread.
- **Speedups** are computed from those medians, against the baseline config at the same
  level. TPOT speedup = baseline median TPOT / config median TPOT; E2E speedup likewise
  with median end-to-end latency; throughput speedup = config output tok/s / baseline
  output tok/s. Above 1.00x the config is better (faster tokens, shorter requests, more
  tokens per second); below 1.00x speculation costs more than it buys.
- **Spread** (`... spread` columns; `_min`, `_max`, `_spread_pct` in report.csv) is
  (max - min) / median over a config's repeats of one level, in %. It says how much that
  figure moved between back-to-back runs of the same load on the same server. n/a with
  fewer than 2 repeats.
- **Speedup range** (in brackets after a speedup, `_lo` / `_hi` in report.csv) is the
  lowest and highest speedup any baseline repeat paired with any config repeat gives:
  for TPOT, min(baseline) / max(config) to max(baseline) / min(config); for throughput,
  min(config) / max(baseline) to max(config) / min(baseline).
- **Stable** means that range does not include 1.00x: the config's and the baseline's
  min-max ranges over repeats do not overlap, so every pairing of repeats agrees on win or
  loss. **Unstable** means the range includes 1.00x: the repeats do not settle whether
  the config wins at that level, whatever the median says; rerun with more repeats or
  longer phases before acting on it. Stability needs 2 or more repeats of both the config
  and the baseline; otherwise it is n/a. How strict this is: if the two configs did not
  differ at all and repeats were exchangeable, complete separation would still happen by
  chance with probability 2 / C(n_b + n_c, n_c): 10% for 3 and 3 repeats, 33% for 2 and
  2, under 1% for 5 and 5. A stable verdict from 3 repeats each is a screen, not a proof.
- **Crossover** reads the median speedups in increasing load order: the first level
  where the speedup falls below 1.00x after a win. It is marked stable when every level's
  speedup is stable (no pairing of repeats would move it), unstable with the levels whose
  range includes 1.00x.
"""


def _stability_lines(df: pd.DataFrame) -> list[str]:
    """Markdown list: which speedups hold over every pairing of repeats and which do not."""
    if not _repeated(df):
        return []
    names = {"tpot_speedup": "TPOT", "throughput_speedup": "throughput", "e2e_speedup": "E2E"}
    stable: list[str] = []
    unstable: list[str] = []
    unknown = 0
    verdict = {True: "win", False: "loss"}
    for r in df[~df["is_baseline"].astype(bool)].to_dict("records"):
        for col, what in names.items():
            if as_float(r[col]) is None:
                continue
            flag = as_flag(r[f"{col}_stable"])
            text = (
                f"`{r['scenario']}` {r['label']} at {r['phase']}: {what} {fmt_speedup(r[col])} "
                f"({fmt_num(r[f'{col}_lo'])}-{fmt_num(r[f'{col}_hi'])})"
            )
            if flag is None:
                unknown += 1
            elif flag:
                stable.append(f"{text}, {verdict[as_float(r[col]) >= 1.0]}")
            else:
                unstable.append(text)
    out = ["## Which speedups are stable", ""]
    out.append(f"Stable (range over repeat pairings clear of 1.00x): {len(stable)}; ")
    out[-1] += f"unstable (range includes 1.00x): {len(unstable)}; without repeats: {unknown}."
    out.append("")
    if unstable:
        out += ["Unstable, do not read a win or a loss into these:", ""]
        out += [f"- {u}" for u in unstable]
        out.append("")
    if stable:
        out += ["Stable:", ""]
        out += [f"- {s}" for s in stable]
        out.append("")
    return out


def _notes(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return [f"{r['label']}: {r['note']}" for r in rows if r.get("note")]


def _run_notes(runs: Sequence[Run]) -> list[str]:
    return [f"{r.label} / {r.scenario} ({r.path}): {n}" for r in runs for n in r.notes]


def _markdown(
    df: pd.DataFrame,
    runs: Sequence[Run],
    base_label: str | None,
    cross: Sequence[Mapping[str, Any]],
    fig_paths: Mapping[str, Sequence[Path]],
) -> str:
    out = ["# Speculative decoding load report", "", *_intro(runs, base_label), ""]
    runs_notes = _run_notes(runs)
    if runs_notes:
        out += ["Run notes:", "", *(f"- {n}" for n in runs_notes), ""]
    out += [HOW_TO_READ]
    repeated = _repeated(df)
    current = None
    for scen, phase, rows in _sections(df):
        if scen != current:
            current = scen
            out += [f"## Scenario `{scen}`", ""]
        out += [f"### {phase}", "", _md_table(rows, repeated), ""]
        notes = _notes(rows)
        if notes:
            out += [*(f"- note: {n}" for n in notes), ""]
    out += ["## Crossover: where speculation stops paying off", ""]
    if not cross:
        out += ["No speculative config to compare with the baseline.", ""]
    for c in cross:
        out.append(f"- `{c['scenario']}` **{c['label']}**: {c['text']}")
    out.append("")
    out += _stability_lines(df)
    if fig_paths:
        out += ["## Figures", ""]
        for scen, ps in fig_paths.items():
            for p in ps:
                out.append(f"- [{scen}: {p.stem}]({p.name})")
        out.append("")
    return "\n".join(out)


def _html(
    df: pd.DataFrame,
    runs: Sequence[Run],
    base_label: str | None,
    cross: Sequence[Mapping[str, Any]],
    fig_paths: Mapping[str, Sequence[Path]],
) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        "<title>Speculative decoding load report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Speculative decoding load report</h1>",
    ]
    parts += [f"<p>{e(line).replace('**', '')}</p>" for line in _intro(runs, base_label)]
    runs_notes = _run_notes(runs)
    if runs_notes:
        items = "".join(f"<li>{e(n)}</li>" for n in runs_notes)
        parts.append(f"<p>Run notes:</p><ul class='note'>{items}</ul>")
    parts.append("<h2>Crossover: where speculation stops paying off</h2><ul>")
    for c in cross:
        parts.append(f"<li><code>{e(str(c['scenario']))}</code> <b>{e(str(c['label']))}</b>: ")
        parts.append(f"{e(c['text'])}</li>")
    if not cross:
        parts.append("<li>No speculative config to compare with the baseline.</li>")
    parts.append("</ul>")
    parts.append(_md_to_html(HOW_TO_READ))
    stab = _stability_lines(df)
    if stab:
        parts.append(_md_to_html("\n".join(stab)))
    repeated = _repeated(df)
    current = None
    for scen, phase, rows in _sections(df):
        if scen != current:
            if current is not None:
                parts += _html_figures(fig_paths.get(current, ()))
            current = scen
            parts.append(f"<h2>Scenario <code>{e(scen)}</code></h2>")
        parts.append(f"<h3>{e(phase)}</h3>")
        parts.append(_html_table(rows, repeated))
        notes = _notes(rows)
        if notes:
            parts.append("<ul class='note'>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>")
    if current is not None:
        parts += _html_figures(fig_paths.get(current, ()))
    parts.append("</body></html>")
    return "\n".join(parts)


def _md_to_html(md: str) -> str:
    """The little Markdown the fixed sections use: '## ' headings, '- ' items (with
    continuation lines), paragraphs, **bold** and `code`."""
    e = html.escape

    def inline(text: str) -> str:
        text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", e(text))
        return re.sub(r"`(.+?)`", r"<code>\1</code>", text)

    out: list[str] = []
    item: list[str] | None = None
    in_list = False

    def flush() -> None:
        nonlocal item
        if item is not None:
            out.append(f"<li>{inline(' '.join(item))}</li>")
            item = None

    for line in md.splitlines():
        s = line.strip()
        if s.startswith("- "):
            flush()
            if not in_list:
                out.append("<ul>")
                in_list = True
            item = [s[2:]]
        elif s and item is not None and line.startswith("  "):
            item.append(s)
        else:
            flush()
            if in_list:
                out.append("</ul>")
                in_list = False
            if s.startswith("## "):
                out.append(f"<h2>{inline(s[3:])}</h2>")
            elif s:
                out.append(f"<p>{inline(s)}</p>")
    flush()
    if in_list:
        out.append("</ul>")
    return "\n".join(out)


def _html_figures(paths: Iterable[Path]) -> list[str]:
    out = []
    for p in paths:
        data = base64.b64encode(p.read_bytes()).decode("ascii")
        out.append(f"<figure><img alt='{html.escape(p.stem)}' src='data:image/png;base64,{data}'>")
        out.append(f"<figcaption>{html.escape(p.stem)}</figcaption></figure>")
    return out


# --- CLI ---------------------------------------------------------------------------------


def _parser(prog: str, description: str, many: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument(
        "dirs",
        nargs="+",
        metavar="DIR",
        help="run directories, one config each (label from run.json, else the dir name)"
        if many
        else "run directory (holds run.json) or a sweep directory above several",
    )
    p.add_argument(
        "--baseline",
        default=DEFAULT_BASELINE,
        metavar="LABEL",
        help="config label the speedups compare with (default: 'none', else the run "
        "without speculative decoding)",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="where to write report.md/.html/.csv/.json and figures"
        + (" (default: <first DIR>/report/)" if not many else " (default: print only)"),
    )
    p.add_argument("--no-figures", action="store_true", help="skip the matplotlib figures")
    return p


def report_main(argv: list[str]) -> int:
    """``loadgen report DIR [--baseline L] [--out DIR]``: write the report files."""
    args = _parser(
        "loadgen report", "Write report.md/.html/.csv/.json and figures for runs.", False
    ).parse_args(argv)
    try:
        md = write_report(args.dirs, args.out, args.baseline, figures=not args.no_figures)
    except SpecloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"report: {md}  (also {md.with_suffix('.html').name}, report.csv, report.json)")
    return 0


def compare_main(argv: list[str]) -> int:
    """``loadgen compare DIR1 DIR2 ... [--baseline L] [--out DIR]``: configs side by side."""
    args = _parser(
        "loadgen compare",
        "Compare configs (one run directory each) per load level against a baseline.",
        True,
    ).parse_args(argv)
    from loadgen.report.console import print_comparison_table

    try:
        runs = find_runs(args.dirs)
        df = build_tables(runs, args.baseline)
        base_label = resolve_baseline(runs, args.baseline)
        print_comparison_table(df.to_dict("records"), base_label)
        for c in crossovers(df):
            print(f"{c['scenario']} {c['label']}: {c['text']}")
        if args.out:
            md = write_report(args.dirs, args.out, args.baseline, figures=not args.no_figures)
            print(f"report: {md}")
    except SpecloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


__all__ = [
    "Crossover",
    "Run",
    "aggregate",
    "build_tables",
    "compare_main",
    "crossovers",
    "find_crossover",
    "find_runs",
    "load_run",
    "repeat_rows",
    "report_main",
    "resolve_baseline",
    "speedup_range",
    "split_repeat",
    "write_report",
]

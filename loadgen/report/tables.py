"""The tidy table: one row per (scenario, load level, config) with speedups against a baseline.

Repeats of a level fold into one row (medians; counts are totals) that keeps each metric's
spread and each speedup's range over every pairing of repeats, so a reader can tell a win
from noise. Pure functions over :class:`~loadgen.report.load.Run` objects; pandas is
imported inside :func:`build_tables` so importing this module stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loadgen.errors import SpecloadError
from loadgen.report.console import as_float, pick
from loadgen.report.load import Run, phase_sort_key
from loadgen.report.verdict import Verdict, unpaired_interval

if TYPE_CHECKING:
    import pandas as pd

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


# The speedups that get a 95% interval and a verdict (loadgen/report/verdict.py), by the
# name paired settings use: metric -> (speedup column, metric column, lower is better).
CI_SPEEDUPS: dict[str, tuple[str, str, bool]] = {
    "tpot": ("tpot_speedup", "tpot_p50_ms", True),
    "itl": ("itl_speedup", "itl_p50_ms", True),
    "e2e": ("e2e_speedup", "e2el_p50_ms", True),
    "throughput": ("throughput_speedup", "output_throughput", False),
    "goodput": ("goodput_speedup", "request_goodput", False),
}


# Every row gets these: how it was measured, and each CI speedup's 95% interval and verdict
# (paired: over pairs; unpaired: Welch over repeats, 'not significant' for single runs).
CI_COLUMNS = [
    "pairing",
    "pairs",
    "itl_speedup",
    "goodput_speedup",
    *(f"{sp}_{k}" for sp, _, _ in CI_SPEEDUPS.values() for k in ("ci_lo", "ci_hi", "verdict")),
    "settled",
    "stop_reason",
    "warmup_windows",
    "warmup_s",
    "jit_phases",
]


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
                key = phase_sort_key(levels[lvl], i, lvl)
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
    # intervals and verdicts (appended, as above): report/verdict.py, docs/paired.md
    *CI_COLUMNS,
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
        values, notes, nothing_done = metrics_of(s)
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


def metrics_of(s: Mapping[str, Any]) -> tuple[dict[str, float], list[str], bool]:
    """One phase summary's metric columns (NaN where missing), notes, and 'nothing done'."""
    notes: list[str] = []
    if s.get("complete") is False:
        notes.append("phase incomplete")
    # the summary writes 0.0 for a statistic of no samples: with nothing completed, the
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
    if single := int(as_float(s.get("single_read_requests")) or 0):
        notes.append(
            f"{single} of {int(as_float(s.get('completed')) or 0)} requests arrived in one read "
            "(the server flushed the stream at once): their TPOT reads 0 and their TTFT holds "
            "their decoding"
        )
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
    notes += _verdict_columns(row, run, level, lv, base, base_label)
    row["note"] = "; ".join(notes)
    return row


def _verdict_columns(
    row: dict[str, Any],
    run: Run,
    level: str,
    lv: _Level,
    base: _Level | None,
    base_label: str | None,
) -> list[str]:
    """Fill the CI_COLUMNS of ``row``; return notes. A candidate measured beside the
    baseline gets its paired intervals (the speedup becomes their estimate, the geometric
    mean over pairs); any other row an unpaired interval from its repeats, if it has any."""
    is_base = run.label == base_label
    for sp, col, lower_better in CI_SPEEDUPS.values():
        if sp not in SPEEDUP_BASIS:  # the speedups the columns above do not already have
            b = base.median(col) if base else math.nan
            row[sp] = _ratio(b, row[col]) if lower_better else _ratio(row[col], b)
        row[f"{sp}_ci_lo"], row[f"{sp}_ci_hi"], row[f"{sp}_verdict"] = math.nan, math.nan, None
    row.update(
        pairing=run.pairing, pairs=math.nan, settled=None, stop_reason=None,
        warmup_windows=math.nan, warmup_s=math.nan, jit_phases=math.nan,
    )  # fmt: skip
    levels = run.paired.get(level) or []
    mine = next((p for p in levels if p.candidate == run.label and p.baseline == base_label), None)
    if mine is not None:
        return _paired_columns(row, mine)
    if levels:  # the baseline of paired levels (one per group; candidates of a group share it)
        by_dir = {p.path: p for p in levels}.values()
        row["pairs"] = sum(p.pairs for p in by_dir)
        _warmup_columns(row, [p.warmup.get(run.label) for p in by_dir])
        return []
    if base is None or is_base:
        return []
    for sp, col, lower_better in CI_SPEEDUPS.values():
        iv = unpaired_interval(base.values[col], lv.values[col], lower_better)
        if iv.verdict is not Verdict.NO_DATA:
            row[f"{sp}_ci_lo"], row[f"{sp}_ci_hi"] = iv.lo, iv.hi
            row[f"{sp}_verdict"] = iv.verdict.value
    return []


def _paired_columns(row: dict[str, Any], pl: Any) -> list[str]:
    """A candidate's row from its paired level (report/paired.py's PairedLevel)."""
    notes: list[str] = []
    for sp, col, lower_better in CI_SPEEDUPS.values():
        iv = pl.interval(col, lower_better)
        row[sp] = iv.estimate
        row[f"{sp}_ci_lo"], row[f"{sp}_ci_hi"] = iv.lo, iv.hi
        row[f"{sp}_verdict"] = iv.verdict.value
        if sp in SPEEDUP_BASIS:  # the range over repeat pairings gives way to the interval
            row[f"{sp}_lo"], row[f"{sp}_hi"], row[f"{sp}_stable"] = math.nan, math.nan, None
    row.update(pairs=pl.pairs, settled=pl.settled, stop_reason=pl.stop_reason)
    _warmup_columns(row, [pl.warmup.get(row["label"])])
    row["jit_phases"] = len(pl.jit)
    if pl.status != "done":
        notes.append(f"level {pl.status} after {pl.pairs} pair(s)")
    elif not pl.settled:
        hw = pl.interval(*SPEEDUP_BASIS["tpot_speedup"]).half_width_pct
        notes.append(
            f"never settled ({pl.stop_reason}): TPOT interval +-{hw:.1f}% "
            f"> target {pl.target_pct:g}%"
        )
    if pl.jit:
        notes.append(f"kernel compilation during {len(pl.jit)} measured phase(s)")
    unsteady = [lb for lb, w in pl.warmup.items() if w and not w.get("steady")]
    if unsteady:
        notes.append("warm-up never steady (cap reached): " + ", ".join(unsteady))
    return notes


def _warmup_columns(row: dict[str, Any], infos: list[Mapping[str, Any] | None]) -> None:
    done = [w for w in infos if w]
    if done:
        row["warmup_windows"] = sum(int(w.get("windows") or 0) for w in done)
        row["warmup_s"] = math.fsum(float(w.get("seconds") or 0.0) for w in done)


def _ratio(num: float | None, den: float | None) -> float:
    n, d = as_float(num), as_float(den)
    if n is None or d is None or n <= 0 or d <= 0:
        return math.nan
    return n / d


def repeat_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One row per measured phase (each repeat on its own), for report.json: the values
    the aggregated rows were computed from."""
    out: list[dict[str, Any]] = []
    for r in runs:
        for name, s in r.phases.items():
            level, rep = r.level_of(name)
            values, notes, _ = metrics_of(s)
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

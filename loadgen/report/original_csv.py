"""The original experiment's results CSV: one row per (run, scenario, phase), and its graphs.

The original wrote ``raw_data/<output_csv>`` and ``analyze_results.py`` drew graphs from it
into ``visualizations/``. The sweep writes the same file, one row per measured phase, with
the original's identifying columns (``speculative_model``, ``num_speculative_tokens``,
``batch_size``, ``num_requests``) followed by ``vllm bench serve``-named metrics; this
module owns that format both ways (writing rows, reading them back for the graphs).

    python analyze_results.py raw_data/vllm_benchmark_results.csv [--out visualizations]
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from loadgen.config.scenario import Scenario
from loadgen.errors import SpecloadError
from loadgen.report.figures import file_stem

if TYPE_CHECKING:
    import pandas as pd


class SpecLike(Protocol):
    """What a row needs of a speculative config (``server_launch.specs.SpecConfig``)."""

    @property
    def method(self) -> str: ...
    @property
    def model(self) -> str | None: ...
    @property
    def num_speculative_tokens(self) -> int | None: ...
    @property
    def label(self) -> str | None: ...


class ServerRunLike(Protocol):
    """What a row needs of the server run it came from (``server_launch.matrix.ServerRun``);
    a protocol so the format lives here without loadgen importing server_launch."""

    @property
    def label(self) -> str: ...
    @property
    def batch_size(self) -> int | None: ...
    @property
    def spec(self) -> SpecLike: ...
    @property
    def scenarios(self) -> Sequence[Scenario]: ...


# Identifying columns first (the original's four, then where the row came from), then
# metrics with vllm bench serve's names (ms for latencies, per second for throughputs).
ID_COLUMNS = (
    "speculative_model",  # "none", "[ngram]" or the draft/head model (basename for local dirs)
    "num_speculative_tokens",  # k; empty without speculation
    "batch_size",  # closed-loop concurrency (= server max_num_seqs in the original format)
    "num_requests",  # measured requests of the phase (warmup excluded)
    "method",  # none | ngram | draft_model | eagle | eagle3 | mtp | suffix
    "label",  # the server run's label (results directory name)
    "spec_label",  # the speculative config's label (same across batch sizes)
    "scenario",
    "phase",
    "load_shape",
    "load_level",
    "output_tokens",  # max_tokens asked per request
    "complete",
)
METRIC_COLUMNS = (
    "completed",
    "failed",
    "duration",
    "total_input_tokens",
    "total_output_tokens",
    "request_throughput",
    "output_throughput",
    "total_token_throughput",
    "mean_ttft_ms",
    "median_ttft_ms",
    "p99_ttft_ms",
    "mean_tpot_ms",
    "median_tpot_ms",
    "p99_tpot_ms",
    "mean_itl_ms",
    "median_itl_ms",
    "p99_itl_ms",
    "mean_e2el_ms",
    "median_e2el_ms",
    "p99_e2el_ms",
    "mean_tokens_per_chunk",
    "spec_decode_acceptance_length",
    "spec_decode_acceptance_rate",  # percent, as vllm bench serve stores it
    "spec_decode_num_drafts",
    "spec_decode_draft_tokens",
    "spec_decode_accepted_tokens",
    "request_goodput",
)
CSV_COLUMNS: tuple[str, ...] = ID_COLUMNS + METRIC_COLUMNS


def speculative_model_name(method: str, model: str | None) -> str:
    """The original's ``speculative_model`` value: none, [ngram], or a model name."""
    if method == "none":
        return "none"
    if method == "ngram":
        return "[ngram]"
    if not model:
        return method
    if model.startswith(("/", ".")) or Path(model).exists():
        return Path(model.rstrip("/")).name
    return model


def row_from_summary(run: ServerRunLike, summary: Mapping[str, Any]) -> dict[str, Any]:
    """One CSV row from a server run and one phase's flat summary (summary.summarize).

    ``summary`` should carry ``scenario`` (the sweep adds it to each phase's summary); the
    scenario's configured ``output_tokens`` is looked up in the run by that name.
    """
    spec = run.spec
    scen_name = summary.get("scenario")
    scenario = next((s for s in run.scenarios if s.name == scen_name), None)
    if scenario is None and len(run.scenarios) == 1:
        scenario = run.scenarios[0]
    batch = run.batch_size
    if batch is None and summary.get("load_shape") == "concurrency":
        batch = _as_int(summary.get("load_level"))
    if batch is None:
        batch = _as_int(summary.get("max_concurrency"))
    row: dict[str, Any] = {
        "speculative_model": speculative_model_name(spec.method, spec.model),
        "num_speculative_tokens": spec.num_speculative_tokens,
        "batch_size": batch,
        "num_requests": summary.get("num_prompts", summary.get("completed")),
        "method": spec.method,
        "label": run.label,
        "spec_label": spec.label,
        "scenario": scenario.name if scenario else scen_name,
        "phase": summary.get("phase"),
        "load_shape": summary.get("load_shape"),
        "load_level": summary.get("load_level"),
        "output_tokens": scenario.output_tokens if scenario else None,
        "complete": summary.get("complete"),
    }
    for col in METRIC_COLUMNS:
        row[col] = summary.get(col)
    return row


def write_rows(path: str | Path, rows: Sequence[Mapping[str, Any]], append: bool = True) -> Path:
    """Write rows (CSV_COLUMNS order) to ``path``; appends to an existing file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    new = not (append and p.exists() and p.stat().st_size > 0)
    with p.open("w" if new else "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
        if new:
            w.writeheader()
        for r in rows:
            w.writerow({k: "" if r.get(k) is None else r.get(k) for k in CSV_COLUMNS})
    return p


def _as_int(v: Any) -> int | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return int(f) if math.isfinite(f) and f == int(f) else None


# --- reading and graphs -------------------------------------------------------------------

REQUIRED = ("speculative_model", "batch_size", "output_throughput", "median_tpot_ms")


def read_results(path: str | Path) -> pd.DataFrame:
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise SpecloadError(f"{p}: no such file")
    try:
        df = pd.read_csv(p)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise SpecloadError(f"{p}: not a readable CSV: {str(e).splitlines()[0]}") from None
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise SpecloadError(f"{p}: column '{missing[0]}' missing (expected the sweep's CSV)")
    if df.empty:
        raise SpecloadError(f"{p}: no rows")
    df = df.copy()
    df["speculative_model"] = df["speculative_model"].fillna("none").astype(str)
    if "num_speculative_tokens" not in df.columns:
        df["num_speculative_tokens"] = float("nan")
    if "num_requests" not in df.columns:
        df["num_requests"] = 0
    df["config"] = [
        _config_name(m, k)
        for m, k in zip(df["speculative_model"], df["num_speculative_tokens"], strict=True)
    ]
    return df


def _config_name(model: str, k: Any) -> str:
    if model == "none":
        return "none"
    kk = _as_int(k)
    return f"{model} k={kk}" if kk is not None else model


def with_speedups(df: pd.DataFrame) -> pd.DataFrame:
    """Add throughput and TPOT speedups vs the ``none`` row at the same batch size,
    num_requests (and scenario when present); NaN where there is no baseline."""
    keys = [c for c in ("scenario", "batch_size", "num_requests") if c in df.columns]
    out = df.copy()
    base = (
        df[df["config"] == "none"]
        .groupby(keys, dropna=False)[["output_throughput", "median_tpot_ms"]]
        .mean()
        .rename(columns={"output_throughput": "_b_thr", "median_tpot_ms": "_b_tpot"})
        .reset_index()
    )
    out = out.merge(base, on=keys, how="left")
    out["throughput_speedup"] = out["output_throughput"] / out["_b_thr"]
    out["tpot_speedup"] = out["_b_tpot"] / out["median_tpot_ms"]
    return out.drop(columns=["_b_thr", "_b_tpot"])


PLOTS = (
    ("output_throughput", "output tokens/s", "throughput"),
    ("median_tpot_ms", "median TPOT (ms)", "tpot"),
    ("median_ttft_ms", "median TTFT (ms)", "ttft"),
    ("throughput_speedup", "throughput speedup vs none (x)", "speedup_throughput"),
    ("tpot_speedup", "TPOT speedup vs none (x)", "speedup_tpot"),
    ("spec_decode_acceptance_length", "acceptance length (tokens/step)", "acceptance_length"),
)


def make_figures(df: pd.DataFrame, out_dir: str | Path, stem: str = "results") -> list[Path]:
    """One PNG per metric: the metric vs batch size, a line per (speculative model, k),
    one panel per scenario (in the original format: per num_requests value). Metrics
    with no values are skipped."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, NullLocator

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = with_speedups(df)
    panels = _panels(df)
    configs = sorted(df["config"].unique(), key=lambda c: (c != "none", c))
    batches = sorted(df["batch_size"].dropna().unique().tolist())
    written: list[Path] = []
    for col, ylabel, name in PLOTS:
        if col not in df.columns or df[col].notna().sum() == 0:
            continue
        fig = Figure(figsize=(4.2 * len(panels) + 1.5, 3.6), dpi=110, layout="constrained")
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (title, sub) in zip(axes, panels, strict=True):
            for cfg in configs:
                s = sub[sub["config"] == cfg].groupby("batch_size")[col].mean().dropna()
                if s.empty:
                    continue
                style = "--" if cfg == "none" else "-"
                ax.plot(s.index, s.values, style, marker="o", label=cfg)
            if "speedup" in col:
                ax.axhline(1.0, color="grey", lw=0.8)
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_locator(FixedLocator(batches))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticklabels([f"{b:g}" for b in batches])
            ax.set_xlabel("batch size (concurrency)")
            ax.set_ylabel(ylabel)
            ax.set_title(title)
            ax.grid(alpha=0.3)
        handles, labels = axes[0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="outside right upper", fontsize=8)
        path = out / f"{file_stem(stem, 'results')}-{name}.png"
        fig.savefig(path, format="png")
        written.append(path)
    return written


def _panels(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Scenario panels (rows of different scenarios are not comparable), titled with the
    request count when it is one number."""
    key = "scenario" if "scenario" in df.columns and df["scenario"].notna().any() else None
    if key is None:
        key = "num_requests"
    out = []
    for value, sub in df.groupby(key, sort=False, dropna=False):
        ns = sub["num_requests"].dropna().unique()
        n = f"num_requests={int(ns[0])}" if len(ns) == 1 else ""
        title = n if key == "num_requests" else " ".join(t for t in (str(value), n) if t)
        out.append((_as_int(sub["num_requests"].min()) or 0, title, sub))
    out.sort(key=lambda t: (t[0], t[1]))
    return [(title, sub) for _, title, sub in out]

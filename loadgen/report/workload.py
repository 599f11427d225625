"""The report's workload section: what the prompts were and what the server said per request.

- **Output lengths**: whether each scenario ran fixed lengths (``ignore_eos``: every request
  generates exactly max_tokens) or natural ones (the model stops where it stops, max_tokens
  caps it), and with natural lengths each config's output-length distribution, since the
  latency per request depends on it and a drafter can change it.
- **By category** (prompt suites): acceptance length and TPOT per category x load level x
  config, with the TPOT speedup against the baseline's same category at the same level.
- **By turn** (multi-turn replay): TTFT, TPOT and prompt tokens per turn, and the prefix
  cache's hit rate over each phase.
- **TTFT inside and outside the engine**: where the server returned its per-request timing,
  the client's TTFT beside the server's queue time and TTFT, so a TTFT gain or loss can be
  placed in the engine or in the HTTP path around it.
- **Per-request acceptance against TPOT**: a scatter of every request that carried the
  server's acceptance figures, with the rank correlation per config.

Pure table building over :class:`~loadgen.report.load.Run` objects (phase summaries and,
for the scatter, ``requests.jsonl``); ``render`` lays the section out.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from loadgen.report.console import as_float
from loadgen.report.load import Run
from loadgen.results.files import phase_records, slugify
from loadgen.results.workload import spec_figures

CATEGORY_COLUMNS = (
    "scenario", "level", "label", "category", "count", "completed", "acceptance_length",
    "draft_acceptance_rate", "median_ttft_ms", "median_tpot_ms", "tpot_speedup",
    "mean_output_len",
)  # fmt: skip
SERVER_COLUMNS = (
    "scenario", "level", "label", "server_metrics", "median_ttft_ms",
    "median_server_queue_ms", "median_server_ttft_ms", "median_client_minus_server_ttft_ms",
)  # fmt: skip
TURN_COLUMNS = (
    "scenario", "level", "label", "turn", "count", "completed", "median_ttft_ms", "p99_ttft_ms",
    "median_tpot_ms", "mean_prompt_tokens", "prefix_cache_hit_rate",
)  # fmt: skip


@dataclass
class WorkloadSection:
    """What the report adds about the workload (rows are plain dicts, JSON-ready)."""

    key: ClassVar[str] = "workload"  # its report.json key
    lengths: list[str]  # one line per scenario: fixed or natural, and the distribution
    categories: list[dict[str, Any]] = field(default_factory=list)
    turns: list[dict[str, Any]] = field(default_factory=list)
    server: list[dict[str, Any]] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "lengths": self.lengths,
            "categories": self.categories,
            "turns": self.turns,
            "server": self.server,
        }

    def markdown(self) -> str:
        out: list[str] = []
        if self.categories:
            out += ["## By prompt category", "", CATEGORY_NOTE, ""]
            out += [_md_table(self.categories, CATEGORY_COLUMNS), ""]
        if self.turns:
            out += ["## By turn (multi-turn replay)", "", TURN_NOTE, ""]
            out += [_md_table(self.turns, TURN_COLUMNS), ""]
        if self.server:
            out += ["## TTFT inside and outside the engine", "", SERVER_NOTE, ""]
            out += [_md_table(self.server, SERVER_COLUMNS), ""]
        if self.figures:
            out += ["## Per-request acceptance", ""]
            out += [f"- [{p.stem}]({p.name})" for p in self.figures] + [""]
        return "\n".join(out)


CATEGORY_NOTE = (
    "Acceptance length = 1 + accepted draft tokens / verify steps, pooled over the category's "
    "requests from the server's per-request figures; TPOT speedup = the baseline's median "
    "TPOT for the same category and level / this config's."
)
TURN_NOTE = (
    "Turn k's request carries the earlier turns and the model's answers, so its prompt grows "
    "with k; the prefix-cache hit rate is vLLM's (hits / queries) over the phase."
)

SERVER_NOTE = (
    "From the server's own per-request figures (vLLM's `--enable-per-request-metrics`), "
    "medians over the level's phases: `server_metrics` = how many measured requests carried "
    "them; the server's queue time and TTFT are measured inside the engine; client minus "
    "server = the client's TTFT minus both, per request: the network, the API server's HTTP "
    "handling, tokenization and the client's own stamping; it grows with the load the API "
    "server carries, so it can differ between configs at one level."
)


def build_section(runs: Sequence[Run], base_label: str | None) -> WorkloadSection:
    """The section's tables from the runs' phase summaries."""
    return WorkloadSection(
        lengths=length_lines(runs),
        categories=category_rows(runs, base_label),
        turns=turn_rows(runs),
        server=server_rows(runs),
    )


def length_lines(runs: Sequence[Run]) -> list[str]:
    """Per scenario: fixed or natural output lengths (as the phase summaries say), and for
    natural lengths each config's median and p90 output length over its phases."""
    out = []
    for scenario in dict.fromkeys(r.scenario for r in runs):
        mine = [r for r in runs if r.scenario == scenario]
        kinds = {s.get("output_lengths") for r in mine for s in r.phases.values()}
        kinds.discard(None)
        if not kinds:
            out.append(f"Output lengths in `{scenario}`: not recorded (a run older than this).")
            continue
        kind = "/".join(sorted(kinds))
        line = f"Output lengths in `{scenario}`: **{kind}**"
        if "natural" in kinds:
            parts = []
            for r in mine:
                med = [as_float(s.get("median_output_len")) for s in r.phases.values()]
                p90 = [as_float(s.get("p90_output_len")) for s in r.phases.values()]
                med_v, p90_v = [m for m in med if m is not None], [p for p in p90 if p is not None]
                if med_v:
                    parts.append(
                        f"{r.label} median {statistics.median(med_v):.0f}, "
                        f"p90 {statistics.median(p90_v):.0f} tokens"
                    )
            line += " (the model stops where it stops; max_tokens caps it): " + "; ".join(parts)
        else:
            line += " (ignore_eos: every request generates exactly max_tokens)."
        out.append(line)
    return out


def _level_groups(run: Run) -> dict[str, list[dict[str, Any]]]:
    """The run's phase summaries grouped by load level (repeats of a level together)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for phase, s in run.phases.items():
        out.setdefault(run.level_of(phase)[0], []).append(s)
    return out


def _median(values: Iterable[Any]) -> float | None:
    v = [x for x in (as_float(v) for v in values) if x is not None]
    return statistics.median(v) if v else None


def _fold(groups: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """One group's figures over the repeats of a level: counts add up, the rest medians."""
    out: dict[str, Any] = {}
    for k in keys:
        vals = [g.get(k) for g in groups]
        if k in ("count", "completed"):
            out[k] = sum(int(v or 0) for v in vals)
        else:
            out[k] = _median(vals)
    return out


def category_rows(runs: Sequence[Run], base_label: str | None) -> list[dict[str, Any]]:
    """One row per scenario x level x config x category (runs whose phases had categories)."""
    keys = ("count", "completed", "acceptance_length", "draft_acceptance_rate",
            "median_ttft_ms", "median_tpot_ms", "mean_output_len")  # fmt: skip
    rows: list[dict[str, Any]] = []
    for run in runs:
        for level, summaries in _level_groups(run).items():
            cats = dict.fromkeys(c for s in summaries for c in s.get("by_category") or {})
            for cat in cats:
                groups = [
                    s["by_category"][cat] for s in summaries if cat in (s.get("by_category") or {})
                ]
                rows.append({"scenario": run.scenario, "level": level, "label": run.label,
                             "category": cat, **_fold(groups, keys)})  # fmt: skip
    base = {
        (r["scenario"], r["level"], r["category"]): r["median_tpot_ms"]
        for r in rows
        if r["label"] == base_label
    }
    for r in rows:
        b, mine = base.get((r["scenario"], r["level"], r["category"])), r["median_tpot_ms"]
        r["tpot_speedup"] = b / mine if b and mine else None
    return [{k: r.get(k) for k in CATEGORY_COLUMNS} for r in rows]


def turn_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One row per scenario x level x config x turn (multi-turn runs only)."""
    keys = ("count", "completed", "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms",
            "mean_prompt_tokens")  # fmt: skip
    rows: list[dict[str, Any]] = []
    for run in runs:
        for level, summaries in _level_groups(run).items():
            hit = _median(s.get("prefix_cache_hit_rate") for s in summaries)
            turns = dict.fromkeys(t for s in summaries for t in s.get("by_turn") or {})
            for t in sorted(turns, key=int):
                groups = [s["by_turn"][t] for s in summaries if t in (s.get("by_turn") or {})]
                rows.append({"scenario": run.scenario, "level": level, "label": run.label,
                             "turn": int(t), **_fold(groups, keys),
                             "prefix_cache_hit_rate": hit})  # fmt: skip
    return [{k: r.get(k) for k in TURN_COLUMNS} for r in rows]


def server_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One row per scenario x level x config whose phases carried the server's per-request
    timing figures (none without them: an older server, or the flag off)."""
    keys = ("median_ttft_ms", "median_server_queue_ms", "median_server_ttft_ms",
            "median_client_minus_server_ttft_ms")  # fmt: skip
    rows: list[dict[str, Any]] = []
    for run in runs:
        for level, summaries in _level_groups(run).items():
            mine = [s for s in summaries if as_float(s.get("median_server_ttft_ms")) is not None]
            if not mine:
                continue
            count = sum(int(s.get("num_server_metrics") or 0) for s in mine)
            rows.append({"scenario": run.scenario, "level": level, "label": run.label,
                         "server_metrics": count, **_fold(mine, keys)})  # fmt: skip
    return [{k: r.get(k) for k in SERVER_COLUMNS} for r in rows]


# --- per-request acceptance against TPOT -------------------------------------------------


def acceptance_points(run: Run) -> list[tuple[float, float]]:
    """(acceptance length, TPOT ms) of each completed measured request of ``run`` that
    carried the server's acceptance figures."""
    out: list[tuple[float, float]] = []
    for phase in run.phases:
        for r in phase_records(run.path / slugify(phase)):
            if r.warmup or not r.ok or r.end_s is None or r.first_token_s is None:
                continue
            spec = spec_figures(r.server_metrics)
            n = r.output_tokens or 0
            if spec is None or n < 2:
                continue
            out.append((spec[3], (r.end_s - r.first_token_s) / (n - 1) * 1000.0))
    return out


def rank_correlation(points: Sequence[tuple[float, float]]) -> float | None:
    """Spearman's rho (average ranks for ties); None under 3 points or with no spread."""
    if len(points) < 3:
        return None
    a = np.array(points, dtype=float)
    ranks = [_ranks(a[:, 0]), _ranks(a[:, 1])]
    if np.std(ranks[0]) == 0 or np.std(ranks[1]) == 0:
        return None
    return float(np.corrcoef(ranks[0], ranks[1])[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=float)
    for v in np.unique(x):  # ties share their average rank
        tie = x == v
        ranks[tie] = ranks[tie].mean()
    return ranks


def acceptance_scatter(runs: Sequence[Run], scenario: str, out_dir: Path) -> Path | None:
    """One PNG per scenario: per-request acceptance length (x) against TPOT (y), a colour
    per config; None when no request carried acceptance figures."""
    series = [(r.label, acceptance_points(r)) for r in runs if r.scenario == scenario]
    series = [(label, pts) for label, pts in series if pts]
    if not series:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    for label, pts in series:
        rho = rank_correlation(pts)
        text = f"{label} (n={len(pts)}" + (
            f", Spearman rho {rho:+.2f})" if rho is not None else ")"
        )
        a = np.array(pts)
        ax.scatter(a[:, 0], a[:, 1], s=12, alpha=0.6, label=text)
    ax.set_xlabel("acceptance length per request (1 + accepted / verify steps)")
    ax.set_ylabel("TPOT per request (ms)")
    ax.set_title(f"{scenario}: per-request acceptance against TPOT (all load levels)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    stem = "".join(c if c.isalnum() or c in "._-" else "_" for c in scenario) or "scenario"
    path = out_dir / f"{stem}-acceptance_vs_tpot.png"
    fig.savefig(path, format="png")
    return path


def _md_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v).replace("|", "\\|")

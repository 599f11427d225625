"""What the written report says, decided once: report.md and report.html render this.

:func:`build_document` turns the tidy table, the runs and the crossovers into a
:class:`ReportDoc` (sections, table columns and cell texts, notes, the fixed prose);
``render`` only lays it out as Markdown or HTML, so the two files cannot drift apart in
content.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from loadgen.report.console import (
    NA,
    as_flag,
    as_float,
    fmt_goodput,
    fmt_int,
    fmt_num,
    fmt_pair,
    fmt_rate,
    fmt_speedup,
    fmt_speedup_range,
    fmt_spread,
    fmt_verdict,
)
from loadgen.report.load import Run

if TYPE_CHECKING:
    import pandas as pd

Row = Mapping[str, Any]


@dataclass(frozen=True)
class Column:
    """One column of the per-level tables: its header and its cell text for a row.
    ``speedup`` names the speedup the column shows (HTML colours its cells by verdict)."""

    header: str
    cell: Callable[[Row], str]
    speedup: str | None = None


def _done(r: Row) -> str:
    if as_float(r["completed"]) is None and as_float(r["failed"]) is None:
        return NA
    return f"{fmt_int(r['completed'])}/{fmt_int(r['failed'])}"


def _speedup_column(header: str, col: str) -> Column:
    return Column(
        header,
        lambda r: fmt_speedup_range(r[col], r[f"{col}_lo"], r[f"{col}_hi"], r[f"{col}_stable"]),
        speedup=col,
    )


_TABLE: list[Column] = [
    Column("config", lambda r: f"{r['label']} (baseline)" if r["is_baseline"] else str(r["label"])),
    Column("ok/failed", _done),
    Column("out tok/s", lambda r: fmt_rate(r["output_throughput"])),
    Column("TTFT p50/p99", lambda r: fmt_pair(r["ttft_p50_ms"], r["ttft_p99_ms"])),
    Column("TPOT p50/p99", lambda r: fmt_pair(r["tpot_p50_ms"], r["tpot_p99_ms"])),
    Column("ITL/token p50/p99", lambda r: fmt_pair(r["itl_p50_ms"], r["itl_p99_ms"])),
    Column("E2E p50/p99", lambda r: fmt_pair(r["e2el_p50_ms"], r["e2el_p99_ms"])),
    Column("tok/chunk", lambda r: fmt_num(r["tokens_per_chunk"])),
    Column("accept len", lambda r: fmt_num(r["acceptance_length"])),
    Column("goodput", lambda r: fmt_goodput(r["request_goodput"], r["goodput_fraction"])),
    _speedup_column("TPOT speedup", "tpot_speedup"),
    _speedup_column("thru speedup", "throughput_speedup"),
    _speedup_column("E2E speedup", "e2e_speedup"),
]
# Shown only when some level was repeated: header of the column each follows -> column.
_REPEAT_COLUMNS: dict[str, Column] = {
    "config": Column("n", lambda r: fmt_int(r["n_repeats"])),
    "out tok/s": Column("tok/s spread", lambda r: fmt_spread(r["output_throughput_spread_pct"])),
    "TTFT p50/p99": Column("TTFT p50 spread", lambda r: fmt_spread(r["ttft_p50_ms_spread_pct"])),
    "TPOT p50/p99": Column("TPOT p50 spread", lambda r: fmt_spread(r["tpot_p50_ms_spread_pct"])),
}


def _verdict_column(header: str, col: str) -> Column:
    """A speedup with its 95% interval and verdict where the row has them (paired rows;
    unpaired rows keep the range over repeats)."""

    def cell(r: Row) -> str:
        if r.get("pairing") == "paired" and not r["is_baseline"]:
            return fmt_verdict(r[col], r[f"{col}_ci_lo"], r[f"{col}_ci_hi"], r[f"{col}_verdict"])
        if f"{col}_lo" in r:
            return fmt_speedup_range(r[col], r[f"{col}_lo"], r[f"{col}_hi"], r[f"{col}_stable"])
        return fmt_speedup(r[col])

    return Column(header, cell, speedup=col)


# A paired report's table: the pairs each level took, and every speedup with its interval.
_PAIRED_TABLE: list[Column] = [
    _TABLE[0],
    Column("pairs", lambda r: fmt_int(r["pairs"])),
    *_TABLE[1:10],
    _verdict_column("TPOT speedup", "tpot_speedup"),
    _verdict_column("ITL speedup", "itl_speedup"),
    _verdict_column("E2E speedup", "e2e_speedup"),
    _verdict_column("thru speedup", "throughput_speedup"),
    _verdict_column("goodput speedup", "goodput_speedup"),
]


def table_columns(repeated: bool, paired: bool = False) -> list[Column]:
    """The per-level table's columns; with repeats, their count and spreads too; a report
    with paired rows shows pairs and every speedup's interval and verdict instead."""
    if paired:
        return list(_PAIRED_TABLE)
    if not repeated:
        return list(_TABLE)
    out: list[Column] = []
    for col in _TABLE:
        out.append(col)
        if col.header in _REPEAT_COLUMNS:
            out.append(_REPEAT_COLUMNS[col.header])
    return out


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


PAIRED_HOW_TO_READ = """\
## How to read a paired comparison

- **Paired** rows: the candidate was served at the same time as the baseline, on the same
  machine, and at each load level their phases alternated A B | B A | ... after both were
  warmed up at that level. Each *pair* is one phase of each, back to back; drift and warm-up
  hit both alike, and over a whole A B | B A block a steady drift cancels.
- **Speedup** = the geometric mean over pairs of baseline / candidate (TPOT, ITL per token,
  E2E: each phase's median) or candidate / baseline (output throughput, goodput). Above
  1.00x the candidate is better.
- **[lo-hi]** is its 95% interval: Student's t on the pairs' log ratios (a bootstrap over
  4-16 pairs would be too narrow). With the true ratio fixed, 95 of 100 such intervals
  contain it; the adaptive rule that decides how many pairs to run is accounted for (the
  first pairs' spread sets a floor on the width, docs/paired.md).
- **Verdict**: *faster* when the whole interval is above 1.00x, *slower* when it is below,
  *can't tell* (at 95%) when it includes 1.00x: then the data cannot say which is better
  at that level, whatever the estimate. A single pair or run is *not significant*.
- **pairs** is how many pairs the level took: it repeats until every watched interval's
  half-width is under the target (`ci_target_pct`), or a cap (`max_repeats`,
  `max_level_s`); a level that hit a cap says *never settled* in its notes.
- **Crossover** is found on verdicts: where a significant win gives way to a significant
  loss, never where a median merely dips under 1.00x.
- **Unpaired** rows (the sequential fallback, one server after the other) carry no such
  protection: whatever the machine did between the two servers' runs is in their speedup.
"""


@dataclass(frozen=True)
class LevelSection:
    """One load level of one scenario: a table row per config, and the rows' notes."""

    phase: str
    rows: list[dict[str, Any]]
    notes: list[str]


@dataclass(frozen=True)
class ScenarioSection:
    name: str
    levels: list[LevelSection]


@dataclass(frozen=True)
class CrossoverLine:
    scenario: str
    label: str
    text: str


@dataclass(frozen=True)
class ReportDoc:
    """Everything report.md and report.html show; texts that carry emphasis are Markdown."""

    intro: list[str]
    run_notes: list[str]
    how_to_read: str  # a Markdown section
    columns: list[Column]
    scenarios: list[ScenarioSection]
    crossovers: list[CrossoverLine]
    stability: list[str]  # a Markdown section; empty when no level was repeated
    figures: Mapping[str, Sequence[Path]]  # scenario -> PNGs; empty without figures
    # Sections other report modules add (loadgen.report.workload, ...), after the tables.
    sections: list[Section] = field(default_factory=list)
    # ... and those that lead, before them (loadgen.report.capacity: the headline answer).
    leading: list[Section] = field(default_factory=list)


class Section(Protocol):
    """A part of the report that a report module builds: Markdown (and its figures) after
    the main tables, and its own key in report.json."""

    key: str
    figures: list[Path]

    def markdown(self) -> str: ...

    def as_json(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ReportData:
    """What a report is made from, computed once by ``render.write_report``: the tidy table
    (``tables.build_tables``), the runs, the baseline label, the crossovers
    (``crossover.crossovers``) and the figures written per scenario."""

    df: pd.DataFrame
    runs: Sequence[Run]
    base_label: str | None
    crossovers: Sequence[Mapping[str, Any]]
    figures: Mapping[str, Sequence[Path]]

    @property
    def baselines(self) -> list[str]:
        """Every label that is a baseline at some level (several: one run per level)."""
        df = self.df
        return list(dict.fromkeys(df.loc[df["is_baseline"].astype(bool), "label"]))

    def baseline_text(self) -> str | None:
        """How the report names its baseline: one label, or each level's where they differ."""
        bases = self.baselines
        if len(bases) < 2:
            return self.base_label
        return " / ".join(bases) + " (per level: the run without speculation at that level)"


def build_document(data: ReportData) -> ReportDoc:
    """The report's content, ready for ``render`` to lay out."""
    df = data.df
    repeated = _repeated(df)
    paired = _paired(df)
    spec_rows = df[~df["is_baseline"].astype(bool)] if len(df) else df
    unpaired = bool(len(spec_rows)) and bool((spec_rows.get("pairing") != "paired").any())
    return ReportDoc(
        intro=_intro(data.baseline_text(), paired and not unpaired) + _pairing_intro(df),
        run_notes=[f"{r.label} / {r.scenario} ({r.path}): {n}" for r in data.runs for n in r.notes],
        how_to_read=(
            PAIRED_HOW_TO_READ + ("\n" + HOW_TO_READ if unpaired else "") if paired else HOW_TO_READ
        ),
        columns=table_columns(repeated, paired),
        scenarios=_sections(df),
        crossovers=[
            CrossoverLine(str(c["scenario"]), str(c["label"]), str(c["text"]))
            for c in data.crossovers
        ],
        stability=_verdict_lines(df) if paired else (_stability_lines(df) if repeated else []),
        figures=data.figures,
    )


def _intro(base_label: str | None, paired_only: bool = False) -> list[str]:
    first = f"Baseline: **{base_label}**." if base_label else "Baseline: none found; no speedups."
    if paired_only:
        return [
            first,
            "Speedups: geometric mean over pairs of baseline / config (TPOT, ITL, E2E medians) "
            "or config / baseline (throughput, goodput), with a 95% interval and a verdict. "
            "Above 1.00x the config is better. ITL is per token. Latencies in ms (p50 / p99), "
            "medians over the level's phases.",
        ]
    return [
        first,
        "Speedups: TPOT and E2E = baseline median / config median; throughput = config output "
        "tok/s / baseline's. Above 1.00x the config is better. ITL is per token. "
        "Latencies in ms (p50 / p99).",
    ]


def _paired(df: pd.DataFrame) -> bool:
    return "pairing" in df.columns and bool((df["pairing"] == "paired").any())


def _pairing_intro(df: pd.DataFrame) -> list[str]:
    """Says how the comparisons were measured: paired, unpaired, or some of each."""
    if not len(df) or "pairing" not in df.columns:
        return []
    spec = df[~df["is_baseline"].astype(bool)]
    paired = sorted(set(spec.loc[spec["pairing"] == "paired", "label"]))
    alternated = sorted(set(spec.loc[spec["pairing"] == "alternated", "label"]))
    unpaired = sorted(set(spec.loc[~spec["pairing"].isin(["paired", "alternated"]), "label"]))
    out = []
    if paired:
        out.append(
            "**Paired**: " + ", ".join(paired) + " served beside the baseline, phases "
            "interleaved A B | B A; speedups with 95% intervals and verdicts."
        )
    if alternated:
        out.append(
            "**Alternated** (capacity searches side by side, their probes in turn): "
            + ", ".join(alternated)
            + ". Each search chose its own levels; where two probed the "
            "same level, its speedup compares one probe of each, taken at different moments: "
            "**not significant**. The capacity table is their comparison."
        )
    if unpaired:
        single = spec[~spec["pairing"].isin(["paired", "alternated"])]
        verdicts = [v for v in single.get("tpot_speedup_verdict", []) if isinstance(v, str)]
        ns = bool(verdicts) and all(v == "not significant" for v in verdicts)
        out.append(
            "**Unpaired** (one server after the other): " + ", ".join(unpaired) + ". Drift "
            "between the runs is in these speedups"
            + ("; with one run per level they are **not significant**." if ns else ".")
        )
    return out


def _verdict_lines(df: pd.DataFrame) -> list[str]:
    """Markdown: each paired level's verdicts, pairs, and what to watch for."""
    out = ["## Verdicts (paired, 95%)", ""]
    rows = df[(df["pairing"] == "paired") & ~df["is_baseline"].astype(bool)]
    names = {
        "tpot_speedup": "TPOT",
        "itl_speedup": "ITL",
        "e2e_speedup": "E2E",
        "throughput_speedup": "throughput",
        "goodput_speedup": "goodput",
    }
    unsettled = []
    for r in rows.to_dict("records"):
        parts = [
            f"{what} {r[f'{col}_verdict']}"
            for col, what in names.items()
            if isinstance(r.get(f"{col}_verdict"), str) and r[f"{col}_verdict"] != "n/a"
        ]
        pairs = fmt_int(r["pairs"])
        out.append(
            f"- `{r['scenario']}` {r['label']} at {r['phase']} ({pairs} pairs): " + ", ".join(parts)
        )
        if r.get("settled") is False:
            unsettled.append(f"{r['label']} at {r['phase']} ({r.get('stop_reason')})")
    out.append("")
    if unsettled:
        out += ["Never settled (a cap was reached first): " + "; ".join(unsettled) + ".", ""]
    return out


def _repeated(df: pd.DataFrame) -> bool:
    return bool(len(df)) and bool((df["n_repeats"] > 1).any())


def _sections(df: pd.DataFrame) -> list[ScenarioSection]:
    """Scenarios, each with its load levels, in table order."""
    out: list[ScenarioSection] = []
    for (scen, phase), g in df.groupby(["scenario", "phase"], sort=False):
        if not out or out[-1].name != str(scen):
            out.append(ScenarioSection(str(scen), []))
        rows = g.to_dict("records")
        notes = [f"{r['label']}: {r['note']}" for r in rows if r.get("note")]
        out[-1].levels.append(LevelSection(str(phase), rows, notes))
    return out


def _stability_lines(df: pd.DataFrame) -> list[str]:
    """Markdown list: which speedups hold over every pairing of repeats and which do not."""
    names = {"tpot_speedup": "TPOT", "throughput_speedup": "throughput", "e2e_speedup": "E2E"}
    stable: list[str] = []
    unstable: list[str] = []
    unknown = 0
    verdict = {True: "win", False: "loss"}
    for r in df[~df["is_baseline"].astype(bool)].to_dict("records"):
        for col, what in names.items():
            value = as_float(r[col])
            if value is None:
                continue
            flag = as_flag(r[f"{col}_stable"])
            text = (
                f"`{r['scenario']}` {r['label']} at {r['phase']}: {what} {fmt_speedup(r[col])} "
                f"({fmt_num(r[f'{col}_lo'])}-{fmt_num(r[f'{col}_hi'])})"
            )
            if flag is None:
                unknown += 1
            elif flag:
                stable.append(f"{text}, {verdict[value >= 1.0]}")
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

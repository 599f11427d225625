"""Writing the report: report.md, report.html, report.csv, report.json and the figures.

:func:`write_report` is the one entry point (the CLI, the sweep and tests call it). The
Markdown and the HTML page lay out the same :class:`~loadgen.report.document.ReportDoc`;
the HTML page embeds its figures and style so it is one file that opens anywhere.
pandas and matplotlib are imported inside functions so ``python -m loadgen`` starts fast.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadgen.errors import SpecloadError
from loadgen.report.capacity import capacity_section
from loadgen.report.console import NA, as_flag, as_float
from loadgen.report.crossover import crossovers
from loadgen.report.document import Column, ReportData, ReportDoc, build_document
from loadgen.report.load import find_runs
from loadgen.report.mini_markdown import markdown_to_html
from loadgen.report.tables import DEFAULT_BASELINE, build_tables, repeat_rows, resolve_baseline
from loadgen.report.workload import WorkloadSection, acceptance_scatter, build_section

if TYPE_CHECKING:
    pass

TITLE = "Speculative decoding load report"
CROSSOVER_HEADING = "Crossover: where speculation stops paying off"
NO_CROSSOVER = "No speculative config to compare with the baseline."

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
    out = Path(out_dir) if out_dir is not None else Path(paths[0]) / "report"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SpecloadError(f"--out: cannot create {out}: {e.strerror}") from None

    fig_paths: dict[str, list[Path]] = {}
    if figures:
        from loadgen.report import figures as figs

        for scen in dict.fromkeys(df["scenario"]):
            fig_paths[scen] = figs.scenario_figures(df[df["scenario"] == scen], scen, out)

    data = ReportData(df, runs, resolve_baseline(runs, baseline), crossovers(df), fig_paths)
    doc = build_document(data)
    # capacity searches first: the report's headline where there are any
    capacity = capacity_section(runs, data.base_label, out if figures else None)
    if capacity:
        doc.leading.append(capacity)
    workload = _workload_section(data, out, figures)
    doc.intro.extend(workload.lengths)  # every report says whether lengths were fixed
    doc.sections.append(workload)
    for name, write in OUTPUTS.items():
        (out / name).write_text(write(data, doc))
    return out / "report.md"


# --- the output formats: one writer each, registered by the file it writes -------------

Writer = Callable[[ReportData, ReportDoc], str]
OUTPUTS: dict[str, Writer] = {}  # file name -> its writer, in the order they are written


def output(name: str) -> Callable[[Writer], Writer]:
    """Register a writer of one report file (a new output format is one more of these)."""

    def deco(fn: Writer) -> Writer:
        if name in OUTPUTS:
            raise ValueError(f"report output '{name}' registered twice")
        OUTPUTS[name] = fn
        return fn

    return deco


def _workload_section(data: ReportData, out: Path, figures: bool) -> WorkloadSection:
    """By category, by turn, the server's TTFT, the lengths and the acceptance scatters
    (:mod:`loadgen.report.workload`); the tables also go to CSV files beside report.csv."""
    import pandas as pd

    section = build_section(data.runs, data.base_label)
    tables = (("categories", section.categories), ("turns", section.turns),
              ("server", section.server))  # fmt: skip
    for name, rows in tables:
        if rows:
            pd.DataFrame(rows).to_csv(out / f"report_{name}.csv", index=False)
    if figures:
        for scen in dict.fromkeys(r.scenario for r in data.runs):
            path = acceptance_scatter(data.runs, scen, out)
            if path is not None:
                section.figures.append(path)
    return section


@output("report.csv")
def csv_text(data: ReportData, _doc: ReportDoc) -> str:
    """The tidy table; list cells (per-position acceptance, repeat phases) as JSON."""
    csv_df = data.df.copy()
    for col in ("acceptance_per_position", "repeat_phases"):
        csv_df[col] = [json.dumps(v) if isinstance(v, list) else "" for v in csv_df[col]]
    return csv_df.to_csv(index=False)


@output("report.json")
def json_text(data: ReportData, report: ReportDoc) -> str:
    """The rows, the per-repeat values they came from, the runs, crossovers and figures."""
    run_info = [
        {
            "label": r.label,
            "scenario": r.scenario,
            "path": str(r.path),
            "spec": r.spec,
            "complete": r.complete,
            "notes": r.notes,
        }
        for r in data.runs
    ]
    doc = {
        "baseline": data.base_label,
        "baselines": data.baselines,
        "runs": run_info,
        "rows": data.df.to_dict("records"),
        "repeats": repeat_rows(data.runs),
        "crossovers": list(data.crossovers),
        "pairing": _pairing_json(data),
        "figures": {s: [p.name for p in ps] for s, ps in data.figures.items()},
    }
    for section in [*report.leading, *report.sections]:
        doc[section.key] = section.as_json()
    return json.dumps(_json_safe(doc), indent=2) + "\n"


def _pairing_json(data: ReportData) -> dict[str, Any]:
    """How each comparison was measured, and each paired level's pairs (the values its
    interval was computed from)."""
    df = data.df
    kinds = set(df["pairing"]) if len(df) else set()
    # "alternated": capacity searches side by side, their probes in turn (no pairs)
    mode = next(iter(kinds)) if len(kinds) == 1 else ("mixed" if kinds else "unpaired")
    levels = []
    seen: set[int] = set()
    for run in data.runs:
        for pls in run.paired.values():
            for pl in pls:
                if id(pl) in seen:
                    continue
                seen.add(id(pl))
                levels.append(
                    {
                        "scenario": pl.scenario,
                        "level": pl.level,
                        "baseline": pl.baseline,
                        "candidate": pl.candidate,
                        "path": str(pl.path),
                        "status": pl.status,
                        "stop_reason": pl.stop_reason,
                        "pairs": pl.pairs,
                        "baseline_values": pl.base_values,
                        "candidate_values": pl.cand_values,
                        "warmup": pl.warmup,
                        "jit": pl.jit,
                    }
                )
    return {"mode": mode, "levels": levels}


def _json_safe(value: Any) -> Any:
    """NaN and infinities as null, numpy scalars as Python numbers (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return _json_safe(value.item())
    return value


# --- Markdown ------------------------------------------------------------------------------


@output("report.md")
def markdown_text(_data: ReportData, doc: ReportDoc) -> str:
    return "\n".join([to_markdown(doc), *(s.markdown() for s in doc.sections)])


@output("report.html")
def html_text(_data: ReportData, doc: ReportDoc) -> str:
    extra = "".join(
        markdown_to_html(s.markdown()) + "".join(_html_figures(s.figures)) for s in doc.sections
    )
    return to_html(doc).replace("</body></html>", extra + "</body></html>")


def to_markdown(doc: ReportDoc) -> str:
    """report.md: the leading sections (capacity at the SLO), the tables per scenario and
    level, then crossovers, stability, figures."""
    out = [f"# {TITLE}", "", *doc.intro, ""]
    if doc.run_notes:
        out += ["Run notes:", "", *(f"- {n}" for n in doc.run_notes), ""]
    out += [s.markdown() for s in doc.leading]
    out += [doc.how_to_read]
    for scen in doc.scenarios:
        out += [f"## Scenario `{scen.name}`", ""]
        for level in scen.levels:
            out += [f"### {level.phase}", "", _md_table(level.rows, doc.columns), ""]
            if level.notes:
                out += [*(f"- note: {n}" for n in level.notes), ""]
    out += [f"## {CROSSOVER_HEADING}", ""]
    if not doc.crossovers:
        out += [NO_CROSSOVER, ""]
    for c in doc.crossovers:
        out.append(f"- `{c.scenario}` **{c.label}**: {c.text}")
    out.append("")
    out += doc.stability
    if doc.figures:
        out += ["## Figures", ""]
        for scen_name, ps in doc.figures.items():
            for p in ps:
                out.append(f"- [{scen_name}: {p.stem}]({p.name})")
        out.append("")
    return "\n".join(out)


def _md_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    head = [c.header for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        cells = [c.cell(r).replace("|", "\\|") for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- HTML ----------------------------------------------------------------------------------


def to_html(doc: ReportDoc) -> str:
    """report.html, self-contained: the leading sections (capacity at the SLO), crossovers
    and the prose first, then each scenario's tables with its figures embedded."""
    e = html.escape
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{TITLE}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{TITLE}</h1>",
    ]
    parts += [f"<p>{e(line).replace('**', '')}</p>" for line in doc.intro]
    if doc.run_notes:
        items = "".join(f"<li>{e(n)}</li>" for n in doc.run_notes)
        parts.append(f"<p>Run notes:</p><ul class='note'>{items}</ul>")
    for section in doc.leading:  # its own HTML where it has one (tables, embedded figures)
        html_of = getattr(section, "html", None)
        parts.append(html_of() if html_of else markdown_to_html(section.markdown()))
    parts.append(f"<h2>{CROSSOVER_HEADING}</h2><ul>")
    for c in doc.crossovers:
        parts.append(f"<li><code>{e(c.scenario)}</code> <b>{e(c.label)}</b>: ")
        parts.append(f"{e(c.text)}</li>")
    if not doc.crossovers:
        parts.append(f"<li>{NO_CROSSOVER}</li>")
    parts.append("</ul>")
    parts.append(markdown_to_html(doc.how_to_read))
    if doc.stability:
        parts.append(markdown_to_html("\n".join(doc.stability)))
    for scen in doc.scenarios:
        parts.append(f"<h2>Scenario <code>{e(scen.name)}</code></h2>")
        for level in scen.levels:
            parts.append(f"<h3>{e(level.phase)}</h3>")
            parts.append(_html_table(level.rows, doc.columns))
            if level.notes:
                items = "".join(f"<li>{e(n)}</li>" for n in level.notes)
                parts.append(f"<ul class='note'>{items}</ul>")
        parts += _html_figures(doc.figures.get(scen.name, ()))
    parts.append("</body></html>")
    return "\n".join(parts)


def _html_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    head = "".join(f"<th>{html.escape(c.header)}</th>" for c in columns)
    body = []
    for r in rows:
        cells = []
        for c in columns:
            text = c.cell(r)
            cells.append(f"<td{_cell_class(r, c, text)}>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _cell_class(r: Mapping[str, Any], column: Column, text: str) -> str:
    """A speedup cell is a win, a loss or unstable; a missing value is greyed."""
    if column.speedup is not None and text != NA:
        verdict = r.get(f"{column.speedup}_verdict")
        if r.get("pairing") == "paired" and isinstance(verdict, str):
            css = {"faster": "win", "slower": "loss"}.get(verdict, "unstable")
            return f' class="{css}"'
        if as_flag(r.get(f"{column.speedup}_stable")) is False:
            return ' class="unstable"'
        value = as_float(r[column.speedup])
        return ' class="win"' if value is not None and value >= 1.0 else ' class="loss"'
    if text == NA:
        return ' class="na"'
    return ""


def _html_figures(paths: Iterable[Path]) -> list[str]:
    out = []
    for p in paths:
        data = base64.b64encode(p.read_bytes()).decode("ascii")
        out.append(f"<figure><img alt='{html.escape(p.stem)}' src='data:image/png;base64,{data}'>")
        out.append(f"<figcaption>{html.escape(p.stem)}</figcaption></figure>")
    return out

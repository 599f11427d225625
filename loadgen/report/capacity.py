"""The report of capacity searches: capacity per configuration, the gain over the baseline,
and goodput and the SLO percentiles against load with every capacity marked.

Reads each run's ``capacity.json`` (:mod:`loadgen.results.capacity`; the report never asks
the engine). A scenario whose runs searched for their capacity gets, before anything else
in report.md and report.html, one table: per configuration its capacity at the SLO, that
capacity's interval, the probes and why the search stopped, and the gain over the baseline
with the headline sentence ("draft k=3: 1.40x the requests per second at p90 TPOT <= 20
ms"); then one figure (:func:`capacity_figure`).

The gain's interval is the two capacities' intervals combined end to end: the config's low
end over the baseline's high end, to the config's high end over the baseline's low end. It
is the widest ratio the two searches allow, not a confidence interval. Searches run one
after the other (the sequential sweep) are not paired either: whatever drifted between them
(the host, thermal state, a neighbour) is in neither interval. Searches run side by side with
their probes alternating (a paired sweep: capacity.json's ``alternation``) share the
machine's drift, so the order they ran in no longer biases the gain; the range is still the
two searches' own brackets combined, not a paired interval. Such rows are marked, and each
candidate's gain is over the baseline's search it alternated with.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from loadgen.report.console import NA, as_float
from loadgen.report.load import Run
from loadgen.results.capacity import (
    SATURATION_FILE,
    Capacity,
    CapacityKind,
    fmt_level,
    read_capacity,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes

HEADING = "Capacity at the SLO"
_UNIT_WORDS = {"req/s": "the requests per second", "concurrency": "the concurrent requests"}


@dataclass(frozen=True)
class Gain:
    """A config's capacity over the baseline's: a point where both are numbers, and the
    bounds their intervals allow (0 and inf are open ends)."""

    value: float | None
    low: float
    high: float
    text: str


@dataclass
class CapacityRow:
    scenario: str
    label: str
    is_baseline: bool
    capacity: Capacity
    slo_text: str
    stop_text: str
    probes: int
    doc: dict[str, Any]
    gain: Gain | None = None
    headline: str = ""

    @property
    def alternation(self) -> dict[str, Any] | None:
        """Who its search alternated probes with (capacity.json), None: it ran alone."""
        alt = self.doc.get("alternation")
        return alt if isinstance(alt, dict) else None

    @property
    def group(self) -> str | None:
        alt = self.alternation
        return None if alt is None else str(alt.get("group"))

    def measured(self) -> str:
        """How its search ran: 'alternated with X, Y' or 'one server at a time'."""
        alt = self.alternation
        if alt is None:
            return "one server at a time"
        own = self.doc.get("label")
        others = [str(x) for x in alt.get("servers") or [] if x != own]
        return "alternated with " + (", ".join(others) or "?")

    def as_dict(self) -> dict[str, Any]:
        g = self.gain
        return {
            "scenario": self.scenario,
            "label": self.label,
            "is_baseline": self.is_baseline,
            "capacity": self.capacity.as_dict(),
            "slo": self.slo_text,
            "probes": self.probes,
            "stop": self.stop_text,
            "gain": None if g is None else g.value,
            "gain_low": None if g is None else _finite(g.low),
            "gain_high": None if g is None else _finite(g.high),
            "gain_text": None if g is None else g.text,
            "headline": self.headline,
            "alternated": self.alternation is not None,
            "measured": self.measured(),
        }


@dataclass
class CapacitySection:
    """What the report shows of capacity searches: rows per scenario, figures, saturation.
    A report :class:`~loadgen.report.document.Section` that leads the report."""

    key: ClassVar[str] = "capacity"  # its report.json key
    rows: list[CapacityRow] = field(default_factory=list)
    by_scenario: dict[str, Path] = field(default_factory=dict)  # scenario -> its figure
    figures: list[Path] = field(default_factory=list)
    saturation: list[str] = field(default_factory=list)  # one line per saturation sweep

    def __bool__(self) -> bool:
        return bool(self.rows or self.saturation)

    def markdown(self) -> str:
        return "\n".join(section_markdown(self))

    def html(self) -> str:
        return "\n".join(section_html(self))

    def as_json(self) -> dict[str, Any]:
        return {"rows": [r.as_dict() for r in self.rows], "saturation": self.saturation}


def capacity_section(
    runs: Sequence[Run], base_label: str | None, out_dir: Path | None = None
) -> CapacitySection:
    """The rows of every run that searched its capacity, and (with ``out_dir``) a figure
    per scenario."""
    section = CapacitySection()
    for r in runs:
        doc = read_capacity(r.path)
        cap = Capacity.from_dict(doc.get("capacity")) if doc else None
        if doc is not None and cap is not None:
            alt = doc.get("alternation") if isinstance(doc.get("alternation"), dict) else {}
            section.rows.append(
                CapacityRow(
                    scenario=r.scenario,
                    label=r.label,
                    # beside several groups the baseline's searches are '<label>@<group>'
                    is_baseline=r.label == base_label
                    or (bool(alt) and doc.get("label") == alt.get("baseline")),
                    capacity=cap,
                    slo_text=str(doc.get("slo_text") or ""),
                    stop_text=str(doc.get("stop_text") or "not finished"),
                    probes=len(doc.get("probes") or []),
                    doc=doc,
                )
            )
        sat = read_capacity(r.path, SATURATION_FILE)
        if sat is not None:
            section.saturation.append(saturation_line(r.label, r.scenario, sat))
    # per scenario (and group of alternated searches), the baseline first, then the configs
    # in the order they ran
    scenarios = list(dict.fromkeys(r.scenario for r in runs))
    groups = list(dict.fromkeys(row.group for row in section.rows))
    section.rows.sort(
        key=lambda row: (
            scenarios.index(row.scenario),
            groups.index(row.group),
            not row.is_baseline,
        )
    )
    for scen in dict.fromkeys(row.scenario for row in section.rows):
        rows = [row for row in section.rows if row.scenario == scen]
        for row in rows:
            base = _baseline_of(row, rows)
            if base is not None and not row.is_baseline:
                row.gain = gain(row.capacity, base.capacity)
                row.headline = headline(row.label, row.gain, row.capacity.unit, row.slo_text)
        if out_dir is not None:
            section.by_scenario[scen] = capacity_figure(rows, scen, out_dir)
            section.figures.append(section.by_scenario[scen])
    return section


def _baseline_of(row: CapacityRow, rows: Sequence[CapacityRow]) -> CapacityRow | None:
    """The baseline row ``row``'s gain is over: the baseline's search it alternated with,
    else the scenario's baseline row."""
    bases = [r for r in rows if r.is_baseline]
    if row.group is not None:
        mine = next((r for r in bases if r.group == row.group), None)
        if mine is not None:
            return mine
    return next(iter(bases), None)


def gain(config: Capacity, base: Capacity) -> Gain:
    """config / base, with the bounds their intervals allow (see the module docstring)."""
    c_lo, c_hi = _ends(config)
    b_lo, b_hi = _ends(base)
    low = c_lo / b_hi if b_hi not in (0, math.inf) else 0.0
    high = c_hi / b_lo if b_lo > 0 else math.inf
    est, at_least, below = CapacityKind.ESTIMATE, CapacityKind.AT_LEAST, CapacityKind.BELOW
    cv, bv = config.value, base.value
    if CapacityKind.UNKNOWN in (config.kind, base.kind):
        return Gain(None, 0.0, math.inf, NA)
    if config.kind is est and base.kind is est:
        assert cv is not None and bv is not None
        point = cv / bv
        return Gain(point, low, high, f"{point:.2f}x ({_x(low)}-{_x(high)})")
    if config.kind in (est, at_least) and base.kind in (est, below):
        # the config reached cv at least; the baseline stayed under its value or its probe
        ref = bv if base.kind is est else base.high
        assert cv is not None and ref is not None
        word = "at least" if base.kind is est else "more than"
        return Gain(None, low, high, f"{word} {cv / ref:.2f}x")
    if config.kind in (est, below) and base.kind in (est, at_least):
        ref = cv if config.kind is est else config.high
        assert ref is not None and bv is not None
        word = "at most" if config.kind is est else "less than"
        return Gain(None, low, high, f"{word} {ref / bv:.2f}x")
    return Gain(None, low, high, f"can't tell (both {config.kind.value.replace('_', ' ')})")


def _ends(c: Capacity) -> tuple[float, float]:
    """A capacity's interval as numbers: 0 and inf for open ends."""
    low = c.low if c.low is not None else 0.0
    if c.kind is CapacityKind.BELOW:
        return 0.0, c.high if c.high is not None else math.inf
    high = c.high if c.high is not None else math.inf
    return low, high


def headline(label: str, g: Gain, unit: str, slo_text: str) -> str:
    """'draft k=3: 1.40x the requests per second at p90 TPOT <= 20 ms (interval 1.2-1.6)'."""
    words = _UNIT_WORDS.get(unit, unit or "the load")
    if g.value is None:
        return f"{label}: {g.text} {words} at {slo_text}"
    return f"{label}: {g.value:.2f}x {words} at {slo_text} ({_x(g.low)}-{_x(g.high)})"


def saturation_line(label: str, scenario: str, doc: dict[str, Any]) -> str:
    cal = doc.get("calibration") if isinstance(doc.get("calibration"), dict) else {}
    parts = []
    for name, what in (("synchronous", "alone"), ("throughput", "saturated")):
        c = cal.get(name) if isinstance(cal.get(name), dict) else None
        if c:
            parts.append(
                f"{what} ({c.get('concurrency')} in flight) "
                f"{fmt_level(as_float(c.get('request_throughput')))} req/s"
            )
    rates = ", ".join(fmt_level(as_float(r)) for r in doc.get("rates") or [])
    return f"`{scenario}` {label}: {'; '.join(parts) or 'not measured'}; rates run: {rates or NA}"


def _x(v: float) -> str:
    return "inf" if math.isinf(v) else f"{v:.2f}"


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


# --- Markdown -----------------------------------------------------------------------------

_COLUMNS = (
    "config", "capacity", "interval", "gain vs baseline", "probes", "stopped because",
    "measured",
)  # fmt: skip


def _cells(r: CapacityRow) -> list[str]:
    c = r.capacity
    noisy = "" if c.clear else " (within noise)"
    if c.kind is CapacityKind.ESTIMATE:
        shown = f"{fmt_level(c.value)} {c.unit}{noisy}"
        interval = c.interval_text().removeprefix("interval ")
    else:
        shown, interval = c.text(), NA
    return [
        f"{r.label} (baseline)" if r.is_baseline else r.label,
        shown,
        interval,
        r.gain.text if r.gain is not None else NA,
        str(r.probes),
        r.stop_text,
        r.measured(),
    ]


def section_markdown(section: CapacitySection) -> list[str]:
    """The capacity section of report.md (also rendered into report.html)."""
    if not section:
        return []
    out = [f"## {HEADING}", ""]
    for scen in dict.fromkeys(row.scenario for row in section.rows):
        rows = [r for r in section.rows if r.scenario == scen]
        out += [f"### Scenario `{scen}`: {rows[0].slo_text}", ""]
        out += ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
        for r in rows:
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in _cells(r)) + " |")
        out.append("")
        out += [f"- **{r.headline}**" for r in rows if r.headline]
        if any(r.headline for r in rows):
            out.append("")
        if scen in section.by_scenario:
            fig = section.by_scenario[scen]
            out += [f"![{scen}: capacity]({fig.name})", ""]
    if section.rows:
        out += [how_to_read(section.rows), ""]
    if section.saturation:
        out += ["Saturation sweeps (the rates fitted to each server):", ""]
        out += [f"- {line}" for line in section.saturation]
        out.append("")
    return out


def section_html(section: CapacitySection) -> list[str]:
    """The same section for report.html: the tables, the headlines, the figures embedded."""
    if not section:
        return []
    e = html.escape
    parts = [f"<h2>{HEADING}</h2>"]
    for scen in dict.fromkeys(row.scenario for row in section.rows):
        rows = [r for r in section.rows if r.scenario == scen]
        parts.append(f"<h3>Scenario <code>{e(scen)}</code>: {e(rows[0].slo_text)}</h3>")
        head = "".join(f"<th>{e(c)}</th>" for c in _COLUMNS)
        body = "".join(
            "<tr>" + "".join(f"<td>{e(c)}</td>" for c in _cells(r)) + "</tr>" for r in rows
        )
        parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        lines = "".join(f"<li><b>{e(r.headline)}</b></li>" for r in rows if r.headline)
        if lines:
            parts.append(f"<ul>{lines}</ul>")
        if scen in section.by_scenario:
            fig = section.by_scenario[scen]
            data = base64.b64encode(fig.read_bytes()).decode("ascii")
            parts.append(f"<figure><img alt='{e(fig.stem)}' src='data:image/png;base64,{data}'>")
            parts.append(f"<figcaption>{e(fig.stem)}</figcaption></figure>")
    if section.rows:
        parts.append(f"<p class='note'>{e(how_to_read(section.rows))}</p>")
    if section.saturation:
        items = "".join(f"<li>{e(line)}</li>" for line in section.saturation)
        parts.append(f"<p>Saturation sweeps (the rates fitted to each server):</p><ul>{items}</ul>")
    return parts


HOW_TO_READ = (
    "Capacity: the highest load whose probe met every bound of the SLO below the lowest "
    "load that failed one (docs/capacity.md). Interval: what the probes' verdicts allow; a "
    "verdict within its own noise widens it. The gain is the config's capacity over the "
    "baseline's; its range combines the two intervals end to end (config low / baseline "
    "high to config high / baseline low): not a confidence interval, and not paired, since "
    "the two searches ran one after the other."
)
HOW_TO_READ_ALTERNATED = (
    "Capacity: the highest load whose probe met every bound of the SLO below the lowest "
    "load that failed one (docs/capacity.md). Interval: what the probes' verdicts allow; a "
    "verdict within its own noise widens it. Rows 'alternated' come from searches run side "
    "by side, one probe at a time in turn (A B | B A ...), each choosing its own levels: "
    "drift over the searches fell on both alike on average, so the order they ran in does "
    "not bias the gain, which is the config's capacity over that of the baseline search it "
    "alternated with. "
    "Its range combines the two searches' own intervals end to end (config low / baseline "
    "high to config high / baseline low): the widest ratio they allow, not a confidence "
    "interval and not a paired one; it leaves out how much a search's answer varies from "
    "run to run (search twice to see that)."
)


def how_to_read(rows: Sequence[CapacityRow]) -> str:
    """The note under the tables: what the interval and the gain are, for how they ran."""
    alternated = any(r.alternation is not None for r in rows)
    sequential = any(r.alternation is None for r in rows)
    if alternated and sequential:
        return f"{HOW_TO_READ_ALTERNATED} Rows 'one server at a time': {HOW_TO_READ}"
    return HOW_TO_READ_ALTERNATED if alternated else HOW_TO_READ


# --- the figure ---------------------------------------------------------------------------


def capacity_figure(rows: Sequence[CapacityRow], scenario: str, out_dir: Path) -> Path:
    """Goodput and each SLO percentile against load, a colour per config, the SLO bounds as
    horizontal lines and each config's capacity as a vertical one."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    from loadgen.report.figures import DPI, file_stem

    slo: dict[str, Any] = (rows[0].doc.get("slo") or {}) if rows else {}
    bounds = [m for m, b in slo.items() if isinstance(b, dict)]  # the percentile bounds
    fig = Figure(figsize=(5.0 * (1 + len(bounds)), 4.2), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 1 + len(bounds), squeeze=False)[0]
    colours = [colormaps["tab10"](i % 10) for i in range(len(rows))]
    for colour, r in zip(colours, rows, strict=True):
        levels = _level_points(r.doc)
        xs = [lv["level"] for lv in levels]
        _plot(axes[0], xs, [lv["goodput"] for lv in levels], colour, r.label)
        for ax, metric in zip(axes[1:], bounds, strict=True):
            _plot(ax, xs, [lv["percentiles"].get(metric) for lv in levels], colour, r.label)
        c = r.capacity
        if c.value is not None:
            for ax in axes:
                ax.axvline(c.value, color=colour, ls="--", lw=1)
                if c.low is not None and c.high is not None and c.high > c.low:
                    ax.axvspan(c.low, c.high, color=colour, alpha=0.08, lw=0)
    unit = rows[0].capacity.unit if rows else ""
    axes[0].set_title("goodput (requests meeting each request's bounds)")
    axes[0].set_ylabel("req/s")
    for ax, metric in zip(axes[1:], bounds, strict=True):
        b = slo[metric]
        ax.axhline(b["max"], color="black", lw=1)
        ax.set_title(f"p{b['p']:g} {metric.removesuffix('_ms').upper()} (bound {b['max']:g} ms)")
        ax.set_ylabel("ms")
        low, high = ax.get_ylim()
        if low > 0 and high / low > 30:  # overloaded probes dwarf the bound: log scale
            ax.set_yscale("log")
    for ax in axes:
        ax.set_xlabel("concurrency" if unit == "concurrency" else "request rate (req/s)")
        ax.grid(True, alpha=0.3)
    for ax in axes:  # one legend, on the first panel with lines
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
            break
    slo_text = rows[0].slo_text if rows else ""
    fig.suptitle(
        f"{scenario}: capacity at {slo_text} (dashed: each config's capacity; band: its interval)"
    )
    path = out_dir / f"{file_stem(scenario, 'scenario')}_capacity.png"
    fig.savefig(path, format="png")
    return path


def _level_points(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Per probed level (in load order): mean goodput over its runs and the percentiles
    of all its runs pooled (the last run's pooled verdict)."""
    by_level: dict[float, dict[str, Any]] = {}
    for p in doc.get("probes") or []:
        if not isinstance(p, dict):
            continue
        level = as_float(p.get("level"))
        if level is None or not p.get("complete"):
            continue
        entry = by_level.setdefault(level, {"level": level, "goodputs": [], "percentiles": {}})
        g = as_float(p.get("request_goodput"))
        if g is None:
            g = as_float(p.get("request_throughput"))
        if g is not None:
            entry["goodputs"].append(g)
        pooled = p.get("pooled") if isinstance(p.get("pooled"), dict) else {}
        pcts = pooled.get("percentiles") if isinstance(pooled.get("percentiles"), dict) else {}
        for metric, v in pcts.items():
            entry["percentiles"][metric] = (
                as_float(v.get("value_ms")) if isinstance(v, dict) else None
            )
    out = []
    for level in sorted(by_level):
        e = by_level[level]
        e["goodput"] = sum(e["goodputs"]) / len(e["goodputs"]) if e["goodputs"] else None
        out.append(e)
    return out


def _plot(ax: Axes, xs: list[float], ys: list[float | None], colour: Any, label: str) -> None:
    pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=colour, label=label, ms=4)

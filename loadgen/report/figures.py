"""Report figures (PNG, matplotlib Agg) from the tidy table of ``tables.build_tables``.

Rows are aggregated over repeats: lines are medians, and where a level was repeated an error
bar spans the min-max over repeats (columns ``<metric>_min`` / ``_max``).

matplotlib is imported inside the functions: importing it costs most of a second and
``python -m loadgen run`` should not pay for it. Figures are built on ``Figure`` objects
directly (no pyplot global state), so no backend switch is needed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadgen.config.shapes.base import level_axis_name

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 110


def file_stem(text: str, default: str) -> str:
    """``text`` as a file name stem (``default`` when nothing of it is left)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or default


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, format="png")
    return path


def _x_axis(df: pd.DataFrame) -> tuple[dict[str, float], list[float], list[str], bool]:
    """Phase -> x position. Numeric load levels when every phase has a distinct one, else
    positions 0..n-1 labelled with the phase names. Also says whether a log axis fits."""
    phases = list(dict.fromkeys(df["phase"]))
    levels = {}
    for p in phases:
        v = df.loc[df["phase"] == p, "load_level"].iloc[0]
        levels[p] = float(v) if v is not None and not _isnan(v) else None
    vals = list(levels.values())
    if all(v is not None for v in vals) and len(set(vals)) == len(vals):
        xs = {p: float(v) for p, v in levels.items()}  # type: ignore[arg-type]
        ticks = sorted(xs.values())
        labels = [_fmt_level(v) for v in ticks]
        log = min(ticks) > 0 and max(ticks) / min(ticks) >= 8
        return xs, ticks, labels, log
    xs = {p: float(i) for i, p in enumerate(phases)}
    return xs, list(xs.values()), phases, False


def _fmt_level(v: float) -> str:
    return f"{v:g}"


def _isnan(v: Any) -> bool:
    try:
        return math.isnan(float(v))
    except (TypeError, ValueError):
        return False


def _load_name(df: pd.DataFrame) -> str:
    shapes = [s for s in dict.fromkeys(df["load_shape"]) if isinstance(s, str)]
    if len(shapes) == 1:
        return level_axis_name(shapes[0])
    return "load level"


def _style_x(ax: Axes, ticks: list[float], labels: list[str], log: bool, name: str) -> None:
    if log:
        ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, labels)
    ax.minorticks_off()
    ax.set_xlabel(name)
    ax.grid(True, alpha=0.3)


def _configs(df: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(df["label"]))


def _series(df: pd.DataFrame, label: str, col: str, xs: dict[str, float]) -> tuple[list, list]:
    g = df[df["label"] == label]
    pts = sorted(
        (xs[p], float(v)) for p, v in zip(g["phase"], g[col], strict=True) if not _isnan(v)
    )
    return [x for x, _ in pts], [y for _, y in pts]


def error_bars(
    df: pd.DataFrame, label: str, col: str, xs: dict[str, float]
) -> list[tuple[float, float, float, float]]:
    """(x, median, min, max) of the points of one config that have a min-max over repeats."""
    lo_col, hi_col = f"{col}_min", f"{col}_max"
    if lo_col not in df.columns or hi_col not in df.columns:
        return []
    g = df[df["label"] == label]
    pts = []
    for p, v, lo, hi in zip(g["phase"], g[col], g[lo_col], g[hi_col], strict=True):
        if not (_isnan(v) or _isnan(lo) or _isnan(hi)):
            pts.append((xs[p], float(v), float(lo), float(hi)))
    return sorted(pts)


def _line(
    ax: Axes, df: pd.DataFrame, config: str, col: str, xs: dict[str, float], fmt: str, **kw: Any
) -> None:
    """The median line of one config, with min-max error bars where a level was repeated."""
    x, y = _series(df, config, col, xs)
    if not x:
        return
    ax.plot(x, y, fmt, **kw)
    bars = error_bars(df, config, col, xs)
    if bars:
        bx, by, lo, hi = (list(v) for v in zip(*bars, strict=True))
        ax.errorbar(
            bx,
            by,
            yerr=[
                [m - a for m, a in zip(by, lo, strict=True)],
                [b - m for m, b in zip(by, hi, strict=True)],
            ],
            fmt="none",
            ecolor=kw.get("color"),
            elinewidth=1,
            capsize=3,
        )


def _has_repeats(df: pd.DataFrame) -> bool:
    return "n_repeats" in df.columns and bool((df["n_repeats"] > 1).any())


def latency_figure(df: pd.DataFrame, out: Path) -> Path:
    """TTFT, TPOT, ITL (per token) and E2E vs load: p50 solid, p99 dashed, one colour per config."""
    fig = _new_figure(12, 8)
    axes = fig.subplots(2, 2).flatten()
    xs, ticks, labels, log = _x_axis(df)
    colours = _colours(len(_configs(df)))
    for ax, (metric, title) in zip(
        axes,
        (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL per token"), ("e2el", "E2E latency")),
        strict=True,
    ):
        for colour, label in zip(colours, _configs(df), strict=True):
            for pct, style in (("p50", "-"), ("p99", "--")):
                col = f"{metric}_{pct}_ms"
                _line(
                    ax,
                    df,
                    label,
                    col,
                    xs,
                    style,
                    marker="o",
                    ms=3,
                    color=colour,
                    label=f"{label} {pct}",
                )
        ax.set_title(title)
        ax.set_ylabel("ms")
        _style_x(ax, ticks, labels, log, _load_name(df))
    handles, names = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="outside right upper", fontsize="small")
    bars = "; bars on p50: min-max over repeats" if _has_repeats(df) else ""
    fig.suptitle(f"Latency vs load (p50 solid, p99 dashed{bars})")
    return _save(fig, out)


def throughput_figure(df: pd.DataFrame, out: Path) -> Path:
    bars = " (bars: min-max over repeats)" if _has_repeats(df) else ""
    return _metric_figure(
        df, out, "output_throughput", "output tokens/s", f"Output throughput vs load{bars}"
    )


def tokens_per_chunk_figure(df: pd.DataFrame, out: Path) -> Path:
    """Tokens per streamed chunk: ~1 without speculation, ~acceptance length with it."""
    return _metric_figure(
        df,
        out,
        "tokens_per_chunk",
        "mean output tokens per chunk",
        "Tokens per chunk vs load",
        from_zero=True,
    )


def _metric_figure(
    df: pd.DataFrame, out: Path, col: str, ylabel: str, title: str, from_zero: bool = False
) -> Path:
    """One metric vs load, a line per config (with min-max bars where the table has them)."""
    fig = _new_figure(8, 5)
    ax = fig.subplots()
    xs, ticks, labels, log = _x_axis(df)
    for colour, label in zip(_colours(len(_configs(df))), _configs(df), strict=True):
        _line(ax, df, label, col, xs, "-", marker="o", color=colour, label=label)
    ax.set_ylabel(ylabel)
    if from_zero:
        ax.set_ylim(bottom=0)
    ax.set_title(title)
    _style_x(ax, ticks, labels, log, _load_name(df))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    return _save(fig, out)


def speedup_heatmap(df: pd.DataFrame, out: Path) -> Path | None:
    """Config x load for TPOT and throughput speedup, diverging colours centred at 1.0."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import TwoSlopeNorm

    spec = df[~df["is_baseline"].astype(bool)]
    configs = _configs(spec)
    phases = list(dict.fromkeys(df["phase"]))
    if not configs or not phases:
        return None
    fig = _new_figure(max(6.0, 1.1 * len(phases) + 3), 1.0 + 0.9 * len(configs) * 2 + 1)
    axes = fig.subplots(2, 1)
    cmap = colormaps["RdBu"].with_extremes(bad="#dddddd")
    for ax, (col, title) in zip(
        axes,
        (("tpot_speedup", "TPOT speedup"), ("throughput_speedup", "Throughput speedup")),
        strict=True,
    ):
        grid = [[_cell(spec, label, phase, col) for phase in phases] for label in configs]
        ranges = [
            [
                (_cell(spec, label, phase, f"{col}_lo"), _cell(spec, label, phase, f"{col}_hi"))
                for phase in phases
            ]
            for label in configs
        ]
        unstable = [
            [_flag(spec, label, phase, f"{col}_stable") is False for phase in phases]
            for label in configs
        ]
        flat = [v for row in grid for v in row if not math.isnan(v)]
        # Symmetric in ratio: 2x faster and 2x slower get the same colour strength.
        top = max([1.1] + [max(v, 1.0 / v) for v in flat if v > 0])
        norm = TwoSlopeNorm(vcenter=1.0, vmin=1.0 / top, vmax=top)
        im = ax.imshow(
            np.ma.masked_invalid(np.array(grid, dtype=float)), cmap=cmap, norm=norm, aspect="auto"
        )
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                _heatmap_cell(ax, i, j, v, ranges[i][j], unstable[i][j], norm)
        ax.set_xticks(range(len(phases)), phases, rotation=30, ha="right")
        ax.set_yticks(range(len(configs)), configs)
        hatched = any(map(any, unstable))
        hatch = "\nhatched: unstable, range over repeats includes 1.0" if hatched else ""
        ax.set_title(title + " vs baseline (>1 = better)" + hatch)
        fig.colorbar(im, ax=ax, shrink=0.8)
    return _save(fig, out)


def _heatmap_cell(
    ax: Axes,
    i: int,
    j: int,
    v: float,
    lo_hi: tuple[float, float],
    unstable: bool,
    norm: Any,
) -> None:
    """One heatmap cell's text (speedup, and its range over repeats), hatched where the
    repeats do not settle win vs loss."""
    from matplotlib.patches import Rectangle

    text = "n/a" if math.isnan(v) else f"{v:.2f}x"
    lo, hi = lo_hi
    if not (math.isnan(v) or math.isnan(lo) or math.isnan(hi)):
        text += f"\n{lo:.2f}-{hi:.2f}"
    if unstable:
        ax.add_patch(
            Rectangle(
                (j - 0.5, i - 0.5),
                1,
                1,
                fill=False,
                hatch="///",
                edgecolor="#777777",
                linewidth=0,
            )
        )
    dark = not math.isnan(v) and abs(float(norm(v)) - 0.5) > 0.3
    ax.text(j, i, text, ha="center", va="center", fontsize=9, color="white" if dark else "black")


def _lookup(df: pd.DataFrame, label: str, phase: str, col: str) -> Any:
    """One config's value at one level, or None where there is none (no column, no row, NaN)."""
    if col not in df.columns:
        return None
    v = df.loc[(df["label"] == label) & (df["phase"] == phase), col]
    if v.empty or v.iloc[0] is None or _isnan(v.iloc[0]):
        return None
    return v.iloc[0]


def _cell(df: pd.DataFrame, label: str, phase: str, col: str) -> float:
    v = _lookup(df, label, phase, col)
    return math.nan if v is None else float(v)


def _flag(df: pd.DataFrame, label: str, phase: str, col: str) -> bool | None:
    v = _lookup(df, label, phase, col)
    return None if v is None else bool(v)


# speedup column -> panel title, for the interval figure
_CI_PANELS = {
    "tpot_speedup": "TPOT",
    "itl_speedup": "ITL per token",
    "e2e_speedup": "E2E latency",
    "throughput_speedup": "Output throughput",
    "goodput_speedup": "Goodput",
}


def speedup_interval_figure(df: pd.DataFrame, out: Path) -> Path | None:
    """Each speedup against load, one line per paired config, with its 95% interval as
    error bars: a filled marker where the verdict is faster or slower, hollow where the
    interval includes 1.0 (can't tell). None without paired rows."""
    spec = df[~df["is_baseline"].astype(bool)]
    if "pairing" not in spec.columns or not (spec["pairing"] == "paired").any():
        return None  # unpaired reports keep the figures they had
    spec = spec[spec["pairing"] == "paired"]
    panels = [
        col
        for col in _CI_PANELS
        if f"{col}_ci_lo" in spec.columns and spec[f"{col}_ci_lo"].notna().any()
    ]
    if not panels:
        return None
    ncols = min(len(panels), 2 if len(panels) <= 4 else 3)
    nrows = math.ceil(len(panels) / ncols)
    fig = _new_figure(5.0 * ncols + 1.5, 4.0 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).flatten()
    xs, ticks, labels, log = _x_axis(df)
    for ax, col in zip(axes, panels, strict=False):
        for colour, label in zip(_colours(len(_configs(spec))), _configs(spec), strict=True):
            g = spec[spec["label"] == label]
            pts = sorted(
                (xs[p], float(v), float(lo), float(hi), str(verdict))
                for p, v, lo, hi, verdict in zip(
                    g["phase"], g[col], g[f"{col}_ci_lo"], g[f"{col}_ci_hi"],
                    g[f"{col}_verdict"], strict=True,
                )
                if not (_isnan(v) or _isnan(lo) or _isnan(hi))
            )  # fmt: skip
            if not pts:
                continue
            x, y = [p[0] for p in pts], [p[1] for p in pts]
            ax.plot(x, y, "-", color=colour, label=label)
            ax.errorbar(
                x,
                y,
                yerr=[[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]],
                fmt="none",
                ecolor=colour,
                capsize=3,
            )
            for px, py, _, _, verdict in pts:
                decided = verdict in ("faster", "slower")
                ax.plot(px, py, "o", color=colour, mfc=colour if decided else "white", ms=6)
        ax.axhline(1.0, color="#555555", linewidth=1, linestyle="--")
        ax.set_title(f"{_CI_PANELS[col]} speedup")
        ax.set_ylabel("speedup vs baseline (>1 = better)")
        _style_x(ax, ticks, labels, log, _load_name(df))
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    handles, names = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="outside right upper", fontsize="small")
    fig.suptitle("Speedup with 95% interval (filled: faster/slower; hollow: can't tell)")
    return _save(fig, out)


def acceptance_figure(df: pd.DataFrame, out: Path) -> Path | None:
    """Per-position acceptance rate, one panel per speculative config, one bar per load level."""
    rows = [r for r in df.to_dict("records") if isinstance(r["acceptance_per_position"], list)]
    configs = list(dict.fromkeys(r["label"] for r in rows))
    if not configs:
        return None
    fig = _new_figure(max(6.0, 4.0 * len(configs)), 4.5)
    axes = fig.subplots(1, len(configs), squeeze=False)[0]
    for ax, label in zip(axes, configs, strict=True):
        mine = [r for r in rows if r["label"] == label]
        width = 0.8 / len(mine)
        colours = _colours(len(mine))
        for k, (r, colour) in enumerate(zip(mine, colours, strict=True)):
            rates = [v if v is not None else math.nan for v in r["acceptance_per_position"]]
            pos = [i + 1 + (k - (len(mine) - 1) / 2) * width for i in range(len(rates))]
            ax.bar(pos, rates, width=width, color=colour, label=str(r["phase"]))
        n = max(len(r["acceptance_per_position"]) for r in mine)
        ax.set_xticks(range(1, n + 1))
        ax.set_xlabel("draft position")
        ax.set_ylabel("acceptance rate")
        ax.set_ylim(0, 1.05)
        ax.set_title(label)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize="x-small", title="load")
    fig.suptitle("Acceptance per draft position")
    return _save(fig, out)


def _colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def scenario_figures(df: pd.DataFrame, scenario: str, out_dir: Path) -> list[Path]:
    """All figures of one scenario's rows; returns the PNGs written (empty ones are skipped)."""
    stem = file_stem(scenario, "scenario")
    made: Sequence[Path | None] = [
        latency_figure(df, out_dir / f"{stem}_latency.png"),
        throughput_figure(df, out_dir / f"{stem}_throughput.png"),
        speedup_heatmap(df, out_dir / f"{stem}_speedup.png"),
        speedup_interval_figure(df, out_dir / f"{stem}_speedup_ci.png"),
        acceptance_figure(df, out_dir / f"{stem}_acceptance.png"),
        tokens_per_chunk_figure(df, out_dir / f"{stem}_tokens_per_chunk.png"),
    ]
    return [p for p in made if p is not None]

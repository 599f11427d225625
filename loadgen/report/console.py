"""Console tables (rich) and the number formatting shared with the written reports.

Formatting lives here so the console, report.md and report.html show a number the same way.
Missing values (None, NaN, absent keys) always print as ``n/a``, never raise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

NA = "n/a"


def as_float(value: Any) -> float | None:
    """A finite float, or None for anything missing or not a number (bools are not numbers)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def fmt_magnitude(value: Any, one_decimal_below: float) -> str:
    """Two decimals under 10, one under ``one_decimal_below``, then whole numbers with
    thousands separators: more decimals for small values, where they still mean something."""
    f = as_float(value)
    if f is None:
        return NA
    if abs(f) < 10:
        return f"{f:.2f}"
    if abs(f) < one_decimal_below:
        return f"{f:.1f}"
    return f"{f:,.0f}"


def fmt_ms(value: Any) -> str:
    """Milliseconds."""
    return fmt_magnitude(value, 100)


def fmt_rate(value: Any) -> str:
    """Throughputs (req/s, tok/s)."""
    return fmt_magnitude(value, 1000)


def fmt_num(value: Any, digits: int = 2) -> str:
    f = as_float(value)
    return NA if f is None else f"{f:.{digits}f}"


def fmt_int(value: Any) -> str:
    f = as_float(value)
    return NA if f is None else f"{round(f)}"


def fmt_speedup(value: Any) -> str:
    f = as_float(value)
    return NA if f is None else f"{f:.2f}x"


def fmt_spread(value: Any) -> str:
    """Spread over repeats, (max - min) as a percentage of the median."""
    f = as_float(value)
    return NA if f is None else f"{f:.1f}%"


def fmt_speedup_range(value: Any, lo: Any, hi: Any, stable: Any) -> str:
    """'1.50x' alone without repeats; '1.50x (1.32-1.71) stable' with them.

    ``stable`` is the verdict of ``loadgen.report.tables.speedup_range``: True when the
    range over repeat pairings excludes 1.0, False when it includes it, None when there is
    no range.
    """
    text = fmt_speedup(value)
    flag = as_flag(stable)
    if text == NA or as_float(lo) is None or as_float(hi) is None or flag is None:
        return text
    return f"{text} ({as_float(lo):.2f}-{as_float(hi):.2f}) {'stable' if flag else 'unstable'}"


def fmt_verdict(value: Any, lo: Any, hi: Any, verdict: Any) -> str:
    """'1.10x [1.07-1.13] faster': a speedup, its 95% interval and what that says;
    '1.10x (not significant)' without an interval; the speedup alone without a verdict."""
    text = fmt_speedup(value)
    if text == NA or not isinstance(verdict, str) or verdict == "n/a":
        return text
    if as_float(lo) is None or as_float(hi) is None:
        return f"{text} ({verdict})"
    shown = "can't tell" if verdict == "can't tell" else verdict
    return f"{text} [{as_float(lo):.2f}-{as_float(hi):.2f}] {shown}"


def as_flag(value: Any) -> bool | None:
    """True / False, or None for a missing flag (None, NaN: pandas fills gaps with NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return bool(value)


def fmt_pct(value: Any) -> str:
    """A fraction in [0, 1] as a percentage."""
    f = as_float(value)
    return NA if f is None else f"{100 * f:.0f}%"


def fmt_pair(a: Any, b: Any, fmt=fmt_ms) -> str:
    """'p50 / p99' in one cell; n/a only when both are missing."""
    if as_float(a) is None and as_float(b) is None:
        return NA
    return f"{fmt(a)} / {fmt(b)}"


def pick(summary: Mapping[str, Any], *keys: str) -> Any:
    """The value of the first key present: our keys first, vLLM's names as the fallback
    for files that lack ours. A key of ours that is present but null stays null (e.g. a
    per-token ITL the server's usage made unknowable), never replaced by another metric."""
    for k in keys:
        if k in summary:
            return summary[k]
    return None


def _console(console: Any) -> Any:
    """The given console, else stdout's; wide when piped, so tables are not squeezed to 80."""
    if console is not None:
        return console
    c = Console()
    return c if c.is_terminal else Console(width=200)


def fmt_goodput(rate: Any, fraction: Any) -> str:
    """'1.50/s (90%)': good requests per second and their share of all; either alone where
    the other is missing."""
    if as_float(rate) is None:
        return fmt_pct(fraction)
    if as_float(fraction) is None:
        return f"{fmt_rate(rate)}/s"
    return f"{fmt_rate(rate)}/s ({fmt_pct(fraction)})"


def _done_cell(s: Mapping[str, Any]) -> str:
    done, failed = as_float(s.get("completed")), as_float(s.get("failed"))
    text = f"{fmt_int(done)}/{fmt_int(failed)}"
    return f"[red]{text}[/red]" if failed else text


def print_summary_table(summaries: Mapping[str, Mapping[str, Any]], console: Any = None) -> None:
    """End-of-run table, one row per phase (``summaries``: phase name -> flat summary).

    ITL is per token (``itl_token``) where available, so a chunk carrying several
    speculated tokens is not counted as one slow gap.
    """
    console = _console(console)
    show_accept = any(
        s.get("spec_decode_acceptance_length") is not None for s in summaries.values()
    )
    table = Table(title="Results per phase (latencies in ms, p50 / p99)", title_justify="left")
    table.add_column("phase", no_wrap=True)
    table.add_column("ok/failed", justify="right")
    table.add_column("req/s", justify="right")
    table.add_column("out tok/s", justify="right")
    table.add_column("TTFT", justify="right")
    table.add_column("TPOT", justify="right")
    table.add_column("ITL/token", justify="right")
    table.add_column("E2E", justify="right")
    table.add_column("tok/chunk", justify="right")
    if show_accept:
        table.add_column("accept len", justify="right")
    table.add_column("goodput", justify="right")
    table.add_column("lag p99", justify="right")
    for name, s in summaries.items():
        row = [
            str(s.get("phase") or name),
            _done_cell(s),
            fmt_rate(s.get("request_throughput")),
            fmt_rate(s.get("output_throughput")),
            fmt_pair(pick(s, "p50_ttft_ms", "median_ttft_ms"), s.get("p99_ttft_ms")),
            fmt_pair(pick(s, "p50_tpot_ms", "median_tpot_ms"), s.get("p99_tpot_ms")),
            fmt_pair(
                pick(s, "p50_itl_token_ms", "p50_itl_ms", "median_itl_ms"),
                pick(s, "p99_itl_token_ms", "p99_itl_ms"),
            ),
            fmt_pair(pick(s, "p50_e2el_ms", "median_e2el_ms"), s.get("p99_e2el_ms")),
            fmt_num(s.get("mean_tokens_per_chunk")),
        ]
        if show_accept:
            row.append(fmt_num(s.get("spec_decode_acceptance_length")))
        row += [
            fmt_goodput(s.get("request_goodput"), s.get("goodput_fraction")),
            fmt_ms(s.get("p99_dispatch_lag_ms")),
        ]
        table.add_row(*row)
    console.print(table)


def print_comparison_table(
    rows: Sequence[Mapping[str, Any]], baseline: str | None, console: Any = None
) -> None:
    """Configs side by side, one section per scenario + load level (rows of the tidy table).

    With repeated levels (some ``n_repeats`` > 1) it adds ``n`` and each speedup's range
    over repeat pairings, yellow where that range includes 1.0 (not a stable verdict).
    """
    console = _console(console)
    repeated = any((as_float(r.get("n_repeats")) or 1) > 1 for r in rows)
    title = f"Comparison (baseline: {baseline or 'none found'}; latencies in ms, p50 / p99)"
    if repeated:
        title += "; medians over repeats, speedup (min-max over repeat pairings)"
    table = Table(title=title, title_justify="left")
    for name in ("scenario", "load", "config"):
        table.add_column(name, no_wrap=True)
    if repeated:
        table.add_column("n", justify="right")
    for name in ("out tok/s", "TTFT", "TPOT", "ITL/token", "E2E", "accept len"):
        table.add_column(name, justify="right")
    for name in ("TPOT speedup", "thru speedup", "E2E speedup"):
        table.add_column(name, justify="right")
    last = None
    for r in rows:
        key = (r.get("scenario"), r.get("phase"))
        if last is not None and key != last:
            table.add_section()
        first = key != last
        last = key
        label = str(r.get("label"))
        if r.get("is_baseline"):
            label += " (base)"
        cells = [
            str(r.get("scenario")) if first else "",
            str(r.get("phase")) if first else "",
            label,
        ]
        if repeated:
            cells.append(fmt_int(r.get("n_repeats")))
        table.add_row(
            *cells,
            fmt_rate(r.get("output_throughput")),
            fmt_pair(r.get("ttft_p50_ms"), r.get("ttft_p99_ms")),
            fmt_pair(r.get("tpot_p50_ms"), r.get("tpot_p99_ms")),
            fmt_pair(r.get("itl_p50_ms"), r.get("itl_p99_ms")),
            fmt_pair(r.get("e2el_p50_ms"), r.get("e2el_p99_ms")),
            fmt_num(r.get("acceptance_length")),
            _speedup_cell(r, "tpot_speedup"),
            _speedup_cell(r, "throughput_speedup"),
            _speedup_cell(r, "e2e_speedup"),
        )
    console.print(table)


def _speedup_cell(r: Mapping[str, Any], col: str) -> str:
    f = as_float(r.get(col))
    if f is None:
        return NA
    stable = as_flag(r.get(f"{col}_stable"))
    colour = "yellow" if stable is False else ("green" if f >= 1.0 else "red")
    text = fmt_speedup_range(f, r.get(f"{col}_lo"), r.get(f"{col}_hi"), stable)
    return f"[{colour}]{text}[/{colour}]"

"""The reporting command lines: ``python -m loadgen report``, ``python -m loadgen compare``
and ``python analyze_results.py`` (graphs from the original experiment's CSV).

report and compare take run directories, a baseline and an output folder, so they share
one parser; every user error ends as one ``error: ...`` line on stderr and its exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from loadgen.errors import ArgParser, SpecloadError, one_line
from loadgen.report.console import print_comparison_table
from loadgen.report.crossover import crossovers
from loadgen.report.load import find_runs
from loadgen.report.original_csv import make_figures, read_results
from loadgen.report.render import write_report
from loadgen.report.tables import DEFAULT_BASELINE, build_tables, resolve_baseline


def _parser(prog: str, description: str, many: bool) -> ArgParser:
    p = ArgParser(prog=prog, description=description)
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


def _run(body: Callable[[argparse.Namespace], None], args: argparse.Namespace) -> int:
    try:
        body(args)
    except SpecloadError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return int(e.exit_code)
    return 0


def report_main(argv: list[str]) -> int:
    """``loadgen report DIR [--baseline L] [--out DIR]``: write the report files."""
    args = _parser(
        "loadgen report", "Write report.md/.html/.csv/.json and figures for runs.", False
    ).parse_args(argv)
    return _run(_report, args)


def _report(args: argparse.Namespace) -> None:
    md = write_report(args.dirs, args.out, args.baseline, figures=not args.no_figures)
    print(f"report: {md}  (also {md.with_suffix('.html').name}, report.csv, report.json)")


def compare_main(argv: list[str]) -> int:
    """``loadgen compare DIR1 DIR2 ... [--baseline L] [--out DIR]``: configs side by side."""
    args = _parser(
        "loadgen compare",
        "Compare configs (one run directory each) per load level against a baseline.",
        True,
    ).parse_args(argv)
    return _run(_compare, args)


def _compare(args: argparse.Namespace) -> None:
    runs = find_runs(args.dirs)
    df = build_tables(runs, args.baseline)
    base_label = resolve_baseline(runs, args.baseline)
    print_comparison_table(df.to_dict("records"), base_label)
    for c in crossovers(df):
        print(f"{c['scenario']} {c['label']}: {c['text']}")
    if args.out:
        md = write_report(args.dirs, args.out, args.baseline, figures=not args.no_figures)
        print(f"report: {md}")


def analyze_main(argv: list[str] | None = None) -> int:
    """``python analyze_results.py CSV [--out DIR]``: the original experiment's graphs."""
    p = ArgParser(
        prog="analyze_results.py",
        description="Graphs from the sweep's results CSV (raw_data/<output_csv>).",
    )
    p.add_argument("csv", help="results CSV written by the sweep")
    p.add_argument("--out", default="visualizations", help="output directory")
    return _run(_analyze, p.parse_args(argv))


def _analyze(args: argparse.Namespace) -> None:
    df = read_results(args.csv)
    for path in make_figures(df, args.out, Path(args.csv).stem):
        print(path)

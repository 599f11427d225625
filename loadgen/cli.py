"""``python -m loadgen``: run a scenario, or ``report`` / ``compare`` result directories."""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import re
import sys
from pathlib import Path
from typing import Any

from loadgen.config.scenario import (
    Scenario,
    list_scenarios,
    parse_scenario,
    read_yaml,
    resolve_path,
)
from loadgen.config.search import SearchKind
from loadgen.config.shapes.base import SHAPES, shape_class
from loadgen.errors import ArgParser, SpecloadError, run_cli
from loadgen.http.base import check_api_key, check_base_url

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def build_parser() -> argparse.ArgumentParser:
    # Long because it declares every flag in one place, in --help order: one line each.
    p = ArgParser(
        prog="python -m loadgen",
        description=(
            "Replay a load scenario against an OpenAI-compatible server (vLLM) and report "
            "served-latency percentiles. Subcommands: 'report DIR...' and 'compare DIR...' "
            "(see 'python -m loadgen report --help')."
        ),
    )
    p.add_argument(
        "--scenario",
        help="scenario name in scenarios/ (e.g. burst, poisson, concurrency-sweep) or a YAML path",
    )
    p.add_argument(
        "--base-url", default=DEFAULT_BASE_URL, help="server root URL (default %(default)s)"
    )
    p.add_argument("--model", help="model name; default: the server's only model from /v1/models")
    p.add_argument(
        "--output-dir",
        help="results directory (default: results/<scenario>-<timestamp>); it must be empty "
        "or new, unless --overwrite",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --output-dir (only a run's own files are removed)",
    )
    p.add_argument("--label", help="configuration label stored in run.json (e.g. none, ngram-k3)")
    g = p.add_argument_group("scenario overrides")
    g.add_argument(
        "--concurrency",
        type=int,
        help="closed-loop scenarios: requests in flight; open-loop: a cap on requests in flight",
    )
    g.add_argument("--rate", type=float, help="open-loop scenarios: mean request rate (req/s)")
    g.add_argument("--num-requests", type=int, help="measured requests per phase")
    g.add_argument("--duration", type=float, help="phase duration in seconds (instead of a count)")
    g.add_argument("--warmup", type=int, help="warmup requests before each phase (not measured)")
    g.add_argument("--input-tokens", type=int, help="prompt length for random prompts (tokens)")
    g.add_argument(
        "--output-tokens", type=int, help="max_tokens per request (exact with ignore_eos)"
    )
    g.add_argument(
        "--lengths",
        choices=["fixed", "natural"],
        help="fixed: exactly --output-tokens per request (ignore_eos); natural: the model "
        "stops where it stops, --output-tokens caps it",
    )
    g.add_argument("--endpoint", choices=["completions", "chat"], help="API to call")
    g.add_argument("--seed", type=int, help="seed for arrivals and prompts")
    g.add_argument(
        "--skip-bad-lines",
        action="store_true",
        help="prompt files: skip (and count) lines that don't parse instead of stopping",
    )
    g.add_argument(
        "--max-error-rate",
        type=float,
        help="stop the run when more than this fraction of requests failed (exit code 3)",
    )
    g.add_argument(
        "--request-timeout",
        type=float,
        metavar="S",
        help="a request's whole deadline in seconds (scenario: request_timeout_s, default 600)",
    )
    g.add_argument(
        "--first-byte-timeout",
        type=float,
        metavar="S",
        help="seconds to wait for the first byte of a response body (queueing can be long; "
        "default: the request deadline alone)",
    )
    g.add_argument(
        "--idle-timeout",
        type=float,
        metavar="S",
        help="seconds a started stream may go silent before it fails as a timeout (default 30)",
    )
    g.add_argument(
        "--transport",
        choices=["raw", "httpx"],
        help="HTTP client for the requests: raw (a minimal asyncio HTTP/1.1 client, the "
        "default) or httpx",
    )
    g.add_argument(
        "--spin-ms",
        type=float,
        metavar="MS",
        help="open loop: spin the last MS milliseconds before each send instead of trusting "
        "the loop's timer (late by up to ~1 ms); costs CPU, for a client with a spare core",
    )
    _slo_flags(p)
    _search_flags(p)
    p.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="name of the environment variable holding the API key (the key is never written)",
    )
    w = p.add_argument_group("load generation across processes and hosts")
    w.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="split each phase's schedule over N worker processes on one shared clock "
        "(records merged into one results directory; default: the scenario's, 1)",
    )
    w.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="run the --workers as Ray actors on the cluster at ADDR (e.g. 10.0.0.5:6379, "
        "ray://head:10001, or 'local'); needs the 'ray' extra",
    )
    p.add_argument("--no-progress", action="store_true", help="no live progress bar")
    p.add_argument("--list-scenarios", action="store_true", help="list built-in scenarios and exit")
    return p


def _slo_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "SLOs (any of these replaces the scenario's slo: block)",
        "--slo-METRIC-pP-ms MS bounds the P-th percentile of METRIC (ttft, tpot, itl: per "
        "token, e2e) over a load level: e.g. --slo-ttft-p90-ms 500 --slo-tpot-p90-ms 20. "
        "A level meets the SLO when every such percentile is within its bound and its error "
        "rate within --slo-max-error-rate: what a capacity search looks for.",
    )
    per_request = {"itl": "longest inter-chunk gap"}
    for metric in SLO_METRICS:
        g.add_argument(
            f"--slo-{metric}-ms",
            type=float,
            metavar="MS",
            help=f"bound on each request's {per_request.get(metric, metric.upper())} (goodput)",
        )
    g.add_argument(
        "--slo-max-error-rate",
        type=float,
        metavar="F",
        help="a level fails the SLO when more than this fraction of its requests failed",
    )


def _search_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "searches (docs/capacity.md)",
        "--search capacity finds the highest load meeting the SLO, starting at the "
        "scenario's rate (or concurrency): doubling, then bisecting; --search saturation runs "
        "rates spread between the server's measured low and maximum throughput.",
    )
    g.add_argument("--search", choices=[k.value for k in SearchKind], help="search the load")
    g.add_argument("--search-max", type=float, metavar="X", help="capacity: the highest level")
    g.add_argument(
        "--search-min", type=float, metavar="X", help="capacity: the lowest level probed"
    )
    g.add_argument(
        "--resolution",
        type=float,
        metavar="F",
        help="capacity: stop when the failing level is within F of the passing one (0.05)",
    )
    g.add_argument("--max-probes", type=int, metavar="N", help="capacity: probes at most")
    g.add_argument("--max-search-s", type=float, metavar="S", help="start no probe after S s")
    g.add_argument(
        "--repeat-close", type=int, metavar="N", help="capacity: reruns of a too-close probe"
    )
    g.add_argument("--levels", type=int, metavar="N", help="saturation: rates to run")
    g.add_argument(
        "--saturation-concurrency",
        type=int,
        metavar="N",
        help="saturation: requests in flight that measure the maximum throughput",
    )


SLO_METRICS: dict[str, str] = {
    "ttft": "ttft_ms",
    "tpot": "tpot_ms",
    "itl": "itl_ms",
    "e2e": "e2e_ms",
}
_SLO_PERCENTILE = re.compile(r"--slo-([A-Za-z0-9]+)-p([^=]*)-ms")
# search flags: argparse dest -> the search field they set
SEARCH_FLAGS: dict[str, str] = {
    "search_max": "max",
    "search_min": "min",
    "resolution": "resolution",
    "max_probes": "max_probes",
    "max_search_s": "max_search_s",
    "repeat_close": "repeat_close",
    "levels": "levels",
    "saturation_concurrency": "saturation_concurrency",
}


def split_slo_percentiles(argv: list[str]) -> tuple[list[str], list[tuple[str, str, str, str]]]:
    """Take the ``--slo-METRIC-pP-ms VALUE`` flags (argparse cannot declare them: P is any
    percentile) out of ``argv``: the rest, and (flag, field, P, value) for each."""
    rest: list[str] = []
    found: list[tuple[str, str, str, str]] = []
    it = iter(argv)
    for arg in it:
        flag, eq, value = arg.partition("=")
        m = _SLO_PERCENTILE.fullmatch(flag)
        if m is None or arg == "--":
            rest.append(arg)
            continue
        metric, pct = m.group(1).lower(), m.group(2)
        if metric not in SLO_METRICS:
            known = ", ".join(SLO_METRICS)
            raise SpecloadError(f"{flag}: unknown metric '{m.group(1)}' (one of {known})")
        if not eq:
            value = next(it, "")
        if not value or value.startswith("--"):
            raise SpecloadError(f"{flag}: expected a bound in ms")
        found.append((flag, SLO_METRICS[metric], pct, value))
    return rest, found


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The flags, ``--slo-METRIC-pP-ms`` included (as ``slo_percentiles``)."""
    rest, percentiles = split_slo_percentiles(argv)
    args = build_parser().parse_args(rest)
    args.slo_percentiles = percentiles
    return args


# Flags that set one scenario field: argparse dest -> the field's dotted key. The flag is
# the dest spelt as typed (num_requests -> --num-requests), so an invalid value is reported
# under the flag, though the Scenario's validation finds it.
SCENARIO_FLAGS: dict[str, str] = {
    "num_requests": "num_requests",
    "duration": "duration_s",
    "warmup": "warmup_requests",
    "input_tokens": "prompts.input_tokens",
    "output_tokens": "output_tokens",
    "endpoint": "endpoint",
    "seed": "seed",
    "max_error_rate": "max_error_rate",
    "transport": "transport",
    "spin_ms": "spin_ms",
    "request_timeout": "request_timeout_s",
    "first_byte_timeout": "first_byte_timeout_s",
    "idle_timeout": "idle_timeout_s",
    "skip_bad_lines": "prompts.skip_bad_lines",
    "workers": "workers",
}


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def scenario_overrides(doc: Any, args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str]]:
    """CLI flags as dotted-key overrides of the scenario document, and the flag that set
    each key (to name it in an error). ``--rate`` and ``--concurrency`` set the load field
    the scenario's shape says they set, and replace a sweep over that field."""
    doc = doc if isinstance(doc, dict) else {}
    out: dict[str, Any] = {}
    flags: dict[str, str] = {}
    for dest, key in SCENARIO_FLAGS.items():
        value = getattr(args, dest)
        if value is not None and value is not False:
            out[key], flags[key] = value, _flag(dest)
    if args.lengths is not None:
        out["ignore_eos"], flags["ignore_eos"] = args.lengths == "fixed", "--lengths"
    if args.num_requests is not None and args.duration is None:
        out["duration_s"] = None  # a count replaces the scenario's duration, and vice versa
    if args.duration is not None and args.num_requests is None:
        out["num_requests"] = None
    _slo_overrides(args, out, flags)
    _search_overrides(doc, args, out, flags)
    load = doc.get("load") if isinstance(doc.get("load"), dict) else {}
    shape = shape_class(load.get("shape"))
    if shape is None:  # an unknown shape: the scenario's validation reports it
        return out, flags
    sweep = dict(doc["sweep"]) if isinstance(doc.get("sweep"), dict) else {}
    for dest, attr in (("rate", "rate_field"), ("concurrency", "concurrency_field")):
        value, field = getattr(args, dest), getattr(shape, attr)
        if value is None:
            continue
        if field is None:
            *most, last = [name for name, c in SHAPES.items() if getattr(c, attr)]
            takers = f"{', '.join(most)} or {last}" if most else last
            raise SpecloadError(
                f"{_flag(dest)}: scenario load shape '{load['shape']}' has no {dest}; use a "
                f"{takers} scenario"
            )
        out[f"load.{field}"], flags[f"load.{field}"] = value, _flag(dest)
        if field in sweep:
            del sweep[field]
            out["sweep"] = sweep or None
    return out, flags


def _slo_overrides(args: argparse.Namespace, out: dict[str, Any], flags: dict[str, str]) -> None:
    """The SLO flags as one ``slo`` block replacing the scenario's: mixing a file's bounds
    with the command line's would judge levels by an SLO nobody wrote down whole."""
    slo: dict[str, Any] = {}
    for metric, key in SLO_METRICS.items():
        value = getattr(args, f"slo_{metric}_ms", None)
        if value is not None:
            slo[key] = value
            flags[f"slo.{key}"] = flags[f"slo.{key}.max"] = _flag(f"slo_{metric}_ms")
    for flag, key, pct, value in getattr(args, "slo_percentiles", []):
        if key in slo:
            raise SpecloadError(f"{flag}: {key.removesuffix('_ms')} is bounded twice")
        slo[key] = {"p": pct, "max": value}
        for k in (f"slo.{key}", f"slo.{key}.p", f"slo.{key}.max"):
            flags[k] = flag
    if args.slo_max_error_rate is not None:
        slo["max_error_rate"] = args.slo_max_error_rate
        flags["slo.max_error_rate"] = "--slo-max-error-rate"
    if slo:
        out["slo"] = slo


def _search_overrides(
    doc: dict[str, Any], args: argparse.Namespace, out: dict[str, Any], flags: dict[str, str]
) -> None:
    """``--search KIND`` makes the scenario a search (its sweep goes: the search picks the
    levels); the other search flags set fields of the scenario's search or that one."""
    has_search = isinstance(doc.get("search"), dict)
    if args.search is not None:
        out["search.kind"], flags["search.kind"] = args.search, "--search"
        if doc.get("sweep") is not None:
            out["sweep"] = None
        has_search = True
    for dest, field in SEARCH_FLAGS.items():
        value = getattr(args, dest)
        if value is None:
            continue
        if not has_search:
            raise SpecloadError(
                f"{_flag(dest)}: the scenario has no search: add --search capacity (or saturation)"
            )
        out[f"search.{field}"], flags[f"search.{field}"] = value, _flag(dest)


def load_scenario_from_args(args: argparse.Namespace) -> Scenario:
    path = resolve_path(args.scenario)
    doc = read_yaml(path)
    overrides, flags = scenario_overrides(doc, args)
    return parse_scenario(doc, str(path), overrides, flags=flags)


def run_main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.list_scenarios:
        for name in sorted(list_scenarios()):
            print(name)
        return 0
    if not args.scenario:
        raise SpecloadError("--scenario: required (a name from --list-scenarios or a YAML path)")
    api_key = None
    if args.api_key_env:
        if not _ENV_NAME.fullmatch(args.api_key_env):
            # Likely the key itself (or `--api-key KEY`, which argparse abbreviates to this
            # flag): never echo it, stderr ends up in logs.
            raise SpecloadError(
                "--api-key-env: give the NAME of an environment variable holding the key "
                "(e.g. OPENAI_API_KEY), not the key; the value given is not shown"
            )
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise SpecloadError(
                f"--api-key-env: environment variable {args.api_key_env} is not set"
            )
        check_api_key(api_key, f"--api-key-env: {args.api_key_env}")
    check_base_url(args.base_url)
    if args.ray_address is not None and not args.ray_address.strip():
        raise SpecloadError(
            "--ray-address: give the cluster address (host:port, ray://host:port or local)"
        )
    scenario = load_scenario_from_args(args)
    if args.output_dir is not None and not args.output_dir.strip():
        raise SpecloadError("--output-dir: empty path (give a directory)")
    out = Path(args.output_dir) if args.output_dir is not None else default_output_dir(scenario)
    from loadgen.engine.run import run_scenario

    result = run_scenario(
        scenario,
        base_url=args.base_url,
        output_dir=out,
        model=args.model,
        label=args.label,
        api_key=api_key,
        progress=not args.no_progress and sys.stderr.isatty(),
        cli=["python", "-m", "loadgen", *argv],
        ray_address=args.ray_address,
        existing="overwrite" if args.overwrite else "refuse",
    )
    try:
        from loadgen.report.console import print_summary_table

        print_summary_table(result.phases)
    except ImportError:
        pass
    _print_search(out)
    state = "complete" if result.complete else f"INCOMPLETE ({result.stop_reason})"
    print(f"results: {out} [{state}]", file=sys.stderr)
    return result.exit_code


def default_output_dir(scenario: Scenario) -> Path:
    """``results/<scenario>-<timestamp>``, with ``-2``, ``-3``... when a run started in the
    same second already took it (results directories are never shared)."""
    base = Path("results") / f"{scenario.name}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    out, k = base, 1
    while out.exists():
        k += 1
        out = base.with_name(f"{base.name}-{k}")
    return out


def _print_search(out: Path) -> None:
    """A capacity search's answer, in one line under the table."""
    from loadgen.results.capacity import read_capacity

    doc = read_capacity(out)
    if doc is None or not isinstance(doc.get("capacity"), dict):
        return
    why = doc.get("stop_text") or "not finished"
    print(
        f"capacity at {doc.get('slo_text')}: {doc['capacity'].get('text')} "
        f"[{len(doc.get('probes') or [])} probes; stopped: {why}]"
    )


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] == "report":
        from loadgen.report.cli import report_main

        return report_main(argv[1:])
    if argv and argv[0] == "compare":
        from loadgen.report.cli import compare_main

        return compare_main(argv[1:])
    if argv and argv[0] == "run":
        argv = argv[1:]
    return run_main(argv)


def main(argv: list[str] | None = None) -> int:
    return run_cli("loadgen", _dispatch, argv)

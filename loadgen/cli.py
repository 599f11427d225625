"""``python -m loadgen``: run a scenario, or ``report`` / ``compare`` result directories."""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

from loadgen.config.scenario import (
    MAX_WORKERS,
    OPEN_SHAPES,
    list_scenarios,
    parse_scenario,
    read_yaml,
    resolve_path,
)
from loadgen.errors import ArgParser, SpecloadError, run_cli

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def build_parser() -> argparse.ArgumentParser:
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
        type=Path,
        help="results directory (default: results/<scenario>-<timestamp>)",
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


def _fail(msg: str) -> NoReturn:
    print(f"loadgen: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def scenario_overrides(doc: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """CLI flags as dotted-key overrides of the scenario document."""
    out: dict[str, Any] = {}
    load = doc.get("load") if isinstance(doc.get("load"), dict) else {}
    shape = load.get("shape")
    sweep = dict(doc["sweep"]) if isinstance(doc.get("sweep"), dict) else None

    def drop_sweep(key: str) -> None:
        if sweep and key in sweep:
            del sweep[key]
            out["sweep"] = sweep or None

    for flag, value in (
        ("--concurrency", args.concurrency),
        ("--num-requests", args.num_requests),
        ("--input-tokens", args.input_tokens),
        ("--output-tokens", args.output_tokens),
        ("--warmup", args.warmup),
    ):
        if value is not None and value < (0 if flag == "--warmup" else 1):
            need = ">= 0" if flag == "--warmup" else "a positive integer"
            _fail(f"{flag}: must be {need}, got {value}")
    for flag, fvalue in (("--rate", args.rate), ("--duration", args.duration)):
        if fvalue is not None and not fvalue > 0:
            _fail(f"{flag}: must be positive, got {fvalue:g}")
    if args.concurrency is not None:
        if shape == "concurrency":
            out["load.concurrency"] = args.concurrency
            drop_sweep("concurrency")
        else:
            out["load.max_concurrency"] = args.concurrency
    if args.rate is not None:
        if shape not in OPEN_SHAPES or shape in ("burst", "trace", "ramp"):
            _fail(
                f"--rate: scenario load shape '{shape}' has no rate; use a poisson, gamma or "
                "constant scenario"
            )
        out["load.rate"] = args.rate
        drop_sweep("rate")
    if args.num_requests is not None:
        out["num_requests"] = args.num_requests
        if args.duration is None:
            out["duration_s"] = None
    if args.duration is not None:
        out["duration_s"] = args.duration
        if args.num_requests is None:
            out["num_requests"] = None
    if args.warmup is not None:
        out["warmup_requests"] = args.warmup
    if args.input_tokens is not None:
        out["prompts.input_tokens"] = args.input_tokens
    if args.output_tokens is not None:
        out["output_tokens"] = args.output_tokens
    if args.endpoint is not None:
        out["endpoint"] = args.endpoint
    if args.seed is not None:
        out["seed"] = args.seed
    if args.max_error_rate is not None:
        out["max_error_rate"] = args.max_error_rate
    if args.transport is not None:
        out["transport"] = args.transport
    if args.spin_ms is not None:
        out["spin_ms"] = args.spin_ms
    if args.skip_bad_lines:
        out["prompts.skip_bad_lines"] = True
    if args.workers is not None:
        out["workers"] = args.workers
    return out


def load_scenario_from_args(args: argparse.Namespace) -> Any:
    path = resolve_path(args.scenario)
    doc = read_yaml(path)
    if not isinstance(doc, dict):
        raise SpecloadError(f"{path}: expected a mapping at top level")
    return parse_scenario(doc, str(path), scenario_overrides(doc, args))


def run_main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.list_scenarios:
        for name in sorted(list_scenarios()):
            print(name)
        return 0
    if not args.scenario:
        _fail("--scenario: required (a name from --list-scenarios or a YAML path)")
    api_key = None
    if args.api_key_env:
        if not _ENV_NAME.fullmatch(args.api_key_env):
            # Likely the key itself (or `--api-key KEY`, which argparse abbreviates to this
            # flag): never echo it, stderr ends up in logs.
            _fail(
                "--api-key-env: give the NAME of an environment variable holding the key "
                "(e.g. OPENAI_API_KEY), not the key; the value given is not shown"
            )
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            _fail(f"--api-key-env: environment variable {args.api_key_env} is not set")
    if args.workers is not None and not 1 <= args.workers <= MAX_WORKERS:
        _fail(f"--workers: must be an integer from 1 to {MAX_WORKERS}, got {args.workers}")
    if args.ray_address is not None and not args.ray_address.strip():
        _fail("--ray-address: give the cluster address (host:port, ray://host:port or local)")
    scenario = load_scenario_from_args(args)
    out = args.output_dir or Path("results") / (
        f"{scenario.name}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    )
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
    )
    try:
        from loadgen.report.console import print_summary_table

        print_summary_table(result.phases)
    except ImportError:
        pass
    state = "complete" if result.complete else f"INCOMPLETE ({result.stop_reason})"
    print(f"results: {out} [{state}]", file=sys.stderr)
    return result.exit_code


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] == "report":
        from loadgen.report.report import report_main

        return report_main(argv[1:])
    if argv and argv[0] == "compare":
        from loadgen.report.report import compare_main

        return compare_main(argv[1:])
    if argv and argv[0] == "run":
        argv = argv[1:]
    return run_main(argv)


def main(argv: list[str] | None = None) -> int:
    return run_cli("loadgen", _dispatch, argv)

"""``python -m server_launch``: run a matrix sweep (start vLLM per config, run scenarios, stop)."""

from __future__ import annotations

import argparse
import datetime as _dt
import shlex
import sys
from pathlib import Path

from loadgen.errors import ArgParser, SpecloadError, run_cli
from server_launch.backends.base import BackendKind
from server_launch.capabilities import PerRequestMetrics

DEFAULT_BACKEND = BackendKind.DOCKER
DEFAULT_HEALTH_TIMEOUT_S = 1200.0


def _port(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 1..65535, got {v}")
    return v


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return v


def _gpus(text: str) -> int:
    """'all' -> -1, 'none' -> 0 (a CPU image: no GPU requested), else a count >= 1."""
    if text in ("all", "none"):
        return -1 if text == "all" else 0
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'all', 'none' or a GPU count, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"'all', 'none' or a GPU count >= 1, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = ArgParser(
        prog="python -m server_launch",
        description=(
            "Sweep a matrix of vLLM server configurations: for each one start the server "
            "(Docker container or local process), wait for /health, run the matrix's "
            "scenarios with the load generator, stop the server. Results: one loadgen run "
            "directory per (config, scenario) under the sweep directory, state in sweep.json "
            "(resumable), and a report at the end."
        ),
    )
    p.add_argument(
        "--matrix", required=True, type=Path, help="matrix YAML (native or original format)"
    )
    p.add_argument(
        "--backend",
        choices=[k.value for k in BackendKind],
        help=f"how to start vLLM (default: the matrix's 'backend', else {DEFAULT_BACKEND})",
    )
    p.add_argument(
        "--output-dir",
        type=Path,
        help="sweep directory (default: results/sweep-<matrix name>-<timestamp>)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the sweep in --output-dir: skip cells (config x scenario x phase) "
        "already done, run the rest",
    )
    p.add_argument(
        "--port", type=_port, default=8000, help="host port the server listens on (default 8000)"
    )
    p.add_argument(
        "--health-timeout",
        type=_seconds,
        default=DEFAULT_HEALTH_TIMEOUT_S,
        metavar="S",
        help="seconds to wait for GET /health == 200 after each start "
        "(default %(default)g; vLLM compiles at first start)",
    )
    p.add_argument(
        "--image",
        help="docker backend: vLLM image (default: the matrix's 'image', else "
        "vllm/vllm-openai:v0.26.0)",
    )
    p.add_argument(
        "--gpus",
        type=_gpus,
        help="docker backend: GPUs to give the container, 'all', a count, or 'none' "
        "(a CPU image such as the compose file's specload-vllm-cpu; default all)",
    )
    p.add_argument(
        "--vllm-cmd",
        metavar="CMD",
        help="local backend: command prefix that starts the server, e.g. "
        "'python3 -m vllm.entrypoints.cli.main serve' (shell-split; the model goes after "
        "--model). Default: 'vllm serve' if that CLI works, else "
        "'python -m vllm.entrypoints.openai.api_server'",
    )
    p.add_argument(
        "--per-request-metrics",
        choices=[m.value for m in PerRequestMetrics],
        default=PerRequestMetrics.AUTO.value,
        help="local backend: start vLLM with --enable-per-request-metrics and "
        "--per-request-spec-decode-metrics (summary; 'detailed' adds per-step arrays) where "
        "its own --help lists them, so every record carries the server's TTFT and the "
        "request's acceptance (default %(default)s; off: never)",
    )
    p.add_argument(
        "--only",
        nargs="+",
        metavar="LABEL",
        help="run only these configuration labels (see --dry-run for the labels)",
    )
    p.add_argument(
        "--dummy-models",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve dummy-weight models for known names (overrides the matrix's dummy_models)",
    )
    p.add_argument("--model-dir", help="where dummy model directories go (default models/)")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print each server command and its cells, start nothing",
    )
    p.add_argument("--no-report", action="store_true", help="skip the report at the end")
    p.add_argument("--no-progress", action="store_true", help="no live progress bars")
    return p


def _default_output_dir(name: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("results") / f"sweep-{name}-{stamp}"


def main(argv: list[str] | None = None) -> int:
    return run_cli("server_launch", _main, argv)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from server_launch.matrix import load_matrix

    matrix = load_matrix(args.matrix, dummy_models=args.dummy_models, model_dir=args.model_dir)
    kind = BackendKind(args.backend) if args.backend else matrix.backend or DEFAULT_BACKEND
    if args.vllm_cmd is not None and kind is not BackendKind.LOCAL:
        raise SpecloadError("--vllm-cmd: only for --backend local")
    if (args.image is not None or args.gpus is not None) and kind is not BackendKind.DOCKER:
        flag = "--image" if args.image is not None else "--gpus"
        raise SpecloadError(f"{flag}: only for --backend docker")
    from server_launch.pairing import plan_pairing, restrict

    plan = plan_pairing(matrix, kind.value)  # before anything starts: misfits are errors here
    if args.only:
        labels = [r.label for r in matrix.runs]
        unknown = [x for x in args.only if x not in labels]
        if unknown:
            raise SpecloadError(
                f"--only: no configuration labelled '{unknown[0]}' (have: {', '.join(labels)})"
            )
        if plan.paired:
            plan = restrict(plan, args.only)
        else:
            matrix = matrix.model_copy(
                update={"runs": [r for r in matrix.runs if r.label in args.only]}
            )
    if args.resume and args.output_dir is None:
        raise SpecloadError("--resume: give the --output-dir of the sweep to resume")
    backend = _make_backend(kind, args, matrix.image)
    out = args.output_dir or _default_output_dir(matrix.name)

    if args.dry_run:
        _print_plan(matrix, backend, args.port, out, plan)
        return 0

    from loadgen.config.prompts.base import check_prompts
    from server_launch.sweep import run_sweep

    for run in matrix.runs:  # a missing prompt suite fails before any server starts
        for sc in run.scenarios:
            check_prompts(sc.prompts)
    result = run_sweep(
        matrix,
        backend=backend,
        output_dir=out,
        resume=args.resume,
        health_deadline_s=args.health_timeout,
        port=args.port,
        matrix_path=args.matrix,
        progress=not args.no_progress,
        report=not args.no_report,
        pairing=plan,
    )
    c = result.cells
    state = (
        "interrupted" if result.interrupted else ("complete" if result.complete else "INCOMPLETE")
    )
    print(
        f"sweep {state}: {c.get('done', 0)} cells done, {c.get('failed', 0)} failed, "
        f"{c.get('pending', 0)} pending -> {out}",
        file=sys.stderr,
    )
    if result.failed_runs:
        print(f"servers that failed: {', '.join(result.failed_runs)}", file=sys.stderr)
    if result.report is not None:
        print(f"report: {result.report}", file=sys.stderr)
    if not result.complete and not result.interrupted:
        print(f"continue with: --resume --output-dir {shlex.quote(str(out))}", file=sys.stderr)
    return result.exit_code


def _make_backend(kind: BackendKind, args: argparse.Namespace, matrix_image: str | None):
    if kind is BackendKind.LOCAL:
        from server_launch.backends.local import LocalBackend

        cmd = None
        if args.vllm_cmd is not None:
            try:
                cmd = shlex.split(args.vllm_cmd)
            except ValueError as e:
                raise SpecloadError(f"--vllm-cmd: {e}") from None
            if not cmd:
                raise SpecloadError("--vllm-cmd: empty command")
        return LocalBackend(cmd, per_request=PerRequestMetrics(args.per_request_metrics))
    from server_launch.backends.docker import DEFAULT_IMAGE, DockerBackend

    return DockerBackend(image=args.image or matrix_image or DEFAULT_IMAGE, gpus=args.gpus)


def _print_plan(matrix, backend, port: int, out: Path, plan) -> None:
    from server_launch.paired_sweep import level_slugs
    from server_launch.pairing import group_id, resident_run
    from server_launch.sweep import phase_slugs

    n_cells = n_searches = 0
    print(
        f"matrix {matrix.name}: {len(matrix.runs)} server configuration(s), "
        f"backend {backend.name}, output {out}"
    )
    print(plan.reason)
    if plan.paired:
        runs = {r.label: resident_run(r, plan) for r in matrix.runs}
        print(f"\n[{plan.baseline}] baseline, up for the whole sweep")
        print("  " + shlex.join(backend.command(runs[plan.baseline], port)))
        for group in plan.groups:
            print(f"\n[{group_id(group)}] beside {plan.baseline}, levels interleaved A B | B A")
            for i, label in enumerate(group, start=1):
                print("  " + shlex.join(backend.command(runs[label], port + i)))
            names = {s.name for c in group for s in runs[c].scenarios}
            for sc in runs[plan.baseline].scenarios:
                if sc.name in names and sc.search is not None:
                    how = "probes alternating" if sc.search.kind == "capacity" else "in turn"
                    print(f"  {sc.name}: a {sc.search.kind.value} search per server, {how}")
                    n_searches += 1
                elif sc.name in names:
                    slugs = level_slugs(sc)
                    n_cells += len(slugs)
                    print(f"  {sc.name}: {', '.join(slugs)}")
        parts = [f"{n_cells} level(s), each warmed up then measured in pairs"] if n_cells else []
        if n_searches:
            parts.append(f"{n_searches} search scenario(s), one search per server")
        print("\n" + "; ".join(parts))
        return
    for run in matrix.runs:
        print(f"\n[{run.label}]")
        print("  " + shlex.join(backend.command(run, port)))
        for sc in run.scenarios:
            slugs = phase_slugs(sc)
            n_cells += len(slugs)
            print(f"  {sc.name}: {', '.join(slugs)}")
    print(f"\n{n_cells} cell(s)")

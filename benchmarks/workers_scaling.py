"""How loadgen's throughput scales with ``--workers``: achieved chunks/s and req/s against
the mock server, per worker count, and the ratio to linear scaling.

Why: one loadgen process saturates at a few thousand chunks/s (benchmarks/client_overhead),
and ``--workers`` exists to go past that. Each level is a closed loop with ``--per-worker``
streams per worker (the offered load grows with the workers, so each one stays saturated)
against a mock with a short ITL, which offers far more chunks/s than a client takes.

The mock runs as ``--mock-procs`` processes sharing one port (``--reuse-port``) so it is not
the bottleneck; on Linux it is pinned to the last ``--mock-procs`` cores and loadgen (parent
and workers) to the others (``--no-pin`` turns that off). Watch the ``mock CPU`` column: a
mock process near 100 % means the mock, not loadgen, capped that level. Loadgen runs as
``python -m loadgen`` exactly as a user runs it; its CPU (parent and workers) comes from
``RUSAGE_CHILDREN``.

    .venv/bin/python benchmarks/workers_scaling.py                  # 1, 2, 4, ... cores
    .venv/bin/python benchmarks/workers_scaling.py --workers 1,2 --duration 3 --out /tmp/ws
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import machine, write_results  # noqa: E402
from loadgen.mock.process import start_mock_process, stop_mock_process  # noqa: E402

PROMPT = "w5 w6 w7 w8"


def default_levels(cores: int) -> list[int]:
    """1, 2, 4, ... up to ``cores``, ``cores`` itself always included."""
    out, n = [], 1
    while n < cores:
        out.append(n)
        n *= 2
    return [*out, cores]


def split_cores(mock_procs: int, pin: bool) -> tuple[list[int] | None, list[int] | None]:
    """(loadgen cores, mock cores): the mock on the last ``mock_procs`` usable cores."""
    if not pin or not hasattr(os, "sched_getaffinity"):
        return None, None
    cores = smt_order(sorted(os.sched_getaffinity(0)))
    if len(cores) <= mock_procs:
        return None, None  # too few to split: share them
    return cores[:-mock_procs], cores[-mock_procs:]


def smt_order(cores: list[int]) -> list[int]:
    """``cores`` with SMT siblings side by side (Linux sysfs), so that a split at an even
    index never puts loadgen and the mock on two threads of one physical core."""
    seen: set[int] = set()
    out: list[int] = []
    for c in cores:
        if c in seen:
            continue
        try:
            text = Path(f"/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list")
            sib = _cpu_list(text.read_text())
        except (OSError, ValueError):
            sib = [c]
        group = [x for x in sib if x in cores and x not in seen] or [c]
        out += group
        seen.update(group)
    return out


def _cpu_list(text: str) -> list[int]:
    """'0-3,8' -> [0, 1, 2, 3, 8] (the kernel's cpu list format)."""
    out: list[int] = []
    for part in text.strip().split(","):
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return out


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a live process (Linux /proc), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_mocks(n: int, args: list[str], cores: list[int] | None) -> tuple[list[Any], str]:
    procs = []
    first, url = start_mock_process([*args, "--reuse-port"])
    procs.append(first)
    port = url.rsplit(":", 1)[1]
    for _ in range(n - 1):
        p, _u = start_mock_process([*args, "--reuse-port", "--port", port])
        procs.append(p)
    if cores:
        for i, p in enumerate(procs):
            os.sched_setaffinity(p.pid, {cores[i % len(cores)]})
    return procs, url


def run_level(
    workers: int, a: argparse.Namespace, url: str, mocks: list[Any], cores: list[int] | None
) -> dict[str, Any]:
    conc = a.per_worker * workers
    with tempfile.TemporaryDirectory(prefix="wscale") as tmp:
        scen = Path(tmp) / "s.yaml"
        scen.write_text(
            json.dumps(
                {
                    "name": f"workers-{workers}",
                    "load": {"shape": "concurrency", "concurrency": conc},
                    "duration_s": a.duration,
                    "warmup_requests": a.warmup_per_worker * workers,
                    "prompts": {"source": "base_prompt", "base_prompt": PROMPT},
                    "output_tokens": a.output_tokens,
                }
            )
        )
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "loadgen", "--scenario", str(scen), "--base-url", url,
               "--output-dir", str(out), "--no-progress", "--workers", str(workers)]  # fmt: skip

        def pin() -> None:
            if cores:
                os.sched_setaffinity(0, set(cores))

        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        mock0 = [proc_cpu_s(p.pid) for p in mocks]
        t0 = time.monotonic()
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, preexec_fn=pin)
        wall = time.monotonic() - t0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        mock1 = [proc_cpu_s(p.pid) for p in mocks]
        if p.returncode != 0:
            raise SystemExit(f"loadgen --workers {workers} failed ({p.returncode}): {p.stderr}")
        summary = json.loads((out / "summary.json").read_text())
        (flat,) = summary["phases"].values()
    dur = flat["duration"]
    chunks = flat["total_output_tokens"]  # one token per chunk (the mock's default)
    lg_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    mock_util = [(b - a_) / wall for a_, b in zip(mock0, mock1, strict=True)]
    return {
        "workers": workers,
        "concurrency": conc,
        "completed": flat["completed"],
        "failed": flat["failed"],
        "duration_s": dur,
        "chunks_per_s": chunks / dur,
        "req_per_s": flat["request_throughput"],
        "median_ttft_ms": flat["median_ttft_ms"],
        "median_itl_ms": flat["median_itl_ms"],
        "loadgen_cpu_s": lg_cpu,
        "loadgen_cpu_us_per_chunk": lg_cpu / chunks * 1e6 if chunks else None,
        "mock_cpu_util_max": max(mock_util) if mock_util else None,
        "wall_s": wall,
    }


def add_scaling(rows: list[dict[str, Any]]) -> None:
    base = next((r for r in rows if r["workers"] == 1), None)
    for r in rows:
        r["chunks_per_s_per_worker"] = r["chunks_per_s"] / r["workers"]
        if base:
            r["speedup"] = r["chunks_per_s"] / base["chunks_per_s"]
            r["scaling_vs_linear"] = r["speedup"] / r["workers"]
            r["req_speedup"] = r["req_per_s"] / base["req_per_s"]
            # per CPU-second given to loadgen: linear scaling where cores are to spare
            cpu, cpu1 = r.get("loadgen_cpu_us_per_chunk"), base.get("loadgen_cpu_us_per_chunk")
            if cpu and cpu1:
                r["cpu_efficiency_vs_1"] = cpu1 / cpu


def _f(v: Any, nd: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return str(v)


def markdown(res: dict[str, Any]) -> str:
    m, cfg = res["machine"], res["config"]
    lines = [
        "# loadgen scaling with --workers (closed loop against the mock)",
        "",
        f"- machine: {m['cpu_count']} CPUs ({m['cpu_model']}), {m['platform']}, Python "
        f"{m['python']}, httpx {m['httpx']}, uvloop {m['uvloop']}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}",
        f"- command: `{res['command']}` ({res['elapsed_s']:.0f} s, {res['date']})",
        f"- load: closed loop, {cfg['per_worker']} streams per worker, {cfg['output_tokens']} "
        f"tokens per request, {cfg['duration']:g} s per level after "
        f"{cfg['warmup_per_worker']} warmup requests per worker",
        f"- mock: {cfg['mock_procs']} process(es) on one port (SO_REUSEPORT), TTFT "
        f"{cfg['ttft_ms']:g} ms, ITL {cfg['itl_ms']:g} ms, one token per chunk; "
        + (
            f"pinned to cores {cfg['mock_cores']}, loadgen to {cfg['loadgen_cores']}"
            if cfg["mock_cores"]
            else "not pinned (loadgen and mock share the cores)"
        ),
        "",
        "| workers | streams | requests | chunks/s | req/s | chunks/s per worker | speedup "
        "| vs linear | TTFT p50 ms | ITL p50 ms | loadgen CPU us/chunk | chunks per CPU-s vs 1 "
        "| busiest mock CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["levels"]:
        lines.append(
            f"| {r['workers']} | {r['concurrency']} | {r['completed']} | "
            f"{_f(r['chunks_per_s'], 0)} | {_f(r['req_per_s'])} | "
            f"{_f(r['chunks_per_s_per_worker'], 0)} | {_f(r.get('speedup'), 2)} | "
            f"{_f(r.get('scaling_vs_linear'), 2)} | {_f(r['median_ttft_ms'], 2)} | "
            f"{_f(r['median_itl_ms'], 2)} | {_f(r['loadgen_cpu_us_per_chunk'], 0)} | "
            f"{_f(r.get('cpu_efficiency_vs_1'), 2)} | "
            f"{_f((r['mock_cpu_util_max'] or 0) * 100, 0)} % |"
        )
    lines += [
        "",
        "`speedup`: chunks/s over the 1-worker level; `vs linear`: speedup / workers (1.0 is "
        "perfect scaling). `chunks per CPU-s vs 1`: chunks per loadgen CPU-second over the "
        "1-worker level's (1.0: splitting costs nothing per chunk, so the rate grows with the "
        "cores given, where the machine has them). `busiest mock CPU`: the busiest mock "
        "process's CPU over the level's wall time (near 100 %: the mock, not loadgen, was "
        "the limit). Loadgen CPU counts the parent and all workers, start-up and result "
        "writing included.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", help="comma-separated worker counts (default 1,2,4,.. cores)")
    ap.add_argument("--mock-procs", type=int, help="mock processes (default: cores // 4, >= 1)")
    ap.add_argument("--no-pin", action="store_true", help="don't split the cores")
    ap.add_argument("--per-worker", type=int, default=64, help="streams per worker")
    ap.add_argument("--output-tokens", type=int, default=64)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per level")
    ap.add_argument("--warmup-per-worker", type=int, default=32)
    ap.add_argument("--ttft-ms", type=float, default=1.0)
    ap.add_argument("--itl-ms", type=float, default=1.0)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--name", default="workers_scaling", help="result file stem")
    a = ap.parse_args(argv)
    cores_all = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores_all = cores_all or 1
    mock_procs = a.mock_procs or max(1, cores_all // 4)
    lg_cores, mock_cores = split_cores(mock_procs, not a.no_pin)
    levels = (
        [int(x) for x in a.workers.split(",")]
        if a.workers
        else default_levels(len(lg_cores) if lg_cores else cores_all)
    )
    t0 = time.monotonic()
    res: dict[str, Any] = {
        "machine": machine(),
        "command": " ".join(["python", "benchmarks/workers_scaling.py", *sys.argv[1:]]),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "config": {
            "per_worker": a.per_worker,
            "output_tokens": a.output_tokens,
            "duration": a.duration,
            "warmup_per_worker": a.warmup_per_worker,
            "ttft_ms": a.ttft_ms,
            "itl_ms": a.itl_ms,
            "mock_procs": mock_procs,
            "mock_cores": mock_cores,
            "loadgen_cores": lg_cores,
        },
        "levels": [],
    }
    mock_args = ["--ttft-ms", str(a.ttft_ms), "--itl-ms", str(a.itl_ms)]
    mocks, url = start_mocks(mock_procs, mock_args, mock_cores)
    try:
        for n in levels:
            row = run_level(n, a, url, mocks, lg_cores)
            res["levels"].append(row)
            print(
                f"workers {n:3d}: {row['chunks_per_s']:10,.0f} chunks/s "
                f"{row['req_per_s']:8,.1f} req/s  mock cpu {row['mock_cpu_util_max']:.0%}",
                file=sys.stderr,
            )
    finally:
        for p in mocks:
            stop_mock_process(p)
    add_scaling(res["levels"])
    res["elapsed_s"] = time.monotonic() - t0
    write_results(a.out, a.name, res, markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

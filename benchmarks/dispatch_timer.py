"""Dispatch lag with and without ``--spin-ms``: how late loadgen sends open-loop requests.

Why: the event loop's timers wake up late (uvloop's are in whole milliseconds, asyncio's
epoll timeout too), so a request scheduled at t goes out at t + up to ~1 ms. ``--spin-ms``
spends the last few milliseconds before each send yielding to the loop instead. This
measures what that buys (dispatch lag p50/p90/p99, from each run's summary) and what it
costs (loadgen's CPU), at low and high rates, settings interleaved and repeated so that
background load hits all alike. Loadgen runs as ``python -m loadgen`` against the mock
server (its own process, on loopback).

    .venv/bin/python benchmarks/dispatch_timer.py                     # ~4 min
    .venv/bin/python benchmarks/dispatch_timer.py --rates 15 --repeats 1 --seconds 2 --out /tmp/dt
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import resource
import statistics
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

KEYS = ("p50_dispatch_lag_ms", "p99_dispatch_lag_ms", "max_dispatch_lag_ms")


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def run_once(url: str, rate: float, spin_ms: float, a: argparse.Namespace) -> dict[str, Any]:
    n = max(int(rate * a.seconds), 20)
    with tempfile.TemporaryDirectory(prefix="dtimer") as tmp:
        scen = Path(tmp) / "s.yaml"
        scen.write_text(
            json.dumps(
                {
                    "name": "dispatch-timer",
                    "load": {"shape": "poisson", "rate": rate},
                    "num_requests": n,
                    "warmup_requests": 8,
                    "prompts": {"source": "base_prompt", "base_prompt": "w5 w6 w7 w8"},
                    "output_tokens": a.output_tokens,
                }
            )
        )
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "loadgen", "--scenario", str(scen), "--base-url", url,
               "--output-dir", str(out), "--no-progress", "--spin-ms", str(spin_ms)]  # fmt: skip
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if p.returncode != 0:
            raise SystemExit(f"loadgen failed ({p.returncode}): {p.stderr[-2000:]}")
        (flat,) = json.loads((out / "summary.json").read_text())["phases"].values()
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return {
        "rate": rate,
        "spin_ms": spin_ms,
        "requests": flat["completed"],
        "duration_s": flat["duration"],
        **{k: flat[k] for k in KEYS},
        "cpu_s": cpu,
        "cpu_per_wall": cpu / flat["duration"],
    }


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median (min, max) over repeats of each (rate, spin) cell."""
    cells: dict[tuple[float, float], list[dict[str, Any]]] = {}
    for r in runs:
        cells.setdefault((r["rate"], r["spin_ms"]), []).append(r)
    out = []
    for (rate, spin), rs in sorted(cells.items()):
        row: dict[str, Any] = {"rate": rate, "spin_ms": spin, "repeats": len(rs)}
        for k in (*KEYS, "cpu_per_wall"):
            vals = [r[k] for r in rs]
            row[k] = (statistics.median(vals), min(vals), max(vals))
        out.append(row)
    return out


def _m(v: tuple[float, float, float], nd: int = 2) -> str:
    med, lo, hi = v
    return f"{med:.{nd}f} ({lo:.{nd}f}–{hi:.{nd}f})"


def _loop(m: dict[str, Any]) -> str:
    return f"uvloop {m['uvloop']}" if m["uvloop"] else "asyncio"


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        "# Dispatch lag: the loop's timer against `--spin-ms`",
        "",
        f"- machine: {m['cpu_count']} CPUs ({m['cpu_model']}), {m['platform']}, Python "
        f"{m['python']}, event loop {_loop(m)}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}; **the mock shares the cores**",
        f"- command: `{res['command']}` ({res['elapsed_s']:.0f} s, {res['date']})",
        f"- load: open loop (Poisson), {res['config']['seconds']:g} s of requests per run, "
        f"{res['config']['output_tokens']} tokens each, mock TTFT 5 ms / ITL 2 ms; settings "
        f"interleaved, {res['config']['repeats']} repeats; median (min–max) over repeats",
        "",
        "| req/s | spin ms | dispatch lag p50 ms | p99 ms | max ms | loadgen CPU (cores) |",
        "|---|---|---|---|---|---|",
    ]
    for r in res["cells"]:
        lines.append(
            f"| {r['rate']:g} | {r['spin_ms']:g} | {_m(r['p50_dispatch_lag_ms'])} | "
            f"{_m(r['p99_dispatch_lag_ms'])} | {_m(r['max_dispatch_lag_ms'])} | "
            f"{_m(r['cpu_per_wall'])} |"
        )
    lines += [
        "",
        "Dispatch lag: when the request went on the wire minus when the schedule said. "
        "Loadgen CPU: the `python -m loadgen` process over the phase's duration (start-up "
        "and result writing included).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", type=_floats, default=[15.0, 250.0, 500.0], help="req/s")
    ap.add_argument("--spins", type=_floats, default=[0.0, 2.0], help="--spin-ms values")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0, help="schedule length per run")
    ap.add_argument("--output-tokens", type=int, default=16)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--name", default="dispatch_timer", help="result file stem")
    a = ap.parse_args(argv)
    t0 = time.monotonic()
    res: dict[str, Any] = {
        "machine": machine(),
        "command": " ".join(["python", "benchmarks/dispatch_timer.py", *sys.argv[1:]]),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "config": {"seconds": a.seconds, "output_tokens": a.output_tokens, "repeats": a.repeats},
        "runs": [],
    }
    mock, url = start_mock_process(["--ttft-ms", "5", "--itl-ms", "2"])
    try:
        for rep in range(a.repeats):
            for rate in a.rates:
                spins = a.spins if rep % 2 == 0 else list(reversed(a.spins))
                for spin in spins:
                    r = run_once(url, rate, spin, a)
                    res["runs"].append(r)
                    print(
                        f"rate {rate:g} spin {spin:g}: lag p50 {r['p50_dispatch_lag_ms']:.3f} "
                        f"p99 {r['p99_dispatch_lag_ms']:.3f} ms, cpu {r['cpu_per_wall']:.2f}",
                        file=sys.stderr,
                    )
    finally:
        stop_mock_process(mock)
    res["cells"] = aggregate(res["runs"])
    res["elapsed_s"] = time.monotonic() - t0
    write_results(a.out, a.name, res, markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

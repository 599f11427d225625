"""Soak: a long run against the mock server with random faults; RSS at start and end.

Starts ``python -m loadgen.mock`` with random faults (HTTP errors, cut streams,
malformed chunks, stalls), runs ``python -m loadgen`` against it with Poisson arrivals for
``--minutes``, samples the load generator's RSS from /proc every few seconds, and checks that
every request sent is on disk (requests lost must be 0). Writes a JSON and a Markdown summary.

    python benchmarks/soak.py --minutes 30 --rate 20 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from loadgen.mock.process import start_mock_process, stop_mock_process  # noqa: E402
from loadgen.results.files import read_records  # noqa: E402

FAULTS = [
    "--fail-status", "503", "--fail-rate", "0.02", "--cut-rate", "0.02",
    "--malformed-rate", "0.01", "--stall-rate", "0.005",
]  # fmt: skip


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=20.0, help="requests per second")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args()
    duration = args.minutes * 60
    work = Path(tempfile.mkdtemp(prefix="specload-soak-"))
    scenario = work / "soak.yaml"
    scenario.write_text(
        json.dumps(
            {
                "name": "soak",
                "load": {"shape": "poisson", "rate": args.rate},
                "duration_s": duration,
                "prompts": {"source": "base_prompt", "base_prompt": "w1 w2 w3 w4 w5 w6 w7 w8"},
                "output_tokens": 64,
                "request_timeout_s": 5.0,
            }
        )
    )
    proc, url = start_mock_process(
        ["--ttft-ms", "20", "--itl-ms", "5", "--tokens-per-chunk", "spec:3:0.7", *FAULTS]
    )
    samples: list[tuple[float, int]] = []
    try:
        out_dir = work / "run"
        t0 = time.monotonic()
        lg = subprocess.Popen(
            [sys.executable, "-m", "loadgen", "--scenario", str(scenario), "--base-url", url,
             "--output-dir", str(out_dir), "--no-progress"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        while lg.poll() is None:
            r = rss_kib(lg.pid)
            if r is not None:
                samples.append((time.monotonic() - t0, r))
            time.sleep(5)
        err = lg.stderr.read() if lg.stderr else ""
        wall = time.monotonic() - t0
    finally:
        stop_mock_process(proc)
    summary = json.loads((out_dir / "summary.json").read_text())
    (phase,) = summary["phases"].values()
    recs = list(read_records(next(out_dir.glob("*/requests.jsonl"))))
    measured = [r for r in recs if not r.warmup]
    # "start": once the interpreter, numpy and the prompts are loaded and the run is going
    started = [kib for t, kib in samples if t >= 15] or [kib for _, kib in samples]
    result = {
        "host": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "command": " ".join(sys.argv),
        "minutes": args.minutes,
        "rate": args.rate,
        "faults": " ".join(FAULTS),
        "exit_code": lg.returncode,
        "wall_s": round(wall, 1),
        "requests_on_disk": len(measured),
        "completed": phase["completed"],
        "failed": phase["failed"],
        "failed_by_kind": phase["failed_by_kind"],
        "requests_lost": phase["completed"] + phase["failed"] - len(measured),
        "rss_kib_start": started[0] if started else None,
        "rss_kib_end": samples[-1][1] if samples else None,
        "rss_kib_max": max(k for _, k in samples) if samples else None,
        "p99_dispatch_lag_ms": phase["p99_dispatch_lag_ms"],
        "median_ttft_ms": phase["median_ttft_ms"],
        "stderr_tail": err.strip().splitlines()[-1:] if err.strip() else [],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"soak-{args.minutes:g}min"
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["requests_lost"] == 0 and lg.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())

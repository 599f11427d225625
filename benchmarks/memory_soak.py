"""Memory soak: does a long run stay flat in memory? Loadgen RSS over 200k requests.

Starts the mock server in its own process (short outputs, ~1 ms ITL, so requests are cheap),
runs ``python -m loadgen`` as a subprocess (closed loop) for ``--requests`` requests, and
samples the load generator's RSS every second with the request count so far (newlines
appended to ``requests.jsonl``). Writes ``<name>.json`` and ``<name>.md``: RSS at start,
after 10k requests, peak (VmHWM, so the end-of-phase summary is counted too) and end; the
slope over the second half of the run in MB per 100k requests; requests/s; the machine.

    python benchmarks/memory_soak.py --requests 200000 --out benchmarks/results
    python benchmarks/memory_soak.py --requests 20000 --name memory_soak-smoke   # quick
    python benchmarks/memory_soak.py --repo /tmp/base --requests 30000 --name before

``--repo`` runs another checkout's loadgen (e.g. an older commit, for a before/after);
``--max-minutes`` caps the measured phase (the run then stops on time, and the report says
how many requests fit).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from loadgen.engine.host import cpu_model  # noqa: E402
from loadgen.mock.process import start_mock_process, stop_mock_process  # noqa: E402

MB = 1024 * 1024
MILESTONE = 10_000  # "RSS after 10k requests"


@dataclass(frozen=True)
class Sample:
    t_s: float  # since the load generator started
    requests: int  # records on disk so far (warmup included)
    rss: int  # bytes
    hwm: int | None  # VmHWM, bytes: the process's peak RSS so far


def vm_hwm(pid: int) -> int | None:
    """Peak RSS from /proc (Linux): catches a spike between two samples."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class LineCounter:
    """Counts lines appended to a file, reading only what is new."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.lines = 0

    def poll(self) -> int:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return self.lines
        self.offset += len(data)
        self.lines += data.count(b"\n")
        return self.lines


def slope_mb_per_100k(samples: list[Sample], lo: int, hi: int) -> float | None:
    """Least-squares slope of RSS against requests done, over samples with
    ``lo <= requests < hi``, in MB per 100k requests (None with fewer than 3 samples)."""
    pts = [(s.requests, s.rss) for s in samples if lo <= s.requests < hi]
    if len(pts) < 3 or pts[0][0] == pts[-1][0]:
        return None
    x = np.array([p[0] for p in pts], dtype=float)
    y = np.array([p[1] for p in pts], dtype=float)
    slope = float(np.polyfit(x, y, 1)[0])
    return slope * 100_000 / MB


def rss_at(samples: list[Sample], requests: int) -> int | None:
    """RSS of the first sample with at least ``requests`` done."""
    return next((s.rss for s in samples if s.requests >= requests), None)


def analyse(samples: list[Sample], total: int) -> dict[str, Any]:
    """RSS figures from the samples; ``total`` is the records on disk at the end."""
    running = [s for s in samples if 0 < s.requests < total]
    half = total // 2
    hwm = [s.hwm for s in samples if s.hwm is not None]
    out: dict[str, Any] = {
        "samples": len(samples),
        "rss_mb_start": _mb(running[0].rss if running else None),
        "rss_mb_after_10k": _mb(rss_at(samples, MILESTONE)) if total > MILESTONE else None,
        "rss_mb_at_half": _mb(rss_at(samples, half)),
        "rss_mb_last_during_run": _mb(running[-1].rss if running else None),
        "rss_mb_hwm_during_run": _mb(running[-1].hwm if running else None),
        "rss_mb_max_sampled": _mb(max(s.rss for s in samples) if samples else None),
        "rss_mb_peak_hwm": _mb(max(hwm) if hwm else None),
        "rss_mb_end": _mb(samples[-1].rss if samples else None),
        "slope_mb_per_100k_second_half": _round(slope_mb_per_100k(samples, half, total)),
        "slope_mb_per_100k_whole_run": _round(slope_mb_per_100k(samples, MILESTONE, total)),
    }
    return out


def _mb(b: int | None) -> float | None:
    return None if b is None else round(b / MB, 1)


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def machine() -> dict[str, Any]:
    model = cpu_model()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def scenario(args: argparse.Namespace) -> dict[str, Any]:
    sc: dict[str, Any] = {
        "name": "memory-soak",
        "load": {"shape": "concurrency", "concurrency": args.concurrency},
        "num_requests": args.requests,
        "warmup_requests": args.warmup,
        "prompts": {"source": "base_prompt", "base_prompt": "w1 w2 w3 w4 w5 w6 w7 w8"},
        "output_tokens": args.output_tokens,
        "request_timeout_s": 30.0,
    }
    if args.max_minutes:
        sc["duration_s"] = args.max_minutes * 60
    return sc


def git_commit(repo: Path) -> str | None:
    try:
        return subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="specload-memsoak-"))
    sc_path = work / "memsoak.yaml"
    sc_path.write_text(json.dumps(scenario(args)))
    mock_args = ["--ttft-ms", str(args.ttft_ms), "--itl-ms", str(args.itl_ms)]
    mach = machine()
    proc, url = start_mock_process(mock_args)
    out_dir = work / "run"
    cmd = [
        sys.executable, "-m", "loadgen", "--scenario", str(sc_path), "--base-url", url,
        "--output-dir", str(out_dir), "--no-progress",
    ]  # fmt: skip
    samples: list[Sample] = []
    try:
        t0 = time.monotonic()
        lg = subprocess.Popen(
            cmd, cwd=args.repo, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        ps = psutil.Process(lg.pid)
        counter: LineCounter | None = None
        while lg.poll() is None:
            if counter is None:
                found = list(out_dir.glob("*/requests.jsonl"))
                counter = LineCounter(found[0]) if found else None
            n = counter.poll() if counter else 0
            try:
                rss = ps.memory_info().rss
            except psutil.Error:
                break
            samples.append(Sample(round(time.monotonic() - t0, 2), n, rss, vm_hwm(lg.pid)))
            time.sleep(args.interval)
        lg.wait()
        wall = time.monotonic() - t0
        err = lg.stderr.read() if lg.stderr else ""
    finally:
        stop_mock_process(proc)
    total = counter.poll() if counter else 0
    summary = json.loads((out_dir / "summary.json").read_text())
    (phase,) = summary["phases"].values()
    measured = phase["completed"] + phase["failed"]
    rate = measured / phase["duration"] if phase["duration"] else None
    jsonl_mb = sum(p.stat().st_size for p in out_dir.glob("*/requests.jsonl")) / MB
    result: dict[str, Any] = {
        "name": args.name,
        "command": " ".join(["python", *sys.argv]),
        # the scratch folder's name says nothing about the run: shown as <tmp>
        "loadgen_command": " ".join(["python", *cmd[1:]]).replace(str(work), "<tmp>"),
        "loadgen_repo": Path(args.repo).resolve().name,  # a checkout's name, not its path
        "loadgen_commit": args.repo_commit or git_commit(args.repo),
        "machine": mach,
        "mock": " ".join(mock_args),
        "scenario": scenario(args),
        "exit_code": lg.returncode,
        "wall_s": round(wall, 1),
        "requests_asked": args.requests,
        "requests_measured": measured,
        "records_on_disk": total,
        "completed": phase["completed"],
        "failed": phase["failed"],
        "phase_duration_s": round(phase["duration"], 1),
        "requests_per_s": None if rate is None else round(rate, 1),
        "requests_jsonl_mb": round(jsonl_mb, 1),
        "median_ttft_ms": round(phase["median_ttft_ms"], 3),
        "p99_itl_ms": round(phase["p99_itl_ms"], 3),
        **analyse(samples, total),
        "stderr_tail": err.strip().splitlines()[-3:] if err.strip() else [],
        "samples_t_requests_rss_mb": [[s.t_s, s.requests, round(s.rss / MB, 2)] for s in samples],
    }
    if not args.keep:
        for p in sorted(work.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        work.rmdir()
    return result


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    rows = [
        ("requests measured (on disk, warmup included)",
         f"{r['requests_measured']:,} ({r['records_on_disk']:,})"),
        ("completed / failed", f"{r['completed']:,} / {r['failed']:,}"),
        ("requests/s (measured phase)", f"{r['requests_per_s']}"),
        ("RSS at start (first sample with requests done)", f"{r['rss_mb_start']} MB"),
        ("RSS after 10k requests", _opt_mb(r["rss_mb_after_10k"])),
        ("RSS at half the run", _opt_mb(r["rss_mb_at_half"])),
        ("RSS last sample during the run", _opt_mb(r["rss_mb_last_during_run"])),
        ("RSS peak during the run (VmHWM)", _opt_mb(r["rss_mb_hwm_during_run"])),
        ("RSS peak (VmHWM, end-of-phase summary included)", _opt_mb(r["rss_mb_peak_hwm"])),
        ("RSS last sample (summary written)", _opt_mb(r["rss_mb_end"])),
        ("slope over the second half", _opt_slope(r["slope_mb_per_100k_second_half"])),
        ("slope from 10k to the end", _opt_slope(r["slope_mb_per_100k_whole_run"])),
        ("requests.jsonl", f"{r['requests_jsonl_mb']} MB"),
        ("median TTFT / p99 ITL", f"{r['median_ttft_ms']} ms / {r['p99_itl_ms']} ms"),
        ("exit code", str(r["exit_code"])),
    ]  # fmt: skip
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"""# Memory soak: {r["name"]}

Loadgen RSS (psutil, every second) over one closed-loop phase against the mock server;
MB here is 2^20 bytes.
**Machine: {m["cpus"]} cores ({m["cpu_model"]}), {m["memory_gb"]} GB, {m["platform"]},
Python {m["python"]}; load average at start {m["loadavg_at_start"]}. The box is shared with
other jobs (other sessions' tests and benchmarks) and with the mock server: rates are this
box's, and memory, not speed, is what this measures.**

- command: `{r["command"]}` ({r["wall_s"]} s)
- load generator: `{r["loadgen_command"]}` from {r["loadgen_repo"]} (commit {r["loadgen_commit"]})
- mock: `{r["mock"]}`; scenario: `{json.dumps(r["scenario"])}`

| figure | value |
|---|---|
{table}

Slope: least-squares fit of RSS against requests done, in MB per 100k requests. Raw samples
(t, requests, RSS MB) are in `{r["name"]}.json`.
"""


def _opt_mb(x: float | None) -> str:
    return "n/a" if x is None else f"{x} MB"


def _opt_slope(x: float | None) -> str:
    return "n/a" if x is None else f"{x} MB / 100k requests"


TABLE_COLS = (
    ("run", "name"),
    ("loadgen", "loadgen_commit"),
    ("requests", "requests_measured"),
    ("req/s", "requests_per_s"),
    ("RSS start MB", "rss_mb_start"),
    ("after 10k", "rss_mb_after_10k"),
    ("last during run", "rss_mb_last_during_run"),
    ("peak (HWM)", "rss_mb_peak_hwm"),
    ("slope 2nd half MB/100k", "slope_mb_per_100k_second_half"),
    ("load avg at start", "machine"),
)


def table(results: list[dict[str, Any]]) -> str:
    """A Markdown table of several runs' figures (e.g. before/after a change)."""
    head = "| " + " | ".join(c for c, _ in TABLE_COLS) + " |"
    rule = "|" + "---|" * len(TABLE_COLS)
    rows = []
    for r in results:
        cells = []
        for _, key in TABLE_COLS:
            v = r.get(key)
            if key == "machine":
                v = r["machine"]["loadavg_at_start"][0]
            cells.append(f"{v:,}" if isinstance(v, int) else str(v))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, rule, *rows]) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--output-tokens", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=64)
    ap.add_argument("--ttft-ms", type=float, default=1.0)
    ap.add_argument("--itl-ms", type=float, default=0.5)
    ap.add_argument("--interval", type=float, default=1.0, help="RSS sampling period, s")
    ap.add_argument("--max-minutes", type=float, default=None, help="cap the measured phase")
    ap.add_argument("--repo", type=Path, default=REPO, help="checkout whose loadgen runs")
    ap.add_argument("--repo-commit", help="--repo's commit, where it is not a git checkout")
    ap.add_argument("--name", default="memory_soak")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--keep", action="store_true", help="keep the run's results directory")
    ap.add_argument(
        "--table", nargs="+", type=Path, metavar="JSON", help="print a table of earlier runs"
    )
    ap.add_argument(
        "--markdown", nargs="+", type=Path, metavar="JSON", help="rewrite runs' .md into --out"
    )
    args = ap.parse_args(argv)
    if args.table:
        print(table([json.loads(p.read_text()) for p in args.table]), end="")
        return 0
    if args.markdown:
        for p in args.markdown:
            (args.out / p.with_suffix(".md").name).write_text(markdown(json.loads(p.read_text())))
        return 0
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(result))
    brief = {k: v for k, v in result.items() if k != "samples_t_requests_rss_mb"}
    print(json.dumps(brief, indent=2))
    return 0 if result["exit_code"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())

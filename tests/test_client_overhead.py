"""Smoke test of benchmarks/client_overhead.py: the join maths, vLLM's output mapping, and one
tiny loadgen cell end to end (worker process + mock with a log). The vLLM worker itself is
exercised by the benchmark run only: importing vllm.benchmarks.serve alone takes ~10-20 s
of CPU here."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "client_overhead.py"
_spec = importlib.util.spec_from_file_location("client_overhead", _PATH)
assert _spec is not None and _spec.loader is not None
co = importlib.util.module_from_spec(_spec)
sys.modules["client_overhead"] = co
_spec.loader.exec_module(co)


def _truth(recv: float, writes: list[float]) -> dict:
    return {"recv": recv, "chunks": [[w, 1] for w in writes]}


def test_join_stats_measures_errors_against_the_log() -> None:
    # server: received at 100.0, chunks written at +10, +12, +14 ms
    truth = {"a": _truth(100.0, [100.010, 100.012, 100.014])}
    # client: sent 0.1 ms before recv, chunks 0.2 ms after each write, one 2 ms late
    req = co.ClientRequest(
        rid="a",
        sent=99.9999,
        ttft=0.0103,
        chunks=[100.0102, 100.0122, 100.0162],
        scheduled=99.9994,
    )
    s = co.join_stats([req], truth, open_loop=True)
    assert s["requests_ok"] == 1 and s["chunks"] == 3
    assert s["p99_lag_ms"] == pytest.approx(0.5, abs=1e-3)
    assert s["median_ttft_err_ms"] == pytest.approx(0.3, abs=1e-3)
    # ITL errors: 0 and +2 ms; p99 of |err| is near 2
    assert s["p99_itl_err_ms"] == pytest.approx(2.0 * 0.99, abs=0.03)
    assert s["p99_arrival_err_ms"] > 2.0
    assert s["worst_p99_ms"] == pytest.approx(s["p99_itl_err_ms"])  # the late chunk
    assert co.holds(s, 5.0) and not co.holds(s, 1.0)
    # a client that missed a chunk is not scored on it
    short = co.ClientRequest(rid="a", sent=99.9, ttft=0.01, chunks=[100.01])
    s2 = co.join_stats([short], truth, open_loop=False)
    assert s2["chunk_count_mismatch"] == 1 and s2["requests_ok"] == 0
    assert not co.holds(s2, 1e9)


def test_vllm_outputs_map_to_wall_clock(tmp_path: Path) -> None:
    d = {
        "wall_minus_perf": 1000.0,
        "schedule_wall": 1005.0,
        "offsets": [0.0, 0.5],
        "request_ids": ["r0", "r1"],
        "start_times": [5.001, 5.5],
        "ttfts": [0.01, 0.02],
        "itls": [[0.002, 0.003], [0.001]],
        "errors": ["", "boom"],
    }
    p = tmp_path / "vllm.json"
    p.write_text(json.dumps(d))
    r0, r1 = co.vllm_requests(p, open_loop=True)
    assert r0.sent == pytest.approx(1005.001)
    assert r0.scheduled == pytest.approx(1005.0)
    np.testing.assert_allclose(r0.chunks, [1005.011, 1005.013, 1005.016])
    assert r0.ok and not r1.ok
    assert r1.scheduled == pytest.approx(1005.5)


@pytest.mark.parametrize("client", ["loadgen-httpx", "loadgen-raw"])
def test_one_loadgen_cell_end_to_end(tmp_path: Path, client: str) -> None:
    cell = co.Cell("grid", "concurrency", 8, 12, 2.0, 5.0, concurrency=4, warmup=2)
    with (tmp_path / "w.log").open("w") as log:
        w = co.Worker(client, log)
        try:
            res = co.run_cell(w, cell, tmp_path)
        finally:
            w.close()
    s = res.stats
    assert "error" not in s, s
    assert s["requests_ok"] == 12 and s["requests_failed"] == 0
    assert s["chunks"] == 12 * 8 and s["chunk_count_mismatch"] == 0
    # loose: the box may be busy; the benchmark measures the real figures. Slightly
    # negative is possible: the mock stamps a chunk after its write returns, and a fast
    # client on the other core may have read it by then.
    assert -0.5 < s["median_arrival_err_ms"] < 50
    assert s["chunk_rate"] > 0 and s["client_cpu_s"] > 0
    (run_dir,) = [p for p in tmp_path.iterdir() if p.name.endswith(client)]
    run = json.loads((run_dir / "run.json").read_text())
    assert run["loadgen"]["transport"] == client.split("-")[1]
    # a pretend vLLM cell, twice as fast, for the ratio columns
    vres = co.CellResult(cell, "vllm", {**s, "chunk_rate": 2 * s["chunk_rate"]})
    doc = {
        "machine": co.machine(),
        "command": "x",
        "args": {"ramp_outputs": [16], "ramp_start": 1000.0, "ttft_ms": 5.0, "itl_ms": 2.0},
        "wall_s": 1.0,
        "limits_ms": [1.0],
        "clients": [client, "vllm"],
        "ramp_sustained": {
            "1.0": {
                client: {"16": {"offered_chunk_rate": 1000.0, "offered_request_rate": 62.5}},
                "vllm": {"16": {"offered_chunk_rate": 2000.0, "offered_request_rate": 125.0}},
            }
        },
        "grid_skipped": [],
        "cells": [
            {"cell": cell.__dict__, "name": cell.name, "client": r.client, **r.stats}
            for r in (res, vres)
        ],
    }
    doc["ratios"] = co.ratios(doc["ramp_sustained"], [res, vres])
    assert doc["ratios"]["sustained_chunk_rate"]["1.0"][client] == {"16": 0.5}
    assert doc["ratios"]["grid_p99"][cell.name][client]["chunk_rate"] == 0.5
    md = co.markdown(doc)
    assert f"{doc['machine']['cpus']}-core" in md and doc["machine"]["cpu_model"] in md
    assert f"| grid-out8-c4 | {client} | 12 |" in md
    assert f"| 16 | {client} | 1,000 (62.50) |" in md
    assert f"| 16 | {client}/vLLM | 0.50 |" in md
    assert f"{client}/vLLM chunks/s" in md and md.count("| 0.50 |") >= 2


def test_clients_option() -> None:
    assert co.parse_clients("vllm,loadgen-raw") == ["loadgen-raw", "vllm"]
    assert co.parse_clients("loadgen") == ["loadgen-httpx"]
    with pytest.raises(Exception, match="unknown client curl"):
        co.parse_clients("loadgen-raw,curl")


@pytest.mark.parametrize(
    "payload",
    [
        # vLLM's completions chunk with continuous usage, its final usage-only chunk, chat
        b'{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"index":0'
        b',"text":" w1","logprobs":null,"finish_reason":null,"stop_reason":null}],"usage":'
        b'{"prompt_tokens":4,"total_tokens":5,"completion_tokens":1}}',
        b'{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[],"usage":'
        b'{"prompt_tokens":4,"total_tokens":20,"completion_tokens":16}}',
        b'{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0'
        b',"delta":{"content":" w9"},"logprobs":null,"finish_reason":"length","stop_reason":null'
        b',"token_ids":null}],"usage":{"prompt_tokens":4,"completion_tokens":9,"total_tokens":13}}',
        # text that looks like keys: escaped quotes never match a key pattern
        b'{"id":"x","choices":[{"index":0,"text":"\\"choices\\":[] \\"finish_reason\\":\\"no\\""'
        b',"finish_reason":null}],"usage":{"completion_tokens":3}}',
    ],
)
def test_byte_scan_agrees_with_json(payload: bytes) -> None:
    from loadgen.http.sse import _scan_chunk

    obj = json.loads(payload)
    got = _scan_chunk(payload)
    assert got is not None
    choices = obj["choices"]
    finish = choices[0].get("finish_reason") if choices else None
    want = (
        obj["usage"]["completion_tokens"],
        obj["usage"].get("prompt_tokens"),
        bool(choices),
        finish,
    )
    assert got == want


@pytest.mark.parametrize(
    "payload",
    [
        b'{"error":{"message":"boom"},"choices":[],"usage":{"completion_tokens":1}}',
        b'{"id":"x","choices":[{"index":0,"text":"a"}],"usage":{"completion_tokens":2,'
        b'"prompt_tokens_details":{"cached_tokens":0}}}',  # nested usage: parse it properly
        b'{"id":"x","choices":[{"index":0,"text":"a"}]}',  # no usage
        b'{"id":"x","choices":[{"index":0,"text":"a"}],"usage":{"completion_tokens":2}',  # torn
        b"[1,2]",
    ],
)
def test_byte_scan_leaves_odd_payloads_to_json(payload: bytes) -> None:
    from loadgen.http.sse import _scan_chunk

    assert _scan_chunk(payload) is None


def test_cell_bound_grows_with_the_schedule() -> None:
    fast = co.Cell("ramp", "poisson", 16, 100, 2.0, 5.0, rate=1000.0)
    slow = co.Cell("ramp", "poisson", 16, 100, 2.0, 5.0, rate=10.0)
    closed = co.Cell("grid", "concurrency", 512, 64, 2.0, 5.0, concurrency=8)
    assert slow.expected_s() == pytest.approx(108 / 10 + 0.037)
    assert closed.expected_s() == pytest.approx(9 * (5 + 512 * 2) / 1e3)
    assert co.cell_bound_s(fast, 4.0, 60.0) == 60.0  # the floor
    assert co.cell_bound_s(slow, 4.0, 1.0) == pytest.approx(4 * slow.expected_s())


def test_a_cell_past_its_bound_is_not_held_and_its_worker_is_killed(tmp_path: Path) -> None:
    """A client that falls behind its schedule must not run on: the cell ends at its bound,
    is recorded as not held, and the stuck worker is gone."""
    import subprocess

    w = object.__new__(co.Worker)  # a worker that never answers
    w.client = "loadgen-raw"
    w.proc = subprocess.Popen(
        ["sleep", "60"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    cell = co.Cell("ramp", "poisson", 16, 4, 2.0, 5.0, rate=100.0, warmup=0)
    res = co.run_cell(w, cell, tmp_path, bound_s=0.5)
    assert res.stats["timed_out"] is True
    assert res.stats["error"].startswith("not held")
    assert not co.holds(res.stats, 1e9)
    assert res.stats["cell_wall_s"] < 10
    assert w.proc.poll() is not None  # killed

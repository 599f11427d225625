"""Per-request metrics and the statistics over them, in ``vllm bench serve``'s vocabulary.

Pure functions (a record or arrays in, numbers out), one metric each, with its unit and
formula in the docstring; ``summary`` applies them to a phase's records. Also the key
vocabulary the summary writes: :data:`BENCH_KEYS` (every key of vllm bench serve's saved
result JSON, same names and units, so existing tooling reads our files) and
:data:`DETAILED_KEYS` (its per-request lists).

Conventions, as vllm's:

- A statistic of no samples is 0.0 (vllm's ``np.mean(x or 0)``): every key is always a
  number; the request counts say whether it means anything.
- Percentiles use ``np.percentile`` (linear interpolation), std is the population std
  (ddof=0). Latencies are reported in ms, rates per second.
- E2E is ``end_s - sent_s``: until the stream's last byte ([DONE]), where vllm stops at the
  last content chunk; the difference is the final usage chunk, well under a ms.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from loadgen.config.scenario import SLO
from loadgen.results.records import RequestRecord
from loadgen.results.server_metrics import SPEC_BENCH_KEYS

DEFAULT_PERCENTILES: tuple[float, ...] = (50.0, 90.0, 95.0, 99.0, 99.9)
# Metrics that get the full mean/median/std/min/max/p* set, all in ms.
LATENCY_METRICS = ("ttft", "tpot", "itl", "itl_token", "e2el")
# vllm's own percentile metrics (--percentile-metrics); client_queue_time and
# e2el_including_client_queue are the ones vllm adds under --max-concurrency.
VLLM_PERCENTILE_METRICS = (
    "ttft",
    "tpot",
    "itl",
    "e2el",
    "client_queue_time",
    "e2el_including_client_queue",
)


def percentile_word(p: float) -> str:
    """vllm's key spelling of a percentile: 99 -> "99", 99.9 -> "99.9"."""
    return str(int(p)) if int(p) == p else str(p)


def _latency_stat_keys(metric: str, percentiles: Iterable[float] = (99.0,)) -> list[str]:
    keys = [f"mean_{metric}_ms", f"median_{metric}_ms", f"std_{metric}_ms"]
    return keys + [f"p{percentile_word(p)}_{metric}_ms" for p in percentiles]


# vllm's keys for how the load was offered (``summary.load_fields`` fills them).
TRAFFIC_KEYS: tuple[str, ...] = (
    "request_rate",
    "burstiness",
    "max_concurrency",
    "ramp_up_strategy",
    "ramp_up_start_rps",
    "ramp_up_end_rps",
)

# The per-request lists: big (one entry per request). ``summarize(detailed=False)`` sets
# them to None (the keys stay).
DETAILED_KEYS: tuple[str, ...] = (
    "input_lens",
    "output_lens",
    "ttfts",
    "itls",
    "latencies",
    "start_times",
    "queue_times",
    "generated_texts",
    "errors",
)

# Every key of vllm bench serve's saved result JSON for a generation run, as the
# installed vllm (0.32, vllm/benchmarks/serve.py) writes it: main_async's result_json
# header (lines ~2254-2285), benchmark()'s `result` dict (lines ~1280-1302), its
# spec_decode_* keys (lines ~1335-1345) and process_one_metric's
# mean/median/std/p99 keys (lines ~1385-1391, default --metric-percentiles 99).
# Left out, because they describe features we don't have: rps_change_events, probe_*,
# diffusion_*, and --metadata's free-form keys. tests/test_metrics.py parses serve.py
# to check this list against the installed source.
BENCH_KEYS: tuple[str, ...] = (
    "date",
    "endpoint_type",
    "backend",
    "label",
    "model_id",
    "tokenizer_id",
    "num_prompts",
    *TRAFFIC_KEYS,
    "duration",
    "completed",
    "failed",
    "total_input_tokens",
    "total_output_tokens",
    "request_throughput",
    "request_goodput",
    "output_throughput",
    "total_token_throughput",
    *DETAILED_KEYS,
    "max_output_tokens_per_s",
    "max_concurrent_requests",
    "rtfx",
    *SPEC_BENCH_KEYS,
    *(k for m in VLLM_PERCENTILE_METRICS for k in _latency_stat_keys(m)),
)


# --- per-request metrics ------------------------------------------------------------------


def ttft_s(r: RequestRecord) -> float | None:
    """Time to first token, s: first_token_s - sent_s (None if no token arrived)."""
    return None if r.first_token_s is None else r.first_token_s - r.sent_s


def e2e_s(r: RequestRecord) -> float | None:
    """End-to-end latency, s: end_s - sent_s (None if the stream never ended)."""
    return None if r.end_s is None else r.end_s - r.sent_s


def dispatch_lag_s(r: RequestRecord) -> float:
    """Dispatch lag, s: sent_s - scheduled_s. Grows when the client itself can't keep up
    (or, with max_concurrency, while a request waits for a slot: vllm's client_queue_time)."""
    return r.sent_s - r.scheduled_s


def chunk_token_counts(r: RequestRecord) -> list[int] | None:
    """Tokens per chunk, or None where they are unknown (a server that counted only the
    total, with no tokenizer to split it: ``chunk_tokens`` is then empty). Never a guess
    of 1 per chunk: under speculative decoding a chunk carries several."""
    if len(r.chunk_tokens) == len(r.chunk_times):
        return list(r.chunk_tokens)
    return None


def output_token_count(r: RequestRecord) -> int | None:
    """Output tokens: the server's usage count, else the sum over chunks; None when
    neither is known (no usage and no tokenizer)."""
    if r.output_tokens is not None:
        return r.output_tokens
    counts = chunk_token_counts(r)
    return None if counts is None else sum(counts)


def tpot_s(r: RequestRecord) -> float | None:
    """Time per output token after the first, s: (E2E - TTFT) / (output_tokens - 1).

    Undefined (None) for output_tokens <= 1, as in vllm (which then leaves the request
    out of TPOT stats but treats its TPOT as 0 for goodput).
    """
    ttft, e2e, n = ttft_s(r), e2e_s(r), output_token_count(r)
    if ttft is None or e2e is None or n is None or n <= 1:
        return None
    return (e2e - ttft) / (n - 1)


def itl_chunk_s(r: RequestRecord) -> list[float]:
    """Inter-chunk latencies, s: gaps between consecutive chunk arrivals.

    vllm's ITL: one sample per chunk after the first (the first chunk's wait is TTFT).
    Under speculative decoding a chunk carries several tokens, so this is the stall a
    reader sees between screen updates, not a per-token time.
    """
    t = r.chunk_times
    return [t[i] - t[i - 1] for i in range(1, len(t))]


def itl_token_s(r: RequestRecord) -> list[float]:
    """Per-token inter-token latencies, s: a chunk of k tokens after gap g gives k samples
    of g/k. Gaps are measured between token-bearing chunks (a 0-token chunk's gap is
    carried into the next one); the first token-bearing chunk is TTFT, not an ITL."""
    out: list[float] = []
    prev: float | None = None
    counts = chunk_token_counts(r)
    if counts is None:  # unknown per chunk: no per-token sample can be stood behind
        return out
    for t, k in zip(r.chunk_times, counts, strict=True):
        if k <= 0:
            continue
        if prev is not None:
            out.extend([(t - prev) / k] * k)
        prev = t
    return out


def tokens_per_chunk(r: RequestRecord) -> list[int]:
    """Output tokens per token-bearing chunk, excluding each request's first chunk.

    The client-side view of acceptance length under speculative decoding (tokens per
    verification step when the server streams one chunk per engine step). The first
    chunk is left out because vLLM's first chunk carries the token sampled by prefill,
    one token whatever the speculation, which would pull every request's mean toward 1.
    """
    counts = [k for k in chunk_token_counts(r) or [] if k > 0]
    return counts[1:]


# --- statistics ---------------------------------------------------------------------------


def distribution(
    values: Sequence[float] | np.ndarray,
    percentiles: Iterable[float] = DEFAULT_PERCENTILES,
    *,
    scale: float = 1.0,
    overwrite: bool = False,
) -> dict[str, float]:
    """mean, std (ddof=0), median, min, max and ``p<word>`` percentiles (np.percentile,
    linear), each times ``scale``. No values: every statistic is 0.0 (vllm's rule).

    Scaling the statistics rather than the values is what vllm does (``np.mean(x) * 1000``)
    and saves a copy. ``overwrite=True`` lets the percentile partition the caller's
    array in place (for the large per-chunk arrays the summary owns).
    """
    a = np.asarray(values, dtype=float)
    ps = list(percentiles)
    if a.size == 0:
        a = np.zeros(1)
    out = {
        "mean": float(np.mean(a)) * scale,
        "std": float(np.std(a)) * scale,
        "median": 0.0,
        "min": float(np.min(a)) * scale,
        "max": float(np.max(a)) * scale,
    }
    qs = np.percentile(a, [50.0, *ps], overwrite_input=overwrite)
    out["median"] = float(qs[0]) * scale
    for p, v in zip(ps, qs[1:], strict=True):
        out[f"p{percentile_word(p)}"] = float(v) * scale
    return out


def latency_keys(
    metric: str,
    values_s: Sequence[float] | np.ndarray,
    percentiles: Iterable[float] = DEFAULT_PERCENTILES,
    *,
    overwrite: bool = False,
) -> dict[str, float]:
    """``{stat}_{metric}_ms`` keys (vllm's spelling) from latencies in seconds."""
    d = distribution(values_s, percentiles, scale=1000.0, overwrite=overwrite)
    return {f"{stat}_{metric}_ms": v for stat, v in d.items()}


def request_throughput(completed: int, duration_s: float) -> float:
    """Completed requests per second: completed / duration."""
    return completed / duration_s


def output_throughput(total_output_tokens: int, duration_s: float) -> float:
    """Output tokens per second: total output tokens of completed requests / duration."""
    return total_output_tokens / duration_s


def total_token_throughput(total_input: int, total_output: int, duration_s: float) -> float:
    """Input plus output tokens of completed requests per second."""
    return (total_input + total_output) / duration_s


def token_buckets(
    chunk_times: np.ndarray, chunk_tokens: np.ndarray, t0: float, n: int
) -> np.ndarray:
    """Output tokens per one-second bucket ``int(t - t0)`` (n buckets; others dropped)."""
    idx = (chunk_times - t0).astype(np.int64)
    keep = (idx >= 0) & (idx < n)
    return np.bincount(idx[keep], weights=chunk_tokens[keep], minlength=n)[:n]


def concurrency_buckets(sent_s: np.ndarray, end_s: np.ndarray, t0: float, n: int) -> np.ndarray:
    """Requests active per bucket: each counts from int(sent - t0) to int(end - t0)."""
    diff = np.zeros(n + 1, dtype=np.int64)
    np.add.at(diff, np.clip((sent_s - t0).astype(np.int64), 0, n), 1)
    np.add.at(diff, np.clip((end_s - t0).astype(np.int64) + 1, 0, n), -1)
    return np.cumsum(diff[:n])


def peak_output_and_concurrency(
    sent_s: np.ndarray,
    end_s: np.ndarray,
    chunk_times: np.ndarray,
    chunk_tokens: np.ndarray,
) -> tuple[float, int]:
    """``max_output_tokens_per_s`` and ``max_concurrent_requests`` as vllm bench serve
    computes them, over completed requests.

    One-second buckets from the earliest send t0 (bucket = int(t - t0); there are
    ceil(last end - t0) + 1). Tokens/s: each chunk adds its tokens to its arrival's
    bucket; the peak bucket is max_output_tokens_per_s (tokens/s). Concurrency: a
    request counts in every bucket from its send's to its end's, inclusive; the peak is
    max_concurrent_requests. One deliberate difference: vllm adds 1 per chunk (its ITL
    list has one entry per chunk), which undercounts multi-token chunks under
    speculative decoding; here a chunk adds the tokens it carried.
    """
    if sent_s.size == 0:
        return 0.0, 0
    t0 = float(np.min(sent_s))
    n = math.ceil(float(np.max(end_s)) - t0) + 1
    tokens = token_buckets(chunk_times, chunk_tokens, t0, n)
    conc = concurrency_buckets(sent_s, end_s, t0, n)
    return float(np.max(tokens)), int(np.max(conc))


def slo_given(slo: SLO | None) -> bool:
    """Whether any per-request bound is set (vllm reports request_goodput None without
    --goodput). A percentile ITL bound judges levels only, so it alone gives no goodput."""
    return slo is not None and any(v is not None for v in slo.request_limits())


def meets_slo(slo: SLO, *, ttft: float, tpot: float | None, max_itl: float, e2e: float) -> bool:
    """Whether one completed request meets every per-request bound (inputs in seconds;
    the bounds are :meth:`SLO.request_limits`).

    As vllm: a value equal to its SLO passes; TPOT of a request with <= 1 output token
    counts as 0. vllm has no ITL SLO; ours bounds the request's longest inter-chunk gap
    (the worst stall its reader saw), which per-token averaging would hide.
    """
    ttft_ms, tpot_ms, itl_ms, e2e_ms = slo.request_limits()
    checks = (
        (ttft_ms, ttft),
        (tpot_ms, 0.0 if tpot is None else tpot),
        (itl_ms, max_itl),
        (e2e_ms, e2e),
    )
    return all(limit is None or value * 1000.0 <= limit for limit, value in checks)

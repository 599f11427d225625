"""Request records -> one flat summary per phase, in ``vllm bench serve``'s vocabulary.

One metric, one small function, with its unit and formula in the docstring. The summary
carries every key of ``vllm bench serve``'s saved result JSON (:data:`BENCH_KEYS`, same
names and units, so existing tooling reads our files) plus our own keys for the question
this project asks: what speculative decoding does to latency at each load level.

Conventions, decided once:

- Warmup records are dropped on arrival; they exist in no count and no statistic.
- Failed records (``error is not None``) are counted (``failed``, ``failed_by_kind``)
  and kept out of every latency statistic, throughput and goodput, as vllm does.
  Dispatch lag is the one exception: it is the client's own lateness, and a request
  that then failed was still sent late (excluding failures would hide client
  saturation exactly when connections fail).
- A statistic of no samples is 0.0, as vllm's ``np.mean(x or 0)``: every key is
  always a number. ``completed`` (and the per-request lists) say whether it means anything.
- Percentiles use ``np.percentile`` (linear interpolation), std is the population
  std (ddof=0), as vllm. Latencies are reported in ms, rates per second.
- E2E is ``end_s - sent_s``: until the stream's last byte ([DONE]), where vllm stops
  at the last content chunk; the difference is the final usage chunk, well under a ms.
"""

from __future__ import annotations

import json
import math
import operator
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from loadgen.config.scenario import SLO
from loadgen.config.shapes.base import traffic_fields
from loadgen.results.records import RequestRecord
from loadgen.results.server_metrics import GAUGE_SUMMARY_KEYS, SPEC_BENCH_KEYS, SpecDecodeStats

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
    "request_rate",
    "burstiness",
    "max_concurrency",
    "ramp_up_strategy",
    "ramp_up_start_rps",
    "ramp_up_end_rps",
    "duration",
    "completed",
    "failed",
    "total_input_tokens",
    "total_output_tokens",
    "request_throughput",
    "request_goodput",
    "output_throughput",
    "total_token_throughput",
    "input_lens",
    "output_lens",
    "ttfts",
    "itls",
    "latencies",
    "start_times",
    "queue_times",
    "generated_texts",
    "errors",
    "max_output_tokens_per_s",
    "max_concurrent_requests",
    "rtfx",
    *SPEC_BENCH_KEYS,
    *(k for m in VLLM_PERCENTILE_METRICS for k in _latency_stat_keys(m)),
)

# The per-request lists: big (one entry per request), so results.py may keep them out
# of CSV rows. ``summarize(detailed=False)`` sets them to None (the keys stay).
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


def chunk_token_counts(r: RequestRecord) -> list[int]:
    """Tokens per chunk; 1 per chunk if the record has no (or mismatched) counts."""
    if len(r.chunk_tokens) == len(r.chunk_times):
        return list(r.chunk_tokens)
    return [1] * len(r.chunk_times)


def output_token_count(r: RequestRecord) -> int:
    """Output tokens: the server's usage count, else the sum over chunks."""
    if r.output_tokens is not None:
        return r.output_tokens
    return sum(chunk_token_counts(r))


def tpot_s(r: RequestRecord) -> float | None:
    """Time per output token after the first, s: (E2E - TTFT) / (output_tokens - 1).

    Undefined (None) for output_tokens <= 1, as in vllm (which then leaves the request
    out of TPOT stats but treats its TPOT as 0 for goodput).
    """
    ttft, e2e, n = ttft_s(r), e2e_s(r), output_token_count(r)
    if ttft is None or e2e is None or n <= 1:
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
    for t, k in zip(r.chunk_times, chunk_token_counts(r), strict=True):
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
    counts = [k for k in chunk_token_counts(r) if k > 0]
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
    """Whether any SLO is set (vllm reports request_goodput None without --goodput)."""
    return slo is not None and any(
        v is not None for v in (slo.ttft_ms, slo.tpot_ms, slo.itl_ms, slo.e2e_ms)
    )


def meets_slo(slo: SLO, *, ttft: float, tpot: float | None, max_itl: float, e2e: float) -> bool:
    """Whether one completed request meets every SLO set (all inputs in seconds).

    As vllm: a value equal to its SLO passes; TPOT of a request with <= 1 output token
    counts as 0. vllm has no ITL SLO; ours bounds the request's longest inter-chunk gap
    (the worst stall its reader saw), which per-token averaging would hide.
    """
    checks = (
        (slo.ttft_ms, ttft),
        (slo.tpot_ms, 0.0 if tpot is None else tpot),
        (slo.itl_ms, max_itl),
        (slo.e2e_ms, e2e),
    )
    return all(limit is None or value * 1000.0 <= limit for limit, value in checks)


# --- load description -----------------------------------------------------------------------


def load_fields(load: BaseModel | Mapping[str, Any] | None) -> dict[str, Any]:
    """vllm's traffic keys (request_rate, burstiness, max_concurrency, ramp_up_*) and ours
    (load_shape, load_level) from a scenario load spec; each shape defines its own
    (``loadgen.config.shapes``: ``traffic_fields`` and the shape's ``traffic``)."""
    if load is None:
        return traffic_fields({})
    return traffic_fields(load.model_dump() if isinstance(load, BaseModel) else dict(load))


# --- accumulation ---------------------------------------------------------------------------


class _RequestColumns:
    """Records in, one at a time; the flat summary out. The shared half of
    :class:`SummaryAccumulator` and :class:`StreamingSummary`.

    Keeps each measured request's scalars in typed arrays (about 70 bytes a request), never
    the record, so the caller can drop each record after :meth:`add`. Where the per-chunk
    data (arrival times, token counts) lives is the subclass's business: it hands them to
    :meth:`summary` in blocks (:meth:`_chunk_blocks`), from which per-chunk and per-token
    ITLs are derived at :meth:`summary` time (which may be called again after more adds).
    """

    def __init__(self) -> None:
        self._rid = array("q")
        self._sent = array("d")
        self._lag = array("d")
        self._ttft = array("d")  # NaN: no first token
        self._e2e = array("d")  # NaN: no end
        self._out = array("q")  # output tokens (0 for failed, as vllm's output_lens)
        self._prompt = array("q")
        self._ok = array("b")
        self._max_itl = array("d")  # longest inter-chunk gap, 0 without one
        self._failed_by_kind: Counter[str] = Counter()
        # sizes of the summary's per-chunk sample arrays, so they are allocated once
        self._sizes = _SampleSizes()

    def __len__(self) -> int:
        return len(self._sent)

    def nbytes(self) -> int:
        """Bytes held in the typed arrays (what grows with the request count)."""
        return sum(len(a) * a.itemsize for a in vars(self).values() if isinstance(a, array))

    def add(self, r: RequestRecord) -> None:
        """Take one record (warmup records are ignored)."""
        if r.warmup:
            return
        i = len(self._sent)
        ttft, e2e = ttft_s(r), e2e_s(r)
        self._rid.append(r.request_id)
        self._sent.append(r.sent_s)
        self._lag.append(dispatch_lag_s(r))
        self._ttft.append(math.nan if ttft is None else ttft)
        self._e2e.append(math.nan if e2e is None else e2e)
        self._prompt.append(r.prompt_tokens or 0)
        self._ok.append(1 if r.ok else 0)
        self._out.append(output_token_count(r) if r.ok else 0)
        t = r.chunk_times
        self._max_itl.append(max(map(operator.sub, t[1:], t[:-1])) if len(t) > 1 else 0.0)
        if r.ok:
            self._sizes.add(t, r.chunk_tokens)
        else:
            self._failed_by_kind[r.error_kind or "other"] += 1
        self._add_chunks(r, i)

    def extend(self, records: Iterable[RequestRecord]) -> None:
        for r in records:
            self.add(r)

    def _add_chunks(self, r: RequestRecord, i: int) -> None:
        """Keep what the summary will need of record ``i``'s chunks (and its error)."""
        raise NotImplementedError

    def _chunk_blocks(self, errors: dict[int, str] | None) -> Iterator[_ChunkBlock]:
        """Every measured request's chunks, in order, a block of requests at a time; fills
        ``errors`` (index -> message of each failed request) when given."""
        raise NotImplementedError

    def summary(
        self,
        *,
        duration_s: float,
        slo: SLO | None = None,
        phase: str = "",
        load: BaseModel | Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        percentiles: Iterable[float] = DEFAULT_PERCENTILES,
        spec_decode: SpecDecodeStats | None = None,
        server_gauges: Mapping[str, Any] | None = None,
        detailed: bool = True,
    ) -> dict[str, Any]:
        """The flat summary; see :func:`summarize`."""
        if not duration_s > 0:
            raise ValueError(f"duration_s must be > 0, got {duration_s}")
        # p99 always: it is one of vllm's default keys.
        ps = sorted({float(p) for p in percentiles} | {99.0})
        for p in ps:
            if not 0 <= p <= 100:
                raise ValueError(f"percentiles: {p} is not in [0, 100]")

        n = len(self._sent)
        ok = np.array(self._ok, dtype=bool) if n else np.zeros(0, dtype=bool)
        sent = _np(self._sent)
        lag = _np(self._lag)
        ttft = _np(self._ttft)
        e2e = _np(self._e2e)
        out = np.array(self._out, dtype=np.int64)
        prompt = np.array(self._prompt, dtype=np.int64)
        max_itl = _np(self._max_itl)

        completed = int(ok.sum())
        failed = n - completed
        total_in = int(prompt[ok].sum())
        total_out = int(out[ok].sum())

        ttft_ok = ttft[ok & ~np.isnan(ttft)]
        e2e_ok = e2e[ok & ~np.isnan(e2e)]
        has_tpot = ok & (out > 1) & ~np.isnan(ttft) & ~np.isnan(e2e)
        tpot = (e2e[has_tpot] - ttft[has_tpot]) / (out[has_tpot] - 1)

        # completed requests with an end: the ones the peak buckets see, as vllm's
        peak_ok = ok & ~np.isnan(e2e)
        if peak_ok.any():
            t0 = float(np.min(sent[peak_ok]))
            nb = math.ceil(float(np.max((sent + e2e)[peak_ok])) - t0) + 1
        else:
            t0, nb = 0.0, 0
        errors: dict[int, str] | None = {} if detailed else None
        chunks = _chunk_pass(self._chunk_blocks(errors), self._sizes, ok, peak_ok, t0, nb, detailed)
        if nb:
            conc = concurrency_buckets(sent[peak_ok], (sent + e2e)[peak_ok], t0, nb)
            max_tok_s, max_conc = float(np.max(chunks.tokens_per_s)), int(np.max(conc))
        else:
            max_tok_s, max_conc = 0.0, 0

        # goodput
        good: int | None = None
        if slo is not None and slo_given(slo):
            good = 0
            for i in np.flatnonzero(ok):
                if np.isnan(ttft[i]) or np.isnan(e2e[i]):
                    continue
                tp = (e2e[i] - ttft[i]) / (out[i] - 1) if out[i] > 1 else None
                if meets_slo(slo, ttft=ttft[i], tpot=tp, max_itl=max_itl[i], e2e=e2e[i]):
                    good += 1

        s: dict[str, Any] = {
            "date": datetime.now().strftime("%Y%m%d-%H%M%S"),
            "endpoint_type": "openai",
            "backend": "openai",
            "label": None,
            "model_id": None,
            "tokenizer_id": None,
            "num_prompts": n,
        }
        lf = load_fields(load)
        for k in (
            "request_rate",
            "burstiness",
            "max_concurrency",
            "ramp_up_strategy",
            "ramp_up_start_rps",
            "ramp_up_end_rps",
        ):
            s[k] = lf[k]
        s.update(
            duration=float(duration_s),
            completed=completed,
            failed=failed,
            total_input_tokens=total_in,
            total_output_tokens=total_out,
            request_throughput=request_throughput(completed, duration_s),
            request_goodput=None if good is None else good / duration_s,
            output_throughput=output_throughput(total_out, duration_s),
            total_token_throughput=total_token_throughput(total_in, total_out, duration_s),
        )
        if errors is not None:
            s["input_lens"] = prompt.tolist()
            s["output_lens"] = out.tolist()
            s["ttfts"] = np.nan_to_num(ttft, nan=0.0).tolist()
            s["itls"] = chunks.itls
            s["latencies"] = np.nan_to_num(e2e, nan=0.0).tolist()
            s["start_times"] = sent.tolist()
            s["queue_times"] = lag.tolist()
            s["generated_texts"] = [""] * n
            s["errors"] = [errors.get(i, "") for i in range(n)]
        else:
            s.update(dict.fromkeys(DETAILED_KEYS))
        s["max_output_tokens_per_s"] = max_tok_s
        s["max_concurrent_requests"] = max_conc
        s["rtfx"] = 0.0
        if spec_decode is not None:
            s.update(spec_decode.as_bench_keys())
        else:
            s.update(dict.fromkeys(SPEC_BENCH_KEYS))

        s.update(latency_keys("ttft", ttft_ok, ps))
        s.update(latency_keys("tpot", tpot, ps))
        # each per-chunk sample array is dropped once used: the peak holds one at a time
        # with its std temporary, plus the ones not yet used
        itl_d = distribution(chunks.itl, ps, scale=1000.0, overwrite=True)
        chunks.itl = _NONE
        s.update({f"{stat}_itl_ms": v for stat, v in itl_d.items()})
        if chunks.itl_token is None:  # one token per chunk: the same samples
            s.update({f"{stat}_itl_token_ms": v for stat, v in itl_d.items()})
        else:
            s.update(latency_keys("itl_token", chunks.itl_token, ps, overwrite=True))
            chunks.itl_token = _NONE
        s.update(latency_keys("e2el", e2e_ok, ps))
        # vllm's --max-concurrency extras: waiting for a slot is our dispatch lag
        lag_ok = lag[ok]
        s.update(latency_keys("client_queue_time", lag_ok, ps))
        s.update(latency_keys("e2el_including_client_queue", (e2e + lag)[peak_ok], ps))

        # ours
        s["phase"] = phase
        s["load_shape"] = lf["load_shape"]
        s["load_level"] = lf["load_level"]
        if chunks.token_k is None:  # all 1s: the statistics of one 1 are those of n 1s
            k_samples = np.ones(min(self._sizes.token_k, 1))
        else:
            k_samples, chunks.token_k = chunks.token_k, _NONE
        tpc_d = distribution(k_samples, (10.0, 90.0), overwrite=True)
        del k_samples
        s["mean_tokens_per_chunk"] = tpc_d["mean"]
        s["median_tokens_per_chunk"] = tpc_d["median"]
        s["p10_tokens_per_chunk"] = tpc_d["p10"]
        s["p90_tokens_per_chunk"] = tpc_d["p90"]
        lag_d = distribution(lag * 1000.0, (50.0, 99.0))
        s["mean_dispatch_lag_ms"] = lag_d["mean"]
        s["p50_dispatch_lag_ms"] = lag_d["p50"]
        s["p99_dispatch_lag_ms"] = lag_d["p99"]
        s["max_dispatch_lag_ms"] = lag_d["max"]
        s["goodput_fraction"] = None if good is None else (good / n if n else 0.0)
        s["failed_by_kind"] = dict(sorted(self._failed_by_kind.items()))
        gauges = dict(server_gauges or {})
        for k in GAUGE_SUMMARY_KEYS:
            s[k] = gauges.get(k)
        s["complete"] = True
        if extra:
            s.update(extra)
        return s


class SummaryAccumulator(_RequestColumns):
    """Records in, the summary out, everything in memory: per-request scalars plus each
    chunk's (arrival time, token count), 12 bytes a chunk. For records already in a list
    or read back from a file (:func:`summarize`, reports); a run uses
    :class:`StreamingSummary`, which keeps no per-chunk data while requests run.
    """

    def __init__(self) -> None:
        super().__init__()
        self._chunk_start = array("q", [0])  # request i's chunks: [start[i], start[i+1])
        self._chunk_t = array("d")
        self._chunk_k = array("i")
        self._errors: dict[int, str] = {}

    def _add_chunks(self, r: RequestRecord, i: int) -> None:
        self._chunk_t.extend(r.chunk_times)
        self._chunk_k.extend(chunk_token_counts(r))
        self._chunk_start.append(len(self._chunk_t))
        if not r.ok:
            self._errors[i] = r.error or ""

    def _chunk_blocks(self, errors: dict[int, str] | None) -> Iterator[_ChunkBlock]:
        """Blocks of about ``_BLOCK_CHUNKS`` chunks. Slicing an ``array`` copies, so no
        numpy view pins the arrays (they can still grow after a summary)."""
        if errors is not None:
            errors.update(self._errors)
        starts = np.array(self._chunk_start, dtype=np.int64)
        n = len(self)
        lo = 0
        while lo < n:
            hi = int(np.searchsorted(starts, starts[lo] + _BLOCK_CHUNKS, side="right")) - 1
            hi = min(max(hi, lo + 1), n)
            a, b = int(starts[lo]), int(starts[hi])
            yield _ChunkBlock(
                lo=lo,
                ct=np.frombuffer(self._chunk_t[a:b], dtype=np.float64),
                ck=np.frombuffer(self._chunk_k[a:b], dtype=np.intc),
                counts=np.diff(starts[lo : hi + 1]),
            )
            lo = hi


class StreamingSummary(_RequestColumns):
    """The run's summary sink: per-request scalars in memory (about 70 bytes a request),
    per-chunk data read back from the phase's ``requests.jsonl`` at summary time.

    A phase's records are on disk anyway (the runner writes each before the sinks see
    it), so holding their chunk times in memory as well would only make a long run's
    memory grow with every token. :meth:`summary` makes one streaming pass over the file,
    a block of requests at a time, from ``offset`` (where this phase's records begin),
    and gives exactly what :class:`SummaryAccumulator` gives for the same records: the
    per-chunk arrays come out of ``json.loads`` bit for bit as they went in.
    """

    def __init__(self, path: Path, offset: int = 0) -> None:
        super().__init__()
        self.path = Path(path)
        self.offset = offset

    def _add_chunks(self, r: RequestRecord, i: int) -> None:
        pass  # on disk already

    def _chunk_blocks(self, errors: dict[int, str] | None) -> Iterator[_ChunkBlock]:
        n = len(self)
        i = 0
        block = _BlockBuilder(0)
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            for line in f:
                if i >= n:
                    break
                if not line.strip():
                    continue
                try:
                    d = json.loads(line.decode())
                except ValueError:  # a torn line (disk full, a crash): add() never saw it
                    continue
                if not isinstance(d, dict) or d.get("warmup"):
                    continue
                if d.get("request_id") != self._rid[i]:
                    continue  # a line add() never took (rejected); the order is the same
                times = d.get("chunk_times") or []
                tokens = d.get("chunk_tokens") or []
                block.add(times, tokens if len(tokens) == len(times) else [1] * len(times))
                if errors is not None and d.get("error") is not None:
                    errors[i] = d["error"]
                i += 1
                if len(block.ct) >= _BLOCK_CHUNKS:
                    yield block.done()
                    block = _BlockBuilder(i)
        if i < n:
            raise RuntimeError(
                f"{self.path}: {i} of the {n} measured records found: the file changed under "
                "the run"
            )
        if block.counts:
            yield block.done()


class _BlockBuilder:
    """Collects requests' chunks into one :class:`_ChunkBlock`."""

    def __init__(self, lo: int) -> None:
        self.lo = lo
        self.ct = array("d")
        self.ck = array("i")
        self.counts = array("q")

    def add(self, times: list[float], tokens: list[int]) -> None:
        self.ct.extend(times)
        self.ck.extend(tokens)
        self.counts.append(len(times))

    def done(self) -> _ChunkBlock:
        return _ChunkBlock(
            lo=self.lo,
            ct=np.frombuffer(self.ct, dtype=np.float64) if self.ct else np.zeros(0),
            ck=np.frombuffer(self.ck, dtype=np.intc) if self.ck else np.zeros(0, np.intc),
            counts=np.frombuffer(self.counts, dtype=np.int64),
        )


@dataclass(slots=True)
class _ChunkBlock:
    """The chunks of requests ``lo, lo + 1, ...`` (one per entry of ``counts``, which says
    how many chunks each had), concatenated in request order."""

    lo: int
    ct: np.ndarray  # arrival times, float64
    ck: np.ndarray  # tokens per chunk, intc
    counts: np.ndarray  # chunks per request, int64


@dataclass(slots=True)
class _ChunkStats:
    """What the summary needs from the per-chunk data (completed requests only)."""

    itl: np.ndarray  # every inter-chunk gap, s
    # per-token ITL: gap g before a k-token chunk -> k samples of g/k (None: same as itl)
    itl_token: np.ndarray | None
    token_k: np.ndarray | None  # tokens of each non-first token-bearing chunk (None: all 1)
    tokens_per_s: np.ndarray  # output tokens per one-second bucket
    itls: list[list[float]] | None  # per request (failed too), for vllm's "itls"


class _SampleSizes:
    """How many ITL, per-token ITL and tokens-per-chunk samples the completed requests
    added so far give: the chunk pass then fills arrays allocated once at their final size
    (growing them would copy, and leave the allocator holding the old blocks)."""

    __slots__ = ("itl", "itl_token", "token_k")

    def __init__(self) -> None:
        self.itl = self.itl_token = self.token_k = 0

    def add(self, times: list[float], tokens: list[int]) -> None:
        """One completed request's chunks (tokens as recorded; 1 each if they don't match)."""
        n = len(times)
        if n == 0:
            return
        self.itl += n - 1
        if len(tokens) != n:
            self.itl_token += n - 1
            self.token_k += n - 1
            return
        if min(tokens) < 0:
            tokens = [k if k > 0 else 0 for k in tokens]
        zeros = tokens.count(0)
        if zeros == n:
            return
        first = tokens[0] if tokens[0] > 0 else next(k for k in tokens if k > 0)
        self.itl_token += sum(tokens) - first
        self.token_k += n - zeros - 1

    def one_token_chunks(self) -> bool:
        """Whether every completed request's chunks after its first carried exactly one
        token. Each request adds at most n - 1 tokens-per-chunk samples (n - 1 only
        without 0-token chunks) and at least that many tokens after the first (exactly
        n - 1 only if each chunk carried one), so equal sums mean every request did."""
        return self.itl == self.itl_token == self.token_k


def _chunk_pass(
    blocks: Iterable[_ChunkBlock],
    sizes: _SampleSizes,
    ok: np.ndarray,
    peak_ok: np.ndarray,
    t0: float,
    nb: int,
    detailed: bool,
) -> _ChunkStats:
    """One pass over the chunk blocks, filling sample arrays allocated at their final size.

    When every token-bearing chunk after a request's first carried one token (no
    speculation), the per-token ITLs are the per-chunk ones, value for value and in the
    same order, and every tokens-per-chunk sample is 1: neither array is built
    (``itl_token`` and ``token_k`` come back None).
    """
    alias = sizes.one_token_chunks()
    itl = _Filler(np.empty(sizes.itl))
    itl_token = None if alias else _Filler(np.empty(sizes.itl_token))
    token_k = None if alias else _Filler(np.empty(sizes.token_k, dtype=np.intc))
    tokens = np.zeros(nb)
    itls: list[list[float]] | None = [] if detailed else None
    for b in blocks:
        ct, ck = b.ct, b.ck
        req = np.repeat(np.arange(b.lo, b.lo + b.counts.size), b.counts)
        first = np.ones(ct.size, dtype=bool)
        first[1:] = req[1:] != req[:-1]
        gaps = np.diff(ct, prepend=ct[:1])
        itl.put(gaps[ok[req] & ~first])
        if itls is not None:
            cuts = np.cumsum(b.counts)[:-1]
            itls.extend(g[1:].tolist() for g in np.split(gaps, cuts))
        if itl_token is not None and token_k is not None:
            # token-bearing chunks: per-token ITL and tokens per chunk
            tb = ck > 0
            t_tb, k_tb, r_tb = ct[tb], ck[tb], req[tb]
            first_tb = np.ones(t_tb.size, dtype=bool)
            first_tb[1:] = r_tb[1:] != r_tb[:-1]
            sel = ok[r_tb] & ~first_tb
            g, k = np.diff(t_tb, prepend=t_tb[:1])[sel], k_tb[sel]
            itl_token.put(np.repeat(g / k, k))
            token_k.put(k)
        if nb:
            pk = peak_ok[req]
            tokens += token_buckets(ct[pk], ck[pk], t0, nb)
    return _ChunkStats(
        itl=itl.done(),
        itl_token=None if itl_token is None else itl_token.done(),
        token_k=None if token_k is None else token_k.done(),
        tokens_per_s=tokens,
        itls=itls,
    )


class _Filler:
    """Appends into a preallocated array; the count must come out exact."""

    __slots__ = ("a", "n")

    def __init__(self, a: np.ndarray) -> None:
        self.a = a
        self.n = 0

    def put(self, values: np.ndarray) -> None:
        end = self.n + values.size
        if end > self.a.size:
            raise RuntimeError("chunk data changed between add() and summary()")
        self.a[self.n : end] = values
        self.n = end

    def done(self) -> np.ndarray:
        if self.n != self.a.size:
            raise RuntimeError("chunk data changed between add() and summary()")
        return self.a


_NONE = np.zeros(0)


# Chunks per block of the summary's chunk pass: bounds its temporaries, about 130 bytes a
# chunk of the block (measured: a 1 << 20 block put a 60 MB spike on a 30k-request summary).
_BLOCK_CHUNKS = 1 << 16


def _np(a: array) -> np.ndarray:
    """A float copy (a view would pin the array: it could not grow on the next add)."""
    return np.array(a, dtype=np.float64) if len(a) else np.zeros(0)


def summarize(
    records: Iterable[RequestRecord],
    *,
    duration_s: float,
    slo: SLO | None = None,
    phase: str = "",
    load: BaseModel | Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    percentiles: Iterable[float] = DEFAULT_PERCENTILES,
    spec_decode: SpecDecodeStats | None = None,
    server_gauges: Mapping[str, Any] | None = None,
    detailed: bool = True,
) -> dict[str, Any]:
    """One phase's flat summary: every :data:`BENCH_KEYS` key plus ours.

    ``duration_s`` is the phase's measured wall time (the throughput denominator).
    ``extra`` is merged last, so the caller sets ``label``, ``model_id``,
    ``tokenizer_id``, ``backend``, ``complete`` and the like there. ``spec_decode``
    (from server_metrics.spec_decode_delta) fills the spec_decode_* keys, None leaves
    them None; ``server_gauges`` (server_metrics.summarize_samples) fills the gauge keys.
    ``percentiles`` is vllm's --metric-percentiles (99 is always added).
    """
    acc = SummaryAccumulator()
    acc.extend(records)
    return acc.summary(
        duration_s=duration_s,
        slo=slo,
        phase=phase,
        load=load,
        extra=extra,
        percentiles=percentiles,
        spec_decode=spec_decode,
        server_gauges=server_gauges,
        detailed=detailed,
    )

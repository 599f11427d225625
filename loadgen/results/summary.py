"""Request records -> one flat summary per phase, in ``vllm bench serve``'s vocabulary.

The summary carries every key of ``vllm bench serve``'s saved result JSON
(:data:`~loadgen.results.stats.BENCH_KEYS`) plus our own keys for the question this project
asks: what speculative decoding does to latency at each load level. The metrics themselves
are the pure functions of :mod:`loadgen.results.stats`; this module feeds them a phase's
records without holding the records: :class:`SummaryAccumulator` (records in memory or read
back from a file) and :class:`StreamingSummary` (the run's sink, which reads the per-chunk
data back from ``requests.jsonl`` at the end of the phase).

Conventions, decided once:

- Warmup records are dropped on arrival; they exist in no count and no statistic.
- Failed records (``error is not None``) are counted (``failed``, ``failed_by_kind``)
  and kept out of every latency statistic, throughput and goodput, as vllm does.
  Dispatch lag is the one exception: it is the client's own lateness, and a request
  that then failed was still sent late (excluding failures would hide client
  saturation exactly when connections fail).
- The statistics follow vllm's rules (see :mod:`loadgen.results.stats`): 0.0 for no
  samples, linear percentiles, population std, ms and per second.

What a summary keeps in memory per request and per chunk, and the end-of-phase peak, are
measured in ``benchmarks/results/memory_soak.md``.
"""

from __future__ import annotations

import json
import math
import operator
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypedDict, Unpack

import numpy as np
from pydantic import BaseModel

from loadgen.config.scenario import SLO
from loadgen.config.shapes.base import traffic_fields
from loadgen.results.records import RequestRecord
from loadgen.results.server_metrics import GAUGE_SUMMARY_KEYS, SPEC_BENCH_KEYS, SpecDecodeStats
from loadgen.results.stats import (
    DEFAULT_PERCENTILES,
    DETAILED_KEYS,
    TRAFFIC_KEYS,
    chunk_token_counts,
    concurrency_buckets,
    dispatch_lag_s,
    distribution,
    e2e_s,
    latency_keys,
    meets_slo,
    output_throughput,
    output_token_count,
    request_throughput,
    slo_given,
    token_buckets,
    total_token_throughput,
    ttft_s,
)
from loadgen.results.workload import WorkloadColumns

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

    Keeps each measured request's scalars in typed arrays, never the record, so the caller
    can drop each record after :meth:`add`. Where the per-chunk data (arrival times, token
    counts) lives is the subclass's business: it hands them to :meth:`summary` in blocks
    (:meth:`_chunk_blocks`), from which per-chunk and per-token ITLs are derived at
    :meth:`summary` time (which may be called again after more adds).
    """

    def __init__(self) -> None:
        self._rid = array("q")
        self._sent = array("d")
        self._lag = array("d")
        self._ttft = array("d")  # NaN: no first token
        self._e2e = array("d")  # NaN: no end
        self._out = array("q")  # output tokens (0 for failed, as vllm's output_lens; -1 unknown)
        self._prompt = array("q")
        self._ok = array("b")
        self._max_itl = array("d")  # longest inter-chunk gap, 0 without one
        self._failed_by_kind: Counter[str] = Counter()
        # completed requests whose output token count / per-chunk counts are unknown
        self._unknown = _Unknown()
        # sizes of the summary's per-chunk sample arrays, so they are allocated once
        self._sizes = _SampleSizes()
        self._workload = WorkloadColumns()  # output lengths, server figures, groups

    def __len__(self) -> int:
        return len(self._sent)

    def nbytes(self) -> int:
        """Bytes held in the typed arrays (what grows with the request count)."""
        arrays = [*vars(self).values(), *vars(self._workload).values()]
        return sum(len(a) * a.itemsize for a in arrays if isinstance(a, array))

    def add(self, r: RequestRecord) -> None:
        """Take one record (warmup records are ignored)."""
        if r.warmup:
            return
        i = len(self._sent)
        self._workload.add(r, i)
        ttft, e2e = ttft_s(r), e2e_s(r)
        self._rid.append(r.request_id)
        self._sent.append(r.sent_s)
        self._lag.append(dispatch_lag_s(r))
        self._ttft.append(math.nan if ttft is None else ttft)
        self._e2e.append(math.nan if e2e is None else e2e)
        self._prompt.append(r.prompt_tokens or 0)
        self._ok.append(1 if r.ok else 0)
        out = output_token_count(r) if r.ok else 0
        self._out.append(-1 if out is None else out)
        t = r.chunk_times
        self._max_itl.append(max(map(operator.sub, t[1:], t[:-1])) if len(t) > 1 else 0.0)
        if r.ok:
            tokens = chunk_token_counts(r)
            self._sizes.add(t, tokens)
            self._unknown.add(out is None, tokens is None)
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
        """The flat summary; see :func:`summarize`. Keys come in vllm's order, then ours."""
        if not duration_s > 0:
            raise ValueError(f"duration_s must be > 0, got {duration_s}")
        ps = _percentile_list(percentiles)
        c = self._columns()
        errors: dict[int, str] | None = {} if detailed else None
        chunks = _chunk_pass(
            self._chunk_blocks(errors), self._sizes, c.ok, c.peak_ok, c.t0, c.nb, detailed
        )
        good = _good_count(slo, c) if slo is not None and slo_given(slo) else None
        lf = load_fields(load)

        s = _traffic_keys(c.n, lf)
        s.update(_count_keys(c, duration_s, good))
        if errors is not None:
            s.update(_per_request_lists(c, chunks.itls, errors))
        else:
            s.update(dict.fromkeys(DETAILED_KEYS))
        s.update(_peak_keys(c, chunks.tokens_per_s))
        s["rtfx"] = 0.0
        if spec_decode is not None:
            s.update(spec_decode.as_bench_keys())
        else:
            s.update(dict.fromkeys(SPEC_BENCH_KEYS))
        s.update(_latency_stats(c, chunks, ps))

        # ours
        s["phase"] = phase
        s["load_shape"] = lf["load_shape"]
        s["load_level"] = lf["load_level"]
        s.update(_tokens_per_chunk_keys(chunks, self._sizes))
        s.update(self._unknown.keys())
        s.update(_dispatch_lag_keys(c.lag))
        s["goodput_fraction"] = None if good is None else (good / c.n if c.n else 0.0)
        s["single_read_requests"] = single_read_count(c.ok, c.out, c.max_itl)
        s["failed_by_kind"] = dict(sorted(self._failed_by_kind.items()))
        gauges = dict(server_gauges or {})
        for k in GAUGE_SUMMARY_KEYS:
            s[k] = gauges.get(k)
        has_tpot = c.ok & (c.out > 1) & ~np.isnan(c.ttft) & ~np.isnan(c.e2e)
        tpot = np.full(c.n, np.nan)
        tpot[has_tpot] = (c.e2e[has_tpot] - c.ttft[has_tpot]) / (c.out[has_tpot] - 1)
        prompt = np.where(c.prompt > 0, c.prompt, np.nan)
        s.update(self._workload.summary(c.ok, c.out, prompt, c.ttft, tpot))
        s["complete"] = True
        self._unknown.blank(s, int(c.ok.sum()), slo)
        if extra:
            s.update(extra)
        return s

    def _columns(self) -> _Columns:
        n = len(self)
        ok = np.array(self._ok, dtype=bool) if n else np.zeros(0, dtype=bool)
        sent, e2e = _np(self._sent), _np(self._e2e)
        peak_ok = ok & ~np.isnan(e2e)
        if peak_ok.any():
            t0 = float(np.min(sent[peak_ok]))
            nb = math.ceil(float(np.max((sent + e2e)[peak_ok])) - t0) + 1
        else:
            t0, nb = 0.0, 0
        return _Columns(
            n=n,
            ok=ok,
            sent=sent,
            lag=_np(self._lag),
            ttft=_np(self._ttft),
            e2e=e2e,
            out=np.array(self._out, dtype=np.int64),
            prompt=np.array(self._prompt, dtype=np.int64),
            max_itl=_np(self._max_itl),
            peak_ok=peak_ok,
            t0=t0,
            nb=nb,
        )


def _percentile_list(percentiles: Iterable[float]) -> list[float]:
    """Sorted, with p99 always (it is one of vllm's default keys); each in [0, 100]."""
    ps = sorted({float(p) for p in percentiles} | {99.0})
    for p in ps:
        if not 0 <= p <= 100:
            raise ValueError(f"percentiles: {p} is not in [0, 100]")
    return ps


@dataclass(slots=True)
class _Columns:
    """The per-request arrays as numpy (copies: the typed arrays may still grow), and the
    one-second window of vllm's peak buckets."""

    n: int
    ok: np.ndarray
    sent: np.ndarray
    lag: np.ndarray
    ttft: np.ndarray
    e2e: np.ndarray
    out: np.ndarray
    prompt: np.ndarray
    max_itl: np.ndarray
    peak_ok: np.ndarray  # completed requests with an end: the ones the peak buckets see
    t0: float  # the peak buckets' origin: the earliest send among peak_ok
    nb: int  # how many one-second peak buckets


class _Unknown:
    """Completed requests whose token counts the server did not give and no tokenizer
    could (:func:`loadgen.http.sse.settle_tokens`), and what the summary then reports.

    Decided once: a total over requests is None when any request's part is unknown (a
    partial sum would understate it); a distribution is over the requests that have the
    counts, None when none has; both counts are keys, so a reader sees how many each
    covers. Per-chunk ITL, TTFT and E2E need no token count and are always reported.
    """

    __slots__ = ("chunks", "output")

    def __init__(self) -> None:
        self.output = 0  # no output token count: no TPOT, no token totals
        self.chunks = 0  # no per-chunk counts: no per-token ITL, tokens per chunk, peak

    def add(self, output: bool, chunks: bool) -> None:
        self.output += output
        self.chunks += chunks

    def keys(self) -> dict[str, int]:
        return {"output_tokens_unknown": self.output, "chunk_tokens_unknown": self.chunks}

    def blank(self, s: dict[str, Any], completed: int, slo: SLO | None) -> None:
        """Set to None what the unknown counts make unknowable."""
        if self.output:
            for k in ("total_output_tokens", "output_throughput", "total_token_throughput"):
                s[k] = None
            if self.output == completed:
                _blank_suffix(s, "_tpot_ms")
            if slo is not None and slo.tpot_ms is not None:
                s["request_goodput"] = s["goodput_fraction"] = None
        if self.chunks:
            s["max_output_tokens_per_s"] = None
            if self.chunks == completed:
                _blank_suffix(s, "_itl_token_ms", "_tokens_per_chunk")
        if s.get("output_lens") is not None and self.output:
            s["output_lens"] = [None if n < 0 else n for n in s["output_lens"]]


def _blank_suffix(s: dict[str, Any], *suffixes: str) -> None:
    for k in s:
        if k.endswith(suffixes):
            s[k] = None


def single_read_count(ok: np.ndarray, out: np.ndarray, max_itl: np.ndarray) -> int:
    """Completed requests of several tokens whose every chunk arrived in one socket read
    (no gap between chunks). The server held the stream back and flushed it at once (a
    starved API server does that): the client saw TPOT 0, and the request's decoding
    time sits in its TTFT. Neither figure then measures what it names."""
    return int(np.count_nonzero(ok & (out > 1) & (max_itl == 0.0)))


def _good_count(slo: SLO, c: _Columns) -> int:
    """Completed requests that meet every SLO set (goodput's numerator)."""
    good = 0
    ttft, e2e, out = c.ttft, c.e2e, c.out
    for i in np.flatnonzero(c.ok):
        if np.isnan(ttft[i]) or np.isnan(e2e[i]):
            continue
        tp = (e2e[i] - ttft[i]) / (out[i] - 1) if out[i] > 1 else None
        if meets_slo(slo, ttft=ttft[i], tpot=tp, max_itl=c.max_itl[i], e2e=e2e[i]):
            good += 1
    return good


def _traffic_keys(n: int, lf: Mapping[str, Any]) -> dict[str, Any]:
    """vllm's header: the date, who ran what (``extra`` fills label, model...), the load."""
    s: dict[str, Any] = {
        "date": datetime.now().strftime("%Y%m%d-%H%M%S"),
        "endpoint_type": "openai",
        "backend": "openai",
        "label": None,
        "model_id": None,
        "tokenizer_id": None,
        "num_prompts": n,
    }
    for k in TRAFFIC_KEYS:
        s[k] = lf[k]
    return s


def _count_keys(c: _Columns, duration_s: float, good: int | None) -> dict[str, Any]:
    completed = int(c.ok.sum())
    total_in = int(c.prompt[c.ok].sum())
    total_out = int(c.out[c.ok].sum())
    return {
        "duration": float(duration_s),
        "completed": completed,
        "failed": c.n - completed,
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": request_throughput(completed, duration_s),
        "request_goodput": None if good is None else good / duration_s,
        "output_throughput": output_throughput(total_out, duration_s),
        "total_token_throughput": total_token_throughput(total_in, total_out, duration_s),
    }


def _per_request_lists(
    c: _Columns, itls: list[list[float]] | None, errors: Mapping[int, str]
) -> dict[str, Any]:
    """vllm's per-request lists (:data:`DETAILED_KEYS`), failed requests included."""
    return {
        "input_lens": c.prompt.tolist(),
        "output_lens": c.out.tolist(),
        "ttfts": np.nan_to_num(c.ttft, nan=0.0).tolist(),
        "itls": itls,
        "latencies": np.nan_to_num(c.e2e, nan=0.0).tolist(),
        "start_times": c.sent.tolist(),
        "queue_times": c.lag.tolist(),
        "generated_texts": [""] * c.n,
        "errors": [errors.get(i, "") for i in range(c.n)],
    }


def _peak_keys(c: _Columns, tokens_per_s: np.ndarray) -> dict[str, Any]:
    """max_output_tokens_per_s and max_concurrent_requests, as
    :func:`~loadgen.results.stats.peak_output_and_concurrency` defines them."""
    if not c.nb:
        return {"max_output_tokens_per_s": 0.0, "max_concurrent_requests": 0}
    ends = (c.sent + c.e2e)[c.peak_ok]
    conc = concurrency_buckets(c.sent[c.peak_ok], ends, c.t0, c.nb)
    return {
        "max_output_tokens_per_s": float(np.max(tokens_per_s)),
        "max_concurrent_requests": int(np.max(conc)),
    }


def _latency_stats(c: _Columns, chunks: _ChunkStats, ps: list[float]) -> dict[str, float]:
    """Every ``{stat}_{metric}_ms`` key, completed requests only (dispatch lag aside).

    Each per-chunk sample array is dropped once used: the peak holds one at a time with
    its std temporary, plus the ones not yet used.
    """
    ok = c.ok
    ttft_ok = c.ttft[ok & ~np.isnan(c.ttft)]
    e2e_ok = c.e2e[ok & ~np.isnan(c.e2e)]
    has_tpot = ok & (c.out > 1) & ~np.isnan(c.ttft) & ~np.isnan(c.e2e)
    tpot = (c.e2e[has_tpot] - c.ttft[has_tpot]) / (c.out[has_tpot] - 1)
    s = latency_keys("ttft", ttft_ok, ps)
    s.update(latency_keys("tpot", tpot, ps))
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
    s.update(latency_keys("client_queue_time", c.lag[ok], ps))
    s.update(latency_keys("e2el_including_client_queue", (c.e2e + c.lag)[c.peak_ok], ps))
    return s


def _tokens_per_chunk_keys(chunks: _ChunkStats, sizes: _SampleSizes) -> dict[str, float]:
    if chunks.token_k is None:  # all 1s: the statistics of one 1 are those of n 1s
        k_samples = np.ones(min(sizes.token_k, 1))
    else:
        k_samples, chunks.token_k = chunks.token_k, _NONE
    d = distribution(k_samples, (10.0, 90.0), overwrite=True)
    return {
        "mean_tokens_per_chunk": d["mean"],
        "median_tokens_per_chunk": d["median"],
        "p10_tokens_per_chunk": d["p10"],
        "p90_tokens_per_chunk": d["p90"],
    }


def _dispatch_lag_keys(lag_s: np.ndarray) -> dict[str, float]:
    """Dispatch lag of every measured request, failed ones included (the client's own
    lateness: see the module's conventions)."""
    d = distribution(lag_s * 1000.0, (50.0, 99.0))
    return {
        "mean_dispatch_lag_ms": d["mean"],
        "p50_dispatch_lag_ms": d["p50"],
        "p99_dispatch_lag_ms": d["p99"],
        "max_dispatch_lag_ms": d["max"],
    }


class SummaryAccumulator(_RequestColumns):
    """Records in, the summary out, everything in memory: per-request scalars plus each
    chunk's arrival time and token count, in typed arrays. For records already in a list
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
        counts = chunk_token_counts(r)  # unknown: 0 each, so no per-token sample
        self._chunk_k.extend(counts if counts is not None else [0] * len(r.chunk_times))
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
    """The run's summary sink: only per-request scalars in memory; the per-chunk data is
    read back from the phase's ``requests.jsonl`` at summary time (what that saves over a
    long run is measured in ``benchmarks/results/memory_soak.md``).

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
                # unknown per-chunk counts: 0 each, so no per-token sample (see _Unknown)
                block.add(times, tokens if len(tokens) == len(times) else [0] * len(times))
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

    def add(self, times: list[float], tokens: list[int] | None) -> None:
        """One completed request's chunks (``tokens`` None: unknown, no per-token sample)."""
        n = len(times)
        if n == 0:
            return
        self.itl += n - 1
        if tokens is None or len(tokens) != n:
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


# Chunks per block of the summary's chunk pass: the pass's temporaries grow with the block,
# and much larger blocks put a spike on the end-of-phase peak (benchmarks/results/
# memory_soak.md: the summary's peak memory before and after blocks of this size).
_BLOCK_CHUNKS = 1 << 16


def _np(a: array) -> np.ndarray:
    """A float copy (a view would pin the array: it could not grow on the next add)."""
    return np.array(a, dtype=np.float64) if len(a) else np.zeros(0)


class SummaryOptions(TypedDict, total=False):
    """The options of :func:`summarize` and :meth:`SummaryAccumulator.summary` besides
    ``duration_s`` (their defaults are the method's)."""

    slo: SLO | None
    phase: str
    load: BaseModel | Mapping[str, Any] | None
    extra: Mapping[str, Any] | None
    percentiles: Iterable[float]
    spec_decode: SpecDecodeStats | None
    server_gauges: Mapping[str, Any] | None
    detailed: bool


def summarize(
    records: Iterable[RequestRecord], *, duration_s: float, **options: Unpack[SummaryOptions]
) -> dict[str, Any]:
    """One phase's flat summary: every :data:`~loadgen.results.stats.BENCH_KEYS` key plus ours.

    ``duration_s`` is the phase's measured wall time (the throughput denominator).
    ``extra`` is merged last, so the caller sets ``label``, ``model_id``,
    ``tokenizer_id``, ``backend``, ``complete`` and the like there. ``spec_decode``
    (from server_metrics.spec_decode_delta) fills the spec_decode_* keys, None leaves
    them None; ``server_gauges`` (server_metrics.summarize_samples) fills the gauge keys.
    ``percentiles`` is vllm's --metric-percentiles (99 is always added). ``detailed=False``
    leaves the per-request lists (:data:`~loadgen.results.stats.DETAILED_KEYS`) None.
    """
    acc = SummaryAccumulator()
    acc.extend(records)
    return acc.summary(duration_s=duration_s, **options)

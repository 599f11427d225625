"""Deterministic synthetic request records for summary-parity tests.

Only ``random.Random``, ``RequestRecord`` and the scenario's SLO/load models: the same seed
gives the same records on any numpy and on older checkouts of loadgen
(``tests/data/summary_golden.json`` was made by running this module against commit
c767ba0's summary code).
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

from loadgen.config.scenario import SLO
from loadgen.config.shapes.concurrency import ConcurrencyLoad
from loadgen.results.records import RequestRecord

# The golden file's records and summary arguments (tests/data/make_summary_golden.py).
GOLDEN_N, GOLDEN_SEED, GOLDEN_N_DETAILED = 3000, 7, 400
GOLDEN_KW: dict[str, Any] = {
    "duration_s": 60.0,
    "slo": SLO(ttft_ms=200, tpot_ms=30, itl_ms=150, e2e_ms=1500),
    "percentiles": [50, 90, 99, 99.9],
    "load": ConcurrencyLoad(concurrency=32),
    "phase": "synthetic",
}


def canonical(s: dict[str, Any]) -> str:
    """The summary as sorted JSON, without the date (the one key that is not a result)."""
    return json.dumps({k: v for k, v in s.items() if k != "date"}, sort_keys=True)


def digest(s: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(s).encode()).hexdigest()


KINDS = ("http", "stream_cut", "timeout", "bad_sse", "cancelled", "connect")


def synthetic_records(n: int, seed: int = 0) -> list[RequestRecord]:
    """``n`` records in completion order: warmups (~5%), failures of several kinds (~10%,
    some with partial chunks, some without an end), multi-token and 0-token chunks,
    mismatched token lists, missing usage and prompt counts, one-chunk requests."""
    rng = random.Random(seed)
    recs: list[RequestRecord] = []
    t = 0.0
    for i in range(n):
        t += rng.expovariate(50.0)
        sched = t
        sent = sched + rng.choice((0.0, rng.uniform(0, 0.002), rng.uniform(0, 0.5)))
        n_chunks = rng.choice((1, 2, 5, 16, 16, 16, 40))
        ck = [rng.choice((1, 1, 1, 2, 3, 4)) for _ in range(n_chunks)]
        if rng.random() < 0.05:
            ck[rng.randrange(n_chunks)] = 0
        times: list[float] = []
        c = sent + rng.uniform(0.005, 0.3)
        for _ in range(n_chunks):
            times.append(c)
            c += rng.choice((rng.uniform(0.0001, 0.02), rng.uniform(0.02, 0.2), 0.0))
        end: float | None = times[-1] + rng.uniform(0, 0.001)
        error = kind = None
        out: int | None = sum(ck)
        if rng.random() < 0.1:
            kind = rng.choice(KINDS)
            error = f"{kind} failure #{i}"
            cut = rng.randrange(n_chunks + 1)
            times, ck = times[:cut], ck[:cut]
            out = None
            if kind in ("timeout", "cancelled") and rng.random() < 0.5:
                end = None
        elif rng.random() < 0.03:
            out = None  # no usage: counted from chunks
        if rng.random() < 0.02:
            ck = ck[:-1]  # mismatched lengths: 1 token per chunk
        recs.append(
            RequestRecord(
                request_id=i,
                phase="synthetic",
                scheduled_s=sched,
                sent_s=sent,
                written_s=sent + 1e-4,
                prompt_tokens=None if rng.random() < 0.02 else rng.randint(8, 2048),
                expected_output_tokens=64,
                first_token_s=times[0] if times else None,
                end_s=end,
                chunk_times=times,
                chunk_tokens=ck,
                output_tokens=out,
                usage_source="usage" if out is not None else "chunks",
                finish_reason=None if error else "length",
                status_code=503 if kind == "http" else 200,
                error=error,
                error_kind=kind,
                warmup=rng.random() < 0.05,
                worker=0,
            )
        )
    # completion order is not send order under concurrency
    for _ in range(n // 10):
        a, b = rng.randrange(n), rng.randrange(n)
        recs[a], recs[b] = recs[b], recs[a]
    return recs


def with_one_token_fallback(recs: list[RequestRecord]) -> list[RequestRecord]:
    """The records as the summary read them before unknown per-chunk counts existed: a
    record whose chunk_tokens don't match its chunks counted 1 token per chunk. The golden
    summary (tests/data/make_summary_golden.py) was made then; with that assumption made
    explicit here, every other rule it checks still holds, value for value."""
    for r in recs:
        if len(r.chunk_tokens) != len(r.chunk_times):
            r.chunk_tokens = [1] * len(r.chunk_times)
    return recs

"""The server's side of the story: vLLM's Prometheus ``/metrics``.

Two uses. Speculative-decoding counters are scraped once before and once after a phase;
their delta is the phase's acceptance (the client can only see tokens per chunk, the
server knows drafts and accepted tokens). Scheduler gauges (running, waiting, KV-cache
usage) are polled during a phase by :class:`GaugeSampler`, so a summary can say whether
the server was queueing or out of KV cache at that load level.

Parsing and the maths are pure functions; only :func:`scrape` and :class:`GaugeSampler`
do I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from array import array
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

# (metric name, frozenset of (label, value)) -> value
Sample = tuple[str, frozenset[tuple[str, str]]]
Parsed = dict[Sample, float]

SPEC_DRAFTS = "vllm:spec_decode_num_drafts_total"
SPEC_DRAFT_TOKENS = "vllm:spec_decode_num_draft_tokens_total"
SPEC_ACCEPTED = "vllm:spec_decode_num_accepted_tokens_total"
SPEC_ACCEPTED_PER_POS = "vllm:spec_decode_num_accepted_tokens_per_pos_total"

PREFIX_QUERIES = "vllm:prefix_cache_queries_total"  # prompt tokens looked up
PREFIX_HITS = "vllm:prefix_cache_hits_total"  # of which found in the prefix cache

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = "vllm:kv_cache_usage_perc"
KV_USAGE_OLD = "vllm:gpu_cache_usage_perc"  # vLLM V0 / early V1 name of the same gauge

GAUGES = ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc")
GAUGE_SUMMARY_KEYS = (
    *(f"{agg}_{g}" for g in GAUGES for agg in ("mean", "max")),
    "num_server_samples",
    "num_server_scrape_errors",
)


# --- parsing ----------------------------------------------------------------------------

_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


def _parse_value(text: str) -> float:
    """Prometheus values: floats plus NaN, +Inf, -Inf (any case, as Go's ParseFloat)."""
    low = text.lower()
    if low in ("+inf", "inf"):
        return math.inf
    if low == "-inf":
        return -math.inf
    return float(text)  # float() accepts "nan" and exponents


def _parse_labels(s: str, i: int) -> tuple[frozenset[tuple[str, str]], int]:
    """Parse ``{a="x",b="y\\"z"}`` starting at ``s[i] == "{"``; return labels, index after ``}``."""
    labels: list[tuple[str, str]] = []
    i += 1
    n = len(s)
    while True:
        while i < n and s[i] in " \t,":
            i += 1
        if i >= n:
            raise ValueError("unterminated label set")
        if s[i] == "}":
            return frozenset(labels), i + 1
        eq = s.index("=", i)
        key = s[i:eq].strip()
        i = eq + 1
        while i < n and s[i] in " \t":
            i += 1
        if i >= n or s[i] != '"':
            raise ValueError("label value not quoted")
        i += 1
        buf: list[str] = []
        while True:
            if i >= n:
                raise ValueError("unterminated label value")
            c = s[i]
            if c == "\\" and i + 1 < n:
                buf.append(_ESCAPES.get(s[i + 1], "\\" + s[i + 1]))
                i += 2
            elif c == '"':
                i += 1
                break
            else:
                buf.append(c)
                i += 1
        labels.append((key, "".join(buf)))


def parse_prometheus(text: str) -> Parsed:
    """Prometheus text exposition (0.0.4, and OpenMetrics' common subset) -> samples.

    Comments, HELP/TYPE lines, blank lines, ``# EOF`` and malformed lines are skipped
    (a bad line must not lose the whole scrape); an optional trailing timestamp is ignored.
    Every series is kept under its exposed name, so ``_total``, ``_bucket``, ``_created``
    stay distinct and callers pick what they need. A repeated series keeps the last value.
    """
    out: Parsed = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            brace = line.find("{")
            space = min((p for p in (line.find(" "), line.find("\t")) if p >= 0), default=-1)
            if brace >= 0 and (space < 0 or brace < space):
                name = line[:brace].strip()
                labels, end = _parse_labels(line, brace)
                rest = line[end:].split()
            else:
                parts = line.split()
                name, labels, rest = parts[0], frozenset(), parts[1:]
            if not name or not rest:
                continue
            out[(name, labels)] = _parse_value(rest[0])
        except ValueError:
            continue
    return out


def series(parsed: Mapping[Sample, float], name: str) -> list[tuple[dict[str, str], float]]:
    """All label sets of one metric name, as (labels, value)."""
    return [(dict(labels), v) for (n, labels), v in parsed.items() if n == name]


def metric_sum(parsed: Mapping[Sample, float], name: str) -> float | None:
    """Sum of a metric over all its label sets (model_name, engine, ...); None if absent.

    Summing is right for counters and count gauges: with several engines (data
    parallel) each exports its own series and the server's total is their sum.
    """
    vals = [v for _, v in series(parsed, name)]
    return math.fsum(vals) if vals else None


def metric_mean(parsed: Mapping[Sample, float], name: str) -> float | None:
    """Mean over label sets, for ratio gauges such as KV-cache usage; None if absent."""
    vals = [v for _, v in series(parsed, name) if not math.isnan(v)]
    return math.fsum(vals) / len(vals) if vals else None


def by_label(parsed: Mapping[Sample, float], name: str, label: str) -> dict[str, float]:
    """Values of ``name`` summed per value of ``label`` (series lacking the label dropped)."""
    out: dict[str, float] = {}
    for labels, v in series(parsed, name):
        if label in labels:
            out[labels[label]] = out.get(labels[label], 0.0) + v
    return out


# --- speculative decoding -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpecDecodeCounters:
    """The four spec-decode counters at one scrape, summed over engines."""

    num_drafts: float
    draft_tokens: float
    accepted_tokens: float
    accepted_per_pos: dict[int, float] = field(default_factory=dict)


def spec_decode_counters(parsed: Mapping[Sample, float]) -> SpecDecodeCounters | None:
    """Read the counters; None if the server exports none of them (no speculation)."""
    drafts = metric_sum(parsed, SPEC_DRAFTS)
    draft_tokens = metric_sum(parsed, SPEC_DRAFT_TOKENS)
    accepted = metric_sum(parsed, SPEC_ACCEPTED)
    if drafts is None and draft_tokens is None and accepted is None:
        return None
    per_pos: dict[int, float] = {}
    for pos, v in by_label(parsed, SPEC_ACCEPTED_PER_POS, "position").items():
        try:
            per_pos[int(pos)] = v
        except ValueError:
            continue
    return SpecDecodeCounters(drafts or 0.0, draft_tokens or 0.0, accepted or 0.0, per_pos)


def _delta(before: float, after: float) -> float:
    """Counter increase; a decrease means the server restarted, so count from zero."""
    return after - before if after >= before else after


@dataclass(frozen=True, slots=True)
class SpecDecodeStats:
    """Spec-decode activity during one window (a phase), from counter deltas.

    ``acceptance_rate`` is a fraction (accepted / draft tokens); :meth:`as_bench_keys`
    reports it as a percentage because ``vllm bench serve`` does. ``acceptance_length``
    is tokens emitted per verification step: 1 (the bonus/target token) plus accepted
    drafts per draft. Rates are None when the window had no drafts (nothing to measure).
    ``per_position_acceptance_rates[i]`` is the fraction of drafts whose token at
    position i was accepted (None for a position the server did not export).
    """

    num_drafts: int
    draft_tokens: int
    accepted_tokens: int
    acceptance_rate: float | None
    acceptance_length: float | None
    per_position_acceptance_rates: list[float | None]

    def as_bench_keys(self) -> dict[str, Any]:
        """The ``spec_decode_*`` keys of ``vllm bench serve``'s result JSON, same units.

        vllm (benchmarks/serve.py) stores acceptance_rate *100 (percent) and the
        per-position rates as fractions; both matched here.
        """
        rate = None if self.acceptance_rate is None else self.acceptance_rate * 100.0
        return {
            "spec_decode_acceptance_rate": rate,
            "spec_decode_acceptance_length": self.acceptance_length,
            "spec_decode_num_drafts": self.num_drafts,
            "spec_decode_draft_tokens": self.draft_tokens,
            "spec_decode_accepted_tokens": self.accepted_tokens,
            "spec_decode_per_position_acceptance_rates": list(self.per_position_acceptance_rates),
        }


SPEC_BENCH_KEYS = (
    "spec_decode_acceptance_rate",
    "spec_decode_acceptance_length",
    "spec_decode_num_drafts",
    "spec_decode_draft_tokens",
    "spec_decode_accepted_tokens",
    "spec_decode_per_position_acceptance_rates",
)


def spec_decode_delta(
    before: Mapping[Sample, float] | None, after: Mapping[Sample, float]
) -> SpecDecodeStats | None:
    """Spec-decode stats between two parsed scrapes; None if ``after`` has no counters.

    A counter absent from ``before`` (or ``before`` None: the first scrape failed or came
    before the engine registered it) counts from zero. A position missing from ``after``
    but present before contributes 0, as vllm bench serve does.
    """
    a = spec_decode_counters(after)
    if a is None:
        return None
    b = spec_decode_counters(before or {}) or SpecDecodeCounters(0.0, 0.0, 0.0)
    drafts = round(_delta(b.num_drafts, a.num_drafts))
    draft_tokens = round(_delta(b.draft_tokens, a.draft_tokens))
    accepted = round(_delta(b.accepted_tokens, a.accepted_tokens))
    per_pos: list[float | None] = []
    if drafts > 0:
        positions = set(a.accepted_per_pos) | set(b.accepted_per_pos)
        for pos in range(max(positions) + 1 if positions else 0):
            if pos not in positions:
                per_pos.append(None)
                continue
            bv = b.accepted_per_pos.get(pos, 0.0)
            av = a.accepted_per_pos.get(pos, bv)
            per_pos.append(_delta(bv, av) / drafts)
    return SpecDecodeStats(
        num_drafts=drafts,
        draft_tokens=draft_tokens,
        accepted_tokens=accepted,
        acceptance_rate=accepted / draft_tokens if draft_tokens > 0 else None,
        acceptance_length=1.0 + accepted / drafts if drafts > 0 else None,
        per_position_acceptance_rates=per_pos,
    )


# --- gauges ---------------------------------------------------------------------------------


def gauge_sample(parsed: Mapping[Sample, float], t: float) -> dict[str, Any]:
    """One row of server_samples.jsonl: scheduler gauges at time ``t`` (None if absent).

    Request counts are summed over engines; KV-cache usage (a 0..1 fraction despite
    its name) is averaged over engines, so it stays a fraction.
    """
    kv = metric_mean(parsed, KV_USAGE)
    if kv is None:
        kv = metric_mean(parsed, KV_USAGE_OLD)
    return {
        "t": t,
        "num_requests_running": metric_sum(parsed, RUNNING),
        "num_requests_waiting": metric_sum(parsed, WAITING),
        "kv_cache_usage_perc": kv,
    }


def summarize_samples(samples: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and max of each gauge over a phase's samples (None where no sample had it).

    Samples come at a fixed interval, so the plain mean is the time average. Rows with
    an ``error`` (failed scrapes) are counted, not averaged.
    """
    stats = GaugeStats()
    for s in samples:
        stats.add(s)
    return stats.summary()


class GaugeStats:
    """:func:`summarize_samples` one row at a time, keeping 8 bytes per gauge per row
    instead of the row's dict (many times larger), so a long run polled every second
    still fits in a few megabytes."""

    def __init__(self) -> None:
        self.values: dict[str, array[float]] = {g: array("d") for g in GAUGES}
        self.n_ok = 0
        self.n_err = 0

    def add(self, row: Mapping[str, Any]) -> None:
        if row.get("error") is not None:
            self.n_err += 1
            return
        self.n_ok += 1
        for g in GAUGES:
            v = row.get(g)
            if v is not None and not math.isnan(v):
                self.values[g].append(float(v))

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for g in GAUGES:
            vals = self.values[g]
            out[f"mean_{g}"] = math.fsum(vals) / len(vals) if vals else None
            out[f"max_{g}"] = max(vals) if vals else None
        out["num_server_samples"] = self.n_ok
        out["num_server_scrape_errors"] = self.n_err
        return out


# --- I/O -------------------------------------------------------------------------------------


async def scrape(client: httpx.AsyncClient, base_url: str, timeout_s: float = 5.0) -> str:
    """GET ``{base_url}/metrics``; raises httpx errors (HTTPStatusError on non-2xx)."""
    resp = await client.get(f"{base_url.rstrip('/')}/metrics", timeout=timeout_s)
    resp.raise_for_status()
    return resp.text


class GaugeSampler:
    """Poll ``/metrics`` every ``interval_s`` in the background, one JSONL row per poll.

    Polls are on a fixed grid (start + k * interval) so slow scrapes don't stretch the
    cadence; a poll that overruns skips the missed ticks. A failed scrape becomes a row
    with the gauges None and ``error`` set, and polling goes on. ``clock`` should be
    the run's clock (seconds since the run origin) so ``t`` lines up with the records.
    Rows are summarised as they come (``stats``) and, unless ``keep_rows=False`` (what a
    run passes, so an hours-long phase does not hold every row), also kept in ``samples``.

        async with GaugeSampler(client, url, path, clock=run_clock) as sampler:
            ...  # drive load
        gauges = sampler.stats.summary()  # == summarize_samples(rows in the file)
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        path: str | Path | None = None,
        *,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.perf_counter,
        timeout_s: float | None = None,
        keep_rows: bool = True,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.client = client
        self.base_url = base_url
        self.path = Path(path) if path is not None else None
        self.interval_s = interval_s
        self.clock = clock
        self.timeout_s = timeout_s if timeout_s is not None else max(interval_s, 5.0)
        self.samples: list[dict[str, Any]] = []
        self.stats = GaugeStats()
        self._keep_rows = keep_rows
        self._task: asyncio.Task[None] | None = None
        self._file: Any = None

    async def __aenter__(self) -> GaugeSampler:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        self._task = asyncio.create_task(self._run(), name="gauge-sampler")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Cancel polling, wait for it, close the file. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._file is not None:
            self._file.close()
            self._file = None

    async def sample_once(self) -> dict[str, Any]:
        """Scrape now and record one row (also used by the loop)."""
        t = self.clock()
        try:
            text = await scrape(self.client, self.base_url, self.timeout_s)
            row = gauge_sample(parse_prometheus(text), t)
        except Exception as e:  # any failure is one bad row, never a dead sampler
            row = {g: None for g in GAUGES}
            row = {"t": t, **row, "error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
        self._record(row)
        return row

    def _record(self, row: dict[str, Any]) -> None:
        self.stats.add(row)
        if self._keep_rows:
            self.samples.append(row)
        if self._file is not None:
            self._file.write(json.dumps(row, separators=(",", ":")) + "\n")
            self._file.flush()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        k = 0
        while True:
            await self.sample_once()
            k = max(k + 1, math.floor((loop.time() - start) / self.interval_s) + 1)
            await asyncio.sleep(max(0.0, start + k * self.interval_s - loop.time()))


def summarize_sample_file(path: str | Path) -> dict[str, Any]:
    """:func:`summarize_samples` over a server_samples.jsonl (bad lines skipped)."""
    rows: list[dict[str, Any]] = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return summarize_samples(rows)


# --- prefix caching ------------------------------------------------------------------------


def prefix_cache_delta(
    before: Mapping[Sample, float], after: Mapping[Sample, float]
) -> dict[str, float | None]:
    """The prefix cache over one window: prompt tokens looked up, those found, and the hit
    rate (hits / queries; None when the server exports neither counter or saw no query).
    A multi-turn replay's later turns resend the conversation so far, which is what the
    cache can serve."""
    out: dict[str, float | None] = {
        "prefix_cache_queries": None,
        "prefix_cache_hits": None,
        "prefix_cache_hit_rate": None,
    }
    q0, q1 = metric_sum(before, PREFIX_QUERIES), metric_sum(after, PREFIX_QUERIES)
    h0, h1 = metric_sum(before, PREFIX_HITS), metric_sum(after, PREFIX_HITS)
    if q0 is None or q1 is None or h0 is None or h1 is None:
        return out
    queries, hits = _delta(q0, q1), _delta(h0, h1)
    out["prefix_cache_queries"] = queries
    out["prefix_cache_hits"] = hits
    out["prefix_cache_hit_rate"] = hits / queries if queries > 0 else None
    return out

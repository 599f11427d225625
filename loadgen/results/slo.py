"""Whether a load level meets its SLO, and how sure one probe of it can be.

A level meets the SLO when every percentile bound of ``slo:`` holds over its measured
requests (``p90 TTFT <= 500 ms``) and its error rate is at most ``slo.max_error_rate``.
Pure functions: a phase's records in (:func:`level_samples`), a :class:`Verdict` out
(:func:`judge`); samples of repeated runs of one level pool by :meth:`LevelSamples.pool`.

Conventions, decided once:

- **Failed requests count against latency bounds.** A request that failed never met its
  TTFT, TPOT or E2E bound: it enters those percentiles as +inf (summary.json's percentiles
  leave failures out, as vllm's do; with no failures the two agree exactly). Per-token ITL is
  over the tokens of completed requests. A TPOT needs two output tokens: completed requests
  with fewer are left out of it (as in the summary).
- **Percentiles** are ``np.percentile``'s linear ones, as in summary.json.
- **Noise.** Each percentile carries a ``confidence`` interval from a moving-block bootstrap
  over the level's requests in send order (blocks of ~sqrt(n) neighbours, a request's tokens
  kept together). Blocks, not single requests, because in a queue neighbours wait together:
  resampling single requests would make the interval several times too narrow. It still
  understates run-to-run noise near saturation, where a percentile hangs on a few busy
  periods (docs/capacity.md gives the measured factor). The error rate carries a Wilson
  interval (no failure at all counts as a clear pass of it). A verdict is **clear** when
  no interval crosses its bound the other way: a pass whose every upper end is within its
  bound, or a fail with one bound failed even at its interval's lower end (or the error
  rate's).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from loadgen.config.scenario import SLO, SLOBound, SLOMetric
from loadgen.results.records import RequestRecord
from loadgen.results.stats import e2e_s, itl_token_s, output_token_count, ttft_s

# np.percentile interpolates inf into nan (inf * 0); failures stand in as this, read back as inf.
_INF = 1e300
_HUGE = 1e299
# Bootstrap resamples: at most this many, fewer for big samples (resamples x samples is the cost).
BOOTSTRAP_MAX = 1000
BOOTSTRAP_MIN = 200
_BOOTSTRAP_BUDGET = 4_000_000  # resamples x samples per metric


@dataclass
class LevelSamples:
    """What a level's verdict needs from its measured requests, in send order: one value per
    request for TTFT, TPOT and E2E in seconds (+inf for a failed request, NaN where it has
    none), and per-token ITLs with the index of the request each came from."""

    ok: np.ndarray  # bool per request
    ttft: np.ndarray
    tpot: np.ndarray
    e2e: np.ndarray
    itl: np.ndarray  # per token, s
    itl_request: np.ndarray  # per token: its request's index

    @property
    def n(self) -> int:
        return int(self.ok.size)

    @property
    def failed(self) -> int:
        return int(self.n - np.count_nonzero(self.ok))

    def per_request(self, metric: SLOMetric) -> np.ndarray:
        return {SLOMetric.TTFT: self.ttft, SLOMetric.TPOT: self.tpot, SLOMetric.E2E: self.e2e}[
            metric
        ]

    @classmethod
    def pool(cls, parts: Iterable[LevelSamples]) -> LevelSamples:
        """Several runs of one level as one sample (runs in order, each in send order)."""
        parts = list(parts)
        offsets = np.cumsum([0, *(p.n for p in parts[:-1])])
        return cls(
            ok=np.concatenate([p.ok for p in parts]),
            ttft=np.concatenate([p.ttft for p in parts]),
            tpot=np.concatenate([p.tpot for p in parts]),
            e2e=np.concatenate([p.e2e for p in parts]),
            itl=np.concatenate([p.itl for p in parts]),
            itl_request=np.concatenate(
                [p.itl_request + off for p, off in zip(parts, offsets, strict=True)]
            ),
        )


def level_samples(records: Iterable[RequestRecord]) -> LevelSamples:
    """The measured (non-warmup) records' samples, ordered by send time."""
    recs = sorted((r for r in records if not r.warmup), key=lambda r: (r.sent_s, r.request_id))
    n = len(recs)
    ok = np.zeros(n, dtype=bool)
    ttft, tpot, e2e = np.full(n, np.inf), np.full(n, np.inf), np.full(n, np.inf)
    itl: list[float] = []
    itl_req: list[int] = []
    for i, r in enumerate(recs):
        t, e = ttft_s(r), e2e_s(r)
        if not r.ok or t is None or e is None:
            continue
        ok[i] = True
        ttft[i], e2e[i] = t, e
        k = output_token_count(r)
        tpot[i] = (e - t) / (k - 1) if k > 1 else np.nan
        gaps = itl_token_s(r)
        itl.extend(gaps)
        itl_req.extend([i] * len(gaps))
    return LevelSamples(
        ok=ok,
        ttft=ttft,
        tpot=tpot,
        e2e=e2e,
        itl=np.asarray(itl, dtype=float),
        itl_request=np.asarray(itl_req, dtype=np.int64),
    )


@dataclass(frozen=True)
class BoundCheck:
    """One percentile bound, judged: the level's value and its interval, in ms (+inf where
    failures decide it; None where the level has no sample of the metric)."""

    metric: SLOMetric
    p: float
    max_ms: float
    value_ms: float | None
    low_ms: float | None
    high_ms: float | None

    @property
    def passed(self) -> bool:
        return self.value_ms is None or self.value_ms <= self.max_ms

    @property
    def clear(self) -> bool:
        if self.value_ms is None:
            return True
        if self.passed:
            return self.high_ms is not None and self.high_ms <= self.max_ms
        return self.low_ms is not None and self.low_ms > self.max_ms

    def as_dict(self) -> dict[str, object]:
        return {
            "p": self.p,
            "max_ms": self.max_ms,
            "value_ms": _finite(self.value_ms),
            "low_ms": _finite(self.low_ms),
            "high_ms": _finite(self.high_ms),
            "passed": self.passed,
            "clear": self.clear,
        }


@dataclass(frozen=True)
class ErrorCheck:
    failed: int
    n: int
    max_rate: float | None
    low: float
    high: float

    @property
    def rate(self) -> float:
        return self.failed / self.n if self.n else 0.0

    @property
    def passed(self) -> bool:
        return self.max_rate is None or self.rate <= self.max_rate

    @property
    def clear(self) -> bool:
        """A fail is clear when even the interval's lower end is over the bound; a pass when
        its upper end is within it, or when no request failed at all: 0 of 100 has an upper
        end of 3.7%, and repeating such a level would never get it under a 1% bound (the
        bound guards against a failing server, it is no precision measure of rare errors)."""
        if self.max_rate is None:
            return True
        if not self.passed:
            return self.low > self.max_rate
        return self.failed == 0 or self.high <= self.max_rate


@dataclass(frozen=True)
class Verdict:
    """A level judged against the SLO. ``passed``: it meets every bound. ``clear``: the
    verdict stands outside the noise its own requests measured (see the module docstring)."""

    n: int
    bounds: list[BoundCheck]
    errors: ErrorCheck
    confidence: float
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.n > 0 and self.errors.passed and all(b.passed for b in self.bounds)

    @property
    def clear(self) -> bool:
        if self.n == 0:
            return False
        checks: list[BoundCheck | ErrorCheck] = [*self.bounds, self.errors]
        if self.passed:
            return all(c.clear for c in checks)
        return any(not c.passed and c.clear for c in checks)

    def percentiles(self) -> dict[str, dict[str, object]]:
        """``{"ttft_ms": {p, max_ms, value_ms, low_ms, high_ms, passed, clear}, ...}``."""
        return {b.metric.value: b.as_dict() for b in self.bounds}

    def failing(self) -> list[str]:
        """What failed, for people: 'p90 TTFT 612 ms > 500', 'errors 3.0% > 1%'."""
        out = [
            f"p{b.p:g} {b.metric.title} {_ms(b.value_ms)} > {b.max_ms:g}"
            for b in self.bounds
            if not b.passed
        ]
        e = self.errors
        if not e.passed and e.max_rate is not None:
            out.append(f"errors {100 * e.rate:.1f}% > {100 * e.max_rate:g}%")
        return out


def judge(slo: SLO, samples: LevelSamples, *, confidence: float = 0.95, seed: int = 0) -> Verdict:
    """Judge a level's samples against ``slo``'s percentile bounds and error rate."""
    n = samples.n
    rng = np.random.Generator(np.random.PCG64(seed))
    reps = _block_resamples(n, rng) if n else np.zeros((0, 0), dtype=np.int64)
    alpha = (1.0 - confidence) / 2.0
    checks = [
        _check(metric, bound, samples, reps, alpha)
        for metric, bound in slo.percentile_bounds().items()
    ]
    low, high = wilson_interval(samples.failed, n, confidence)
    errors = ErrorCheck(samples.failed, n, slo.max_error_rate, low, high)
    notes = [f"no {c.metric.title} sample: not judged" for c in checks if c.value_ms is None]
    return Verdict(n, checks, errors, confidence, notes)


def _check(
    metric: SLOMetric, bound: SLOBound, s: LevelSamples, reps: np.ndarray, alpha: float
) -> BoundCheck:
    assert bound.p is not None
    p = bound.p
    if metric is SLOMetric.ITL:
        value, boot = _token_percentile(s.itl, s.itl_request, s.n, p, reps)
    else:
        value, boot = _request_percentile(s.per_request(metric), p, reps)
    if value is None:
        return BoundCheck(metric, p, bound.max, None, None, None)
    lo, hi = np.quantile(boot, [alpha, 1.0 - alpha]) if boot.size else (value, value)
    return BoundCheck(metric, p, bound.max, _ms_of(value), _ms_of(float(lo)), _ms_of(float(hi)))


def _request_percentile(
    values: np.ndarray, p: float, reps: np.ndarray
) -> tuple[float | None, np.ndarray]:
    """The p-th percentile of one value per request (NaN: no value) and its bootstrap
    replicates, in s with failures as the +inf stand-in."""
    v = np.where(np.isinf(values), _INF, values)
    keep = ~np.isnan(v)
    if not keep.any():
        return None, np.zeros(0)
    value = float(np.percentile(v[keep], p))
    if not reps.size:
        return value, np.zeros(0)
    # A replicate's percentile over the requests it drew that have a value.
    drawn = v[reps]
    if keep.all():
        return value, np.percentile(drawn, p, axis=1)
    rows = (row[~np.isnan(row)] for row in drawn)
    return value, np.array([np.percentile(r, p) for r in rows if r.size])


def _token_percentile(
    itl: np.ndarray, req: np.ndarray, n: int, p: float, reps: np.ndarray
) -> tuple[float | None, np.ndarray]:
    """The p-th percentile of per-token ITLs and its replicates: a replicate weighs each
    token by how often it drew the token's request (the inverse-CDF percentile of the
    weighted sample; the estimate itself is np.percentile's, as the summary's)."""
    if not itl.size:
        return None, np.zeros(0)
    value = float(np.percentile(itl, p))
    if not reps.size:
        return value, np.zeros(0)
    order = np.argsort(itl, kind="stable")
    sorted_v, sorted_req = itl[order], req[order]
    boot = []
    for row in reps:
        w = np.bincount(row, minlength=n)[sorted_req]
        cw = np.cumsum(w)
        if cw[-1] == 0:
            continue
        i = int(np.searchsorted(cw, p / 100.0 * cw[-1], side="left"))
        boot.append(sorted_v[min(i, sorted_v.size - 1)])
    return value, np.asarray(boot)


def block_length(n: int) -> int:
    """Moving-block bootstrap block length: ~sqrt(n), at least 1."""
    return max(1, round(math.sqrt(n)))


def _block_resamples(n: int, rng: np.random.Generator) -> np.ndarray:
    """Rows of ``n`` request indices, each a moving-block bootstrap resample: blocks of
    :func:`block_length` consecutive requests, starts drawn uniformly, cut to ``n``."""
    b = block_length(n)
    count = max(BOOTSTRAP_MIN, min(BOOTSTRAP_MAX, _BOOTSTRAP_BUDGET // max(n, 1)))
    blocks = math.ceil(n / b)
    starts = rng.integers(0, n - b + 1, size=(count, blocks))
    idx = (starts[:, :, None] + np.arange(b)[None, None, :]).reshape(count, blocks * b)
    return idx[:, :n]


def wilson_interval(k: int, n: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (0..1 when n is 0)."""
    if n == 0:
        return 0.0, 1.0
    z = _z(confidence)
    ph = k / n
    den = 1 + z * z / n
    centre = (ph + z * z / (2 * n)) / den
    half = z * math.sqrt(ph * (1 - ph) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def _z(confidence: float) -> float:
    """The two-sided normal quantile for ``confidence`` (bisection on erf: no scipy)."""
    target = (1 + confidence) / 2
    lo, hi = 0.0, 10.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _ms_of(seconds: float) -> float:
    return math.inf if seconds >= _HUGE else seconds * 1000.0


def _finite(v: float | None) -> float | str | None:
    """JSON has no infinity: +inf (failures decided the percentile) is written "inf";
    None (no sample of the metric) stays null."""
    if v is None:
        return None
    return v if math.isfinite(v) else "inf"


def _ms(v: float | None) -> str:
    if v is None:
        return "n/a"
    return "inf (failures)" if math.isinf(v) else f"{v:.1f} ms"

"""Speedup intervals and verdicts: the pure statistics of a comparison (no I/O).

A *pair* is one measured phase of the baseline and one of the candidate at the same load
level, run back to back on two co-resident servers in a balanced order (round k runs the
servers forward when k is even and backward when it is odd: A B | B A | A B ...). A pair's
*log ratio* is ``log(baseline / candidate)`` of a latency (``log(candidate / baseline)`` of a
throughput), so a positive value favours the candidate and ``exp`` of it is a speedup.

The interval is Student's t on the pairs' log ratios, not a bootstrap over pairs: a level
has 4 to 20 pairs, where a percentile bootstrap of the mean is too narrow (it uses the
plug-in variance, and the normal rather than the t quantile: about 0.83 of the correct
width at 4 pairs) and can only take a handful of distinct values; the log ratios of phase
medians are close to normal, so t is the exact small-sample answer. Logs make the interval
symmetric in ratio (1.25x faster and 1.25x slower are equally far from 1) and the estimate
the geometric mean of the pairs' speedups.

Drift: over one ABBA block a linear drift adds +d to one pair and -d to the other, so the
mean over whole blocks (an even number of pairs) cancels it, and the alternating terms only
widen the interval. A step change between the two phases of one pair shows up as one
outlying pair, which widens the interval too.

Adaptive repetition (``stop_reason``): pairs are added one ABBA block at a time until the
half-width is under the target or a cap is reached. Stopping when the sample spread happens
to be small would make the final interval too narrow (a plain t interval under this rule
excludes a true ratio of 1 in about 7-8% of levels instead of 5%), so the half-width has a
floor from the *pilot* pairs (Stein's two-stage procedure: ``t(n0-1) * s_pilot / sqrt(n)``
has exactly the nominal coverage whatever n the pilot's spread leads to) and the reported
half-width is the larger of the two. tests/test_verdict.py simulates it under drift.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

CONFIDENCE = 0.95


class Verdict(StrEnum):
    """What a speedup interval says. For a throughput, 'faster' means more tokens/s."""

    FASTER = "faster"
    SLOWER = "slower"
    CANT_TELL = "can't tell"  # the 95% interval includes 1.00x
    NOT_SIGNIFICANT = "not significant"  # one run or one pair: no interval at all
    NO_DATA = "n/a"

    def describe(self) -> str:
        return "can't tell at 95%" if self is Verdict.CANT_TELL else self.value


class Pairing(StrEnum):
    """How a comparison was measured: every output says which."""

    PAIRED = "paired"  # co-resident servers, interleaved phases
    UNPAIRED = "unpaired"  # one server after the other (the sequential sweep)


@dataclass(frozen=True)
class SpeedupInterval:
    """A speedup (above 1 favours the candidate) with its 95% interval and verdict."""

    estimate: float  # geometric mean of the pairs' speedups (NaN without data)
    lo: float  # NaN when there is no interval (fewer than two pairs / repeats)
    hi: float
    n: int  # pairs (paired) or the smaller side's repeats (unpaired)
    verdict: Verdict
    pairing: Pairing

    @property
    def half_width_pct(self) -> float:
        """The interval's half-width in % of the estimate (on the log scale, so lo..hi is
        estimate / (1 + h) .. estimate * (1 + h))."""
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)) or self.lo <= 0:
            return math.nan
        return 100.0 * (math.sqrt(self.hi / self.lo) - 1.0)


NO_INTERVAL = SpeedupInterval(math.nan, math.nan, math.nan, 0, Verdict.NO_DATA, Pairing.PAIRED)


# --- Student's t, without scipy ------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-14:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x)
    front = math.exp(ln + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t (bisection on the CDF: exact to ~1e-10)."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile: need 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


@functools.lru_cache(maxsize=1024)
def t_critical(df: float, confidence: float = CONFIDENCE) -> float:
    """Two-sided critical value: 12.71 at 1 df, 3.18 at 3, 2.26 at 9, 1.96 as df grows."""
    return t_quantile(0.5 + confidence / 2.0, df)


# --- the statistics --------------------------------------------------------------------------


def _mean_sd(xs: Sequence[float]) -> tuple[float, float]:
    n = len(xs)
    m = math.fsum(xs) / n
    var = math.fsum((x - m) ** 2 for x in xs) / (n - 1) if n > 1 else math.nan
    return m, math.sqrt(var)


def _finite_positive(v: float | None) -> bool:
    return v is not None and math.isfinite(v) and v > 0


def log_ratio(base: float | None, cand: float | None, lower_is_better: bool) -> float | None:
    """One pair's log speedup: log(base / cand) for a latency, log(cand / base) for a
    throughput; None when either value is missing or not positive."""
    if not (_finite_positive(base) and _finite_positive(cand)):
        return None
    assert base is not None and cand is not None
    r = math.log(base) - math.log(cand)
    return r if lower_is_better else -r


def verdict_of(lo: float, hi: float) -> Verdict:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return Verdict.NOT_SIGNIFICANT
    if lo > 1.0:
        return Verdict.FASTER
    if hi < 1.0:
        return Verdict.SLOWER
    return Verdict.CANT_TELL


def paired_interval(
    log_ratios: Sequence[float | None],
    *,
    pilot: int | None = None,
    confidence: float = CONFIDENCE,
) -> SpeedupInterval:
    """The speedup's interval from the pairs' log ratios (in run order; None = a pair
    without this metric, left out). ``pilot``: how many of the first pairs set the Stein
    floor of the half-width (the adaptive rule's first stage); None for no floor."""
    xs = [x for x in log_ratios if x is not None and math.isfinite(x)]
    n = len(xs)
    if n == 0:
        return NO_INTERVAL
    m, s = _mean_sd(xs)
    if n < 2:
        return SpeedupInterval(
            math.exp(m), math.nan, math.nan, 1, Verdict.NOT_SIGNIFICANT, Pairing.PAIRED
        )
    h = t_critical(n - 1, confidence) * s / math.sqrt(n)
    if pilot is not None and 2 <= pilot < n:
        _, s0 = _mean_sd(xs[:pilot])
        h = max(h, t_critical(pilot - 1, confidence) * s0 / math.sqrt(n))
    lo, hi = math.exp(m - h), math.exp(m + h)
    return SpeedupInterval(math.exp(m), lo, hi, n, verdict_of(lo, hi), Pairing.PAIRED)


def unpaired_interval(
    base: Sequence[float | None],
    cand: Sequence[float | None],
    lower_is_better: bool,
    confidence: float = CONFIDENCE,
) -> SpeedupInterval:
    """Welch's t on the logs of each side's repeats (runs made at different times: drift
    between them is in the estimate, not in the interval). One run on either side: the
    ratio of the two, 'not significant'."""
    b = [math.log(v) for v in base if v is not None and _finite_positive(v)]
    c = [math.log(v) for v in cand if v is not None and _finite_positive(v)]
    if not b or not c:
        return SpeedupInterval(math.nan, math.nan, math.nan, 0, Verdict.NO_DATA, Pairing.UNPAIRED)
    mb, sb = _mean_sd(b)
    mc, sc = _mean_sd(c)
    d = (mb - mc) if lower_is_better else (mc - mb)
    n = min(len(b), len(c))
    if n < 2:
        est = math.exp(d)
        return SpeedupInterval(
            est, math.nan, math.nan, n, Verdict.NOT_SIGNIFICANT, Pairing.UNPAIRED
        )
    vb, vc = sb * sb / len(b), sc * sc / len(c)
    se = math.sqrt(vb + vc)
    if se == 0:
        df = float(len(b) + len(c) - 2)
    else:
        df = (vb + vc) ** 2 / (vb * vb / (len(b) - 1) + vc * vc / (len(c) - 1))
    h = t_critical(max(df, 1.0), confidence) * se
    lo, hi = math.exp(d - h), math.exp(d + h)
    return SpeedupInterval(math.exp(d), lo, hi, n, verdict_of(lo, hi), Pairing.UNPAIRED)


# --- the adaptive rule and the order of phases ---------------------------------------------


class StopReason(StrEnum):
    """Why a level stopped adding pairs."""

    SETTLED = "settled"  # every watched interval is under the target
    MAX_REPEATS = "max_repeats"
    MAX_LEVEL_S = "max_level_s"


def settled(interval: SpeedupInterval, target_pct: float) -> bool:
    """The interval exists and its half-width is at most ``target_pct`` %."""
    hw = interval.half_width_pct
    return math.isfinite(hw) and hw <= target_pct


def stop_reason(
    pairs: int,
    intervals: Sequence[SpeedupInterval],
    *,
    target_pct: float,
    min_pairs: int,
    max_pairs: int,
    elapsed_s: float,
    max_level_s: float,
) -> StopReason | None:
    """Whether a level has enough pairs (None: run another pair). A level settles, or
    runs out of time, only on whole ABBA blocks (even ``pairs``), so a linear drift always
    cancels in the estimate; ``max_pairs`` ends it wherever it falls."""
    whole = pairs % 2 == 0
    enough = whole and pairs >= min_pairs and bool(intervals)
    if enough and all(settled(iv, target_pct) for iv in intervals):
        return StopReason.SETTLED
    if pairs >= max_pairs:
        return StopReason.MAX_REPEATS
    if whole and pairs >= 2 and elapsed_s >= max_level_s:
        return StopReason.MAX_LEVEL_S
    return None


def balanced_order(round_index: int, labels: Sequence[str]) -> list[str]:
    """The servers' order in round ``round_index`` (0-based): forward, then backward, so
    each server's position averages out over a block (A B | B A; A B C | C B A)."""
    return list(labels) if round_index % 2 == 0 else list(reversed(labels))


def windows_agree(values: Sequence[float | None], k: int, tolerance_pct: float) -> bool:
    """The last ``k`` warm-up windows' values agree: max / min - 1 <= tolerance (a missing
    value never agrees)."""
    if k < 1 or len(values) < k:
        return False
    last = values[-k:]
    if any(not _finite_positive(v) for v in last):
        return False
    lo, hi = min(last), max(last)  # type: ignore[type-var]
    return 100.0 * (hi / lo - 1.0) <= tolerance_pct  # type: ignore[operator]

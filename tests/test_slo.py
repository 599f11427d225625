"""SLOs: the per-request form keeps its meaning, the percentile form judges a load level,
and a level's verdict says whether its own requests can tell (loadgen/results/slo.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from loadgen.config.scenario import SLO, Scenario, SLOMetric, parse_scenario
from loadgen.errors import SpecloadError
from loadgen.results.records import RequestRecord
from loadgen.results.slo import (
    LevelSamples,
    block_length,
    judge,
    level_samples,
    wilson_interval,
)
from loadgen.results.stats import meets_slo, slo_given
from loadgen.results.summary import summarize


def _rec(i: int, ttft: float, *, tokens: int = 5, gap: float = 0.01, ok: bool = True):
    """A request sent at i * 10 ms whose first token came after ``ttft`` s, then one token
    every ``gap`` s."""
    t = i * 0.01
    times = [t + ttft + gap * k for k in range(tokens)] if ok else []
    return RequestRecord(
        request_id=i,
        phase="p",
        scheduled_s=t,
        sent_s=t,
        first_token_s=times[0] if ok else None,
        end_s=times[-1] if ok else None,
        chunk_times=times,
        chunk_tokens=[1] * len(times),
        output_tokens=tokens if ok else None,
        error=None if ok else "boom",
        error_kind=None if ok else "http",
    )


# --- the model ------------------------------------------------------------------------------


def test_plain_form_keeps_its_meaning_and_its_dump() -> None:
    """`ttft_ms: 500` bounds each request (goodput) exactly as before and dumps as the
    number it was; it judges no level."""
    slo = SLO(ttft_ms=500, itl_ms=50)
    assert slo.model_dump()["ttft_ms"] == 500.0 and slo.model_dump()["tpot_ms"] is None
    assert slo.request_limits() == (500.0, None, 50.0, None)
    assert slo.percentile_bounds() == {} and not slo.judges_levels()
    assert SLO.model_validate(slo.model_dump()) == slo  # run.json round trip


def test_percentile_form() -> None:
    slo = SLO.model_validate(
        {"ttft_ms": {"p": 90, "max": 500}, "itl_ms": {"p": 99, "max": 30}, "max_error_rate": 0.01}
    )
    assert slo.describe() == "p90 TTFT <= 500 ms, p99 ITL <= 30 ms, errors <= 1%"
    assert list(slo.percentile_bounds()) == [SLOMetric.TTFT, SLOMetric.ITL]
    # goodput: the TTFT bound bounds each request; a per-token ITL percentile does not
    assert slo.request_limits() == (500.0, None, None, None)
    assert SLO.model_validate(slo.model_dump(mode="json")) == slo
    assert not slo_given(SLO(itl_ms={"p": 90, "max": 5})) and slo_given(slo)


def test_goodput_identical_for_the_plain_form() -> None:
    """The same records, the same plain SLO: the same goodput whether the bound is written
    as a number or as {max: N}; a percentile bound adds its max as each request's bound."""
    recs = [_rec(i, ttft=0.05 * (i % 5)) for i in range(20)]
    a = summarize(recs, duration_s=1.0, slo=SLO(ttft_ms=120))
    b = summarize(recs, duration_s=1.0, slo=SLO.model_validate({"ttft_ms": {"max": 120}}))
    c = summarize(recs, duration_s=1.0, slo=SLO.model_validate({"ttft_ms": {"p": 50, "max": 120}}))
    assert a["request_goodput"] == b["request_goodput"] == c["request_goodput"] == 12.0
    assert meets_slo(SLO(ttft_ms=100), ttft=0.1, tpot=None, max_itl=9, e2e=9)
    assert not meets_slo(SLO(ttft_ms=100), ttft=0.1001, tpot=None, max_itl=9, e2e=9)


@pytest.mark.parametrize(
    ("slo", "field", "words"),
    [
        ({"ttft_ms": {"p": 90}}, "slo.ttft_ms.max", "required"),  # an SLO with no bound
        ({"ttft_ms": {"p": 0, "max": 5}}, "slo.ttft_ms.p", "greater than 0"),
        ({"tpot_ms": {"p": 100, "max": 5}}, "slo.tpot_ms.p", "less than 100"),
        ({"e2e_ms": {"p": 90, "max": -1}}, "slo.e2e_ms.max", "greater than 0"),
        ({"itl_ms": [1, 2]}, "slo.itl_ms", "{p: PERCENTILE, max: MS}"),
        ({"max_error_rate": 2}, "slo.max_error_rate", "less than or equal to 1"),
        ({"ttft_ms": {"p": 90, "max": 5, "q": 1}}, "slo.ttft_ms.q", "unknown field"),
    ],
)
def test_bad_slo_is_one_line_naming_the_field(slo: dict, field: str, words: str) -> None:
    doc = {"load": {"shape": "poisson", "rate": 1}, "num_requests": 2, "slo": slo}
    with pytest.raises(SpecloadError) as e:
        parse_scenario(doc, "s.yaml")
    msg = str(e.value)
    assert "\n" not in msg and f"'{field}'" in msg and words in msg and msg.startswith("s.yaml")


def test_scenario_dump_round_trips_with_percentile_slo() -> None:
    doc = {
        "load": {"shape": "poisson", "rate": 1},
        "num_requests": 2,
        "slo": {"ttft_ms": {"p": 90, "max": 500}, "tpot_ms": 20},
    }
    sc = parse_scenario(doc, "s.yaml")
    assert Scenario.model_validate(sc.model_dump(mode="json")) == sc


# --- the verdict ------------------------------------------------------------------------------


def test_percentile_matches_the_summary_and_judges() -> None:
    """The verdict's percentile is the summary's when nothing failed; pass/fail follows
    the bound; a fail far over it is clear, a pass far under it too."""
    recs = [_rec(i, ttft=0.001 * (i + 1)) for i in range(200)]  # TTFT 1..200 ms
    s = summarize(recs, duration_s=2.0)
    samples = level_samples(recs)
    v = judge(SLO.model_validate({"ttft_ms": {"p": 90, "max": 1000}}), samples)
    got = v.percentiles()["ttft_ms"]["value_ms"]
    assert got == pytest.approx(s["p90_ttft_ms"]) and v.passed and v.clear
    v = judge(SLO.model_validate({"ttft_ms": {"p": 90, "max": 20}}), samples)
    assert not v.passed and v.clear and v.failing() == ["p90 TTFT 180.1 ms > 20"]


def test_close_verdict_is_not_clear() -> None:
    """A bound right at the measured percentile: the interval straddles it either way."""
    rng = np.random.default_rng(3)
    recs = [_rec(i, ttft=float(rng.exponential(0.1))) for i in range(300)]
    samples = level_samples(recs)
    p90 = float(np.percentile(samples.ttft, 90)) * 1000
    for bound in (p90 * 0.98, p90 * 1.02):
        v = judge(SLO.model_validate({"ttft_ms": {"p": 90, "max": bound}}), samples)
        b = v.percentiles()["ttft_ms"]
        assert b["low_ms"] < bound < b["high_ms"] and not v.clear
    assert v.passed  # the second bound is above the estimate


def test_failed_requests_count_against_latency_bounds() -> None:
    """15% failed: they never met their TTFT, so p90 TTFT is decided by failures (inf)
    even though every completed request was fast; the error rate fails too."""
    recs = [_rec(i, ttft=0.001, ok=i % 20 >= 3) for i in range(200)]
    slo = SLO.model_validate({"ttft_ms": {"p": 90, "max": 100}, "max_error_rate": 0.05})
    v = judge(slo, level_samples(recs))
    assert not v.passed and v.clear
    assert v.percentiles()["ttft_ms"]["value_ms"] == "inf"
    assert v.errors.rate == pytest.approx(0.15)
    assert summarize(recs, duration_s=1.0)["p90_ttft_ms"] < 2  # the summary leaves them out


def test_itl_percentile_is_per_token_and_pools() -> None:
    """Per-token ITL: a request's tokens count once each; pooling two runs of a level is
    judging the union of their requests."""
    fast = [_rec(i, ttft=0.001, tokens=11, gap=0.002) for i in range(50)]
    slow = [_rec(50 + i, ttft=0.001, tokens=11, gap=0.020) for i in range(50)]
    slo = SLO.model_validate({"itl_ms": {"p": 40, "max": 10}})
    a, b = level_samples(fast), level_samples(slow)
    assert judge(slo, a).passed and not judge(slo, b).passed
    pooled = LevelSamples.pool([a, b])
    assert pooled.n == 100 and pooled.itl.size == 1000
    assert judge(slo, pooled).percentiles()["itl_ms"]["value_ms"] == pytest.approx(2.0)
    assert judge(slo, level_samples(fast + slow)).percentiles() == judge(slo, pooled).percentiles()


def test_no_failures_is_a_clear_pass_of_the_error_bound() -> None:
    slo = SLO(max_error_rate=0.01)
    v = judge(slo, level_samples([_rec(i, 0.001) for i in range(50)]))
    assert v.passed and v.clear and v.errors.high > 0.01  # the interval alone could not say
    v = judge(slo, level_samples([_rec(i, 0.001, ok=i != 7) for i in range(50)]))
    assert not v.passed and not v.clear  # 1 of 50: over 1%, but not clearly


def test_empty_level_never_passes() -> None:
    v = judge(SLO(max_error_rate=0.5), level_samples([]))
    assert not v.passed and not v.clear


def test_block_bootstrap_interval_covers() -> None:
    """i.i.d. requests: the 95% interval of p90 covers the true p90 in most of 60 samples.
    The percentile bootstrap of a tail quantile undercovers at n = 300 (measured over 300
    samples: 92% resampling single requests, 88% in blocks), so the bar is 80%: an interval
    that were much too narrow would fall far below it."""
    true = -math.log(0.1) * 0.1  # p90 of an exponential with mean 100 ms
    covered = 0
    for seed in range(60):
        rng = np.random.default_rng(seed)
        recs = [_rec(i, ttft=float(rng.exponential(0.1))) for i in range(300)]
        b = judge(
            SLO.model_validate({"ttft_ms": {"p": 90, "max": 1}}), level_samples(recs), seed=seed
        ).percentiles()["ttft_ms"]
        covered += b["low_ms"] <= true * 1000 <= b["high_ms"]
    assert covered >= 48, covered


def test_helpers() -> None:
    assert block_length(1) == 1 and block_length(400) == 20
    lo, hi = wilson_interval(0, 100, 0.95)
    assert lo == 0 and hi == pytest.approx(0.037, abs=0.001)
    lo, hi = wilson_interval(50, 100, 0.95)
    assert lo == pytest.approx(0.404, abs=0.001) and hi == pytest.approx(0.596, abs=0.001)

"""Arrival schedules: the statistics each shape promises, determinism, limits, traces."""

from __future__ import annotations

import numpy as np
import pytest

from loadgen.config.shapes import OPEN_SHAPES
from loadgen.config.shapes.base import (
    SHAPES,
    build_schedule,
    level_axis_name,
    level_from_label,
    register,
)
from loadgen.config.shapes.burst import BurstLoad
from loadgen.config.shapes.concurrency import ConcurrencyLoad
from loadgen.config.shapes.constant import ConstantLoad
from loadgen.config.shapes.gamma import GammaLoad
from loadgen.config.shapes.poisson import PoissonLoad
from loadgen.config.shapes.ramp import RampLoad, ramp_cumulative_rate, ramp_inverse
from loadgen.config.shapes.trace import TraceLoad
from loadgen.errors import SpecloadError


def _gaps(load, n=20_000, seed=1) -> np.ndarray:
    s = build_schedule(load, num_requests=n, duration_s=None, seed=seed)
    assert s.offsets is not None
    return np.diff(s.offsets)


def test_registry_covers_every_shape():
    assert set(SHAPES) == {
        "poisson", "gamma", "constant", "burst", "ramp", "trace", "concurrency"
    }  # fmt: skip
    assert set(OPEN_SHAPES) == set(SHAPES) - {"concurrency"}


def test_open_schedule_is_sorted_float64_from_zero():
    for load in (PoissonLoad(rate=5), GammaLoad(rate=5, burstiness=0.5), ConstantLoad(rate=5)):
        s = build_schedule(load, num_requests=500, duration_s=None, seed=3)
        assert s.offsets is not None and s.offsets.dtype == np.float64
        assert s.offsets[0] == 0.0
        assert np.all(np.diff(s.offsets) >= 0)
        assert len(s.offsets) == 500 and s.num_requests == 500
        assert not s.closed


def test_poisson_mean_and_cv():
    rate = 8.0
    g = _gaps(PoissonLoad(rate=rate))
    assert g.mean() == pytest.approx(1 / rate, rel=0.03)
    assert g.std() / g.mean() == pytest.approx(1.0, rel=0.03)


@pytest.mark.parametrize("burstiness", [0.25, 1.0, 4.0])
def test_gamma_cv_follows_burstiness(burstiness):
    rate = 4.0
    g = _gaps(GammaLoad(rate=rate, burstiness=burstiness), n=40_000)
    assert g.mean() == pytest.approx(1 / rate, rel=0.03)
    assert g.std() / g.mean() == pytest.approx(1 / np.sqrt(burstiness), rel=0.03)


def test_constant_gaps_exact():
    g = _gaps(ConstantLoad(rate=3.0), n=1000)
    assert g.std() == 0.0 or g.std() / g.mean() < 1e-12
    assert g == pytest.approx(np.full(999, 1 / 3.0))


def test_constant_duration_count():
    s = build_schedule(ConstantLoad(rate=2.0), num_requests=None, duration_s=10.0, seed=0)
    assert s.offsets is not None
    assert len(s.offsets) == 20 and s.offsets[-1] == pytest.approx(9.5)


def test_burst_waves():
    s = build_schedule(BurstLoad(size=4, interval_s=2.5), num_requests=10, duration_s=None, seed=0)
    assert s.offsets is not None
    assert list(s.offsets) == [0, 0, 0, 0, 2.5, 2.5, 2.5, 2.5, 5.0, 5.0]


def test_burst_duration_and_zero_interval():
    s = build_schedule(BurstLoad(size=3, interval_s=1.0), num_requests=None, duration_s=2.5, seed=0)
    assert s.offsets is not None and list(s.offsets) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    s0 = build_schedule(BurstLoad(size=3, interval_s=0), num_requests=7, duration_s=None, seed=0)
    assert s0.offsets is not None and list(s0.offsets) == [0.0] * 7
    with pytest.raises(SpecloadError, match="interval_s"):
        build_schedule(BurstLoad(size=3, interval_s=0), num_requests=None, duration_s=5, seed=0)


def test_ramp_inverse_roundtrip():
    for s, e in ((2.0, 20.0), (20.0, 2.0), (5.0, 5.0)):
        t = np.linspace(0, 200, 401)
        lam = ramp_cumulative_rate(t, s, e, 100.0)
        assert ramp_inverse(lam, s, e, 100.0) == pytest.approx(t, abs=1e-9)


def test_ramp_window_counts_match_rates():
    # rate 2 -> 20 over 100 s then 20: Λ(t) = 2t + 0.09t² on [0, 100].
    load = RampLoad(start_rate=2.0, end_rate=20.0, ramp_s=100.0)
    first = last = held = 0
    seeds = range(20)
    for seed in seeds:
        s = build_schedule(load, num_requests=None, duration_s=120.0, seed=seed)
        assert s.offsets is not None and s.offsets[-1] < 120.0
        first += np.count_nonzero(s.offsets < 10)
        last += np.count_nonzero((s.offsets >= 90) & (s.offsets < 100))
        held += np.count_nonzero(s.offsets >= 100)
    n = len(seeds)
    # Expected: Λ(10)=29 (+1 for the request at 0), Λ(100)-Λ(90)=191, 20 s at 20/s = 400.
    assert first / n == pytest.approx(30, rel=0.08)
    assert last / n == pytest.approx(191, rel=0.05)
    assert held / n == pytest.approx(400, rel=0.05)


def test_determinism_and_seed_sensitivity():
    for load in (
        PoissonLoad(rate=10),
        GammaLoad(rate=10, burstiness=0.3),
        RampLoad(start_rate=1, end_rate=10, ramp_s=5),
    ):
        a = build_schedule(load, num_requests=200, duration_s=None, seed=42)
        b = build_schedule(load, num_requests=200, duration_s=None, seed=42)
        c = build_schedule(load, num_requests=200, duration_s=None, seed=43)
        assert a.offsets is not None and b.offsets is not None and c.offsets is not None
        assert np.array_equal(a.offsets, b.offsets)
        assert not np.array_equal(a.offsets, c.offsets)


def test_duration_cutoff_and_whichever_first():
    load = PoissonLoad(rate=50)
    by_dur = build_schedule(load, num_requests=None, duration_s=200.0, seed=7)
    assert by_dur.offsets is not None
    assert by_dur.offsets[-1] < 200.0
    # about rate * duration arrivals (Poisson sd ~ 100 here): spans several gap blocks
    assert len(by_dur.offsets) == pytest.approx(10_000, rel=0.04)
    # count limit first: a prefix of the same stream
    by_n = build_schedule(load, num_requests=300, duration_s=200.0, seed=7)
    assert by_n.offsets is not None
    assert np.array_equal(by_n.offsets, by_dur.offsets[:300])
    # duration limit first
    both = build_schedule(load, num_requests=100_000, duration_s=200.0, seed=7)
    assert both.offsets is not None and np.array_equal(both.offsets, by_dur.offsets)
    assert both.num_requests == len(by_dur.offsets) and both.duration_s == 200.0


def test_max_concurrency_passes_through():
    s = build_schedule(
        PoissonLoad(rate=1, max_concurrency=8), num_requests=5, duration_s=None, seed=0
    )
    assert s.concurrency == 8


def test_closed_loop_schedule():
    s = build_schedule(ConcurrencyLoad(concurrency=16), num_requests=None, duration_s=30, seed=0)
    assert s.closed and s.offsets is None
    assert s.concurrency == 16 and s.num_requests is None and s.duration_s == 30
    s2 = build_schedule(ConcurrencyLoad(concurrency=4), num_requests=100, duration_s=None, seed=0)
    assert s2.closed and s2.num_requests == 100


def test_needs_a_limit():
    with pytest.raises(SpecloadError, match="num_requests"):
        build_schedule(PoissonLoad(rate=1), num_requests=None, duration_s=None, seed=0)


def test_absurd_schedule_refused():
    with pytest.raises(SpecloadError, match="duration_s"):
        build_schedule(ConstantLoad(rate=1e6), num_requests=None, duration_s=3600, seed=0)


def test_trace_plain_and_jsonl(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("# offsets\n10.0\n12\n\n11.5\n")
    s = build_schedule(
        TraceLoad(path=str(p), speedup=2.0), num_requests=None, duration_s=None, seed=0
    )
    assert s.offsets is not None and list(s.offsets) == [0.0, 0.75, 1.0]
    j = tmp_path / "t.jsonl"
    j.write_text('{"t": 3}\n{"timestamp": 1.0}\n{"t": 2, "x": 1}\n')
    s = build_schedule(TraceLoad(path=str(j)), num_requests=2, duration_s=None, seed=0)
    assert s.offsets is not None and list(s.offsets) == [0.0, 1.0]
    s = build_schedule(TraceLoad(path=str(j)), num_requests=None, duration_s=1.5, seed=0)
    assert s.offsets is not None and list(s.offsets) == [0.0, 1.0]


@pytest.mark.parametrize(
    ("content", "lineno"),
    [("1\n2\nabc\n", 3), ('{"t": 1}\n{"x": 2}\n', 2), ("1\n{bad\n", 2), ("0\nnan\n", 2)],
)
def test_trace_bad_line_names_file_and_line(tmp_path, content, lineno):
    p = tmp_path / "bad.txt"
    p.write_text(content)
    with pytest.raises(SpecloadError, match=rf"bad\.txt:{lineno}:"):
        build_schedule(TraceLoad(path=str(p)), num_requests=None, duration_s=None, seed=0)


def test_trace_missing_or_empty(tmp_path):
    with pytest.raises(SpecloadError, match=r"load\.path"):
        build_schedule(
            TraceLoad(path=str(tmp_path / "nope")), num_requests=1, duration_s=None, seed=0
        )
    (tmp_path / "e.txt").write_text("\n# nothing\n")
    with pytest.raises(SpecloadError, match="no offsets"):
        build_schedule(
            TraceLoad(path=str(tmp_path / "e.txt")), num_requests=1, duration_s=None, seed=0
        )


def test_each_shape_says_what_the_flags_set_and_how_its_level_reads():
    cases = [
        (PoissonLoad(rate=2), "rate=2.0", "rate", "max_concurrency", False),
        (GammaLoad(rate=3, burstiness=0.5), "rate=3.0", "rate", "max_concurrency", False),
        (ConstantLoad(rate=1), "rate=1.0", "rate", "max_concurrency", False),
        (BurstLoad(size=8, interval_s=2), "size=8", None, "max_concurrency", False),
        (RampLoad(start_rate=1, end_rate=4, ramp_s=9), "ramp", None, "max_concurrency", False),
        (TraceLoad(path="x"), "trace", None, "max_concurrency", False),
        (ConcurrencyLoad(concurrency=4), "concurrency=4", None, "concurrency", True),
    ]
    for load, label, rate_field, conc_field, closed in cases:
        cls = type(load)
        assert load.level_label() == label
        assert (cls.rate_field, cls.concurrency_field, cls.closed) == (
            rate_field,
            conc_field,
            closed,
        )
    assert {load.shape for load, *_ in cases if not type(load).closed} == set(OPEN_SHAPES)


def test_registry_refuses_a_second_shape_of_one_name():
    class Again(PoissonLoad):
        pass

    with pytest.raises(ValueError, match="load shape 'poisson' registered twice"):
        register(Again)
    assert SHAPES["poisson"] is PoissonLoad


def test_level_from_a_phase_name_and_axis_names():
    assert level_from_label("rate=2.0") == 2.0
    assert level_from_label("rate=2,burstiness=0.5 r2") == 2.0
    assert level_from_label("concurrency=16") == 16.0
    assert level_from_label("n64") == 64.0
    assert level_from_label("ramp") is None and level_from_label("rate=inf") is None
    assert level_axis_name("concurrency") == "concurrency (requests in flight)"
    assert level_axis_name("burst") == "burst size"
    assert level_axis_name("ramp") == "end rate (req/s)"
    assert level_axis_name("poisson") == level_axis_name(None) == "request rate (req/s)"

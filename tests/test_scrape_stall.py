"""loadgen's /metrics gauge sampler during a phase (``server_gauges_s``) and the pure parts of
benchmarks/scrape_stall.py, which measured what the sampler costs a vLLM server's streams
(docs/metrics.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.scrape_stall import hist_quantiles, pct
from loadgen.config.scenario import parse_scenario
from loadgen.engine.run import run_scenario
from loadgen.errors import SpecloadError


def _scenario(gauges_s: float):
    return parse_scenario(
        {
            "name": "g",
            "load": {"shape": "concurrency", "concurrency": 2},
            "num_requests": 6,
            "prompts": {"source": "base_prompt"},
            "output_tokens": 20,
            "server_gauges_s": gauges_s,
        },
        "test",
    )


@pytest.mark.parametrize("gauges_s", [0.0, 0.1])
def test_sampler_runs_only_when_asked(mock, tmp_path: Path, gauges_s: float) -> None:
    _, url = mock("--itl-ms", "20")
    res = run_scenario(_scenario(gauges_s), base_url=url, output_dir=tmp_path, progress=False)
    (phase,) = res.phases
    samples = tmp_path / phase / "server_samples.jsonl"
    summary = res.phases[phase]
    if gauges_s:
        rows = [json.loads(x) for x in samples.read_text().splitlines()]
        assert len(rows) >= 3 and summary["mean_num_requests_running"] is not None
    else:
        assert not samples.exists() and summary["mean_num_requests_running"] is None
    # the counters around the phase are scraped either way
    assert (tmp_path / phase / "metrics_before.prom").exists()


def test_bad_interval_is_one_line() -> None:
    with pytest.raises(SpecloadError, match="server_gauges_s"):
        _scenario(-1.0)


def test_percentile_and_histogram_quantiles() -> None:
    assert pct([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert pct(list(range(101)), 0.99) == pytest.approx(99.0)
    name = "vllm:inter_token_latency_seconds"

    def text(counts: dict[str, float], total_s: float) -> str:
        lines = [f'{name}_bucket{{le="{le}",model_name="m"}} {c}' for le, c in counts.items()]
        return "\n".join([*lines, f'{name}_sum{{model_name="m"}} {total_s}'])

    before = text({"0.01": 0, "0.02": 0, "+Inf": 0}, 0.0)
    # 100 gaps: 90 in (0, 10 ms], 10 in (10, 20 ms]
    after = text({"0.01": 90, "0.02": 100, "+Inf": 100}, 0.8)
    q = hist_quantiles(before, after)
    assert q["server_p50_ms"] == pytest.approx(10 * 50 / 90)
    assert q["server_p99_ms"] == pytest.approx(10 + 10 * 9 / 10)
    assert q["server_mean_ms"] == pytest.approx(8.0)

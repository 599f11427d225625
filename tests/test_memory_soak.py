"""Smoke test of benchmarks/memory_soak.py: the RSS maths, and a tiny run end to end (mock +
``python -m loadgen`` subprocesses, RSS sampled, JSON and Markdown written)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "memory_soak.py"
_spec = importlib.util.spec_from_file_location("memory_soak", _PATH)
assert _spec is not None and _spec.loader is not None
ms = importlib.util.module_from_spec(_spec)
sys.modules["memory_soak"] = ms
_spec.loader.exec_module(ms)

MB = ms.MB


def test_slope_and_milestones_from_samples() -> None:
    # 2 MB per 10k requests = 20 MB per 100k, then a summary spike after the last request
    samples = [ms.Sample(float(i), i * 1000, 60 * MB + i * 1000 * 200, None) for i in range(41)]
    samples.append(ms.Sample(41.0, 40_000, 100 * MB, 101 * MB))
    a = ms.analyse(samples, 40_000)
    assert a["slope_mb_per_100k_second_half"] == pytest.approx(200 * 100_000 / MB, abs=0.01)
    assert a["rss_mb_after_10k"] == round((60 * MB + 10_000 * 200) / MB, 1)
    assert a["rss_mb_end"] == 100.0 and a["rss_mb_peak_hwm"] == 101.0
    assert a["rss_mb_last_during_run"] < 100.0  # the spike is not part of the run
    flat = [ms.Sample(float(i), i * 100, 70 * MB, None) for i in range(50)]
    assert ms.analyse(flat, 5000)["slope_mb_per_100k_second_half"] == 0.0
    assert ms.slope_mb_per_100k(flat[:2], 0, 10**9) is None  # too few samples


def test_tiny_soak_end_to_end(tmp_path: Path) -> None:
    rc = ms.main(
        ["--requests", "1500", "--warmup", "16", "--interval", "0.2", "--name", "smoke",
         "--out", str(tmp_path)]
    )  # fmt: skip
    assert rc == 0
    r = json.loads((tmp_path / "smoke.json").read_text())
    assert r["requests_measured"] == 1500 and r["records_on_disk"] == 1516
    assert r["failed"] == 0 and r["requests_per_s"] > 0
    assert 20 < r["rss_mb_start"] <= r["rss_mb_peak_hwm"] < 1000
    assert r["samples"] >= 3 and len(r["samples_t_requests_rss_mb"]) == r["samples"]
    md = (tmp_path / "smoke.md").read_text()
    assert "RSS peak" in md and "shared" in md and "1,500" in md

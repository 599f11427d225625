"""The mock's drift (``--drift``): a server whose speed changes over time, so tests can show
what drift does to a comparison (tests/test_paired.py) against a known truth."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path

import httpx
import pytest

from loadgen.errors import SpecloadError
from loadgen.mock.config import MockConfig
from loadgen.mock.drift import Drift, parse_drift
from loadgen.mock.process import mock_process


def test_parse_drift_and_factor() -> None:
    assert parse_drift("none") == Drift() and not Drift().active
    d = parse_drift("linear:0.01, step:1.5@20")
    assert d == Drift(0.01, 20.0, 1.5) and d.active
    assert d.factor(0) == 1.0
    assert d.factor(10) == pytest.approx(1.1)
    assert d.factor(20) == pytest.approx(1.2 * 1.5)
    assert parse_drift("linear:-0.5").factor(10) == 0.05  # held above zero
    assert parse_drift("step:0.5@0").factor(0) == 0.5


@pytest.mark.parametrize("bad", ["linear", "linear:x", "step:2", "step:0@1", "step:2@-1", "up:1"])
def test_bad_drift_is_one_line(bad: str) -> None:
    with pytest.raises(SpecloadError, match=r"^--drift: expected"):
        MockConfig(drift=bad)


def test_config_round_trips_through_the_flags() -> None:
    cfg = MockConfig(drift="step:1.1@3", drift_origin=123.5)
    args = cfg.to_args()
    assert args[args.index("--drift") + 1] == "step:1.1@3"
    assert args[args.index("--drift-origin") + 1] == "123.5"


def _itl_of_one_request(url: str) -> float:
    """The mean gap between the chunks of one streamed request, as the client sees it."""

    async def go() -> float:
        times: list[float] = []
        body = {"model": "mock-model", "prompt": "x", "max_tokens": 6, "stream": True}
        async with (
            httpx.AsyncClient(timeout=10) as c,
            c.stream("POST", f"{url}/v1/completions", json=body) as r,
        ):
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    times.append(time.perf_counter())
        return (times[-1] - times[0]) / (len(times) - 1)

    return asyncio.run(go())


def test_a_step_slows_the_server_from_its_time_on(tmp_path: Path) -> None:
    """ITL 20 ms, x3 from 0.6 s after the origin: a request before it and one after."""
    log = tmp_path / "mock.jsonl"
    origin = time.time()
    args = ["--itl-ms", "20", "--drift", "step:3@0.6", "--drift-origin", str(origin)]
    with mock_process([*args, "--log", str(log), "--log-flush-s", "0.05"]) as url:
        before = _itl_of_one_request(url)
        while time.time() < origin + 0.7:
            time.sleep(0.05)
        after = _itl_of_one_request(url)
    print(f"ITL before the step {before * 1e3:.1f} ms, after {after * 1e3:.1f} ms")
    assert before == pytest.approx(0.020, abs=0.006)
    assert after == pytest.approx(0.060, abs=0.010)
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    gaps = [[b[0] - a[0] for a, b in itertools.pairwise(r["chunks"])] for r in recs]
    assert max(gaps[0]) < 0.04 and min(gaps[1]) > 0.05  # the server's own log agrees

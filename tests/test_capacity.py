"""The capacity search and the saturation sweep against a server of known limit: the mock's
queueing mode (slots served first come first served, a fixed time per token), whose latency
percentiles tests/queueing.py computes exactly for the very arrivals each probe sends.

Each search must land within its stated resolution of the computed crossing, in at most
8 probes, open loop (Poisson) and closed loop (concurrency); a server failing at the lowest
probe gets "below", one never failing up to the cap gets "at least".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loadgen.config.scenario import parse_scenario
from loadgen.engine.run import run_scenario
from loadgen.mock.process import mock_process
from loadgen.results.files import read_records
from tests.queueing import closed_loop_waits, crossing, fifo_waits, poisson_offsets

SLOTS, TOKEN_S, TOKENS = 4, 0.0125, 4  # service S = 50 ms: 80 req/s at most
SERVICE_S = TOKEN_S * TOKENS
MOCK = ["--max-num-seqs", str(SLOTS), "--token-ms", str(TOKEN_S * 1e3)]


def _scenario(load: dict, search: dict, slo: dict, n: int, warmup: int = 4) -> Any:
    doc = {
        "name": "capacity-test",
        "load": load,
        "search": {"kind": "capacity", **search},
        "num_requests": n,
        "warmup_requests": warmup,
        "prompts": {"source": "base_prompt", "base_prompt": "w1 w2"},
        "output_tokens": TOKENS,
        "slo": slo,
    }
    return parse_scenario(doc, "capacity-test")


def _search(url: str, out: Path, scenario: Any) -> dict[str, Any]:
    res = run_scenario(scenario, base_url=url, output_dir=out, progress=False)
    assert res.complete and res.exit_code == 0
    doc = json.loads((out / "capacity.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["phases"]) == sorted(p["slug"] for p in doc["probes"])
    for p in doc["probes"]:  # every probe is a phase on disk, like any other
        assert (out / p["slug"] / "requests.jsonl").is_file()
        assert (out / p["slug"] / "summary.json").is_file()
    return doc


def test_open_loop_lands_within_resolution(tmp_path: Path) -> None:
    """Poisson arrivals, 4 slots of S = 100 ms (40 req/s at most), p90 TTFT <= 185 ms. The
    crossing is computed by running the FIFO queue on the exact schedule a probe of that rate
    sends (seed 0, 100 requests); repeats are off, since a repeat draws other arrivals
    (test_capacity_search.py tests those). Each probe's verdict must be the one the queue
    gives for the times its requests actually left (a busy client sends some late)."""
    n, bound, res, token_s = 100, 0.185, 0.05, 0.025
    service = TOKENS * token_s

    def p90_ttft(offsets: np.ndarray) -> float:
        return float(np.percentile(fifo_waits(offsets, service, SLOTS) + token_s, 90))

    truth = crossing(lambda rate: p90_ttft(poisson_offsets(rate, n, seed=0)), bound, 5.0, 100.0)
    sc = _scenario(
        {"shape": "poisson", "rate": 15},
        {"max": 400, "resolution": res, "max_probes": 8, "repeat_close": 0},
        {"ttft_ms": {"p": 90, "max": bound * 1e3}},
        n,
    )
    with mock_process(["--max-num-seqs", str(SLOTS), "--token-ms", str(token_s * 1e3)]) as url:
        doc = _search(url, tmp_path, sc)
    cap = doc["capacity"]
    probes = [(p["level"], p["verdict"], p["percentiles"]["ttft_ms"]["value_ms"],
               p["p99_dispatch_lag_ms"]) for p in doc["probes"]]  # fmt: skip
    print(f"computed crossing {truth:.2f} req/s; found {cap['text']}; probes {probes}")
    assert doc["stop"] == "resolved" and len(doc["probes"]) <= 8
    assert cap["kind"] == "estimate" and abs(cap["value"] - truth) <= res * truth
    assert cap["value"] <= truth <= cap["value"] * (1 + res)
    for p in doc["probes"]:
        sent = sorted(r.sent_s for r in read_records(tmp_path / p["slug"] / "requests.jsonl"))
        expect = p90_ttft(np.array(sent) - sent[0])
        assert p["verdict"] == ("pass" if expect <= bound else "fail"), (p["level"], expect)


def test_closed_loop_lands_on_the_computed_concurrency(tmp_path: Path) -> None:
    """Concurrency, 3 slots, S = 60 ms, p90 TTFT <= 105 ms (a wait of one service time
    passes, two fail). Closed-loop clients queue in rounds; the largest concurrency whose
    p90 TTFT meets the bound is computed by simulating those rounds."""
    slots, token_s, n, bound = 3, 0.015, 60, 0.105

    def p90_ttft(c: int) -> float:
        return float(np.percentile(closed_loop_waits(c, n, TOKENS * token_s, slots) + token_s, 90))

    truth = max(c for c in range(1, 40) if p90_ttft(c) <= bound)
    sc = _scenario(
        {"shape": "concurrency", "concurrency": 1},
        {"max": 64, "max_probes": 8},
        {"ttft_ms": {"p": 90, "max": bound * 1e3}},
        n,
    )
    with mock_process(["--max-num-seqs", str(slots), "--token-ms", str(token_s * 1e3)]) as url:
        doc = _search(url, tmp_path, sc)
    cap = doc["capacity"]
    print(f"computed {truth}; found {cap['text']}; probes "
          f"{[(p['phase'], p['verdict']) for p in doc['probes']]}")  # fmt: skip
    assert truth == 6  # ceil((c - slots) / slots) service times of wait at p90
    assert doc["stop"] == "resolved" and len(doc["probes"]) <= 8
    assert (cap["value"], cap["high"]) == (truth, truth + 1)
    assert doc["unit"] == "concurrency" and doc["field"] == "concurrency"


@pytest.mark.parametrize(
    ("bound_ms", "search", "expect"),
    [
        # the first token alone takes 12.5 ms: nothing meets 5 ms
        (5, {"min": 10}, ("below", "below the lowest probe, 10 req/s", [40, 20, 10])),
        (500, {"max": 40}, ("at_least", "at least 40 req/s", [10, 20, 40])),
    ],
)
def test_below_the_lowest_probe_and_at_least_the_cap(
    tmp_path: Path, bound_ms: float, search: dict, expect: tuple
) -> None:
    kind, text, levels = expect
    sc = _scenario(
        {"shape": "poisson", "rate": levels[0]},
        search,
        {"ttft_ms": {"p": 90, "max": bound_ms}},
        20,
        warmup=1,
    )
    with mock_process(MOCK) as url:
        doc = _search(url, tmp_path, sc)
    cap = doc["capacity"]
    assert (
        cap["kind"] == kind
        and cap["text"] == text
        and cap["value"] is (None if kind == "below" else cap["value"])
    )
    assert [p["level"] for p in doc["probes"]] == levels
    assert doc["stop"] == ("below_floor" if kind == "below" else "at_cap")


def test_saturation_sweep_spans_the_servers_own_range(tmp_path: Path) -> None:
    """One in flight gives 1/S = 20 req/s, 16 in flight the 4 slots' 80 req/s; the rates
    run evenly between the two, measured, and only they are the run's phases."""
    doc = {
        "name": "saturation-test",
        "load": {"shape": "poisson", "rate": 1},
        "search": {"kind": "saturation", "levels": 3, "saturation_concurrency": 16},
        "num_requests": 40,
        "warmup_requests": 2,
        "prompts": {"source": "base_prompt", "base_prompt": "w1 w2"},
        "output_tokens": TOKENS,
    }
    with mock_process(MOCK) as url:
        res = run_scenario(
            parse_scenario(doc, "s"), base_url=url, output_dir=tmp_path, progress=False
        )
    assert res.complete
    sat = json.loads((tmp_path / "saturation.json").read_text())
    low = sat["calibration"]["synchronous"]["request_throughput"]
    high = sat["calibration"]["throughput"]["request_throughput"]
    assert low == pytest.approx(1 / SERVICE_S, rel=0.15)
    assert high == pytest.approx(SLOTS / SERVICE_S, rel=0.15)
    assert sat["rates"] == pytest.approx([low, (low + high) / 2, high], rel=1e-3)
    assert list(res.phases) == sat["phases"] == [f"rate={r}" for r in sat["rates"]]
    assert (tmp_path / "calibration" / "throughput" / "requests.jsonl").is_file()


def test_command_line_search(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m loadgen --search capacity --slo-ttft-p90-ms ...` on any scenario: the
    answer is the last line printed, and the run directory holds capacity.json."""
    from loadgen.cli import main

    sc = tmp_path / "s.yaml"
    sc.write_text(json.dumps({
        "load": {"shape": "poisson", "rate": 20}, "num_requests": 30,
        "prompts": {"source": "base_prompt", "base_prompt": "w1 w2"},
        "output_tokens": TOKENS, "slo": {"ttft_ms": 1000},
    }))  # fmt: skip
    with mock_process(MOCK) as url:
        code = main(["--scenario", str(sc), "--base-url", url, "--output-dir",
                     str(tmp_path / "out"), "--search", "capacity", "--slo-ttft-p90-ms", "500",
                     "--max-probes", "2", "--no-progress"])  # fmt: skip
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert out[-1] == (
        "capacity at p90 TTFT <= 500 ms: at least 40 req/s [2 probes; stopped: "
        "search.max_probes reached]"
    )
    doc = json.loads((tmp_path / "out" / "capacity.json").read_text())
    assert [p["phase"] for p in doc["probes"]] == ["rate=20.0", "rate=40.0"]

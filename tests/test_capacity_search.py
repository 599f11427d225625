"""The capacity search's decisions (loadgen/engine/search.py), its scenario block
(loadgen/config/search.py) and its run (loadgen/engine/capacity.py) on a simulated server:
fast, deterministic, no network. The searches against a live server are test_capacity.py."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from loadgen.config.scenario import Scenario, parse_scenario
from loadgen.engine.capacity import CapacityRun
from loadgen.engine.context import PhasePlan
from loadgen.engine.search import CapacitySearch
from loadgen.engine.stop import StopReason, StopSignal
from loadgen.errors import SpecloadError
from loadgen.results.capacity import Capacity, CapacityKind, SearchStop
from loadgen.results.files import RecordWriter, ResultsDir
from loadgen.results.records import RequestRecord


def _search(**kw: Any) -> CapacitySearch:
    args = {
        "start": 1.0,
        "cap": None,
        "floor": 0.125,
        "resolution": 0.05,
        "integer": False,
        "max_probes": 30,
        "repeat_close": 1,
    }
    return CapacitySearch(**{**args, **kw})


def _drive(s: CapacitySearch, truth: float, unclear: set[float] = frozenset()) -> list[tuple]:
    """Run the state machine against a server that meets the SLO up to ``truth``; levels in
    ``unclear`` give verdicts within their noise."""
    seen = []
    while (p := s.next_probe()) is not None:
        seen.append((p.level, p.run))
        s.record(p.level, p.level <= truth, p.level not in unclear)
    return seen


# --- the state machine -------------------------------------------------------------------


@pytest.mark.parametrize("truth", [1.0, 1.7, 3.14159, 9.99, 40.0, 63.9])
@pytest.mark.parametrize("start", [0.5, 1.0, 3.0])
def test_brackets_then_bisects_to_the_resolution(truth: float, start: float) -> None:
    s = _search(start=start, floor=0.01)
    probes = _drive(s, truth)
    cap = s.capacity("req/s")
    assert s.stop is SearchStop.RESOLVED and cap.kind is CapacityKind.ESTIMATE
    assert cap.value is not None and cap.high is not None
    assert cap.value <= truth < cap.high <= cap.value * 1.05 + 1e-9
    assert abs(cap.value - truth) <= 0.05 * truth
    # doublings (or halvings) to the bracket, then one bisection per halving of [x, 2x]
    assert len(probes) <= abs(math.log2(truth / start)) + 2 + math.ceil(math.log2(1 / 0.05))
    assert len(set(probes)) == len(probes)


def test_concurrency_is_whole_and_resolves_to_one_step() -> None:
    s = _search(integer=True, floor=1)
    assert _drive(s, 6) == [(1, 1), (2, 1), (4, 1), (8, 1), (6, 1), (7, 1)]
    cap = s.capacity("concurrency")
    assert (cap.value, cap.low, cap.high) == (6, 6, 7) and s.stop is SearchStop.RESOLVED
    assert cap.text() == "6 concurrency (interval 6-7)"


def test_at_least_the_cap() -> None:
    s = _search(start=4, cap=50)
    assert [lv for lv, _ in _drive(s, 1e9)] == [4, 8, 16, 32, 50]
    cap = s.capacity("req/s")
    assert s.stop is SearchStop.AT_CAP and cap.kind is CapacityKind.AT_LEAST
    assert cap.text() == "at least 50 req/s" and cap.high is None


def test_below_the_lowest_probe() -> None:
    s = _search(start=4, floor=0.5)
    assert [lv for lv, _ in _drive(s, 0.1)] == [4, 2, 1, 0.5]
    cap = s.capacity("req/s")
    assert s.stop is SearchStop.BELOW_FLOOR and cap.kind is CapacityKind.BELOW
    assert cap.value is None and cap.text() == "below the lowest probe, 0.5 req/s"


def test_halves_then_bisects() -> None:
    s = _search(start=8, floor=0.5)
    probes = _drive(s, 2.5)
    assert [lv for lv, _ in probes[:3]] == [8, 4, 2]
    assert s.capacity("").value == pytest.approx(2.5, rel=0.05)


def test_a_close_verdict_is_repeated_then_the_search_moves_on() -> None:
    s = _search(start=1, repeat_close=2)
    probes = _drive(s, 3.3, unclear={2.0, 4.0})
    assert probes[:5] == [(1, 1), (2, 1), (2, 2), (2, 3), (4, 1)]
    assert (4, 2) in probes and (4, 4) not in probes
    assert all(run == 1 for lv, run in probes if lv not in (2.0, 4.0))
    # clear verdicts at 3.25 and 3.375 settle it; the noisy levels outside do not matter
    cap = s.capacity("req/s")
    assert (cap.value, cap.low, cap.high, cap.clear) == (3.25, 3.25, 3.375, True)
    assert not s.levels[2.0].clear


def test_unclear_verdicts_widen_the_interval() -> None:
    s = _search(start=4, repeat_close=0)
    for level, passed, clear in [(4, True, True), (8, False, True), (6, True, False),
                                 (7, False, False), (6.5, True, True)]:  # fmt: skip
        assert s.next_probe().level == level
        s.record(level, passed, clear)
    cap = s.capacity("req/s")
    assert (cap.value, cap.low, cap.high, cap.clear) == (6.5, 6.5, 8, False)
    assert cap.text() == "6.5 req/s (interval 6.5-8, within noise)"


def test_a_pass_above_a_fail_is_not_taken_for_capacity() -> None:
    """Noise can make a higher level pass after a lower one failed: the bisection stays
    below the lowest failing level, and the interval spans the contradiction."""
    s = _search(start=4, repeat_close=0, max_probes=4)
    for level, passed in [(4, True), (8, True), (16, False), (12, False)]:
        s.next_probe()
        s.record(level, passed, True)
    s.levels[10.0] = type(s.levels[4.0])(10.0, 1, False, True)
    s.levels[14.0] = type(s.levels[4.0])(14.0, 1, True, True)
    assert s.bracket() == (8, 10)
    cap = s.capacity("req/s")
    assert (cap.value, cap.low, cap.high) == (8, 8, 16)


def test_max_probes_and_halt() -> None:
    s = _search(start=1, max_probes=3)
    _drive(s, 100)
    assert s.stop is SearchStop.MAX_PROBES and s.probes == 3
    cap = s.capacity("req/s")
    assert cap.kind is CapacityKind.AT_LEAST and cap.value == 4
    s = _search()
    s.halt(SearchStop.MAX_SEARCH_S)
    assert s.next_probe() is None and s.capacity("").kind is CapacityKind.UNKNOWN


def test_capacity_round_trips() -> None:
    c = Capacity(CapacityKind.ESTIMATE, 4.5, 4.0, 4.7, "req/s", False)
    assert Capacity.from_dict(json.loads(json.dumps(c.as_dict()))) == c
    assert Capacity.from_dict({"kind": "nope"}) is None
    assert Capacity.from_dict({"kind": "estimate", "value": "x"}) is None


# --- the scenario block ---------------------------------------------------------------------

BASE: dict[str, Any] = {
    "load": {"shape": "poisson", "rate": 2.0},
    "search": {"kind": "capacity", "max": 64},
    "num_requests": 10,
    "slo": {"ttft_ms": {"p": 90, "max": 500}},
}


def _doc(**changes: Any) -> dict[str, Any]:
    doc = json.loads(json.dumps(BASE))
    for key, value in changes.items():
        cur = doc
        *most, last = key.split(".")
        for k in most:
            cur = cur.setdefault(k, {})
        if value is None:
            cur.pop(last, None)
        else:
            cur[last] = value
    return doc


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"search.resolution": 0}, ["search.resolution", "greater than 0"]),
        ({"search.resolution": 1}, ["search.resolution", "less than 1"]),
        ({"load.rate": 100}, ["load.rate", "starts at 100", "search.max (64)"]),
        ({"search.min": 5}, ["search.min", "above the start"]),
        ({"slo": {}}, ["slo", "needs a bound"]),
        ({"slo": {"ttft_ms": 500}}, ["slo", "needs a bound"]),  # per request only
        ({"slo.ttft_ms": {"p": 90}}, ["slo.ttft_ms.max", "required"]),
        ({"slo.ttft_ms": {"p": 100, "max": 1}}, ["slo.ttft_ms.p", "less than 100"]),
        ({"sweep": {"rate": [1, 2]}}, ["search", "not both"]),
        ({"repeats": 3}, ["repeats", "repeat_close"]),
        ({"load": {"shape": "burst", "size": 2, "interval_s": 1}}, ["search", "burst"]),
        ({"load.max_concurrency": 4}, ["load.max_concurrency", "outside TTFT"]),
        ({"search.levels": 3}, ["search.levels", "not a field of a capacity search"]),
        ({"search.max_probes": 0}, ["search.max_probes"]),
        ({"search.kind": "fastest"}, ["search.kind"]),
        (
            {"load": {"shape": "concurrency", "concurrency": 2}, "search.max": 8.5},
            ["search.max", "whole number"],
        ),
        (
            {"search": {"kind": "saturation"}, "load": {"shape": "concurrency", "concurrency": 1}},
            ["saturation", "open-loop"],
        ),
        ({"search": {"kind": "saturation", "resolution": 0.1}}, ["search.resolution"]),
    ],
)
def test_bad_search_is_one_line_naming_the_field(changes: dict, words: list[str]) -> None:
    with pytest.raises(SpecloadError) as e:
        parse_scenario(_doc(**changes), "cap.yaml")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("cap.yaml"), msg
    for w in words:
        assert w in msg, msg


def test_search_scenario_round_trips_and_lists_no_phase() -> None:
    sc = parse_scenario(_doc(), "cap.yaml")
    assert sc.phases() == [] and Scenario.model_validate(sc.model_dump(mode="json")) == sc
    sat = parse_scenario(_doc(search={"kind": "saturation", "levels": 3}), "s.yaml")
    assert sat.search is not None and sat.search.levels == 3


# --- the run, on a simulated server ------------------------------------------------------------


class FakeHost:
    """A PhaseHost whose server meets p90 TTFT <= 500 ms up to ``truth`` req/s: each
    request's TTFT is lognormal, its p90 500 ms x level / truth, drawn from the level and the
    run; writes the records where the real run would and returns a summary. ``stop_at``:
    the probe (1-based) during which Ctrl-C arrives."""

    def __init__(self, ctx: Any, truth: float, n: int = 80, stop_at: int | None = None) -> None:
        self.ctx = ctx
        self.truth = truth
        self.n = n
        self.stop_at = stop_at
        self.ran: list[str] = []
        self.adopted: list[str] = []

    async def run(self, plan: PhasePlan, *, listed: bool = True) -> dict[str, Any]:
        self.ran.append(plan.phase.name)
        level = plan.phase.load.rate
        rng = np.random.default_rng([round(level * 1000), plan.phase.repeat])
        sigma = 0.1
        scale = 0.5 * level / self.truth / math.exp(1.2816 * sigma)  # 1.2816: z of p90
        cut = len(self.ran) == self.stop_at
        pdir = self.ctx.results.phase_dir(plan.slug)
        with RecordWriter(pdir / "requests.jsonl") as w:
            for i in range(self.n // 2 if cut else self.n):
                t = i * 0.01
                ttft = float(scale * rng.lognormal(0, sigma))
                w.write(RequestRecord(
                    request_id=plan.first_id + i, phase=plan.phase.name, scheduled_s=t,
                    sent_s=t, first_token_s=t + ttft, end_s=t + ttft + 0.01,
                    chunk_times=[t + ttft, t + ttft + 0.01], chunk_tokens=[1, 1],
                    output_tokens=2))  # fmt: skip
        if cut:
            self.ctx.stop.set(StopReason.INTERRUPTED, "interrupted by SIGINT")
        summary = {"phase": plan.phase.name, "complete": not cut, "duration": 1.0}
        (pdir / "summary.json").write_text(json.dumps(summary))
        return summary

    def adopt(self, slug: str, summary: dict[str, Any]) -> None:
        self.adopted.append(slug)


def _ctx(tmp_path: Path, **search: Any) -> Any:
    doc = _doc()
    doc["search"].update(search)
    sc = parse_scenario(doc, "cap.yaml")
    return SimpleNamespace(
        scenario=sc, results=ResultsDir(tmp_path), stop=StopSignal(), label="cfg"
    )


def _run(ctx: Any, host: FakeHost, resume: bool = False, complete: bool = True) -> dict:
    async def main() -> bool:
        return await CapacityRun(ctx, resume=resume).run(host)

    assert asyncio.run(main()) is complete
    return json.loads((ctx.results.root / "capacity.json").read_text())


def test_run_writes_capacity_json_and_pools_repeats(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, resolution=0.05, max_probes=20, repeat_close=1)
    host = FakeHost(ctx, truth=10.0)
    doc = _run(ctx, host)
    cap = doc["capacity"]
    assert doc["status"] == "done" and doc["stop"] == "resolved"
    assert cap["kind"] == "estimate" and abs(cap["value"] - 10) <= 0.5 + 1e-9
    assert doc["slo_text"] == "p90 TTFT <= 500 ms" and doc["unit"] == "req/s"
    assert [p["phase"] for p in doc["probes"]] == host.ran
    repeats = [p for p in doc["probes"] if p["run"] > 1]
    assert repeats, "a level near the bound must have been too close to call"
    for p in repeats:
        assert p["phase"].endswith(f" r{p['run']}") and p["seed"] == p["run"] - 1
        assert p["pooled"]["runs"] == p["run"] and p["pooled"]["requests"] == p["run"] * 80
        first = next(q for q in doc["probes"] if q["level"] == p["level"] and q["run"] == 1)
        assert not first["pooled"]["clear"]  # repeated because the first run could not tell
    for p in doc["probes"]:
        t = p["percentiles"]["ttft_ms"]
        assert t["low_ms"] <= t["value_ms"] <= t["high_ms"] and t["max_ms"] == 500
        assert p["verdict"] == ("pass" if t["value_ms"] <= 500 else "fail")
    assert {lv["level"] for lv in doc["levels"]} == {p["level"] for p in doc["probes"]}


def test_resume_takes_back_the_finished_probes(tmp_path: Path) -> None:
    """A search interrupted during its 3rd probe, resumed: the 2 finished probes are taken
    back without running them again, the cut one runs afresh (its partial records moved
    aside), and the answer is the one an uninterrupted search gives."""
    a = _ctx(tmp_path / "a", repeat_close=0)
    whole = _run(a, FakeHost(a, truth=7.0))
    ctx = _ctx(tmp_path / "b", repeat_close=0)
    cut = _run(ctx, FakeHost(ctx, truth=7.0, stop_at=3), complete=False)
    assert cut["stop"] == "stopped" and "interrupted by SIGINT" in cut["stop_text"]
    assert [p["complete"] for p in cut["probes"]] == [True, True, False]
    ctx.stop = StopSignal()
    host = FakeHost(ctx, truth=7.0)
    resumed = _run(ctx, host, resume=True)
    names = [p["phase"] for p in whole["probes"]]
    assert host.adopted == [p["slug"] for p in whole["probes"][:2]] and host.ran == names[2:]
    assert resumed["capacity"] == whole["capacity"]
    assert resumed["probes"] == [{**p, "elapsed_s": q["elapsed_s"]} for p, q in
                                 zip(whole["probes"], resumed["probes"], strict=True)]  # fmt: skip
    (moved,) = (tmp_path / "b" / ".superseded").iterdir()
    assert moved.name.startswith(whole["probes"][2]["slug"])
    host = FakeHost(ctx, truth=7.0)
    _run(ctx, host)  # not resumed: every probe runs again, the earlier ones moved aside
    assert host.ran == names and not host.adopted
    assert len(list((tmp_path / "b" / ".superseded").iterdir())) == 1 + len(names)


# --- the command line ------------------------------------------------------------------------

CLOSED = "http://127.0.0.1:9"  # nothing listens: a valid scenario fails only there


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    from loadgen.cli import main

    code = main([*args, "--base-url", CLOSED, "--output-dir", "/nonexistent/never-written"])
    return code, capsys.readouterr().err.strip().splitlines()


def test_builtin_capacity_scenario_takes_the_slo_flags() -> None:
    from loadgen.cli import load_scenario_from_args, parse_args

    args = parse_args(["--scenario", "capacity", "--slo-ttft-p90-ms", "500",
                       "--slo-tpot-p99.9-ms=20", "--slo-max-error-rate", "0.02"])  # fmt: skip
    sc = load_scenario_from_args(args)
    assert sc.search is not None and sc.search.kind == "capacity"
    assert sc.slo.describe() == "p90 TTFT <= 500 ms, p99.9 TPOT <= 20 ms, errors <= 2%"
    sat = load_scenario_from_args(parse_args(["--scenario", "saturation", "--levels", "3"]))
    assert sat.search is not None and sat.search.levels == 3
    sweep = load_scenario_from_args(parse_args(
        ["--scenario", "concurrency-sweep", "--search", "capacity", "--slo-e2e-p50-ms", "900",
         "--search-max", "32", "--max-probes", "6"]))  # fmt: skip
    assert sweep.sweep is None and sweep.phases() == []
    assert (sweep.search.max, sweep.search.max_probes) == (32, 6)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--slo-ttft-p100-ms", "500"], "--slo-ttft-p100-ms: must be less than 100"),
        (["--slo-ttft-p0-ms", "500"], "--slo-ttft-p0-ms: must be greater than 0"),
        (["--slo-ttft-p90-ms"], "--slo-ttft-p90-ms: expected a bound in ms"),
        (["--slo-ttft-p90-ms", "0"], "--slo-ttft-p90-ms: must be greater than 0"),
        (["--slo-foo-p90-ms", "5"], "--slo-foo-p90-ms: unknown metric 'foo'"),
        (["--slo-ttft-p90-ms", "5", "--slo-ttft-ms", "9"], "ttft is bounded twice"),
        (["--resolution", "0"], "--resolution: must be greater than 0"),
        (["--rate", "1000"], "--rate: the search starts at 1000, above search.max (256)"),
        (["--search-max", "0.5"], "--search-max: load.rate: the search starts at 1, above"),
        (["--max-probes", "0"], "--max-probes: must be greater than or equal to 1"),
        (["--levels", "3"], "--levels: not a field of a capacity search"),
    ],
)
def test_bad_flags_are_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], args: list[str], words: str
) -> None:
    code, err = _cli(capsys, "--scenario", "capacity", *args)
    assert code == 2 and len(err) == 1 and words in err[0], err


def test_search_flags_need_a_search(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _cli(capsys, "--scenario", "poisson", "--max-probes", "3")
    assert code == 2 and err == [
        "loadgen: error: --max-probes: the scenario has no search: add --search capacity "
        "(or saturation)"
    ]
    code, err = _cli(capsys, "--scenario", "poisson", "--search", "capacity")
    assert code == 2 and "slo: a capacity search needs a bound" in err[0]


def test_two_searches_can_alternate_their_probes(tmp_path: Path) -> None:
    """begin / probe / end: a driver holding two servers can run their searches' probes in
    turn (A B B A ...); each search decides as it would alone."""
    alone = {}
    for label, truth in (("a", 6.0), ("b", 9.0)):
        ctx = _ctx(tmp_path / "alone" / label, repeat_close=0)
        alone[label] = _run(ctx, FakeHost(ctx, truth=truth))
    runs, hosts, order = {}, {}, []
    for label, truth in (("a", 6.0), ("b", 9.0)):
        ctx = _ctx(tmp_path / "paired" / label, repeat_close=0)
        runs[label], hosts[label] = CapacityRun(ctx), FakeHost(ctx, truth=truth)

    async def main() -> None:
        for r in runs.values():
            r.begin()
        live, k = set(runs), 0
        while live:
            for label in ("a", "b") if k % 2 == 0 else ("b", "a"):
                if label in live:
                    if await runs[label].probe(hosts[label]):
                        order.append(label)
                    else:
                        live.discard(label)
            k += 1
        for r in runs.values():
            r.end()

    asyncio.run(main())
    assert order[:4] == ["a", "b", "b", "a"]
    for label in ("a", "b"):
        doc = json.loads((tmp_path / "paired" / label / "capacity.json").read_text())
        assert doc["capacity"] == alone[label]["capacity"] and doc["status"] == "done"
        assert [p["phase"] for p in doc["probes"]] == [p["phase"] for p in alone[label]["probes"]]

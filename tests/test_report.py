"""Reports from synthetic sweeps: speedups, crossover, missing cells, files, CLI exit codes."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from loadgen.config.scenario import parse_scenario
from loadgen.errors import SpecloadError
from loadgen.report.cli import compare_main, report_main
from loadgen.report.console import print_comparison_table, print_summary_table
from loadgen.report.crossover import crossovers, find_crossover
from loadgen.report.load import find_runs, split_repeat
from loadgen.report.render import write_report
from loadgen.report.tables import aggregate, build_tables, speedup_range
from loadgen.results.files import slugify
from loadgen.results.records import RequestRecord
from loadgen.results.summary import summarize

LEVELS = [1, 4, 16]
SCENARIO = {
    "name": "conc",
    "load": {"shape": "concurrency", "concurrency": 1},
    "sweep": {"concurrency": LEVELS},
    "num_requests": 20,
}
# label -> (spec, median TPOT ms per level, output tok/s per level, median E2E ms per level)
CONFIGS: dict[str, tuple[dict[str, Any] | None, list[float], list[float], list[float]]] = {
    "none": (None, [20.0, 22.0, 30.0], [50.0, 180.0, 500.0], [2600.0, 2900.0, 4000.0]),
    # wins at c=1 and c=4, loses at c=16 on TPOT and throughput
    "ngram-k3": (
        {"method": "ngram", "num_speculative_tokens": 3},
        [10.0, 20.0, 40.0],
        [100.0, 200.0, 400.0],
        [1300.0, 2600.0, 5200.0],
    ),
    # slower TPOT everywhere, higher throughput everywhere
    "draft-k5": (
        {"method": "draft_model", "num_speculative_tokens": 5},
        [25.0, 30.0, 45.0],
        [60.0, 190.0, 520.0],
        [3000.0, 3500.0, 5000.0],
    ),
}


def _summary(label: str, i: int) -> dict[str, Any]:
    spec, tpot, thru, e2e = CONFIGS[label]
    s: dict[str, Any] = {
        "phase": f"concurrency={LEVELS[i]}",
        "load_shape": "concurrency",
        "load_level": LEVELS[i],
        "complete": True,
        "completed": 20,
        "failed": 0,
        "request_throughput": thru[i] / 128,
        "output_throughput": thru[i],
        "median_ttft_ms": 40.0 + i,
        "p50_ttft_ms": 40.0 + i,
        "p99_ttft_ms": 90.0 + i,
        "median_tpot_ms": tpot[i],
        "p50_tpot_ms": tpot[i],
        "p99_tpot_ms": tpot[i] * 1.5,
        "p50_itl_token_ms": tpot[i],
        "p99_itl_token_ms": tpot[i] * 2,
        "p50_e2el_ms": e2e[i],
        "median_e2el_ms": e2e[i],
        "p99_e2el_ms": e2e[i] * 1.2,
        "mean_tokens_per_chunk": 1.0 if spec is None else 2.5,
        "request_goodput": 1.5,
        "goodput_fraction": 0.9,
        "p99_dispatch_lag_ms": 0.4,
    }
    if spec is not None:
        s["spec_decode_acceptance_length"] = 2.5
        s["spec_decode_acceptance_rate"] = 50.0
        s["spec_decode_per_position_acceptance_rates"] = [0.8, 0.5, 0.2]
    return s


def _write_run(
    root: Path, label: str, levels: range | list[int] = range(3), top_summary: bool = True
) -> Path:
    run_dir = root / label / "conc"
    run_dir.mkdir(parents=True)
    spec = CONFIGS[label][0]
    (run_dir / "run.json").write_text(
        json.dumps({"scenario": SCENARIO, "label": label, "spec": spec, "model": "m"})
    )
    phases = {}
    for i in levels:
        s = _summary(label, i)
        slug = s["phase"]
        (run_dir / slug).mkdir()
        (run_dir / slug / "summary.json").write_text(json.dumps(s))
        phases[slug] = s
    if top_summary:
        doc = {
            "complete": len(phases) == 3,
            "scenario": "conc",
            "label": label,
            "phases": phases,
        }
        (run_dir / "summary.json").write_text(json.dumps(doc))
    return run_dir


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    for label in CONFIGS:
        _write_run(root, label)
    return root


def _cell(df, label: str, level: int, col: str) -> float:
    sel = df[(df["label"] == label) & (df["phase"] == f"concurrency={level}")]
    assert len(sel) == 1
    return float(sel[col].iloc[0])


def test_find_runs_discovers_sweep(sweep: Path) -> None:
    runs = find_runs([sweep])
    assert sorted(r.label for r in runs) == sorted(CONFIGS)
    ngram = next(r for r in runs if r.label == "ngram-k3")
    assert ngram.scenario == "conc"
    assert ngram.spec_method == "ngram"
    assert list(ngram.phases) == ["concurrency=1", "concurrency=4", "concurrency=16"]
    assert ngram.complete


def test_speedups(sweep: Path) -> None:
    df = build_tables(find_runs([sweep]))
    assert len(df) == 9
    assert _cell(df, "ngram-k3", 1, "tpot_speedup") == pytest.approx(2.0)
    assert _cell(df, "ngram-k3", 16, "tpot_speedup") == pytest.approx(0.75)
    assert _cell(df, "ngram-k3", 4, "throughput_speedup") == pytest.approx(200 / 180)
    assert _cell(df, "ngram-k3", 1, "e2e_speedup") == pytest.approx(2.0)
    assert _cell(df, "draft-k5", 16, "tpot_speedup") == pytest.approx(30 / 45)
    assert _cell(df, "none", 4, "tpot_speedup") == pytest.approx(1.0)
    assert df["is_baseline"].sum() == 3
    # every speedup cell is filled when all runs completed
    assert not df[["tpot_speedup", "throughput_speedup", "e2e_speedup"]].isna().any().any()
    assert (df["note"] == "").all()
    # rows come in load order, baseline first
    assert list(df["phase"])[::3] == ["concurrency=1", "concurrency=4", "concurrency=16"]
    assert list(df["label"])[:3][0] == "none"


def test_explicit_baseline_and_unknown_baseline(sweep: Path) -> None:
    runs = find_runs([sweep])
    df = build_tables(runs, baseline="ngram-k3")
    assert _cell(df, "none", 16, "tpot_speedup") == pytest.approx(40 / 30)
    with pytest.raises(SpecloadError, match="--baseline"):
        build_tables(runs, baseline="nope")


def test_baseline_falls_back_to_spec_null(tmp_path: Path) -> None:
    root = tmp_path / "s"
    _write_run(root, "none")
    _write_run(root, "ngram-k3")
    run_json = root / "none" / "conc" / "run.json"
    doc = json.loads(run_json.read_text())
    doc["label"] = "vanilla"
    run_json.write_text(json.dumps(doc))
    df = build_tables(find_runs([root]))
    assert set(df.loc[df["is_baseline"], "label"]) == {"vanilla"}
    assert _cell(df, "ngram-k3", 1, "tpot_speedup") == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("speedups", "kind", "level"),
    [
        ([2.0, 1.1, 0.75], "crossover", 16),
        ([1.2, 1.0, 1.01], "wins_everywhere", None),
        ([0.5, 0.9, 0.99], "never_wins", None),
        ([0.9, 1.1, 1.3], "wins_above", 4),
        ([0.9, 1.1, 0.8], "crossover", 16),
        ([math.nan, None, math.nan], "no_data", None),
    ],
)
def test_find_crossover(speedups: list[float | None], kind: str, level: int | None) -> None:
    c = find_crossover(LEVELS, speedups)
    assert c.kind == kind
    assert c.level == level


def test_find_crossover_skips_gaps() -> None:
    c = find_crossover([1, 2, 4, 8], [1.5, math.nan, 1.2, 0.9])
    assert (c.kind, c.level, c.last_win, c.gaps) == ("crossover", 8, 4, 1)
    assert "stops paying off at 8" in c.describe()
    assert find_crossover([1], [1.0]).describe("x") == "x wins at every level"


def test_crossovers_from_sweep(sweep: Path) -> None:
    cross = {(c["label"], c["metric"]): c for c in crossovers(build_tables(find_runs([sweep])))}
    assert cross[("ngram-k3", "tpot_speedup")]["kind"] == "crossover"
    assert cross[("ngram-k3", "tpot_speedup")]["level"] == "concurrency=16"
    assert cross[("ngram-k3", "throughput_speedup")]["level"] == "concurrency=16"
    assert cross[("draft-k5", "tpot_speedup")]["kind"] == "never_wins"
    assert cross[("draft-k5", "throughput_speedup")]["kind"] == "wins_everywhere"
    assert not any(label == "none" for label, _ in cross)


def test_missing_cell_is_na_with_note(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    _write_run(root, "none")
    _write_run(root, "draft-k5")
    # interrupted before c=16, and summary.json never written
    _write_run(root, "ngram-k3", levels=[0, 1], top_summary=False)
    runs = find_runs([root])
    ngram = next(r for r in runs if r.label == "ngram-k3")
    assert not ngram.complete
    assert any("concurrency=16" in n for n in ngram.notes)
    df = build_tables(runs)
    assert len(df) == 9
    assert math.isnan(_cell(df, "ngram-k3", 16, "tpot_speedup"))
    assert _cell(df, "ngram-k3", 4, "tpot_speedup") == pytest.approx(22 / 20)
    note = df[(df["label"] == "ngram-k3") & (df["phase"] == "concurrency=16")]["note"].iloc[0]
    assert "no results" in note

    md = write_report([root], figures=False).read_text()
    row = next(line for line in md.splitlines() if line.startswith("| ngram-k3") and "n/a" in line)
    assert row.count("n/a") >= 3
    assert "no results at this level" in md


def test_missing_baseline_cell(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    _write_run(root, "none", levels=[0, 1])
    _write_run(root, "ngram-k3")
    df = build_tables(find_runs([root]))
    assert math.isnan(_cell(df, "ngram-k3", 16, "throughput_speedup"))
    note = df[(df["label"] == "ngram-k3") & (df["phase"] == "concurrency=16")]["note"].iloc[0]
    assert "baseline 'none' has no results" in note


def _write_one_level_run(root: Path, label: str, base: str, i: int) -> None:
    """A run of one level only, as the original config.yaml makes (one server per batch)."""
    run_dir = root / label / "n64"
    run_dir.mkdir(parents=True)
    scen = {**SCENARIO, "name": "n64", "load": {"shape": "concurrency", "concurrency": LEVELS[i]}}
    del scen["sweep"]
    spec = CONFIGS[base][0]
    (run_dir / "run.json").write_text(
        json.dumps({"scenario": scen, "label": label, "spec": spec, "model": "m"})
    )
    s = _summary(base, i)
    (run_dir / s["phase"]).mkdir()
    (run_dir / s["phase"] / "summary.json").write_text(json.dumps(s))
    doc = {"complete": True, "scenario": "n64", "label": label, "phases": {s["phase"]: s}}
    (run_dir / "summary.json").write_text(json.dumps(doc))


def test_per_level_baseline_for_one_server_per_batch_size(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    for i, bs in ((0, 1), (2, 16)):
        _write_one_level_run(root, f"none-bs{bs}", "none", i)
        _write_one_level_run(root, f"ngram-k3-bs{bs}", "ngram-k3", i)
    df = build_tables(find_runs([root]))
    # no row for a run at a level it never planned; each level compares with its own none
    assert sorted(zip(df["phase"], df["label"], strict=True)) == [
        ("concurrency=1", "ngram-k3-bs1"),
        ("concurrency=1", "none-bs1"),
        ("concurrency=16", "ngram-k3-bs16"),
        ("concurrency=16", "none-bs16"),
    ]
    assert _cell(df, "ngram-k3-bs1", 1, "tpot_speedup") == pytest.approx(20 / 10)
    assert _cell(df, "ngram-k3-bs16", 16, "tpot_speedup") == pytest.approx(30 / 40)
    assert set(df.loc[df["is_baseline"], "label"]) == {"none-bs1", "none-bs16"}
    md = write_report([root], figures=False).read_text()
    assert "none-bs1 / none-bs16 (per level" in md
    # a baseline the user names is kept: no fallback at the level it lacks
    df2 = build_tables(find_runs([root]), baseline="none-bs1")
    assert math.isnan(_cell(df2, "ngram-k3-bs16", 16, "tpot_speedup"))


def test_write_report_files(sweep: Path) -> None:
    md_path = write_report([sweep])
    out = sweep / "report"
    assert md_path == out / "report.md"
    for name in ("report.md", "report.html", "report.csv", "report.json"):
        assert (out / name).stat().st_size > 0
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == [
        "conc_acceptance.png",
        "conc_latency.png",
        "conc_speedup.png",
        "conc_throughput.png",
        "conc_tokens_per_chunk.png",
    ]
    for p in out.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    page = (out / "report.html").read_text()
    srcs = re.findall(r"src=['\"]([^'\"]*)['\"]", page)
    assert len(srcs) == 5
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<link" not in page and "<script" not in page

    md = md_path.read_text()
    assert "### concurrency=16" in md
    assert "2.00x" in md  # ngram TPOT speedup at c=1
    assert "0.75x" in md
    assert "TPOT speedup stops paying off at concurrency=16" in md
    assert "(conc_speedup.png)" in md

    import pandas as pd

    csv = pd.read_csv(out / "report.csv")
    assert len(csv) == 9
    assert {"tpot_speedup", "throughput_speedup", "e2e_speedup", "label"} <= set(csv.columns)
    doc = json.loads((out / "report.json").read_text())
    assert doc["baseline"] == "none"
    assert len(doc["rows"]) == 9


def test_report_main_and_compare_main(
    sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert report_main([str(sweep), "--out", str(out), "--no-figures"]) == 0
    assert (out / "report.md").exists()
    assert not list(out.glob("*.png"))

    dirs = [str(sweep / label / "conc") for label in CONFIGS]
    capsys.readouterr()
    assert compare_main([*dirs, "--baseline", "none"]) == 0
    text = capsys.readouterr().out
    assert "ngram-k3" in text and "2.00x" in text
    assert "stops paying off at concurrency=16" in text

    assert report_main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert compare_main([str(empty)]) == 2  # exists but holds no run
    assert "no run.json" in capsys.readouterr().err
    assert compare_main([*dirs, "--baseline", "nope"]) == 2
    assert "--baseline" in capsys.readouterr().err


def test_same_label_twice_is_disambiguated(tmp_path: Path) -> None:
    a = _write_run(tmp_path / "a", "none")
    b = _write_run(tmp_path / "b", "none")
    runs = find_runs([a, b])
    assert sorted(r.label for r in runs) == ["none@a/none/conc", "none@b/none/conc"]


def test_print_summary_table() -> None:
    console = Console(record=True, width=250)
    summaries = {"concurrency=1": _summary("ngram-k3", 0), "concurrency=4": {"phase": "c=4"}}
    print_summary_table(summaries, console=console)
    text = console.export_text()
    assert "concurrency=1" in text
    assert "10.0 / 15.0" in text  # TPOT p50 / p99
    assert "2.50" in text  # tokens/chunk and acceptance length
    assert "1.50/s (90%)" in text  # goodput
    assert "n/a" in text  # the empty summary did not crash


def test_print_comparison_table(sweep: Path) -> None:
    console = Console(record=True, width=250)
    df = build_tables(find_runs([sweep]))
    print_comparison_table(df.to_dict("records"), "none", console=console)
    text = console.export_text()
    assert "none (base)" in text
    assert "0.75x" in text


def _records(phase: str, n: int, tokens_per_chunk: int, gap_s: float) -> list[RequestRecord]:
    """n sequential requests of 64 output tokens, ``tokens_per_chunk`` per chunk."""
    out = []
    t = 0.0
    for i in range(n):
        sent = t
        first = sent + 0.05
        chunks = 64 // tokens_per_chunk
        times = [first + j * gap_s for j in range(chunks)]
        out.append(
            RequestRecord(
                request_id=i,
                phase=phase,
                scheduled_s=sent,
                sent_s=sent,
                prompt_tokens=32,
                expected_output_tokens=64,
                first_token_s=first,
                end_s=times[-1],
                chunk_times=times,
                chunk_tokens=[tokens_per_chunk] * chunks,
                output_tokens=64,
            )
        )
        t = times[-1] + 0.01
    return out


def _write_real_run(root: Path, label: str, spec: dict | None, tpc: int, gap: float) -> Path:
    """A run whose summaries come from summary.summarize, as the runner writes them."""
    scen = parse_scenario(
        {"name": "real", "load": {"shape": "concurrency", "concurrency": 1}, "num_requests": 8},
        "test",
    )
    run_dir = root / label / "real"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(
        json.dumps({"scenario": scen.model_dump(), "label": label, "spec": spec})
    )
    phase = scen.phases()[0]
    recs = _records(phase.name, 8, tpc, gap)
    s = summarize(recs, duration_s=recs[-1].end_s, phase=phase.name, load=phase.load)
    slug = slugify(phase.name)
    (run_dir / slug).mkdir()
    (run_dir / slug / "summary.json").write_text(json.dumps(s))
    (run_dir / slug / "requests.jsonl").write_text("".join(r.to_json() + "\n" for r in recs))
    doc = {"complete": True, "scenario": "real", "label": label, "phases": {slug: s}}
    (run_dir / "summary.json").write_text(json.dumps(doc))
    return run_dir


def test_with_metrics_summaries_and_recompute(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    _write_real_run(root, "none", None, 1, 0.020)
    spec_dir = _write_real_run(root, "ngram-k3", {"method": "ngram"}, 2, 0.025)
    df = build_tables(find_runs([root]))
    base = df[df["label"] == "none"].iloc[0]
    ngram = df[df["label"] == "ngram-k3"].iloc[0]
    assert base["phase"] == "concurrency=1" and base["load_level"] == 1
    assert base["tpot_p50_ms"] == pytest.approx(20.0)
    spec_tpot = 31 * 25.0 / 63  # 32 chunks of 2: (e2e - ttft) / (64 - 1)
    assert ngram["tpot_p50_ms"] == pytest.approx(spec_tpot)
    assert ngram["itl_p50_ms"] == pytest.approx(12.5)  # per token
    assert ngram["itl_chunk_p50_ms"] == pytest.approx(25.0)
    assert ngram["tokens_per_chunk"] == pytest.approx(2.0)
    assert ngram["tpot_speedup"] == pytest.approx(20.0 / spec_tpot)
    assert ngram["throughput_speedup"] == pytest.approx(
        ngram["output_throughput"] / base["output_throughput"]
    )

    # killed mid-phase: only requests.jsonl is left, the report recomputes the summary
    (spec_dir / "summary.json").unlink()
    (spec_dir / "concurrency=1" / "summary.json").unlink()
    runs = find_runs([root])
    ngram_run = next(r for r in runs if r.label == "ngram-k3")
    assert any("recomputed from requests.jsonl" in n for n in ngram_run.notes)
    df2 = build_tables(runs)
    again = df2[df2["label"] == "ngram-k3"].iloc[0]
    assert again["tpot_p50_ms"] == pytest.approx(spec_tpot)
    assert again["tpot_speedup"] == pytest.approx(20.0 / spec_tpot)
    assert again["output_throughput"] == pytest.approx(ngram["output_throughput"])


def test_nothing_completed_is_not_a_speedup(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    base_dir = _write_run(root, "none")
    _write_run(root, "ngram-k3")
    doc = json.loads((base_dir / "summary.json").read_text())
    doc["phases"]["concurrency=4"].update(completed=0, failed=20, p50_tpot_ms=0.0)
    doc["phases"]["concurrency=4"].update(output_throughput=0.0, p50_e2el_ms=0.0)
    (base_dir / "summary.json").write_text(json.dumps(doc))
    df = build_tables(find_runs([root]))
    for col in ("tpot_speedup", "throughput_speedup", "e2e_speedup"):
        assert math.isnan(_cell(df, "ngram-k3", 4, col))
    assert math.isnan(_cell(df, "none", 4, "tpot_p50_ms"))
    note = df[(df["label"] == "ngram-k3") & (df["phase"] == "concurrency=4")]["note"].iloc[0]
    assert "completed no request" in note
    assert _cell(df, "ngram-k3", 1, "tpot_speedup") == pytest.approx(2.0)


# --- repeats -------------------------------------------------------------------------------

REP_SCENARIO = {**SCENARIO, "name": "rep", "repeats": 3}
# label -> (spec, {level: (TPOT p50 per repeat, output tok/s per repeat)})
REP_CONFIGS: dict[str, tuple[dict[str, Any] | None, dict[int, tuple[list[float], list[float]]]]] = {
    "none": (
        None,
        {
            1: ([20.0, 21.0, 19.0], [50.0, 52.0, 48.0]),
            4: ([22.0, 23.0, 21.0], [180.0, 185.0, 175.0]),
            16: ([30.0, 31.0, 29.0], [500.0, 510.0, 490.0]),
        },
    ),
    "ngram-k3": (
        {"method": "ngram", "num_speculative_tokens": 3},
        {
            # TPOT: a clear win, a straddle (ranges overlap), a clear loss
            1: ([10.0, 11.0, 9.5], [100.0, 98.0, 103.0]),
            4: ([21.0, 20.0, 22.5], [200.0, 195.0, 205.0]),
            16: ([40.0, 38.0, 42.0], [400.0, 390.0, 410.0]),
        },
    ),
}


def _rep_summary(label: str, level: int, rep: int, with_repeat_key: bool = True) -> dict:
    spec, per_level = REP_CONFIGS[label]
    tpot, thru = (v[rep - 1] for v in per_level[level])
    s: dict[str, Any] = {
        "phase": f"concurrency={level} r{rep}",
        "load_shape": "concurrency",
        "load_level": level,
        "complete": True,
        "completed": 20,
        "failed": rep - 1,  # 0 + 1 + 2 = 3 in all
        "output_throughput": thru,
        "p50_ttft_ms": 40.0 + rep,
        "p99_ttft_ms": 90.0,
        "p50_tpot_ms": tpot,
        "p99_tpot_ms": tpot * 1.5,
        "p50_itl_token_ms": tpot,
        "p99_itl_token_ms": tpot * 2,
        "p50_e2el_ms": 40.0 + 127 * tpot,
        "p99_e2el_ms": 200.0 * tpot,
        "mean_tokens_per_chunk": 1.0 if spec is None else 2.5,
    }
    if with_repeat_key:
        s["repeat"] = rep
    if spec is not None:
        s["spec_decode_acceptance_length"] = [2.4, 2.6, 2.5][rep - 1]
        s["spec_decode_per_position_acceptance_rates"] = [[0.8, 0.5], [0.7, 0.6], [0.9, 0.4]][
            rep - 1
        ]
    return s


def _write_rep_run(
    root: Path,
    label: str,
    phases: list[tuple[int, int]] | None = None,
    top_summary: bool = True,
    scenario: dict[str, Any] | None = None,
    with_repeat_key: bool = True,
) -> Path:
    """A run as the runner writes it with ``repeats: 3``: phases 'concurrency=L rN'."""
    scen = parse_scenario(dict(scenario or REP_SCENARIO), "test")
    if phases is None:
        phases = [(lv, rep) for lv in LEVELS for rep in (1, 2, 3)]
    run_dir = root / label / scen.name
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(
        json.dumps({"scenario": scen.model_dump(), "label": label, "spec": REP_CONFIGS[label][0]})
    )
    done = {}
    for lv, rep in phases:
        s = _rep_summary(label, lv, rep, with_repeat_key)
        slug = slugify(s["phase"])
        (run_dir / slug).mkdir()
        (run_dir / slug / "summary.json").write_text(json.dumps(s))
        done[slug] = s
    if top_summary:
        doc = {"complete": len(done) == 9, "scenario": scen.name, "label": label, "phases": done}
        (run_dir / "summary.json").write_text(json.dumps(doc))
    return run_dir


@pytest.fixture
def rep_sweep(tmp_path: Path) -> Path:
    root = tmp_path / "rep_sweep"
    for label in REP_CONFIGS:
        _write_rep_run(root, label)
    return root


def _rep_row(df, label: str, level: int) -> dict[str, Any]:
    sel = df[(df["label"] == label) & (df["phase"] == f"concurrency={level}")]
    assert len(sel) == 1
    return sel.iloc[0].to_dict()


def test_split_repeat() -> None:
    assert split_repeat("concurrency=4 r2") == ("concurrency=4", 2)
    assert split_repeat("concurrency=4 r2", 2) == ("concurrency=4", 2)
    assert split_repeat("concurrency=4", 1) == ("concurrency=4", 1)
    assert split_repeat("concurrency=4") == ("concurrency=4", 1)
    # a summary that says repeat 1 keeps a name whose suffix says otherwise
    assert split_repeat("odd r7", 1) == ("odd r7", 1)


def test_aggregate() -> None:
    assert aggregate([10.0, 11.0, 9.5]) == pytest.approx((10.0, 9.5, 11.0, 15.0))
    med, lo, hi, spread = aggregate([1.0, 3.0])
    assert (med, lo, hi) == (2.0, 1.0, 3.0) and spread == pytest.approx(100.0)
    med, lo, hi, spread = aggregate([7.0, math.nan, None])
    assert med == 7.0 and all(math.isnan(v) for v in (lo, hi, spread))
    assert all(math.isnan(v) for v in aggregate([]))


def test_speedup_range() -> None:
    # latency: base 19..21 vs config 9.5..11 -> 19/11 .. 21/9.5, a stable win
    lo, hi, stable = speedup_range([20, 21, 19], [10, 11, 9.5], lower_is_better=True)
    assert (lo, hi, stable) == (pytest.approx(19 / 11), pytest.approx(21 / 9.5), True)
    # overlapping ranges straddle 1.0
    assert speedup_range([22, 23, 21], [21, 20, 22.5], lower_is_better=True)[2] is False
    # a stable loss is stable too
    lo, hi, stable = speedup_range([30, 31, 29], [40, 38, 42], lower_is_better=True)
    assert stable is True and hi == pytest.approx(31 / 38) and hi < 1
    # throughput: higher is better, config over base
    lo, hi, stable = speedup_range([180, 185, 175], [200, 195, 205], lower_is_better=False)
    assert (lo, hi, stable) == (pytest.approx(195 / 185), pytest.approx(205 / 175), True)
    # touching 1.0 is not clear of it
    assert speedup_range([10, 12], [12, 13], lower_is_better=True)[2] is False
    # one repeat on either side: no range, no verdict
    lo, hi, stable = speedup_range([20], [10, 11], lower_is_better=True)
    assert stable is None and math.isnan(lo) and math.isnan(hi)


def test_repeats_aggregate_to_one_row_per_level(rep_sweep: Path) -> None:
    runs = find_runs([rep_sweep])
    ngram = next(r for r in runs if r.label == "ngram-k3")
    assert ngram.repeats == 3 and ngram.complete
    assert ngram.level_of("concurrency=4 r2") == ("concurrency=4", 2)
    df = build_tables(runs)
    assert len(df) == 6  # 2 configs x 3 levels, not 18 and no collisions
    assert list(df["phase"])[::2] == ["concurrency=1", "concurrency=4", "concurrency=16"]
    assert (df["n_repeats"] == 3).all()
    assert (df["note"] == "").all()

    r = _rep_row(df, "ngram-k3", 1)
    assert r["tpot_p50_ms"] == 10.0  # median of 10, 11, 9.5
    assert (r["tpot_p50_ms_min"], r["tpot_p50_ms_max"]) == (9.5, 11.0)
    assert r["tpot_p50_ms_spread_pct"] == pytest.approx(15.0)
    assert r["output_throughput"] == 100.0
    assert r["output_throughput_spread_pct"] == pytest.approx(5.0)
    assert r["ttft_p50_ms"] == 42.0 and r["ttft_p50_ms_spread_pct"] == pytest.approx(200 / 42)
    assert r["tpot_p99_ms"] == pytest.approx(15.0)
    assert r["acceptance_length"] == pytest.approx(2.5)
    assert r["acceptance_per_position"] == pytest.approx([0.8, 0.5])
    assert (r["completed"], r["failed"]) == (60, 3)  # totals over repeats
    assert r["repeat_phases"] == ["concurrency=1 r1", "concurrency=1 r2", "concurrency=1 r3"]

    # speedups from the medians, stability from the repeat ranges
    assert r["tpot_speedup"] == pytest.approx(2.0)
    assert (r["tpot_speedup_lo"], r["tpot_speedup_hi"]) == (
        pytest.approx(19 / 11),
        pytest.approx(21 / 9.5),
    )
    assert r["tpot_speedup_stable"] is True
    assert r["throughput_speedup"] == pytest.approx(2.0)
    assert r["throughput_speedup_stable"] is True
    e2e_base, e2e_ngram = 40 + 127 * 20.0, 40 + 127 * 10.0
    assert r["e2e_speedup"] == pytest.approx(e2e_base / e2e_ngram)
    assert r["e2e_speedup_stable"] is True

    mid = _rep_row(df, "ngram-k3", 4)
    assert mid["tpot_speedup"] == pytest.approx(22 / 21)  # the median says "win" ...
    assert mid["tpot_speedup_stable"] is False  # ... but the repeats do not settle it
    assert mid["tpot_speedup_lo"] == pytest.approx(21 / 22.5)
    assert mid["tpot_speedup_lo"] < 1 < mid["tpot_speedup_hi"]
    assert mid["throughput_speedup"] == pytest.approx(200 / 180)
    assert mid["throughput_speedup_stable"] is True

    high = _rep_row(df, "ngram-k3", 16)
    assert high["tpot_speedup"] == pytest.approx(0.75)
    assert high["tpot_speedup_stable"] is True  # a stable loss
    assert high["tpot_speedup_hi"] < 1

    base = _rep_row(df, "none", 4)
    assert base["tpot_speedup"] == pytest.approx(1.0)
    assert base["tpot_speedup_stable"] is None and math.isnan(base["tpot_speedup_lo"])


def test_repeats_crossover_uses_medians_and_flags_instability(rep_sweep: Path) -> None:
    df = build_tables(find_runs([rep_sweep]))
    cross = {c["metric"]: c for c in crossovers(df)}
    tpot = cross["tpot_speedup"]
    assert (tpot["kind"], tpot["level"], tpot["last_win"]) == (
        "crossover",
        "concurrency=16",
        "concurrency=4",
    )
    assert tpot["stable"] is False and tpot["unstable_levels"] == ["concurrency=4"]
    assert "unstable: repeat range includes 1.0 at concurrency=4" in tpot["text"]
    thru = cross["throughput_speedup"]
    assert thru["kind"] == "crossover" and thru["level"] == "concurrency=16"
    assert thru["stable"] is True and thru["unstable_levels"] == []


def test_repeats_report_files(rep_sweep: Path) -> None:
    md = write_report([rep_sweep]).read_text()
    out = rep_sweep / "report"
    assert "## How to read this" in md
    assert "2 / C(n_b + n_c, n_c)" in md
    header = next(line for line in md.splitlines() if line.startswith("| config"))
    for col in ("| n |", "tok/s spread", "TTFT p50 spread", "TPOT p50 spread"):
        assert col in header
    ngram_c1 = next(
        line
        for line in md.split("### concurrency=1\n")[1].splitlines()
        if line.startswith("| ngram-k3")
    )
    assert "2.00x (1.73-2.21) stable" in ngram_c1
    assert "| 3 |" in ngram_c1 and "15.0%" in ngram_c1 and "60/3" in ngram_c1
    assert "1.05x (0.93-1.15) unstable" in md
    stab = md.split("## Which speedups are stable")[1]
    unstable_part = stab.split("Stable:")[0]
    assert "ngram-k3 at concurrency=4: TPOT 1.05x" in unstable_part
    assert "concurrency=1" not in unstable_part
    # 3 levels x 3 speedups; only TPOT and E2E at c=4 straddle 1.0
    assert "Stable (range over repeat pairings clear of 1.00x): 7; " in stab
    assert "unstable (range includes 1.00x): 2; without repeats: 0." in stab

    page = (out / "report.html").read_text()
    assert 'class="unstable"' in page and "<h2>How to read this</h2>" in page

    import pandas as pd

    csv = pd.read_csv(out / "report.csv")
    assert len(csv) == 6
    new_cols = {
        "n_repeats",
        "tpot_p50_ms_min",
        "tpot_p50_ms_max",
        "tpot_p50_ms_spread_pct",
        "output_throughput_spread_pct",
        "ttft_p50_ms_spread_pct",
        "tpot_speedup_lo",
        "tpot_speedup_hi",
        "tpot_speedup_stable",
        "throughput_speedup_stable",
        "repeat_phases",
    }
    assert new_cols <= set(csv.columns)
    row = csv[(csv["label"] == "ngram-k3") & (csv["phase"] == "concurrency=4")].iloc[0]
    assert not row["tpot_speedup_stable"] and row["throughput_speedup_stable"]
    assert json.loads(row["repeat_phases"])[2] == "concurrency=4 r3"
    doc = json.loads((out / "report.json").read_text())
    assert len(doc["rows"]) == 6
    assert len(doc["repeats"]) == 18
    one = next(
        x for x in doc["repeats"] if x["label"] == "ngram-k3" and x["phase"] == "concurrency=4 r3"
    )
    assert (one["level"], one["repeat"], one["tpot_p50_ms"]) == ("concurrency=4", 3, 22.5)
    assert "unstable" in doc["crossovers"][0]["text"]


def test_repeat_error_bars(rep_sweep: Path) -> None:
    from loadgen.report.figures import error_bars, scenario_figures

    df = build_tables(find_runs([rep_sweep]))
    xs = {f"concurrency={lv}": float(lv) for lv in LEVELS}
    bars = error_bars(df, "ngram-k3", "tpot_p50_ms", xs)
    assert bars == [(1.0, 10.0, 9.5, 11.0), (4.0, 21.0, 20.0, 22.5), (16.0, 40.0, 38.0, 42.0)]
    assert error_bars(df, "none", "output_throughput", xs)[0] == (1.0, 50.0, 48.0, 52.0)
    assert error_bars(df, "none", "tpot_p99_ms", xs) == []  # no min-max kept for p99
    out = rep_sweep / "figs"
    out.mkdir()
    assert len(scenario_figures(df, "rep", out)) == 5


def test_repeats_partial_and_mixed(tmp_path: Path) -> None:
    root = tmp_path / "s"
    # the baseline ran once per level, the config 3 times but was killed after c=16 r2
    one_shot = {**REP_SCENARIO, "repeats": 1}
    base_dir = root / "none" / "rep"
    base_dir.mkdir(parents=True)
    scen = parse_scenario(one_shot, "test")
    (base_dir / "run.json").write_text(
        json.dumps({"scenario": scen.model_dump(), "label": "none", "spec": None})
    )
    phases = {}
    for lv in LEVELS:
        s = _rep_summary("none", lv, 1)
        s["phase"] = f"concurrency={lv}"
        phases[s["phase"]] = s
    (base_dir / "summary.json").write_text(
        json.dumps({"complete": True, "scenario": "rep", "label": "none", "phases": phases})
    )
    phases_done = [(lv, rep) for lv in LEVELS for rep in (1, 2, 3)][:-1]
    _write_rep_run(root, "ngram-k3", phases_done, top_summary=False)
    runs = find_runs([root])
    df = build_tables(runs)
    assert len(df) == 6
    r16 = _rep_row(df, "ngram-k3", 16)
    assert r16["n_repeats"] == 2
    assert r16["tpot_p50_ms"] == pytest.approx(39.0)  # median of two = their mean
    assert "2 of 3 repeats have results" in r16["note"]
    assert r16["tpot_speedup"] == pytest.approx(20.0 / 39.0 * 1.5)  # base c=16 r1: 30 ms
    # one baseline run: a range is not defined, so no verdict, and the note says why
    assert r16["tpot_speedup_stable"] is None
    assert "needs 2+ repeats" in r16["note"]
    assert _rep_row(df, "none", 16)["n_repeats"] == 1
    md = write_report([root], figures=False).read_text()
    assert "without repeats: 9." in md


def test_repeat_with_nothing_completed_is_left_out(tmp_path: Path) -> None:
    root = tmp_path / "s"
    _write_rep_run(root, "none")
    d = _write_rep_run(root, "ngram-k3")
    doc = json.loads((d / "summary.json").read_text())
    doc["phases"]["concurrency=1_r2"].update(completed=0, failed=20, p50_tpot_ms=0.0)
    (d / "summary.json").write_text(json.dumps(doc))
    r = _rep_row(build_tables(find_runs([root])), "ngram-k3", 1)
    assert r["tpot_p50_ms"] == pytest.approx(9.75)  # median of 10 and 9.5
    assert (r["completed"], r["failed"]) == (40, 22)
    assert "r2: no request completed" in r["note"]
    assert r["n_repeats"] == 3


def test_repeats_without_repeat_key_or_scenario(tmp_path: Path) -> None:
    """Older summaries (no 'repeat') and a run.json whose scenario does not validate still
    group by the ' rN' suffix."""
    root = tmp_path / "s"
    for label in REP_CONFIGS:
        d = _write_rep_run(root, label, with_repeat_key=False)
        meta = json.loads((d / "run.json").read_text())
        meta["scenario"] = {"name": "rep", "unknown_field": 1}
        (d / "run.json").write_text(json.dumps(meta))
    runs = find_runs([root])
    assert all(r.repeats == 3 for r in runs)  # from the names
    df = build_tables(runs)
    assert len(df) == 6 and (df["n_repeats"] == 3).all()
    assert _rep_row(df, "ngram-k3", 4)["tpot_speedup_stable"] is False


# Columns report.csv had before repeats; they keep their order and, without repeats, values.
OLD_COLUMNS = [
    "scenario", "phase", "load_shape", "load_level", "label", "spec_method", "is_baseline",
    "completed", "failed", "duration_s", "request_throughput", "output_throughput",
    "ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms", "itl_p50_ms", "itl_p99_ms",
    "itl_chunk_p50_ms", "itl_chunk_p99_ms", "e2el_p50_ms", "e2el_p99_ms", "tokens_per_chunk",
    "acceptance_length", "acceptance_rate_pct", "request_goodput", "goodput_fraction",
    "dispatch_lag_p99_ms", "tpot_speedup", "throughput_speedup", "e2e_speedup",
    "acceptance_per_position", "run_complete", "note", "run_dir",
]  # fmt: skip


def test_no_repeats_unchanged(sweep: Path) -> None:
    df = build_tables(find_runs([sweep]))
    assert list(df.columns[: len(OLD_COLUMNS)]) == OLD_COLUMNS
    assert (df["n_repeats"] == 1).all()
    assert df["tpot_p50_ms_spread_pct"].isna().all()
    assert df["tpot_speedup_lo"].isna().all()
    assert df["tpot_speedup_stable"].isna().all()
    # values are the single phase's, counts included
    assert _cell(df, "ngram-k3", 4, "completed") == 20
    assert _cell(df, "ngram-k3", 4, "tpot_p50_ms") == 20.0
    assert _cell(df, "ngram-k3", 4, "request_throughput") == pytest.approx(200 / 128)
    cross = crossovers(df)
    assert all(c["stable"] is None and "stable" not in c["text"] for c in cross)

    md = write_report([sweep], figures=False).read_text()
    header = next(line for line in md.splitlines() if line.startswith("| config"))
    assert header == (
        "| config | ok/failed | out tok/s | TTFT p50/p99 | TPOT p50/p99 | ITL/token p50/p99 "
        "| E2E p50/p99 | tok/chunk | accept len | goodput | TPOT speedup | thru speedup "
        "| E2E speedup |"
    )
    ngram_c1 = next(
        line
        for line in md.split("### concurrency=1\n")[1].splitlines()
        if line.startswith("| ngram-k3")
    )
    assert ngram_c1.endswith("| 2.00x | 2.00x | 2.00x |")
    assert "## How to read this" in md
    assert "## Which speedups are stable" not in md


def test_print_comparison_table_with_repeats(rep_sweep: Path, sweep: Path) -> None:
    console = Console(record=True, width=300)
    df = build_tables(find_runs([rep_sweep]))
    print_comparison_table(df.to_dict("records"), "none", console=console)
    text = console.export_text()
    assert "medians over repeats" in text
    assert "1.05x (0.93-1.15) unstable" in text
    assert "2.00x (1.73-2.21) stable" in text
    console = Console(record=True, width=300)
    print_comparison_table(build_tables(find_runs([sweep])).to_dict("records"), "none", console)
    plain = console.export_text()
    assert "stable" not in plain and "repeats" not in plain

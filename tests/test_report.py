"""Reports from synthetic sweeps: speedups, crossover, missing cells, files, CLI exit codes."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from loadgen.console import print_comparison_table, print_summary_table
from loadgen.errors import SpecloadError
from loadgen.metrics import summarize
from loadgen.records import RequestRecord
from loadgen.report import (
    build_tables,
    compare_main,
    crossovers,
    find_crossover,
    find_runs,
    report_main,
    write_report,
)
from loadgen.results import slugify
from loadgen.scenario import parse_scenario

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
    """A run whose summaries come from metrics.summarize, as the runner writes them."""
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

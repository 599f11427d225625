"""The sweep CSV: rows from run summaries, and graphs drawn from it."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from loadgen.errors import SpecloadError
from loadgen.report.cli import analyze_main
from loadgen.report.original_csv import (
    CSV_COLUMNS,
    make_figures,
    read_results,
    row_from_summary,
    speculative_model_name,
    with_speedups,
    write_rows,
)
from server_launch.matrix import load_matrix

REPO = Path(__file__).resolve().parent.parent


def _summary(level: int, thr: float, tpot: float, al: float | None = None) -> dict:
    return {
        "scenario": "n32",
        "phase": f"concurrency={level}",
        "load_shape": "concurrency",
        "load_level": level,
        "num_prompts": 32,
        "completed": 32,
        "failed": 0,
        "duration": 10.0,
        "request_throughput": 3.2,
        "output_throughput": thr,
        "median_tpot_ms": tpot,
        "median_ttft_ms": 20.0,
        "spec_decode_acceptance_length": al,
        "complete": True,
        "something_else": 1,
    }


def test_row_from_summary_original_run() -> None:
    m = load_matrix(REPO / "scenarios" / "original-config.yaml")
    run = next(r for r in m.runs if r.label == "draft_model-opt-125m-k3-bs8")
    row = row_from_summary(run, _summary(8, 500.0, 12.0, 2.4))
    assert list(row) == list(CSV_COLUMNS)
    assert row["speculative_model"] == "facebook/opt-125m"
    assert (row["num_speculative_tokens"], row["batch_size"], row["num_requests"]) == (3, 8, 32)
    assert (
        row["label"] == "draft_model-opt-125m-k3-bs8"
        and row["spec_label"] == "draft_model-opt-125m-k3"
    )
    assert row["output_tokens"] == 128 and row["scenario"] == "n32"
    assert row["spec_decode_acceptance_length"] == 2.4


def test_row_batch_size_from_concurrency_level_in_native_matrices() -> None:
    m = load_matrix(REPO / "scenarios" / "matrix-cpu.yaml")
    run = m.runs[2]  # ngram
    row = row_from_summary(run, {**_summary(4, 10.0, 5.0), "scenario": "cpu-c1-c4"})
    assert row["batch_size"] == 4 and row["speculative_model"] == "[ngram]"
    assert row["output_tokens"] == 16


def test_speculative_model_name() -> None:
    assert speculative_model_name("none", None) == "none"
    assert speculative_model_name("ngram", None) == "[ngram]"
    assert speculative_model_name("draft_model", "/abs/models/opt-125m") == "opt-125m"
    assert speculative_model_name("draft_model", "facebook/opt-125m") == "facebook/opt-125m"


def _synthetic_csv(path: Path) -> Path:
    m = load_matrix(REPO / "scenarios" / "original-config-cpu.yaml")
    rows = []
    for run in m.runs:
        b = run.batch_size or 1
        base_thr = 100.0 * b
        speed = {"none": 1.0, "ngram": 1.3, "draft_model": 0.8}[run.spec.method]
        for n in (4, 8):
            s = {**_summary(b, base_thr * speed, 10.0 / speed, None if speed == 1 else 2.0)}
            s.update(scenario=f"n{n}", num_prompts=n)
            rows.append(row_from_summary(run, s))
    write_rows(path, rows[:5], append=False)
    write_rows(path, rows[5:])  # appends without a second header
    return path


def test_write_rows_appends_one_header(tmp_path: Path) -> None:
    p = _synthetic_csv(tmp_path / "raw_data" / "r.csv")
    lines = p.read_text().splitlines()
    assert lines[0].split(",") == list(CSV_COLUMNS)
    assert sum(1 for line in lines if line.startswith("speculative_model,")) == 1
    assert len(list(csv.DictReader(p.open()))) == 12


def test_speedups_against_none(tmp_path: Path) -> None:
    df = with_speedups(read_results(_synthetic_csv(tmp_path / "r.csv")))
    ng = df[(df["config"] == "[ngram] k=3") & (df["batch_size"] == 2)]
    assert ng["throughput_speedup"].round(6).tolist() == [1.3, 1.3]
    assert ng["tpot_speedup"].round(6).tolist() == [1.3, 1.3]
    assert (df[df["config"] == "none"]["throughput_speedup"] == 1.0).all()


def test_figures_written(tmp_path: Path) -> None:
    df = read_results(_synthetic_csv(tmp_path / "r.csv"))
    paths = make_figures(df, tmp_path / "viz", "r")
    names = {p.name for p in paths}
    assert {"r-throughput.png", "r-tpot.png", "r-speedup_throughput.png"} <= names
    assert "r-acceptance_length.png" in names
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_figures_skip_empty_metrics(tmp_path: Path) -> None:
    df = read_results(_synthetic_csv(tmp_path / "r.csv"))
    df["spec_decode_acceptance_length"] = float("nan")
    names = {p.name for p in make_figures(df, tmp_path / "v2", "r")}
    assert "r-acceptance_length.png" not in names


def test_cli_script(tmp_path: Path) -> None:
    csv_path = _synthetic_csv(tmp_path / "raw_data" / "vllm_benchmark_results.csv")
    out = tmp_path / "visualizations"
    r = subprocess.run(
        [sys.executable, str(REPO / "analyze_results.py"), str(csv_path), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert len(list(out.glob("*.png"))) >= 5
    assert "vllm_benchmark_results-throughput.png" in r.stdout


def test_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert analyze_main([str(tmp_path / "nope.csv")]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"batch_size": [1], "output_throughput": [1.0]}).to_csv(bad, index=False)
    with pytest.raises(SpecloadError, match="column 'speculative_model' missing"):
        read_results(bad)
    empty = tmp_path / "empty.csv"
    empty.write_text(",".join(CSV_COLUMNS) + "\n")
    with pytest.raises(SpecloadError, match="no rows"):
        read_results(empty)

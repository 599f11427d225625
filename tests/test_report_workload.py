"""The report's workload section from runs written here: the lengths statement, acceptance
and TPOT speedup by category x load level, per-turn latency, and the per-request
acceptance-against-TPOT scatter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loadgen.report.load import find_runs
from loadgen.report.render import write_report
from loadgen.report.workload import category_rows, rank_correlation, server_rows, turn_rows
from loadgen.results.records import RequestRecord
from loadgen.results.summary import summarize

SCENARIO = {
    "name": "suite",
    "endpoint": "chat",
    "load": {"shape": "concurrency", "concurrency": 1},
    "num_requests": 8,
    "prompts": {"source": "specbench", "path": "question.jsonl"},
    "ignore_eos": False,
}
# label -> category -> (TPOT ms, accepted drafts per request of 4 steps) ; None: no drafting
CONFIGS: dict[str, dict[str, tuple[float, int | None]]] = {
    "none": {"code": (20.0, None), "chat": (20.0, None)},
    "draft-k3": {"code": (10.0, 9), "chat": (25.0, 1)},
}


def _records(label: str, turns: bool) -> list[RequestRecord]:
    recs = []
    for i in range(8):
        cat = "code" if i % 2 == 0 else "chat"
        tpot, acc = CONFIGS[label][cat]
        tpot += i * 0.1  # a spread within the category, for the scatter
        out = 11 + i
        t0 = float(i)
        m = None
        if acc is not None:
            sd = {
                "mean_acceptance_length": 1 + acc / 4,
                "draft_acceptance_rate": acc / 12,
                "acceptance_histogram": [0, 0, 0, 0],
                "num_spec_steps": 4,
                "num_accepted_draft_tokens": acc,
                "num_draft_tokens": 12,
                "num_spec_tokens": 3,
            }
            m = {"time_to_first_token_ms": 5.0, "queue_time_ms": 1.0, "speculative_decoding": sd}
        recs.append(
            RequestRecord(
                request_id=i, phase="concurrency=1", scheduled_s=t0, sent_s=t0,
                first_token_s=t0 + 0.05, end_s=t0 + 0.05 + tpot * (out - 1) / 1000,
                chunk_times=[t0 + 0.05], chunk_tokens=[out], output_tokens=out,
                prompt_tokens=30, finish_reason="stop", category=cat, server_metrics=m,
                conversation=i // 2 if turns else None, turn=1 + i % 2 if turns else None,
            )
        )  # fmt: skip
    return recs


def _write_run(root: Path, label: str, scenario: dict[str, Any], turns: bool = False) -> None:
    run_dir = root / label / scenario["name"]
    pdir = run_dir / "concurrency=1"
    pdir.mkdir(parents=True)
    spec = None if label == "none" else {"method": "draft_model", "num_speculative_tokens": 3}
    run = {"scenario": scenario, "label": label, "spec": spec, "model": "m"}
    (run_dir / "run.json").write_text(json.dumps(run))
    recs = _records(label, turns)
    (pdir / "requests.jsonl").write_text("".join(r.to_json() + "\n" for r in recs))
    extra = {"output_lengths": "natural", "prefix_cache_hit_rate": 0.4 if turns else None}
    s = summarize(recs, duration_s=10.0, phase="concurrency=1", load=scenario["load"], extra=extra)
    (pdir / "summary.json").write_text(json.dumps(s))
    doc = {
        "complete": True,
        "scenario": scenario["name"],
        "label": label,
        "phases": {"concurrency=1": s},
    }
    (run_dir / "summary.json").write_text(json.dumps(doc))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    for label in CONFIGS:
        _write_run(root, label, SCENARIO)
        _write_run(root, label, {**SCENARIO, "name": "chat-mt", "multi_turn": {}}, turns=True)
    return root


def test_category_rows_give_acceptance_and_speedup(sweep: Path) -> None:
    rows = category_rows(find_runs([sweep]), "none")
    cell = {(r["scenario"], r["label"], r["category"]): r for r in rows}
    code, chat = cell[("suite", "draft-k3", "code")], cell[("suite", "draft-k3", "chat")]
    assert code["acceptance_length"] == pytest.approx(1 + 9 / 4)
    assert chat["acceptance_length"] == pytest.approx(1 + 1 / 4)
    assert code["count"] == 4 and code["level"] == "concurrency=1"
    # the drafter wins on code and loses on chat: speedup = baseline TPOT / this TPOT
    assert code["tpot_speedup"] == pytest.approx(20.3 / 10.3, rel=1e-6)
    assert chat["tpot_speedup"] == pytest.approx(20.4 / 25.4, rel=1e-6)
    assert cell[("suite", "none", "code")]["tpot_speedup"] == pytest.approx(1.0)
    assert cell[("suite", "none", "code")]["acceptance_length"] is None


def test_turn_rows(sweep: Path) -> None:
    rows = [r for r in turn_rows(find_runs([sweep])) if r["label"] == "none"]
    assert [(r["scenario"], r["turn"], r["count"]) for r in rows] == [
        ("chat-mt", 1, 4),
        ("chat-mt", 2, 4),
    ]
    assert rows[0]["prefix_cache_hit_rate"] == pytest.approx(0.4)


def test_server_rows_split_ttft_inside_and_outside_the_engine(sweep: Path) -> None:
    rows = server_rows(find_runs([sweep]))
    # only the drafter's records carried the server's figures (the baseline's had none)
    assert {r["label"] for r in rows} == {"draft-k3"}
    row = next(r for r in rows if r["scenario"] == "suite")
    assert row["server_metrics"] == 8 and row["level"] == "concurrency=1"
    assert row["median_server_ttft_ms"] == pytest.approx(5.0)
    assert row["median_server_queue_ms"] == pytest.approx(1.0)
    # client TTFT 50 ms = 1 ms queued + 5 ms in the engine + 44 ms outside it
    assert row["median_ttft_ms"] == pytest.approx(50.0)
    assert row["median_client_minus_server_ttft_ms"] == pytest.approx(44.0)


def test_report_has_the_workload_section(sweep: Path, tmp_path: Path) -> None:
    md_path = write_report([sweep], tmp_path / "rep")
    md = md_path.read_text()
    assert "Output lengths in `suite`: **natural**" in md
    assert "## By prompt category" in md and "## By turn (multi-turn replay)" in md
    out = md_path.parent
    assert (out / "report_categories.csv").read_text().count("\n") == 1 + 2 * 2 * 2
    assert (out / "report_turns.csv").is_file()
    assert "## TTFT inside and outside the engine" in md
    assert (out / "report_server.csv").read_text().count("\n") == 1 + 2
    doc = json.loads((out / "report.json").read_text())
    assert len(doc["workload"]["categories"]) == 8 and doc["workload"]["lengths"]
    scatter = out / "suite-acceptance_vs_tpot.png"
    assert scatter.stat().st_size > 5000
    assert "acceptance_vs_tpot" in (out / "report.html").read_text()


def test_rank_correlation() -> None:
    assert rank_correlation([(1, 3), (2, 2), (3, 1)]) == pytest.approx(-1.0)
    assert rank_correlation([(1, 1), (2, 2), (2, 2), (3, 5)]) == pytest.approx(1.0)
    assert rank_correlation([(1, 1), (1, 2), (1, 3)]) is None
    assert rank_correlation([(1, 1)]) is None

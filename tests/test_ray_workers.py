"""``--ray-address``: the workers as Ray actors on a (local, test-owned) Ray cluster.

The cluster is a real one: ``ray start --head`` on a free port, in its own process group,
and loadgen connects to it by address as it would to a remote head node.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from loadgen.config.scenario import parse_scenario
from loadgen.config.shapes.base import build_schedule
from loadgen.mock.process import mock_process
from loadgen.results.files import read_records, worker_record_files
from tests.conftest import free_port, run_loadgen

RAY = Path(sys.executable).with_name("ray")
N, WARM = 40, 4


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="rt")  # short: Ray's socket paths must fit 107 bytes
    log = open(Path(tmp) / "head.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(RAY), "start", "--head", "--port", str(port), "--num-cpus", "2",
         "--include-dashboard", "false", "--disable-usage-stats", "--block",
         "--temp-dir", tmp, "--node-ip-address", "127.0.0.1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while b"block forever" not in (Path(tmp) / "head.log").read_bytes():
            assert proc.poll() is None, (Path(tmp) / "head.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "ray head did not start"
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)  # the leader stops its own processes
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of its group is left
        proc.wait()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_two_ray_actors_merge_into_one_results_dir(tmp_path: Path, ray_head: str) -> None:
    truth_log = tmp_path / "truth.jsonl"
    doc = {
        "name": "ray",
        "load": {"shape": "poisson", "rate": 20},
        "num_requests": N,
        "warmup_requests": WARM,
        "prompts": {"source": "base_prompt", "base_prompt": "w5 w6 w7 w8"},
        "output_tokens": 8,
    }
    scen = tmp_path / "s.yaml"
    scen.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    with mock_process(["--ttft-ms", "5", "--itl-ms", "2", "--log", str(truth_log)]) as url:
        p = run_loadgen("--scenario", str(scen), "--base-url", url, "--output-dir", str(out),
                        "--no-progress", "--workers", "2", "--ray-address", ray_head)  # fmt: skip
        time.sleep(0.5)  # the mock flushes its log every 0.2 s
    assert p.returncode == 0, p.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["workers"]["backend"] == "ray" and run["workers"]["count"] == 2
    assert run["workers"]["ray_address"] == ray_head
    (pdir,) = [d for d in out.iterdir() if d.is_dir()]
    assert worker_record_files(pdir) == []
    records = list(read_records(pdir / "requests.jsonl"))
    measured = sorted((r for r in records if not r.warmup), key=lambda r: r.request_id)
    # what the mock served, once each
    served = [json.loads(line) for line in truth_log.read_text().splitlines()]
    served_ids = [int(s["request_id"].rsplit("-", 1)[1]) for s in served]
    assert len(records) == len(served) == N + WARM
    assert sorted(served_ids) == sorted(r.request_id for r in records) == list(range(N + WARM))
    assert all(r.ok for r in records)
    # the per-worker split: round-robin
    assert Counter(r.worker for r in measured) == {0: N // 2, 1: N // 2}
    assert all(r.worker == (r.request_id - WARM) % 2 for r in measured)
    # one clock: the schedule's offsets from one shared start, sends close to them
    (phase,) = parse_scenario(doc, "s").phases()
    sched = build_schedule(phase.load, num_requests=N, duration_s=None, seed=0)
    scheduled = np.array([r.scheduled_s for r in measured])
    np.testing.assert_allclose(scheduled - scheduled[0], sched.offsets, atol=1e-9)
    lag_ms = (np.array([r.sent_s for r in measured]) - scheduled) * 1e3
    print(f"\n[ray] dispatch lag ms: p50 {np.median(lag_ms):.2f} max {lag_ms.max():.2f}")
    assert np.median(lag_ms) < 5.0
    flat = json.loads((pdir / "summary.json").read_text())
    assert flat["completed"] == N and flat["workers"] == 2

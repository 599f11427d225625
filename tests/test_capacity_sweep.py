"""A capacity search per configuration through server_launch's sweep, each "server" a mock
in queueing mode whose capacity is known: no speculation gets 2 slots, the speculative
config 4, so at the same SLO its capacity is exactly twice the baseline's. The report's first
table says so; sweep.json holds one cell per search; a second run with --resume skips it.
(The same on a real vLLM: test_capacity_vllm.py.)"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from loadgen.mock.process import start_mock_process, stop_mock_process
from server_launch.matrix import load_matrix
from server_launch.sweep import run_sweep

TOKEN_MS, TOKENS = 10, 4  # S = 40 ms
SLOTS = {"none": 2, "ngram": 4}
MATRIX: dict[str, Any] = {
    "name": "capacity-mock",
    "backend": "local",
    "model": "mock-model",
    "server": {"max_model_len": 512},
    "paired": False,  # one search per configuration, one server after the other
    "specs": [{"method": "none"}, {"method": "ngram", "num_speculative_tokens": 3}],
    "scenarios": [
        {
            "name": "cap",
            "load": {"shape": "concurrency", "concurrency": 1},
            "search": {"kind": "capacity", "max": 32, "max_probes": 10},
            "num_requests": 24,
            "warmup_requests": 2,
            "prompts": {"source": "base_prompt", "base_prompt": "w1 w2"},
            "output_tokens": TOKENS,
            # a wait of one service time (40 ms) passes, two fail: capacity = 2 x slots
            "slo": {"ttft_ms": {"p": 90, "max": 70}},
        }
    ],
}


class MockHandle:
    def __init__(self, proc: subprocess.Popen[bytes], url: str) -> None:
        self.proc, self.base_url = proc, url

    def wait_healthy(self, deadline_s: float) -> None:
        pass  # start_mock_process returns once it listens

    def is_alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        stop_mock_process(self.proc)

    def log_tail(self, n: int = 50) -> str:
        return ""


class MockBackend:
    """One mock process per configuration, its slots set by the speculative method."""

    name = "mock"

    def __init__(self) -> None:
        self.started: list[str] = []

    def command(self, run: Any, port: int) -> list[str]:
        return ["python", "-m", "loadgen.mock", "--max-num-seqs", str(self._slots(run))]

    def start(self, run: Any, port: int, log_path: Path) -> MockHandle:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.started.append(run.label)
        proc, url = start_mock_process(
            ["--max-num-seqs", str(self._slots(run)), "--token-ms", str(TOKEN_MS)]
        )
        return MockHandle(proc, url)

    @staticmethod
    def _slots(run: Any) -> int:
        return SLOTS[run.spec.method]


def test_capacity_per_configuration(tmp_path: Path) -> None:
    mfile = tmp_path / "m.yaml"
    mfile.write_text(yaml.safe_dump(MATRIX))
    matrix = load_matrix(mfile)
    out = tmp_path / "sweep"
    backend = MockBackend()
    res = run_sweep(matrix, backend=backend, output_dir=out, progress=False, log=print)
    assert res.complete and res.cells == {"done": 2, "failed": 0, "pending": 0}
    state = json.loads((out / "sweep.json").read_text())
    for label in ("none", "ngram-k3"):
        assert state["runs"][label]["scenarios"]["cap"] == {
            "capacity": {"status": "done", "at": state["runs"][label]["scenarios"]["cap"]
                         ["capacity"]["at"]}}  # fmt: skip
    caps = {lb: json.loads((out / lb / "cap" / "capacity.json").read_text())["capacity"]
            for lb in ("none", "ngram-k3")}  # fmt: skip
    # the interval's high end is the lowest clearly failing level: one step up, or two
    # where the first failing level was too close to call on 24 requests
    assert caps["none"]["value"] == 4 and caps["none"]["high"] in (5, 6)
    assert caps["ngram-k3"]["value"] == 8 and caps["ngram-k3"]["high"] in (9, 10)
    lo = 8 / caps["none"]["high"]
    hi = caps["ngram-k3"]["high"] / 4

    md = (out / "report" / "report.md").read_text()
    assert md.index("## Capacity at the SLO") < md.index("## How to read this")
    table = md[md.index("| config | capacity |") :].split("\n\n")[0].splitlines()
    b_hi, c_hi = caps["none"]["high"], caps["ngram-k3"]["high"]
    noisy = r"( \(within noise\))?"  # when a deciding verdict stayed too close to call
    assert re.match(
        rf"\| none \(baseline\) \| 4 concurrency{noisy} \| 4-{b_hi:g} \| n/a \|", table[2]
    )
    assert re.match(rf"\| ngram-k3 \| 8 concurrency{noisy} \| 8-{c_hi:g} \| ", table[3])
    assert f"| 2.00x ({lo:.2f}-{hi:.2f}) |" in table[3]
    slo = "p90 TTFT <= 70 ms"
    assert f"**ngram-k3: 2.00x the concurrent requests at {slo} ({lo:.2f}-{hi:.2f})**" in md
    assert (out / "report" / "cap_capacity.png").is_file()

    res = run_sweep(matrix, backend=backend, output_dir=out, resume=True, progress=False,
                    report=False, log=print)  # fmt: skip
    assert res.complete and backend.started == ["none", "ngram-k3"]  # nothing ran again

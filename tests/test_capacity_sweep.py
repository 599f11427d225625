"""A capacity search per configuration through server_launch's sweep, each "server" a mock
in queueing mode whose capacity is known: no speculation gets 2 slots, the speculative
config 4, so at the same SLO its capacity is exactly twice the baseline's. The report's first
table says so; sweep.json holds one cell per search; a second run with --resume skips it.
Sequential (one server after the other) and paired (both servers up, their searches' probes
alternating A B | B A, server_launch/paired_search.py), with Ctrl-C and --resume of the
paired search. (The same on a real vLLM: test_capacity_vllm.py.)"""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from loadgen.mock.process import start_mock_process, stop_mock_process
from loadgen.report.verdict import balanced_order
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
        self.stopped = False

    def wait_healthy(self, deadline_s: float) -> None:
        pass  # start_mock_process returns once it listens

    def is_alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        self.stopped = True
        stop_mock_process(self.proc)

    def log_tail(self, n: int = 50) -> str:
        return ""


class MockBackend:
    """One mock process per configuration, its slots set by the speculative method."""

    name = "mock"

    def __init__(self) -> None:
        self.started: list[str] = []
        self.handles: list[MockHandle] = []

    def command(self, run: Any, port: int) -> list[str]:
        return ["python", "-m", "loadgen.mock", "--max-num-seqs", str(self._slots(run))]

    def start(self, run: Any, port: int, log_path: Path) -> MockHandle:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.started.append(run.label)
        proc, url = start_mock_process(
            ["--max-num-seqs", str(self._slots(run)), "--token-ms", str(TOKEN_MS)]
        )
        self.handles.append(MockHandle(proc, url))
        return self.handles[-1]

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


# --- paired: both servers up, the searches' probes alternating ------------------------------

LABELS = ("none", "ngram-k3")
GROUP = "ngram-k3"  # the group's directory: its candidates
CELL = Path("paired") / GROUP / "cap" / "capacity"


def _paired_matrix(tmp_path: Path) -> Any:
    doc = copy.deepcopy(MATRIX)
    doc["paired"] = {"mode": "on"}  # both mocks up at once, probes in turn
    mfile = tmp_path / "m.yaml"
    mfile.write_text(yaml.safe_dump(doc))
    return load_matrix(mfile)


def _probe_spans(run_dir: Path) -> dict[str, tuple[float, float]]:
    """Per probe (phase slug): when its first request was sent and its last one ended,
    in epoch seconds, from its own records (warm-up included): what the server saw."""
    origin = json.loads((run_dir / "run.json").read_text())["epoch_origin"]
    spans = {}
    for rec_file in run_dir.glob("*/requests.jsonl"):
        recs = [json.loads(line) for line in rec_file.read_text().splitlines()]
        start = min(r["sent_s"] for r in recs)
        end = max(r["end_s"] or r["sent_s"] for r in recs)
        spans[rec_file.parent.name] = (origin + start, origin + end)
    return spans


def claimed_order(counts: dict[str, int]) -> list[str]:
    """The order paired_search.py claims for searches of ``counts`` probes (label -> count,
    the baseline first): round k over the searches still running, forward for even k,
    backward for odd; a search leaves at its first turn with no probe left."""
    left, live, out, k = dict(counts), list(counts), [], 0
    while live:
        for label in balanced_order(k, live):
            if left[label]:
                out.append(label)
                left[label] -= 1
            else:
                live.remove(label)
        k += 1
    return out


def test_paired_capacity_searches_alternate_their_probes(tmp_path: Path) -> None:
    """Both mocks up at once, one search each: each lands where its queue says (2 and 4
    slots: capacity 4 and 8), their probes ran one at a time in the balanced order (checked
    on the requests' own send and end times), and the report's capacity table shows both,
    the gain, and that they alternated."""
    out, backend = tmp_path / "sweep", MockBackend()
    res = run_sweep(_paired_matrix(tmp_path), backend=backend, output_dir=out, progress=False,
                    log=print)  # fmt: skip
    assert res.complete and res.cells == {"done": 1, "failed": 0, "pending": 0}
    state = json.loads((out / "sweep.json").read_text())
    assert state["mode"] == "paired"
    cell = state["groups"][GROUP]["scenarios"]["cap"]["capacity"]
    assert cell["status"] == "done"
    docs = {lb: json.loads((out / CELL / lb / "capacity.json").read_text()) for lb in LABELS}
    caps = {lb: d["capacity"] for lb, d in docs.items()}
    assert caps["none"]["value"] == 4 and caps["none"]["high"] in (5, 6)
    assert caps["ngram-k3"]["value"] == 8 and caps["ngram-k3"]["high"] in (9, 10)
    for position, label in enumerate(LABELS, start=1):
        alt = docs[label]["alternation"]
        assert alt["servers"] == list(LABELS) and alt["position"] == position
        assert alt["baseline"] == "none" and alt["group"] == GROUP

    # the order, from what the servers saw: every probe's requests, one probe at a time
    spans = sorted(
        (*_probe_spans(out / CELL / lb)[p["slug"]], lb) for lb in LABELS for p in docs[lb]["probes"]
    )
    counts = {lb: len(docs[lb]["probes"]) for lb in LABELS}
    assert cell["probes"] == sum(counts.values())
    assert [lb for _, _, lb in spans] == claimed_order(counts)
    assert [lb for _, _, lb in spans][:4] == ["none", "ngram-k3", "ngram-k3", "none"]
    for (_, end, _), (start, _, _) in itertools.pairwise(spans):
        assert end <= start  # never two probes at once: the other server idled
    timeline = json.loads((out / CELL / "search.json").read_text())
    assert timeline["status"] == "done" and timeline["pairing"] == "alternated"
    assert [p["label"] for p in timeline["probes"]] == claimed_order(counts)

    md = (out / "report" / "report.md").read_text()
    assert md.index("## Capacity at the SLO") < md.index("## How to read this")
    table = md[md.index("| config | capacity |") :].split("\n\n")[0].splitlines()
    assert table[0].endswith("| stopped because | measured |")
    assert re.match(r"\| none \(baseline\) \| 4 concurrency", table[2])
    assert table[2].endswith("| alternated with ngram-k3 |")
    lo, hi = 8 / caps["none"]["high"], caps["ngram-k3"]["high"] / 4
    assert re.match(r"\| ngram-k3 \| 8 concurrency", table[3])
    assert f"| 2.00x ({lo:.2f}-{hi:.2f}) |" in table[3]
    assert table[3].endswith("| alternated with none |")
    assert "not a confidence interval and not a paired one" in md.replace("\n", " ")
    assert "**Alternated** (capacity searches side by side" in md
    report = json.loads((out / "report" / "report.json").read_text())
    assert [r["alternated"] for r in report["capacity"]["rows"]] == [True, True]


def _interrupt_after(path: Path, probes: int, fired: threading.Event) -> None:
    """Ctrl-C (SIGINT to this process) once ``path`` (search.json) lists ``probes`` probes:
    the third is then in flight."""
    end = time.monotonic() + 120
    while time.monotonic() < end:
        try:
            if len(json.loads(path.read_text())["probes"]) >= probes:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.01)
    else:
        return
    time.sleep(0.05)
    fired.set()
    os.kill(os.getpid(), signal.SIGINT)


def test_paired_capacity_search_ctrl_c_then_resume(tmp_path: Path) -> None:
    """Ctrl-C in the middle of the alternated searches: exit 130, both servers stopped,
    the cell pending, every finished probe kept; --resume takes them back (none is run
    again) and the searches go on alternating to the same answers."""
    matrix, out = _paired_matrix(tmp_path), tmp_path / "sweep"
    backend, fired = MockBackend(), threading.Event()
    watcher = threading.Thread(
        target=_interrupt_after, args=(out / CELL / "search.json", 2, fired), daemon=True
    )
    watcher.start()
    first = run_sweep(matrix, backend=backend, output_dir=out, progress=False, log=print)
    watcher.join()
    assert fired.is_set()
    assert first.interrupted and first.exit_code == 130
    assert all(h.stopped and not h.is_alive() for h in backend.handles)
    state = json.loads((out / "sweep.json").read_text())
    assert state["status"] == "interrupted"
    cell = state["groups"][GROUP]["scenarios"]["cap"]["capacity"]
    assert cell["status"] == "pending" and cell["note"] == "interrupted"
    timeline = json.loads((out / CELL / "search.json").read_text())
    assert timeline["status"] == "interrupted"
    kept = {}
    for label in LABELS:
        doc = json.loads((out / CELL / label / "capacity.json").read_text())
        assert doc["stop"] == "stopped" and "interrupted by SIGINT" in doc["stop_text"]
        kept[label] = [p["slug"] for p in doc["probes"] if p["complete"]]
    assert sum(map(len, kept.values())) >= 2

    resumed = run_sweep(matrix, backend=MockBackend(), output_dir=out, resume=True,
                        progress=False, log=print)  # fmt: skip
    assert resumed.complete and resumed.exit_code == 0
    timeline = json.loads((out / CELL / "search.json").read_text())
    assert timeline["status"] == "done" and timeline["earlier"][0]["status"] == "interrupted"
    for label in LABELS:
        doc = json.loads((out / CELL / label / "capacity.json").read_text())
        assert doc["status"] == "done" and doc["stop"] == "resolved"
        # the finished probes were taken back, in order, and none of them ran again
        mine = [p for p in timeline["probes"] if p["label"] == label]
        assert [p["taken_back"] for p in mine] == [i < len(kept[label]) for i in range(len(mine))]
        assert [p["slug"] for p in doc["probes"]][: len(kept[label])] == kept[label]
    caps = {lb: json.loads((out / CELL / lb / "capacity.json").read_text())["capacity"]
            for lb in LABELS}  # fmt: skip
    assert caps["none"]["value"] == 4 and caps["ngram-k3"]["value"] == 8


def test_paired_capacity_search_loses_a_server_and_keeps_the_finished_probes(
    tmp_path: Path,
) -> None:
    """The candidate's server dies mid-search: both searches stop (the baseline's cannot
    alternate with a dead server), each keeps the probes it finished for --resume, the cell
    fails with the level in flight, and the dead server is recorded as failed."""
    matrix, out = _paired_matrix(tmp_path), tmp_path / "sweep"
    backend = MockBackend()

    def kill_candidate() -> None:
        path, end = out / CELL / "search.json", time.monotonic() + 120
        while time.monotonic() < end:
            try:
                if len(json.loads(path.read_text())["probes"]) >= 3:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.01)
        backend.handles[1].proc.kill()  # the candidate, started second

    killer = threading.Thread(target=kill_candidate, daemon=True)
    killer.start()
    res = run_sweep(matrix, backend=backend, output_dir=out, progress=False, log=print)
    killer.join()
    assert not res.complete and res.exit_code == 1 and res.failed_runs == ["ngram-k3"]
    state = json.loads((out / "sweep.json").read_text())
    cell = state["groups"][GROUP]["scenarios"]["cap"]["capacity"]
    assert cell["status"] == "failed" and cell["in_flight"] is True
    assert cell["error"].startswith("server lost") and "ngram-k3" in cell["error"]
    assert state["runs"]["ngram-k3"]["status"] == "failed"
    assert json.loads((out / "ngram-k3" / "failed.json").read_text())["stage"] == "run"
    timeline = json.loads((out / CELL / "search.json").read_text())
    assert timeline["status"] == "lost" and timeline["lost"] == ["ngram-k3"]
    for label in LABELS:
        doc = json.loads((out / CELL / label / "capacity.json").read_text())
        assert doc["stop"] == "stopped" and "server lost" in doc["stop_text"]
        finished = [p for p in doc["probes"] if p["complete"]]
        assert finished and all((out / CELL / label / p["slug"]).is_dir() for p in finished)
    base = json.loads((out / CELL / "none" / "capacity.json").read_text())
    assert "beside this one (ngram-k3)" in base["stop_text"]


def test_paired_saturation_sweeps_run_one_server_after_the_other(tmp_path: Path) -> None:
    """A saturation scenario in a paired sweep: each server's sweep whole, in turn (not
    alternated, and search.json says so), each fitted to its own server: the 4-slot
    mock's maximum is twice the 2-slot one's."""
    doc = copy.deepcopy(MATRIX)
    doc["paired"] = {"mode": "on"}
    doc["scenarios"] = [
        {
            "name": "sat",
            "load": {"shape": "poisson", "rate": 1},
            "search": {"kind": "saturation", "levels": 2, "saturation_concurrency": 8},
            "num_requests": 12,
            "warmup_requests": 1,
            "prompts": {"source": "base_prompt", "base_prompt": "w1 w2"},
            "output_tokens": TOKENS,
        }
    ]
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(doc))
    out = tmp_path / "sweep"
    res = run_sweep(load_matrix(tmp_path / "m.yaml"), backend=MockBackend(), output_dir=out,
                    progress=False, log=print)  # fmt: skip
    assert res.complete
    cell = out / "paired" / GROUP / "sat" / "saturation"
    timeline = json.loads((cell / "search.json").read_text())
    assert timeline["pairing"] == "sequential" and timeline["done"] == list(LABELS)
    first, second = timeline["runs"]
    assert first["started_at"] + first["duration_s"] <= second["started_at"]
    top = {
        lb: json.loads((cell / lb / "saturation.json").read_text())["calibration"]["throughput"]
        for lb in LABELS
    }
    ratio = top["ngram-k3"]["request_throughput"] / top["none"]["request_throughput"]
    assert 1.6 < ratio < 2.4  # 4 slots against 2, each 40 ms a request
    md = (out / "report" / "report.md").read_text()
    assert "`sat` none:" in md and "`sat` ngram-k3:" in md

"""Paired mode (server_launch/pairing.py, probe.py, paired_level.py, paired_sweep.py)
against co-resident mock servers, with the real loadgen runner and the real report.

Why mocks here: they give what a CPU vLLM cannot, a known truth (server B exactly 10% slower
than A) and a controlled drift (``--drift``, shared by both through one origin, as one
machine would drift), so the test can show the paired estimate is right where a sequential
one is biased. They also die on demand in the middle of a level without costing two
vLLM starts per attempt: the detection of a dead vLLM under load is proved on a real server
by tests/test_server_dies.py, and the paired driver relies on the same health polling plus
a liveness check of every resident after each probe. The real co-resident vLLM pair is
tests/test_paired_vllm.py.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from loadgen.errors import SpecloadError
from loadgen.report.verdict import Verdict
from server_launch import cli
from server_launch.backends.local import LocalBackend
from server_launch.matrix import load_matrix
from server_launch.pairing import plan_pairing, restrict
from server_launch.sweep import run_sweep

REPO = Path(__file__).resolve().parent.parent
BASE, FAST = "none", "fast"
SCENARIO = "c2"


def mock_matrix(
    paired: Any = True, levels: list[int] | None = None, repeats: int = 1, **extra: Any
) -> dict:
    """A native matrix whose servers the MockBackend plays: 'none' and one candidate."""
    scenario: dict[str, Any] = {
        "name": SCENARIO,
        "load": {"shape": "concurrency", "concurrency": 2},
        "repeats": repeats,  # the sequential sweep's; a paired level's repeats are its pairs
        "num_requests": 6,
        "prompts": {"source": "base_prompt"},
        "output_tokens": 16,
        "ignore_eos": True,
    }
    if levels:
        scenario["sweep"] = {"concurrency": levels}
    return {
        "name": "mock-pair",
        "backend": "local",
        "model": "mock-model",
        "specs": [
            {"method": "none"},
            {"method": "ngram", "num_speculative_tokens": 3, "label": FAST},
        ],
        "scenarios": [scenario],
        "paired": paired,
        **extra,
    }


class MockBackend(LocalBackend):
    """The local backend (process group, log, health, stop) starting ``python -m
    loadgen.mock`` with per-label flags instead of vLLM; every mock shares one drift."""

    name = "local"

    def __init__(self, flags: dict[str, list[str]], drift: str = "none", origin: float = 0.0):
        super().__init__([sys.executable, "-m", "loadgen.mock"], stop_grace_s=5.0)
        self.flags, self.drift, self.origin = flags, drift, origin
        self.started: list[str] = []

    def command(self, run: Any, port: int) -> list[str]:
        return [
            *self.prefix(),
            *("--host", "127.0.0.1", "--port", str(port), "--model", "mock-model"),
            *("--jitter-ms", "0.5", "--seed", str(port)),
            *("--drift", self.drift, "--drift-origin", repr(self.origin)),
            *self.flags[run.label],
        ]

    def environment(self, run: Any) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        return env

    def start(self, run: Any, port: int, log_path: Path):  # type: ignore[override]
        self.started.append(run.label)
        return super().start(run, port, log_path)


def _write(tmp_path: Path, doc: dict, name: str = "m.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


def _rows(sweep: Path) -> dict[str, dict[str, Any]]:
    doc = json.loads((sweep / "report" / "report.json").read_text())
    return {f"{r['label']}@{r['phase']}": r for r in doc["rows"]}


def _phase_starts(run_dir: Path) -> list[float]:
    """Epoch seconds at which each phase of a loadgen results directory started sending."""
    run = json.loads((run_dir / "run.json").read_text())
    out = []
    for rec_file in sorted(run_dir.glob("*/requests.jsonl")):
        sent = [json.loads(line)["sent_s"] for line in rec_file.read_text().splitlines()]
        out.append(run["epoch_origin"] + min(sent))
    return out


# --- the drifting pair ----------------------------------------------------------------------

ITL_BASE, ITL_FAST = 11.0, 10.0  # the candidate is exactly 1.10x faster per token
LINEAR = 0.03  # per second: the pair slows down 3% a second, together
STEP = 1.10


def test_paired_mock_pair_under_drift_reports_1_10x_and_sequential_is_biased(
    tmp_path: Path,
) -> None:
    """Two co-resident mocks, the baseline's ITL 11 ms and the candidate's 10 ms (truth:
    1.10x), both slowing down 3%/s and stepping x1.10 mid-way. Paired mode finds 1.10x with
    an interval around it that excludes 1.00. The same pair under the same drift measured
    one server after the other (the sequential sweep, 3 repeats each) reports what the
    drift between the two servers' runs predicts instead."""
    origin = time.time() + 1.0
    step_at = 14.0  # s after the origin: during the measured rounds
    flags = {
        BASE: ["--itl-ms", str(ITL_BASE), "--ttft-ms", "20"],
        FAST: ["--itl-ms", str(ITL_FAST), "--ttft-ms", "20"],
    }
    drift = f"linear:{LINEAR},step:{STEP}@{step_at}"
    settings = {"min_repeats": 4, "max_repeats": 8, "warmup": {"windows": 2, "max_windows": 3}}
    paired = run_sweep(
        load_matrix(_write(tmp_path, mock_matrix(paired=settings, repeats=3))),
        backend=MockBackend(flags, drift, origin),
        output_dir=tmp_path / "paired",
        port=free_port_pair(),
        progress=False,
    )
    assert paired.complete and paired.report is not None
    row = _rows(tmp_path / "paired")[f"{FAST}@concurrency=2"]
    lo, hi = row["tpot_speedup_ci_lo"], row["tpot_speedup_ci_hi"]
    print(f"paired: TPOT {row['tpot_speedup']:.3f}x [{lo:.3f}-{hi:.3f}], {row['pairs']} pairs")
    assert row["pairing"] == "paired" and row["pairs"] >= 4
    assert row["tpot_speedup"] == pytest.approx(1.10, abs=0.03)
    assert lo < 1.10 < hi and lo > 1.0
    assert row["tpot_speedup_verdict"] == Verdict.FASTER
    assert row["throughput_speedup_verdict"] == Verdict.FASTER
    level_dir = tmp_path / "paired" / "paired" / FAST / SCENARIO / "concurrency=2"
    level = json.loads((level_dir / "level.json").read_text())
    orders = [r["order"] for r in level["rounds"]]
    assert orders[:4] == [[BASE, FAST], [FAST, BASE], [BASE, FAST], [FAST, BASE]]
    assert all(level["warmup"][lb]["windows"] >= 2 for lb in (BASE, FAST))
    md = (tmp_path / "paired" / "report" / "report.md").read_text()
    assert f"{row['tpot_speedup']:.2f}x [{lo:.2f}-{hi:.2f}] faster" in md
    assert "**Paired**" in md and "[paired, 95%]" in md

    # the same pair, one server after the other, under the same drift (its own origin)
    seq_origin = time.time()
    seq = run_sweep(
        load_matrix(_write(tmp_path, mock_matrix(paired=False, repeats=3), "seq.yaml")),
        backend=MockBackend(flags, drift, seq_origin),
        output_dir=tmp_path / "seq",
        port=free_port_pair(),
        progress=False,
    )
    assert seq.complete
    srow = _rows(tmp_path / "seq")[f"{FAST}@concurrency=2"]

    def slow(t: float) -> float:
        return (1 + LINEAR * (t - seq_origin)) * (STEP if t - seq_origin >= step_at else 1.0)

    base_t = _phase_starts(tmp_path / "seq" / BASE / SCENARIO)
    fast_t = _phase_starts(tmp_path / "seq" / FAST / SCENARIO)
    predicted = statistics.median(ITL_BASE * slow(t) for t in base_t) / statistics.median(
        ITL_FAST * slow(t) for t in fast_t
    )
    print(
        f"sequential: TPOT {srow['tpot_speedup']:.3f}x, verdict {srow['tpot_speedup_verdict']} "
        f"(drift predicts {predicted:.3f}x; the candidate ran {fast_t[0] - base_t[0]:.1f} s "
        "after the baseline)"
    )
    assert srow["pairing"] == "unpaired"
    assert srow["tpot_speedup"] == pytest.approx(predicted, rel=0.03)  # the drift's bias
    assert srow["tpot_speedup"] < lo  # outside the paired interval, below the truth
    assert srow["tpot_speedup"] < 1.10 - 0.04


def free_port_pair() -> int:
    """A port whose next one is free too (the candidate listens on port + 1)."""
    import socket

    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket() as s2:
                s2.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no two consecutive free ports")


# --- a server dies mid-level; --resume -----------------------------------------------------


def _kill_when(path: Path, backend: MockBackend, label: str, done: threading.Event) -> None:
    """SIGKILL ``label``'s mock once ``path`` exists (a round of the level in flight)."""
    end = time.monotonic() + 120
    while time.monotonic() < end and not path.exists():
        time.sleep(0.05)
    time.sleep(0.3)  # inside the probe, requests in flight
    for h in backend.handles:
        if h.label == label and h.is_alive():
            os.killpg(h.pgid, signal.SIGKILL)
            done.set()
            return


class KillingBackend(MockBackend):
    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.handles: list[Any] = []

    def start(self, run: Any, port: int, log_path: Path):  # type: ignore[override]
        h = super().start(run, port, log_path)
        self.handles.append(h)
        return h


def test_candidate_dies_mid_level_keeps_finished_levels_and_resume_picks_up_there(
    tmp_path: Path,
) -> None:
    flags = {BASE: ["--itl-ms", "4"], FAST: ["--itl-ms", "4"]}
    quick = {"min_repeats": 2, "max_repeats": 2, "warmup": {"windows": 1, "max_windows": 1}}
    mfile = _write(tmp_path, mock_matrix(paired=quick, levels=[1, 2]))
    out, port = tmp_path / "sweep", free_port_pair()
    backend = KillingBackend(flags)
    killed = threading.Event()
    in_flight = out / "paired" / FAST / SCENARIO / "concurrency=2" / "round-01" / FAST
    threading.Thread(
        target=_kill_when, args=(in_flight, backend, FAST, killed), daemon=True
    ).start()
    first = run_sweep(
        load_matrix(mfile), backend=backend, output_dir=out, port=port, progress=False
    )
    assert killed.is_set()
    assert not first.complete and first.exit_code == 1 and FAST in first.failed_runs
    state = json.loads((out / "sweep.json").read_text())
    cells = state["groups"][FAST]["scenarios"][SCENARIO]
    assert cells["concurrency=1"]["status"] == "done" and cells["concurrency=1"]["pairs"] == 2
    lost = cells["concurrency=2"]
    assert lost["status"] == "failed" and lost["in_flight"] is True
    assert lost["error"].startswith("server lost") and FAST in lost["error"]
    assert state["runs"][FAST]["status"] == "failed"
    failed = json.loads((out / FAST / "failed.json").read_text())
    assert failed["stage"] == "run" and failed["label"] == FAST
    level1 = out / "paired" / FAST / SCENARIO / "concurrency=1" / "level.json"
    level2 = out / "paired" / FAST / SCENARIO / "concurrency=2" / "level.json"
    kept = level1.read_bytes()
    assert json.loads(kept)["status"] == "done"
    assert json.loads(level2.read_text())["status"] == "lost"
    # the report shows the finished level, paired, and says what happened to the other
    rows = _rows(out)
    assert rows[f"{FAST}@concurrency=1"]["pairing"] == "paired"
    assert rows[f"{FAST}@concurrency=1"]["pairs"] == 2

    resumed = run_sweep(
        load_matrix(mfile),
        backend=MockBackend(flags),
        output_dir=out,
        port=port,
        resume=True,
        progress=False,
    )
    assert resumed.complete and resumed.exit_code == 0
    state = json.loads((out / "sweep.json").read_text())
    assert state["resumed"] is True and state["status"] == "complete"
    cells = state["groups"][FAST]["scenarios"][SCENARIO]
    assert {c["status"] for c in cells.values()} == {"done"}
    assert level1.read_bytes() == kept  # the finished level was not run again
    assert json.loads(level2.read_text())["status"] == "done"
    superseded = list((out / "paired" / FAST / SCENARIO / ".superseded").glob("concurrency=2-*"))
    assert len(superseded) == 1  # the lost attempt, moved aside
    assert json.loads((superseded[0] / "level.json").read_text())["status"] == "lost"


# --- bad input: one line, before anything starts -------------------------------------------


@pytest.mark.parametrize(
    ("paired", "needle"),
    [
        (
            {"memory_share": 0.6},
            "field 'paired.memory_share': memory shares 0.6 + 0.6 = 1.20 of the GPU's memory",
        ),
        ({"shares": {BASE: 0.5, FAST: 0.5}}, "0.5 + 0.5 = 1.00 of the GPU's memory > 0.95"),
        ({"shares": {"nope": 0.4}}, "field 'paired.shares': no run labelled 'nope'"),
        ({"mode": "on", "device": "cpu", "cpu_overhead_gib": 100000}, "GiB available"),
        ({"min_repeats": 3}, "field 'paired.min_repeats': Value error, must be even"),
        ({"max_repeats": 2, "min_repeats": 4}, "max_repeats (2) < min_repeats"),
        ({"ci_target_pct": 0}, "paired.ci_target_pct"),
        ({"mode": "sometimes"}, "paired.mode"),
    ],
)
def test_impossible_pairing_is_one_line_exit_2_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], paired: dict, needle: str
) -> None:
    doc = mock_matrix(paired=paired)
    doc["backend"] = "docker"  # would need a Docker engine: nothing may get that far
    if paired.get("device") == "cpu":
        doc["backend"] = "local"
        doc["server"] = {"env": {"VLLM_CPU_KVCACHE_SPACE": "1"}}
    out = tmp_path / "sweep"
    rc = cli.main(["--matrix", str(_write(tmp_path, doc)), "--output-dir", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not out.exists()


def test_a_bare_yaml_on_or_off_is_the_mode(tmp_path: Path) -> None:
    """YAML 1.1 reads ``mode: on`` as true: the matrix takes it as meant, not as an error."""
    for word, mode in (("on", "on"), ("off", "off")):
        text = yaml.safe_dump(mock_matrix(paired={"mode": "MODE"})).replace("MODE", word)
        mfile = tmp_path / f"{word}.yaml"
        mfile.write_text(text)
        assert yaml.safe_load(text)["paired"]["mode"] is (word == "on")
        assert load_matrix(mfile).paired.mode == mode


def test_plan_auto_falls_back_to_sequential_and_says_why(tmp_path: Path) -> None:
    doc = mock_matrix(paired={})
    doc["server"] = {"gpu_memory_utilization": 0.9}  # the single-server habit
    m = load_matrix(_write(tmp_path, doc))
    plan = plan_pairing(m, "docker")
    assert not plan.paired and plan.reason.startswith("sequential: memory shares 0.9 + 0.9")
    # declared under paired: it pairs, each server with its share
    doc["paired"] = {"memory_share": 0.45}
    plan = plan_pairing(load_matrix(_write(tmp_path, doc)), "docker")
    assert plan.paired and plan.shares == {BASE: 0.45, FAST: 0.45}
    assert plan.groups == [[FAST]] and plan.baseline == BASE
    # default: 0.90 split between the residents
    doc["server"], doc["paired"] = {}, {}
    plan = plan_pairing(load_matrix(_write(tmp_path, doc)), "docker")
    assert plan.shares == {BASE: 0.45, FAST: 0.45}
    doc["paired"] = {"residents": 3}
    doc["specs"].append({"method": "ngram", "num_speculative_tokens": 5, "label": "k5"})
    plan = plan_pairing(load_matrix(_write(tmp_path, doc)), "docker")
    assert plan.groups == [[FAST, "k5"]] and plan.shares[BASE] == 0.3
    # CPU: KV space + overhead per server against the memory available
    doc["paired"], doc["server"] = {}, {"env": {"VLLM_CPU_KVCACHE_SPACE": "4"}}
    m = load_matrix(_write(tmp_path, doc))
    plan = plan_pairing(m, "local", mem_available_gib=100.0)
    assert plan.paired and "2 servers need ~12.0 GiB" in plan.reason
    plan = plan_pairing(m, "local", mem_available_gib=10.0)
    assert not plan.paired and "10.0 GiB available" in plan.reason
    # no baseline; the original format; paired: false
    doc["specs"] = [{"method": "ngram", "num_speculative_tokens": k} for k in (1, 2)]
    plan = plan_pairing(load_matrix(_write(tmp_path, doc)), "local", mem_available_gib=99.0)
    assert not plan.paired and "no baseline" in plan.reason
    original = load_matrix(REPO / "scenarios" / "original-config-cpu.yaml")
    assert not plan_pairing(original, "local").paired
    assert load_matrix(_write(tmp_path, mock_matrix(paired=False))).paired.mode == "off"
    assert load_matrix(_write(tmp_path, mock_matrix(paired=True))).paired.mode == "on"


def test_only_keeps_the_baseline_beside_the_named_candidates(tmp_path: Path) -> None:
    doc = mock_matrix(paired={})
    doc["specs"].append({"method": "ngram", "num_speculative_tokens": 5, "label": "k5"})
    plan = plan_pairing(load_matrix(_write(tmp_path, doc)), "docker")
    assert restrict(plan, ["k5"]).groups == [["k5"]]
    with pytest.raises(SpecloadError, match="name a candidate"):
        restrict(plan, [BASE])


def test_dry_run_prints_the_pairing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mfile = _write(tmp_path, mock_matrix(paired={"memory_share": 0.4}, levels=[1, 4]))
    assert cli.main(["--matrix", str(mfile), "--backend", "docker", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "paired: gpu_memory_utilization 0.4 + 0.4 = 0.80 <= 0.95" in out
    assert "[none] baseline, up for the whole sweep" in out
    assert "--gpu-memory-utilization 0.4" in out and "-p 127.0.0.1:8001:8000" in out
    assert "c2: concurrency=1, concurrency=4" in out


def test_resume_refuses_another_mode(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps({"mode": "paired"}))
    m = load_matrix(_write(tmp_path, mock_matrix(paired=False)))
    with pytest.raises(SpecloadError, match="ran paired, this matrix runs unpaired"):
        run_sweep(m, backend=MockBackend({}), output_dir=out, resume=True, progress=False)


# --- one level, three residents, a fake runner (no processes) ------------------------------


class _Handle:
    base_url = "http://127.0.0.1:9"

    def __init__(self) -> None:
        self.alive = True

    def is_alive(self) -> bool:
        return self.alive

    def stop(self) -> None:
        self.alive = False

    def log_tail(self, n: int = 50) -> str:
        return ""

    def wait_healthy(self, deadline_s: float) -> None:
        pass


JIT_LINE = (
    "(EngineCore pid=1) WARNING 11-29 10:00:00 [jit_monitor.py:137] Triton kernel JIT "
    "compilation during inference: _fwd_kernel. This causes a latency spike"
)


def test_level_interleaves_three_servers_flags_jit_and_settles(tmp_path: Path) -> None:
    """Baseline + two candidates up at once (residents: 3): rounds run A B C | C B A, the
    warm-up stops once each server's last two windows agree, a probe during which the
    server logged kernel compilation is flagged, and the level stops when every watched
    interval is under the target."""
    from loadgen.report.load import find_runs
    from loadgen.report.tables import build_tables
    from loadgen.results.files import ResultsDir
    from server_launch.paired_level import LevelRun, LevelStatus
    from server_launch.pairing import PairedSettings
    from server_launch.probe import Resident

    doc = mock_matrix(paired={"residents": 3})
    doc["specs"].append({"method": "ngram", "num_speculative_tokens": 5, "label": "k5"})
    m = load_matrix(_write(tmp_path, doc))
    runs = {r.label: r for r in m.runs}
    logs = {lb: tmp_path / f"{lb}.log" for lb in runs}
    residents = [Resident(runs[lb], _Handle(), logs[lb], 0) for lb in (BASE, FAST, "k5")]
    tpot = {BASE: 20.0, FAST: 10.0, "k5": 25.0}  # k5 is 1.25x slower
    calls: list[tuple[str, int]] = []

    def runner(scenario: Any, **kw: Any) -> Any:
        from loadgen.engine.run import RunResult
        from loadgen.errors import ExitCode

        label, slug = kw["label"], kw["only_phases"][0]
        n = sum(1 for c in calls if c[0] == label)
        calls.append((label, scenario.num_requests))
        warm = n == 0  # the first window of each server is 30% slow
        wobble = 1.0 + 0.002 * ((n * 7) % 3 - 1)
        value = tpot[label] * (1.3 if warm else 1.0) * wobble
        if label == FAST and n == 4:  # its third measured probe: the server compiles
            logs[label].write_text(logs[label].read_text() + JIT_LINE + "\n")
        summary = {
            "phase": slug,
            "complete": True,
            "completed": 6,
            "failed": 0,
            "load_shape": "concurrency",
            "load_level": 2,
            "p50_tpot_ms": value,
            "p50_itl_token_ms": value,
            "p50_e2el_ms": value * 24,
            "output_throughput": 1000.0 / value,
        }
        out = ResultsDir(kw["output_dir"])
        out.write_run({"scenario": scenario.model_dump(mode="json"), "label": label})
        out.write_phase_summary(slug, summary)
        out.write_summary(
            complete=True, scenario=scenario.name, label=label, phases={slug: summary}
        )
        return RunResult(kw["output_dir"], True, {slug: summary}, ExitCode.OK)

    for p in logs.values():
        p.write_text("server started\n")
    settings = PairedSettings(
        min_repeats=2, max_repeats=8, ci_target_pct=2.0, warmup={"window_requests": 3}
    )
    level_dir = tmp_path / "sweep" / "paired" / f"{FAST}+k5" / SCENARIO / "concurrency=2"
    scenario = m.runs[0].scenarios[0]
    out = LevelRun(residents, scenario, "concurrency=2", settings, level_dir, runner=runner).run()
    assert out.status is LevelStatus.DONE and out.stop_reason == "settled"
    doc = json.loads((level_dir / "level.json").read_text())
    assert [r["order"] for r in doc["rounds"]][:2] == [[BASE, FAST, "k5"], ["k5", FAST, BASE]]
    assert all(w["windows"] == 3 and w["steady"] for w in doc["warmup"].values())
    warm_calls = [c for c in calls if c[1] == 3]
    assert len(warm_calls) == 9  # 3 windows x 3 servers, of window_requests each
    jit = [(r["index"], lb) for r in doc["rounds"] for lb, p in r["probes"].items() if p["jit"]]
    assert jit == [(2, FAST)]
    ivs = doc["intervals"]
    assert ivs[FAST]["tpot"]["verdict"] == "faster"
    assert ivs[FAST]["tpot"]["estimate"] == pytest.approx(2.0, rel=0.01)
    assert ivs["k5"]["tpot"]["verdict"] == "slower"
    assert ivs["k5"]["throughput"]["estimate"] == pytest.approx(0.8, rel=0.01)
    # the report reads the level back: both candidates, the JIT flag in the notes
    df = build_tables(find_runs([tmp_path / "sweep"]))
    rows = {r["label"]: r for r in df.to_dict("records")}
    assert rows[FAST]["jit_phases"] == 1 and "kernel compilation" in rows[FAST]["note"]
    assert rows["k5"]["tpot_speedup_verdict"] == "slower" and rows["k5"]["settled"] is True
    assert rows[BASE]["pairing"] == "paired" and rows[BASE]["warmup_windows"] == 3


# --- servers that fail to start (fake backend and runner, no processes) --------------------


class _FailingBackend:
    name = "fake"

    def __init__(self, fail: set[str]) -> None:
        self.fail, self.starts = fail, []
        self.events: list[tuple[str, str]] = []  # ("start" | "healthy", label), in order

    def command(self, run: Any, port: int) -> list[str]:
        return ["fake", run.label, str(port)]

    def start(self, run: Any, port: int, log_path: Path) -> Any:
        from server_launch.backends.base import ServerStartError

        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("fake\n")
        self.starts.append(run.label)
        self.events.append(("start", run.label))
        h = _Handle()
        if run.label in self.fail:

            def refuse(deadline_s: float) -> None:
                h.alive = False
                raise ServerStartError("vLLM server exited with code 1", "CUDA out of memory")

            h.wait_healthy = refuse  # type: ignore[method-assign]
        else:
            h.wait_healthy = lambda deadline_s: self.events.append(("healthy", run.label))  # type: ignore[method-assign]
        return h


def _fake_runner(scenario: Any, **kw: Any) -> Any:
    from loadgen.engine.run import RunResult
    from loadgen.errors import ExitCode
    from loadgen.results.files import ResultsDir

    slug = kw["only_phases"][0]
    value = 10.0 if kw["label"] == BASE else 8.0
    summary = {"phase": slug, "complete": True, "completed": 4, "p50_tpot_ms": value,
               "output_throughput": 100.0 / value, "p50_e2el_ms": 20 * value}  # fmt: skip
    out = ResultsDir(kw["output_dir"])
    out.write_run({"scenario": scenario.model_dump(mode="json"), "label": kw["label"]})
    out.write_summary(
        complete=True, scenario=scenario.name, label=kw["label"], phases={slug: summary}
    )
    return RunResult(kw["output_dir"], True, {slug: summary}, ExitCode.OK)


def test_a_candidate_that_cannot_start_fails_its_group_and_the_next_runs(
    tmp_path: Path,
) -> None:
    doc = mock_matrix(paired={"min_repeats": 2, "max_repeats": 2, "warmup": {"max_windows": 2}})
    doc["specs"] = [
        {"method": "none"},
        {"method": "ngram", "num_speculative_tokens": 5, "label": "bad"},
        {"method": "ngram", "num_speculative_tokens": 3, "label": FAST},
    ]
    m = load_matrix(_write(tmp_path, doc))
    backend = _FailingBackend({"bad"})
    out = tmp_path / "sweep"
    res = run_sweep(m, backend=backend, output_dir=out, runner=_fake_runner, report=False,
                    progress=False, port=free_port_pair())  # fmt: skip
    assert backend.starts == [BASE, "bad", FAST]  # the baseline started once, kept up
    # GPU shares: one server at a time, each healthy before the next starts (vLLM's start-up
    # memory profiling fails when a server starting beside it frees memory meanwhile)
    assert backend.events[:3] == [("start", BASE), ("healthy", BASE), ("start", "bad")]
    assert backend.events[3:5] == [("start", FAST), ("healthy", FAST)]
    assert not res.complete and res.failed_runs == ["bad"]
    state = json.loads((out / "sweep.json").read_text())
    assert state["groups"]["bad"]["scenarios"][SCENARIO]["concurrency=2"]["status"] == "failed"
    assert state["groups"][FAST]["scenarios"][SCENARIO]["concurrency=2"]["status"] == "done"
    assert state["runs"]["bad"]["status"] == "failed"
    assert state["runs"][BASE]["status"] == "incomplete"  # not every group has its levels
    failed = json.loads((out / "bad" / "failed.json").read_text())
    assert failed["stage"] == "start" and "CUDA out of memory" in failed["log_tail"]

    # the baseline itself cannot start: every group fails, after one attempt
    backend = _FailingBackend({BASE})
    out = tmp_path / "sweep2"
    res = run_sweep(m, backend=backend, output_dir=out, runner=_fake_runner, report=False,
                    progress=False, port=free_port_pair())  # fmt: skip
    assert backend.starts == [BASE]  # one at a time on a GPU: the candidate never started
    state = json.loads((out / "sweep.json").read_text())
    for gid in ("bad", FAST):
        cell = state["groups"][gid]["scenarios"][SCENARIO]["concurrency=2"]
        assert cell["status"] == "failed" and "baseline 'none' failed to start" in cell["error"]
    assert res.cells == {"done": 0, "failed": 2, "pending": 0}


def test_unpaired_report_says_unpaired_and_single_runs_not_significant(tmp_path: Path) -> None:
    """A sequential sweep's report keeps its tables and says how it was measured."""
    from loadgen.report.load import find_runs
    from loadgen.report.render import write_report
    from loadgen.report.tables import build_tables
    from tests.test_report import CONFIGS, _write_run

    root = tmp_path / "sweep"
    for label in CONFIGS:
        _write_run(root, label)
    df = build_tables(find_runs([root]))
    assert set(df["pairing"]) == {"unpaired"} and df["pairs"].isna().all()
    spec = df[~df["is_baseline"]]
    assert set(spec["tpot_speedup_verdict"]) == {"not significant"}
    assert spec["tpot_speedup_ci_lo"].isna().all()
    md = write_report([root], figures=False).read_text()
    assert "**Unpaired** (one server after the other)" in md
    assert "they are **not significant**" in md
    assert "[unpaired, one run per level: not significant]" in md
    assert "## How to read a paired comparison" not in md

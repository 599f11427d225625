"""The sweep (fake backend, fake loadgen runner) and the ``python -m server_launch`` CLI."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from loadgen.engine.run import RunResult
from loadgen.errors import ExitCode, SpecloadError
from loadgen.results.files import ResultsDir
from server_launch import cli
from server_launch.backends.base import ServerStartError
from server_launch.matrix import load_matrix
from server_launch.sweep import run_sweep

MATRIX = {
    "name": "t",
    "backend": "local",
    "model": "org/model",
    "server": {"max_model_len": 512},
    "specs": [{"method": "none"}, {"method": "ngram", "num_speculative_tokens": 3}],
    # the sequential sweep, one server after the other (tests/test_paired.py: paired)
    "paired": False,
    "scenarios": [
        {
            "name": "sweep3",
            "load": {"shape": "concurrency", "concurrency": 1},
            "sweep": {"concurrency": [1, 2, 4]},
            "num_requests": 4,
        },
        {"name": "one", "load": {"shape": "poisson", "rate": 2.0}, "num_requests": 4},
    ],
}
SLUGS = {"sweep3": ["concurrency=1", "concurrency=2", "concurrency=4"], "one": ["rate=2.0"]}


@pytest.fixture(scope="module", autouse=True)
def health_url():
    """A loopback /health for the fake servers (the sweep's health check really calls it)."""
    import http.server
    import threading

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *a: Any) -> None:
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    FakeHandle.base_url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield FakeHandle.base_url
    srv.shutdown()


@pytest.fixture
def matrix_file(tmp_path: Path) -> Path:
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(MATRIX))
    return p


class FakeHandle:
    base_url = "http://127.0.0.1:9"  # set by the health_url fixture

    def __init__(self, label: str, fail: bool, events: list[str]) -> None:
        self.label = label
        self.fail = fail
        self.events = events
        self.alive = True
        self.stops = 0

    def wait_healthy(self, deadline_s: float) -> None:
        if self.fail:
            self.alive = False
            raise ServerStartError("vLLM server exited with code 1", "tail: CUDA out of memory")

    def is_alive(self) -> bool:
        return self.alive

    def stop(self) -> None:
        self.stops += 1
        self.alive = False
        self.events.append(f"stop {self.label}")

    def log_tail(self, n: int = 50) -> str:
        return "tail: engine core died"


class FakeBackend:
    name = "fake"

    def __init__(self, fail: tuple[str, ...] = ()) -> None:
        self.fail = fail
        self.events: list[str] = []
        self.handles: list[FakeHandle] = []

    def command(self, run: Any, port: int) -> list[str]:
        return ["fake-vllm", run.server.model, str(port)]

    def start(self, run: Any, port: int, log_path: Path) -> FakeHandle:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("fake server log\n")
        self.events.append(f"start {run.label}")
        h = FakeHandle(run.label, run.label in self.fail, self.events)
        self.handles.append(h)
        return h


class FakeRunner:
    """Writes what loadgen would (summary.json with the phases it ran) and records calls.

    ``script[(label, scenario)]`` = (slug where it stops, exit code, stop reason)."""

    def __init__(self, backend: FakeBackend, script: dict | None = None) -> None:
        self.backend = backend
        self.calls: list[dict[str, Any]] = []
        self.script = script or {}

    def __call__(self, scenario: Any, **kw: Any) -> RunResult:
        self.calls.append({"scenario": scenario.name, **kw})
        self.backend.events.append(f"run {kw['label']} {scenario.name}")
        assert kw["health_check"]() is True
        slugs = [
            s
            for s in SLUGS[scenario.name]
            if kw.get("only_phases") in (None, []) or s in kw["only_phases"]
        ]
        stop_at, code, reason = self.script.get((kw["label"], scenario.name), (None, 0, None))
        phases: dict[str, dict[str, Any]] = {}
        out = ResultsDir(kw["output_dir"])
        for s in slugs:
            (out.phase_dir(s) / "requests.jsonl").write_text('{"x": 1}\n')
            if s == stop_at:
                if code != 130 or reason == "partial":
                    phases[s] = {"phase": s, "complete": False, "completed": 1}
                if code == 4:
                    self.backend.handles[-1].alive = False
                break
            phases[s] = {"phase": s, "complete": True, "completed": 4, "median_tpot_ms": 5.0}
        complete = stop_at is None
        out.write_summary(
            complete=complete,
            scenario=scenario.name,
            label=kw["label"],
            phases=phases,
            stop_reason=reason,
        )
        return RunResult(kw["output_dir"], complete, phases, ExitCode(code), reason)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sweep(matrix_file: Path, out: Path, backend: FakeBackend, runner: Any, **kw: Any):
    kw.setdefault("port", free_port())
    return run_sweep(
        load_matrix(matrix_file),
        backend=backend,
        output_dir=out,
        runner=runner,
        matrix_path=matrix_file,
        progress=False,
        report=False,
        log=lambda m: None,
        **kw,
    )


def cells(out: Path) -> dict[tuple[str, str, str], str]:
    doc = json.loads((out / "sweep.json").read_text())
    return {
        (label, sc, slug): c["status"]
        for label, run in doc["runs"].items()
        for sc, cs in run["scenarios"].items()
        for slug, c in cs.items()
    }


def test_full_sweep_layout_and_state(tmp_path: Path, matrix_file: Path) -> None:
    backend = FakeBackend()
    runner = FakeRunner(backend)
    out = tmp_path / "sw"
    res_port = free_port()
    res = sweep(matrix_file, out, backend, runner, port=res_port)
    assert res.complete and not res.interrupted and res.exit_code == 0
    assert res.cells == {"done": 8, "failed": 0, "pending": 0}
    assert backend.events == [
        "start none", "run none sweep3", "run none one", "stop none",
        "start ngram-k3", "run ngram-k3 sweep3", "run ngram-k3 one", "stop ngram-k3",
    ]  # fmt: skip
    assert set(cells(out).values()) == {"done"}
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["status"] == "complete"
    assert doc["matrix"]["name"] == "t"
    assert doc["runs"]["none"]["command"] == ["fake-vllm", "org/model", str(res_port)]
    assert (out / "matrix.yaml").read_text() == matrix_file.read_text()
    assert (out / "ngram-k3" / "sweep3" / "concurrency=4" / "requests.jsonl").exists()
    assert (out / "none" / "server.log").exists()
    call = runner.calls[2]
    assert call["label"] == "ngram-k3"
    assert call["spec"] == {"method": "ngram", "num_speculative_tokens": 3}
    assert call["output_dir"] == out / "ngram-k3" / "sweep3"
    assert "only_phases" not in call


def test_state_is_saved_before_each_next_cell(tmp_path: Path, matrix_file: Path) -> None:
    backend = FakeBackend()
    out = tmp_path / "sw"
    seen: list[dict] = []

    def runner(scenario: Any, **kw: Any) -> Any:
        seen.append(cells(out))
        return FakeRunner(backend)(scenario, **kw)

    sweep(matrix_file, out, backend, runner)
    assert seen[1][("none", "sweep3", "concurrency=4")] == "done"
    assert seen[1][("none", "one", "rate=2.0")] == "pending"


def test_start_failure_is_recorded_and_the_sweep_goes_on(tmp_path: Path, matrix_file) -> None:
    backend = FakeBackend(fail=("none",))
    out = tmp_path / "sw"
    res = sweep(matrix_file, out, backend, FakeRunner(backend))
    assert res.failed_runs == ["none"] and not res.complete and res.exit_code == 1
    failed = json.loads((out / "none" / "failed.json").read_text())
    assert failed["stage"] == "start"
    assert "exited with code 1" in failed["error"]
    assert failed["log_tail"] == "tail: CUDA out of memory"
    assert backend.handles[0].stops == 1  # stopped even though it never became healthy
    c = cells(out)
    assert c[("none", "one", "rate=2.0")] == "failed"
    assert c[("ngram-k3", "one", "rate=2.0")] == "done"


def test_interrupt_then_resume_runs_only_missing_phases(tmp_path: Path, matrix_file) -> None:
    backend = FakeBackend()
    out = tmp_path / "sw"
    script = {("none", "sweep3"): ("concurrency=2", 130, "interrupted by SIGINT")}
    res = sweep(matrix_file, out, backend, FakeRunner(backend, script))
    assert res.interrupted and res.exit_code == 130
    assert backend.events == ["start none", "run none sweep3", "stop none"]
    c = cells(out)
    assert c[("none", "sweep3", "concurrency=1")] == "done"
    assert c[("none", "sweep3", "concurrency=2")] == "pending"
    assert json.loads((out / "sweep.json").read_text())["status"] == "interrupted"

    with pytest.raises(SpecloadError, match="--resume"):
        sweep(matrix_file, out, FakeBackend(), FakeRunner(backend))

    backend2 = FakeBackend()
    runner2 = FakeRunner(backend2)
    res2 = sweep(matrix_file, out, backend2, runner2, resume=True)
    assert res2.complete
    assert runner2.calls[0]["only_phases"] == ["concurrency=2", "concurrency=4"]
    assert "only_phases" not in runner2.calls[1]
    summary = json.loads((out / "none" / "sweep3" / "summary.json").read_text())
    assert list(summary["phases"]) == SLUGS["sweep3"]  # merged: earlier + resumed phases
    assert summary["complete"] is True
    assert json.loads((out / "sweep.json").read_text())["resumed"] is True

    backend3 = FakeBackend()
    res3 = sweep(matrix_file, out, backend3, FakeRunner(backend3), resume=True)
    assert res3.complete and backend3.events == []  # nothing left: no server started


def test_partial_phase_data_is_moved_aside_not_appended(tmp_path: Path, matrix_file) -> None:
    backend = FakeBackend()
    out = tmp_path / "sw"
    script = {("none", "sweep3"): ("concurrency=2", 130, "partial")}
    sweep(matrix_file, out, backend, FakeRunner(backend, script))
    sweep(matrix_file, out, FakeBackend(), FakeRunner(FakeBackend()), resume=True)
    rec = out / "none" / "sweep3" / "concurrency=2" / "requests.jsonl"
    assert rec.read_text() == '{"x": 1}\n'  # one run's records, not two
    moved = list((out / "none" / "sweep3" / ".superseded").glob("concurrency=2-*"))
    assert len(moved) == 1


def test_server_lost_mid_run_fails_that_config_only(tmp_path: Path, matrix_file) -> None:
    backend = FakeBackend()
    out = tmp_path / "sw"
    script = {("none", "sweep3"): ("concurrency=2", 4, "server lost: health check failed")}
    res = sweep(matrix_file, out, backend, FakeRunner(backend, script))
    assert res.failed_runs == ["none"]
    assert "run none one" not in backend.events  # no point running against a dead server
    assert "run ngram-k3 one" in backend.events
    failed = json.loads((out / "none" / "failed.json").read_text())
    assert failed["stage"] == "run" and failed["log_tail"] == "tail: engine core died"
    c = cells(out)
    assert c[("none", "sweep3", "concurrency=1")] == "done"
    assert c[("none", "sweep3", "concurrency=2")] == "failed"
    assert c[("none", "sweep3", "concurrency=4")] == "pending"
    assert c[("none", "one", "rate=2.0")] == "pending"


def test_runner_exception_fails_the_scenario_not_the_sweep(tmp_path: Path, matrix_file) -> None:
    backend = FakeBackend()

    def runner(scenario: Any, **kw: Any) -> Any:
        if scenario.name == "one":
            raise SpecloadError("prompts.path: no such file")
        return FakeRunner(backend)(scenario, **kw)

    out = tmp_path / "sw"
    res = sweep(matrix_file, out, backend, runner)
    doc = json.loads((out / "sweep.json").read_text())
    cell = doc["runs"]["none"]["scenarios"]["one"]["rate=2.0"]
    assert cell["status"] == "failed" and "no such file" in cell["error"]
    assert res.cells == {"done": 6, "failed": 2, "pending": 0}


def test_sigterm_stops_the_server_and_saves_state(tmp_path: Path, matrix_file) -> None:
    backend = FakeBackend()

    def runner(scenario: Any, **kw: Any) -> Any:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(2)
        raise AssertionError("SIGTERM did not interrupt")

    saved = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        out = tmp_path / "sw"
        res = sweep(matrix_file, out, backend, runner)
    finally:
        signal.signal(signal.SIGTERM, saved)
    assert res.interrupted and res.exit_code == 130
    assert backend.handles[0].stops == 1
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["status"] == "interrupted"
    assert doc["runs"]["none"]["status"] == "interrupted"
    assert set(cells(out).values()) == {"pending"}


def test_sigterm_handler_survives_asyncio_resetting_it(tmp_path: Path, matrix_file) -> None:
    """loadgen's asyncio run resets SIGTERM to SIG_DFL on exit; the sweep puts ours back."""
    from server_launch.backends import base

    backend = FakeBackend()
    seen = []

    def runner(scenario: Any, **kw: Any) -> Any:
        seen.append(signal.getsignal(signal.SIGTERM))
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # what loop.remove_signal_handler does
        return FakeRunner(backend)(scenario, **kw)

    saved = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        sweep(matrix_file, tmp_path / "sw", backend, runner)
    finally:
        signal.signal(signal.SIGTERM, saved)
    assert len(seen) == 4
    assert all(h is base._raise_interrupted for h in seen)


def test_original_format_appends_csv_rows(tmp_path: Path) -> None:
    m = tmp_path / "config.yaml"
    m.write_text(
        yaml.safe_dump(
            {
                "target_model_name": "org/model",
                "num_requests_list": [4],
                "batch_size_list": [1],
                "speculative_models": [None],
                "output_csv": "out.csv",
            }
        )
    )
    backend = FakeBackend()

    def runner(scenario: Any, **kw: Any) -> RunResult:
        phases = {"concurrency=1": {"complete": True, "completed": 4, "median_tpot_ms": 5.5}}
        return RunResult(kw["output_dir"], True, phases, ExitCode.OK)

    run_sweep(
        load_matrix(m), backend=backend, output_dir=tmp_path / "sw", runner=runner,
        csv_dir=tmp_path / "raw_data", report=False, log=lambda s: None, port=free_port(),
    )  # fmt: skip
    import csv

    rows = list(csv.DictReader((tmp_path / "raw_data" / "out.csv").open()))
    assert len(rows) == 1
    assert rows[0]["speculative_model"] == "none" and rows[0]["batch_size"] == "1"
    assert rows[0]["median_tpot_ms"] == "5.5"


def test_resume_with_only_keeps_the_other_runs_state(tmp_path: Path, matrix_file) -> None:
    out = tmp_path / "sw"
    m = load_matrix(matrix_file)
    only_none = m.model_copy(update={"runs": [r for r in m.runs if r.label == "none"]})
    backend = FakeBackend()
    kw = {"output_dir": out, "report": False, "log": lambda s: None, "progress": False}
    run_sweep(m, backend=backend, runner=FakeRunner(backend), port=free_port(), **kw)
    b2 = FakeBackend()
    res = run_sweep(
        only_none, backend=b2, runner=FakeRunner(b2), port=free_port(), resume=True, **kw
    )
    assert res.cells == {"done": 4, "failed": 0, "pending": 0}  # this invocation's cells
    assert cells(out)[("ngram-k3", "one", "rate=2.0")] == "done"  # kept, not forgotten
    assert b2.events == []


def test_port_in_use_aborts_with_one_line_error(tmp_path: Path, matrix_file) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        backend = FakeBackend()
        with pytest.raises(SpecloadError, match=f"--port: {port} is already in use"):
            run_sweep(
                load_matrix(matrix_file), backend=backend, output_dir=tmp_path / "sw",
                runner=FakeRunner(backend), port=port, report=False, log=lambda m: None,
                port_free_wait_s=0.5,
            )  # fmt: skip
    assert backend.events == []  # never started a server that would answer someone's /health
    assert json.loads((tmp_path / "sw" / "sweep.json").read_text())["status"] == "failed"


# --- CLI ------------------------------------------------------------------------------------


def test_dry_run_prints_commands_and_cells(tmp_path: Path, matrix_file: Path, capsys) -> None:
    out = tmp_path / "never"
    rc = cli.main(
        ["--matrix", str(matrix_file), "--dry-run", "--vllm-cmd", "vllm serve", "--port", "8123",
         "--output-dir", str(out)]
    )  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0
    assert "vllm serve --model org/model --max-model-len 512 --host 127.0.0.1 --port 8123" in text
    assert "--speculative-config" in text
    assert "sweep3: concurrency=1, concurrency=2, concurrency=4" in text
    assert "8 cell(s)" in text
    assert not out.exists()


def test_dry_run_docker_and_only(matrix_file: Path, capsys) -> None:
    rc = cli.main(
        ["--matrix", str(matrix_file), "--dry-run", "--backend", "docker", "--only", "ngram-k3",
         "--image", "vllm/vllm-openai:test", "--gpus", "2"]
    )  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0
    assert "[ngram-k3]" in text and "[none]" not in text
    assert "--gpus 2" in text and "vllm/vllm-openai:test serve org/model" in text
    assert "4 cell(s)" in text


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--backend", "kubernetes"], "--backend"),
        (["--port", "abc"], "--port"),
        (["--port", "70000"], "--port"),
        (["--health-timeout", "-1"], "--health-timeout"),
        (["--only", "nope"], "--only"),
        (["--backend", "docker", "--vllm-cmd", "vllm serve"], "--vllm-cmd"),
        (["--backend", "local", "--image", "x"], "--image"),
        (["--backend", "docker", "--gpus", "0"], "--gpus"),
        (["--resume"], "--resume"),
        (["--vllm-cmd", "'unclosed"], "--vllm-cmd"),
        (["--bogus"], "--bogus"),
    ],
)
def test_bad_flags_are_one_line_exit_2(matrix_file: Path, capsys, args, needle) -> None:
    with pytest.raises(SystemExit) as ei:
        raise SystemExit(cli.main(["--matrix", str(matrix_file), "--dry-run", *args]))
    err = capsys.readouterr().err
    assert ei.value.code == 2
    assert needle in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_bad_matrix_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("specs: [{method: warp}]\nscenarios: [smoke]\nmodel: m\n")
    assert cli.main(["--matrix", str(bad), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.yaml" in err


def test_help_documents_every_flag(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    flags = "--matrix --backend --output-dir --resume --port --health-timeout --image --gpus"
    for flag in (*flags.split(), "--vllm-cmd", "--only", "--dry-run", "--no-report"):
        assert flag in text


def test_cli_sweep_with_real_local_processes(tmp_path: Path, matrix_file, monkeypatch) -> None:
    """The whole path: CLI -> LocalBackend -> real (fake-vLLM) processes -> runner -> stop."""
    from server_launch import sweep as sweep_mod
    from tests.test_backends import FAKE_SERVER, pid_alive

    script = tmp_path / "fake_vllm.py"
    script.write_text(FAKE_SERVER)
    info = tmp_path / "info.json"
    monkeypatch.setenv("FAKE_OUT", str(info))
    monkeypatch.setenv("FAKE_MODE", "ok")
    pids: list[int] = []

    def runner(scenario: Any, **kw: Any) -> RunResult:
        assert kw["health_check"]() is True  # a live process answering /health
        pids.append(json.loads(info.read_text())["pid"])
        phases = {s: {"complete": True} for s in SLUGS[scenario.name]}
        return RunResult(kw["output_dir"], True, phases, ExitCode.OK)

    monkeypatch.setattr(sweep_mod, "_default_runner", runner)
    out = tmp_path / "sw"
    rc = cli.main(
        ["--matrix", str(matrix_file), "--output-dir", str(out), "--port", str(free_port()),
         "--vllm-cmd", f"{sys.executable} {script}", "--health-timeout", "30", "--no-report"]
    )  # fmt: skip
    assert rc == 0
    assert set(cells(out).values()) == {"done"}
    assert len(set(pids)) == 2  # one server per configuration
    assert not any(pid_alive(p) for p in pids)
    assert "fake vllm starting" in (out / "ngram-k3" / "server.log").read_text()

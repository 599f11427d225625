"""``--workers N`` against the mock server: one merged results directory that is the
1-worker run's, on one clock, with Ctrl-C, crashes and bad input handled."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from loadgen.config.scenario import parse_scenario
from loadgen.config.shapes.base import build_schedule
from loadgen.errors import ExitCode
from loadgen.mock.process import stop_mock_process
from loadgen.report.load import load_run
from loadgen.results.files import (
    _json_default,
    merge_worker_records,
    phase_record_files,
    phase_records,
    read_records,
    worker_record_files,
    worker_records_path,
)
from loadgen.results.records import RequestRecord
from loadgen.results.summary import summarize
from tests.conftest import REPO, run_loadgen, start_loadgen

PROMPT = {"source": "base_prompt", "base_prompt": "w5 w6 w7 w8"}


def _write(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


def _prompts_file(path: Path, n: int = 37) -> Path:
    """Prompts of distinct lengths: a request's prompt shows in its prompt_tokens."""
    lines = [json.dumps({"prompt": " ".join(f"w{j}" for j in range(i + 1))}) for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _phase_dir(out: Path) -> Path:
    (d,) = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return d


def _truth(log: Path, expect: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 5
    lines: list[str] = []
    while time.monotonic() < deadline:  # the mock flushes its log every 0.2 s
        lines = log.read_text().splitlines() if log.exists() else []
        if len(lines) >= expect:
            break
        time.sleep(0.1)
    return [json.loads(line) for line in lines]


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat fields after the command name (state, ppid, ...); None when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _workers_of(p: subprocess.Popen[str], n: int, timeout_s: float = 30) -> list[int]:
    """The loadgen parent's worker processes, once all ``n`` are running."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        kids = []
        for d in Path("/proc").iterdir():
            st = _stat(int(d.name)) if d.name.isdigit() else None
            if st is None or int(st[1]) != p.pid:
                continue
            with contextlib.suppress(OSError):
                if b"worker_entry" in (d / "cmdline").read_bytes():
                    kids.append(int(d.name))
        if len(kids) >= n:
            return kids
        time.sleep(0.05)
    raise AssertionError("worker processes never started")


def _wait_lines(paths: list[Path], n: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(p.exists() and p.read_text().count("\n") >= n for p in paths):
            return
        time.sleep(0.05)
    raise AssertionError(f"records never reached {n} lines in {paths}")


def _gone(pids: list[int], timeout_s: float = 15) -> bool:
    """Whether every pid has exited (a zombie counts as exited)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all((st := _stat(pid)) is None or st[0] == "Z" for pid in pids):
            return True
        time.sleep(0.05)
    return False


# --- open loop: the merged run is the schedule, on the server's clock -------------------


N_OPEN = 60
WARM = 4


def test_two_workers_open_loop_is_the_single_run(tmp_path: Path, mock: Any) -> None:
    log = tmp_path / "truth.jsonl"
    _, url = mock("--ttft-ms", "5", "--itl-ms", "2", "--log", str(log))
    doc = {
        "name": "open",
        "load": {"shape": "poisson", "rate": 25},
        "num_requests": N_OPEN,
        "warmup_requests": WARM,
        "prompts": {"source": "jsonl", "path": str(_prompts_file(tmp_path / "p.jsonl"))},
        "output_tokens": 8,
        "slo": {"ttft_ms": 50},
    }
    scen = _write(tmp_path / "s.yaml", doc)
    out = tmp_path / "w2"
    p = run_loadgen("--scenario", str(scen), "--base-url", url, "--output-dir", str(out),
                    "--no-progress", "--workers", "2")  # fmt: skip
    assert p.returncode == 0, p.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["workers"] == {"count": 2, "backend": "local"}
    pdir = _phase_dir(out)
    # the same layout as a 1-worker run: the per-worker files were merged away
    assert sorted(f.name for f in pdir.iterdir() if "requests" in f.name) == ["requests.jsonl"]
    records = list(read_records(pdir / "requests.jsonl"))
    sent = [r.sent_s for r in records]
    assert sent == sorted(sent)
    measured = sorted((r for r in records if not r.warmup), key=lambda r: r.request_id)
    warm = sorted((r.request_id, r.worker) for r in records if r.warmup)
    assert warm == [(0, 0), (1, 0), (2, 1), (3, 1)]
    assert [r.request_id for r in measured] == list(range(WARM, WARM + N_OPEN))
    assert all(r.worker == (r.request_id - WARM) % 2 for r in measured)  # round-robin
    assert all(r.ok for r in records)

    # the schedule: scheduled times are the 1-worker offsets exactly, on one shared start
    scenario = parse_scenario(doc, "s")
    (phase,) = scenario.phases()
    sched = build_schedule(phase.load, num_requests=N_OPEN, duration_s=None, seed=0)
    scheduled = np.array([r.scheduled_s for r in measured])
    np.testing.assert_allclose(scheduled - scheduled[0], sched.offsets, atol=1e-9)
    lag_ms = (np.array([r.sent_s for r in measured]) - scheduled) * 1e3
    print(f"\n[workers] dispatch lag ms: p50 {np.median(lag_ms):.2f} max {lag_ms.max():.2f}")
    assert np.median(lag_ms) < 3.0 and lag_ms.max() < 50.0

    # what the server saw: every request once, received when the client says it sent it
    truth = _truth(log, N_OPEN + WARM)
    by_id = {int(t["request_id"].rsplit("-", 1)[1]): t for t in truth}
    assert len(truth) == len(by_id) == len(records)
    assert set(by_id) == {r.request_id for r in records}
    origin = run["epoch_origin"]
    recv_err_ms = np.array([by_id[r.request_id]["recv"] - (origin + r.sent_s) for r in measured])
    recv_err_ms *= 1e3
    print(f"[workers] server recv - client send (ms): p50 {np.median(recv_err_ms):.2f}")
    assert abs(np.median(recv_err_ms)) < 5.0

    # the summary is the metrics of the merged file
    flat = json.loads((pdir / "summary.json").read_text())
    assert flat["workers"] == 2 and flat["complete"] is True
    again = summarize(
        [r for r in records if not r.warmup],
        duration_s=flat["duration"],
        slo=scenario.slo,
        phase=phase.name,
        load=phase.load,
    )
    again = json.loads(json.dumps(again, default=_json_default))  # as summary.json holds it
    differ = [k for k, v in again.items() if v is not None and k != "date" and flat.get(k) != v]
    assert differ == []
    assert again["request_goodput"] is not None and again["ttfts"]
    assert flat["completed"] == N_OPEN

    # request i got the prompt it gets in a 1-worker run
    out1 = tmp_path / "w1"
    p1 = run_loadgen("--scenario", str(scen), "--base-url", url, "--output-dir", str(out1),
                     "--no-progress")  # fmt: skip
    assert p1.returncode == 0, p1.stderr
    one = {r.request_id: r.prompt_tokens for r in read_records(_phase_dir(out1) / "requests.jsonl")}
    two = {r.request_id: r.prompt_tokens for r in records}
    assert one == two and len(set(one.values())) > 10


def test_closed_loop_slots_and_counts_split(tmp_path: Path, mock: Any) -> None:
    _, url = mock("--ttft-ms", "2", "--itl-ms", "3")
    scen = _write(tmp_path / "s.yaml", {
        "name": "closed", "load": {"shape": "concurrency", "concurrency": 5},
        "num_requests": 40, "prompts": PROMPT, "output_tokens": 10,
    })  # fmt: skip
    out = tmp_path / "out"
    p = run_loadgen("--scenario", str(scen), "--base-url", url, "--output-dir", str(out),
                    "--no-progress", "--workers", "2")  # fmt: skip
    assert p.returncode == 0, p.stderr
    records = list(read_records(_phase_dir(out) / "requests.jsonl"))
    assert len(records) == 40 and len({r.request_id for r in records}) == 40
    per_worker = Counter(r.worker for r in records)
    assert per_worker == {0: 24, 1: 16}  # 3 + 2 slots; 40 in proportion
    ids = {k: sorted(r.request_id for r in records if r.worker == k) for k in (0, 1)}
    assert ids == {0: list(range(24)), 1: list(range(24, 40))}
    for k, slots in ((0, 3), (1, 2)):  # never more in flight than the worker's slots
        events = sorted(
            [(r.sent_s, 1) for r in records if r.worker == k]
            + [(r.end_s, -1) for r in records if r.worker == k]
        )
        peak = max(np.cumsum([e for _, e in events]))
        assert peak == slots


# --- stops: Ctrl-C, a worker dying, the parent dying --------------------------------------


def _slow(tmp_path: Path, n: int = 40, c: int = 4, **kw: Any) -> Path:
    return _write(tmp_path / "slow.yaml", {
        "name": "slow", "load": {"shape": "concurrency", "concurrency": c},
        "num_requests": n, "prompts": PROMPT, "output_tokens": 100, **kw,
    })  # fmt: skip


def test_sigint_stops_all_workers_and_leaves_readable_results(tmp_path: Path, mock: Any) -> None:
    _, url = mock("--itl-ms", "50")  # 100 tokens: 5 s a request
    out = tmp_path / "out"
    p = start_loadgen("--scenario", str(_slow(tmp_path)), "--base-url", url,
                      "--output-dir", str(out), "--no-progress", "--workers", "2")  # fmt: skip
    kids = _workers_of(p, 2)
    pdir = out / "concurrency=4"
    deadline = time.monotonic() + 30
    while not _metrics(url, 4):
        assert time.monotonic() < deadline, "requests never got in flight"
        time.sleep(0.05)
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)  # the parent only: it must stop its workers itself
    _, err = p.communicate(timeout=60)
    assert time.monotonic() - t0 < 10.0
    assert p.returncode == ExitCode.INTERRUPTED, err
    assert "INCOMPLETE (interrupted by SIGINT)" in err
    assert _gone(kids)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is False and summary["stop_reason"] == "interrupted by SIGINT"
    assert worker_record_files(pdir) == []
    recs = list(read_records(pdir / "requests.jsonl"))
    assert len(recs) == 4 and len({r.request_id for r in recs}) == 4
    assert all(r.error_kind == "cancelled" and r.chunk_times for r in recs)
    assert Counter(r.worker for r in recs) == {0: 2, 1: 2}
    flat = json.loads((pdir / "summary.json").read_text())
    assert flat["failed"] == 4 and flat["complete"] is False
    assert not list(out.rglob(".*tmp*")) and not list(out.rglob(".*merge*"))


def _metrics(url: str, running: int) -> str:
    import httpx

    text = httpx.get(url + "/metrics").text
    for line in text.splitlines():
        if line.startswith("vllm:num_requests_running") and float(line.split()[-1]) >= running:
            return text
    return ""


def test_killed_worker_marks_the_phase_incomplete(tmp_path: Path, mock: Any) -> None:
    _, url = mock("--itl-ms", "20")  # 2 s a request
    out = tmp_path / "out"
    p = start_loadgen("--scenario", str(_slow(tmp_path, n=400)), "--base-url", url, "--output-dir",
              str(out), "--no-progress", "--workers", "2")  # fmt: skip
    kids = _workers_of(p, 2)
    deadline = time.monotonic() + 30
    while not _metrics(url, 4):
        assert time.monotonic() < deadline, "requests never got in flight"
        time.sleep(0.05)
    os.kill(kids[1], signal.SIGKILL)
    _, err = p.communicate(timeout=60)  # no hang
    assert p.returncode == ExitCode.WORKER_LOST, err
    assert "was killed by SIGKILL" in err and "worker lost" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is False and summary["stop_reason"].startswith("worker lost: ")
    assert _gone(kids)
    pdir = out / "concurrency=4"
    recs = list(phase_records(pdir))
    assert recs and len({r.request_id for r in recs}) == len(recs)
    flat = json.loads((pdir / "summary.json").read_text())
    assert flat["complete"] is False and flat["stop_reason"].startswith("worker lost")


def test_parent_killed_leaves_worker_files_the_report_reads(tmp_path: Path, mock: Any) -> None:
    _, url = mock("--itl-ms", "1")
    out = tmp_path / "out"
    p = start_loadgen("--scenario", str(_slow(tmp_path, n=100_000, output_tokens=5)), "--base-url",
              url, "--output-dir", str(out), "--no-progress", "--workers", "2")  # fmt: skip
    kids = _workers_of(p, 2)
    pdir = out / "concurrency=4"
    _wait_lines([worker_records_path(pdir, 0), worker_records_path(pdir, 1)], 20)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=30)
    assert _gone(kids)  # the workers saw the pipe close and exited
    assert not (pdir / "requests.jsonl").exists()
    files = phase_record_files(pdir)
    assert [f.name for f in files] == ["requests.w0.jsonl", "requests.w1.jsonl"]
    recs = list(phase_records(pdir))
    assert len(recs) >= 40 and len({r.request_id for r in recs}) == len(recs)
    run = load_run(out)
    (flat,) = run.phases.values()
    assert flat["completed"] + flat["failed"] == len(recs)
    assert any("recomputed" in n for n in run.notes)


def test_stale_worker_files_of_a_killed_run_are_set_aside(tmp_path: Path, mock: Any) -> None:
    _, url = mock("--ttft-ms", "1", "--itl-ms", "1")
    scen = _write(tmp_path / "s.yaml", {
        "name": "closed", "load": {"shape": "concurrency", "concurrency": 4},
        "num_requests": 20, "prompts": PROMPT, "output_tokens": 4,
    })  # fmt: skip
    out = tmp_path / "out"
    pdir = out / "concurrency=4"
    pdir.mkdir(parents=True)
    # what a killed 4-worker run leaves: per-worker files a 2-worker rerun must not merge
    stale = json.dumps({"request_id": 999, "phase": "concurrency=4", "sent_s": 0.5,
                        "scheduled_s": 0.5, "chunk_times": [0.6], "chunk_tokens": [1]})  # fmt: skip
    for k in (0, 3):
        worker_records_path(pdir, k).write_text(stale + "\n")
    args = ("--scenario", str(scen), "--base-url", url, "--output-dir", str(out),
            "--no-progress", "--workers", "2")  # fmt: skip
    p = run_loadgen(*args)  # a directory holding a run's files is refused, untouched
    assert p.returncode == 2 and "--overwrite" in p.stderr and "Traceback" not in p.stderr
    assert len(worker_record_files(pdir)) == 2
    p = run_loadgen(*args, "--overwrite")  # told to: the killed run's files are replaced
    assert p.returncode == 0, p.stderr
    records = list(read_records(pdir / "requests.jsonl"))
    assert len(records) == 20 and 999 not in {r.request_id for r in records}
    (summary,) = json.loads((out / "summary.json").read_text())["phases"].values()
    assert summary["completed"] == 20
    assert not list(pdir.glob("requests.w*"))


def test_stale_worker_files_are_set_aside_by_the_pool(tmp_path: Path) -> None:
    """The pool's own guard, below the directory rule: a phase folder that still holds
    per-worker files when a multi-worker phase starts gets them renamed aside, never
    merged (kept, not deleted)."""
    from loadgen.engine.workers.pool import set_aside_stale_worker_files

    pdir = tmp_path / "p"
    pdir.mkdir()
    for k in (0, 3):
        worker_records_path(pdir, k).write_text("{}\n")
    set_aside_stale_worker_files(pdir)
    assert not worker_record_files(pdir)
    assert len(list(pdir.glob("requests.w*.jsonl.stale-*"))) == 2


def test_server_lost_with_workers(tmp_path: Path, mock: Any) -> None:
    proc, url = mock("--itl-ms", "1")
    out = tmp_path / "out"
    p = start_loadgen("--scenario", str(_slow(tmp_path, n=100_000, output_tokens=5)), "--base-url",
              url, "--output-dir", str(out), "--no-progress", "--workers", "2")  # fmt: skip
    _workers_of(p, 2)
    _wait_lines([worker_records_path(out / "concurrency=4", k) for k in (0, 1)], 10)
    stop_mock_process(proc)
    _, err = p.communicate(timeout=60)
    assert p.returncode == ExitCode.SERVER_LOST, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stop_reason"].startswith("server lost")


def test_error_budget_counts_all_workers(tmp_path: Path, mock: Any) -> None:
    _, url = mock("--fail-rate", "every:2")
    scen = _slow(tmp_path, n=2000, output_tokens=4, max_error_rate=0.2)
    out = tmp_path / "out"
    p = run_loadgen("--scenario", str(scen), "--base-url", url, "--output-dir", str(out),
                    "--no-progress", "--workers", "2")  # fmt: skip
    assert p.returncode == ExitCode.ERROR_BUDGET, p.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stop_reason"].startswith("error budget exceeded")
    recs = [r for r in phase_records(out / "concurrency=4") if not r.warmup]
    assert 10 <= len(recs) < 2000


# --- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "needle"),
    [("0", "--workers"), ("-2", "--workers"), ("two", "--workers"), ("1.5", "--workers"),
     ("5000", "--workers")],
)  # fmt: skip
def test_bad_workers_value_is_one_line(tmp_path: Path, value: str, needle: str) -> None:
    p = run_loadgen("--scenario", str(_slow(tmp_path)), "--base-url", "http://127.0.0.1:9",
                    "--workers", value, "--output-dir", str(tmp_path / "o"))  # fmt: skip
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], p.stderr
    assert not (tmp_path / "o").exists()


def test_bad_workers_in_scenario_is_one_line(tmp_path: Path) -> None:
    scen = _slow(tmp_path, workers=0)
    p = run_loadgen("--scenario", str(scen), "--base-url", "http://127.0.0.1:9")
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "workers" in lines[0], p.stderr


def test_missing_ray_is_one_line(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from loadgen.cli import main\n"
        f"raise SystemExit(main(['--scenario', {str(_slow(tmp_path))!r}, '--base-url', "
        "'http://127.0.0.1:9', '--workers', '2', '--ray-address', '127.0.0.1:6379']))"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert "--ray-address" in lines[0] and "specload[ray]" in lines[0]


# --- the merge itself -----------------------------------------------------------------


def _rec(rid: int, sent: float, worker: int) -> RequestRecord:
    return RequestRecord(request_id=rid, phase="p", scheduled_s=sent, sent_s=sent, worker=worker)


def test_merge_sorts_by_send_time_and_skips_torn_lines(tmp_path: Path) -> None:
    w0 = [_rec(0, 0.5, 0), _rec(2, 0.1, 0), _rec(4, 2.0, 0)]
    w1 = [_rec(1, 0.3, 1), _rec(3, 0.3, 1)]
    worker_records_path(tmp_path, 0).write_text("".join(r.to_json() + "\n" for r in w0))
    worker_records_path(tmp_path, 1).write_text(
        "".join(r.to_json() + "\n" for r in w1) + '{"request_id": 9, "sent_s": 0.0'  # torn
    )
    worker_records_path(tmp_path, 2).write_text("")  # a worker that wrote nothing
    assert len(phase_record_files(tmp_path)) == 3
    assert sorted(r.request_id for r in phase_records(tmp_path)) == [0, 1, 2, 3, 4]
    seen: list[bytes] = []
    assert merge_worker_records(tmp_path, seen.append) == 5
    merged = list(read_records(tmp_path / "requests.jsonl"))
    assert [r.request_id for r in merged] == [2, 1, 3, 0, 4]  # by send time, then id
    assert [json.loads(line)["request_id"] for line in seen] == [2, 1, 3, 0, 4]
    assert worker_record_files(tmp_path) == []
    assert phase_record_files(tmp_path) == [tmp_path / "requests.jsonl"]
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]


def test_merged_file_wins_over_leftover_worker_files(tmp_path: Path) -> None:
    (tmp_path / "requests.jsonl").write_text(_rec(0, 0.0, 0).to_json() + "\n")
    worker_records_path(tmp_path, 0).write_text(_rec(0, 0.0, 0).to_json() + "\n")
    assert [r.request_id for r in phase_records(tmp_path)] == [0]


def test_sweep_reuses_the_workers_and_uses_fewer_where_fewer_fit(tmp_path: Path, mock: Any) -> None:
    """In-process API (no main guard needed): phases of a sweep share one pool; a phase
    with one slot runs on one worker, the next on both; the scenario's ``workers`` field."""
    from loadgen.engine.run import run_scenario

    _, url = mock("--itl-ms", "2")
    sc = parse_scenario({
        "name": "sw", "load": {"shape": "concurrency", "concurrency": 1},
        "sweep": {"concurrency": [1, 3]}, "num_requests": 6, "warmup_requests": 2,
        "prompts": PROMPT, "output_tokens": 8, "repeats": 2, "workers": 2,
    }, "x")  # fmt: skip
    res = run_scenario(sc, base_url=url, output_dir=tmp_path / "out", progress=False)
    assert res.complete and res.exit_code == 0
    assert list(res.phases) == [
        "concurrency=1_r1", "concurrency=1_r2", "concurrency=3_r1", "concurrency=3_r2"
    ]  # fmt: skip
    for slug, flat in res.phases.items():
        recs = list(read_records(tmp_path / "out" / slug / "requests.jsonl"))
        split = Counter((r.worker, r.warmup) for r in recs)
        if slug.startswith("concurrency=1"):
            assert flat["workers"] == 1 and split == {(0, False): 6, (0, True): 2}
        else:
            assert flat["workers"] == 2
            assert split == {(0, False): 4, (1, False): 2, (0, True): 1, (1, True): 1}
        assert len({r.request_id for r in recs}) == 8

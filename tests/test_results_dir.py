"""A results directory holds one run: a run refuses a directory that holds files (one line,
exit 2, nothing sent, nothing touched) unless told to replace the run there
(``--overwrite``) or, in a sweep, to resume it (the phases about to run must have no
results). Paths that cannot hold results, and scenario names that would climb out of
``results/``, are one-line errors."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from loadgen.cli import default_output_dir
from loadgen.config.scenario import parse_scenario
from loadgen.engine.run import run_scenario_async
from loadgen.errors import SpecloadError
from loadgen.results.files import Existing, ResultsDir, read_records
from tests.canned import (
    DONE,
    OK_CHUNK,
    OK_STREAM,
    Request,
    canned_in_thread,
    openai_routes,
    sse,
    write_scenario,
)
from tests.conftest import REPO

PHASE = "concurrency=2"


def answer(_req: Request) -> list[Any]:
    return OK_STREAM


def scenario_file(tmp: Path, n: int = 4, **kw: Any) -> Path:
    return write_scenario(tmp / f"s{n}.yaml", **{"name": "dirs", "num_requests": n, **kw})


def loadgen(*args: str, url: str = "http://127.0.0.1:9") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadgen", "--no-progress", "--base-url", url, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def one_line_error(p: subprocess.CompletedProcess[str], *pieces: str) -> None:
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    for piece in pieces:
        assert piece in p.stderr, p.stderr


def snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_a_reused_directory_is_refused_and_untouched(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with canned_in_thread(openai_routes(answer)) as srv:
        first = loadgen("--scenario", str(scenario_file(tmp_path, 4)), "--output-dir", str(out),
                        url=srv.url)  # fmt: skip
        assert first.returncode == 0, first.stderr
        before, sent = snapshot(out), len(srv.requests)
        again = loadgen("--scenario", str(scenario_file(tmp_path, 3)), "--output-dir", str(out),
                        url=srv.url)  # fmt: skip
        one_line_error(again, "--output-dir:", "is not empty", "--overwrite")
        assert len(srv.requests) == sent  # refused before anything was asked of the server
    assert snapshot(out) == before


def test_overwrite_replaces_the_previous_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with canned_in_thread(openai_routes(answer)) as srv:
        for n in (4, 3):
            p = loadgen("--scenario", str(scenario_file(tmp_path, n)), "--output-dir", str(out),
                        "--overwrite", url=srv.url)  # fmt: skip
            assert p.returncode == 0, p.stderr
    recs = list(read_records(out / PHASE / "requests.jsonl"))
    (phase,) = json.loads((out / "summary.json").read_text())["phases"].values()
    assert len(recs) == 3 == phase["completed"]  # the issue: 7 records under a summary of 4


def test_overwrite_never_removes_what_a_run_did_not_write(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / PHASE).mkdir(parents=True)
    (out / "run.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    (out / PHASE / "requests.jsonl").write_text("")
    before = snapshot(out)
    p = loadgen("--scenario", str(scenario_file(tmp_path)), "--output-dir", str(out),
                "--overwrite")  # fmt: skip
    one_line_error(p, "notes.txt", "which a run did not write")
    assert snapshot(out) == before


def test_a_killed_rerun_leaves_no_old_complete_summary(tmp_path: Path) -> None:
    """The issue: a second run killed mid-way left the first run's summary.json saying
    complete beside the new run.json. With --overwrite the old files go first."""
    out = tmp_path / "out"

    def slow(_req: Request) -> list[Any]:
        return sse([OK_CHUNK, 30.0, DONE])

    with canned_in_thread(openai_routes(answer)) as srv:
        p = loadgen("--scenario", str(scenario_file(tmp_path)), "--output-dir", str(out),
                    url=srv.url)  # fmt: skip
        assert p.returncode == 0 and json.loads((out / "summary.json").read_text())["complete"]
        first_start = json.loads((out / "run.json").read_text())["started_at"]
    with canned_in_thread(openai_routes(slow)) as srv:
        cmd = [sys.executable, "-m", "loadgen", "--no-progress", "--base-url", srv.url,
               "--scenario", str(scenario_file(tmp_path)), "--output-dir", str(out),
               "--overwrite"]  # fmt: skip
        proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not srv.requests or srv.requests[-1].path != "/v1/completions":
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    summary = out / "summary.json"
    assert not summary.exists() or not json.loads(summary.read_text())["complete"]
    assert json.loads((out / "run.json").read_text())["started_at"] != first_start  # the new run
    assert len(list(read_records(out / PHASE / "requests.jsonl"))) < 4  # none of the old records


@pytest.mark.parametrize(
    ("make", "pieces"),
    [
        (lambda t: "", ("--output-dir: empty path",)),
        (lambda t: (t / "f").write_text("x") and str(t / "f"), ("is a file, not a directory",)),
        (lambda t: (t / "f").write_text("x") and str(t / "f" / "sub"), ("is a file",)),
        (lambda t: "/proc/specload-results", ("is under /proc, a kernel filesystem",)),
        (lambda t: "/sys/kernel/specload", ("is under /sys",)),
    ],
    ids=["empty", "a file", "under a file", "under /proc", "under /sys"],
)
def test_paths_that_cannot_hold_results(tmp_path: Path, make: Any, pieces: tuple[str]) -> None:
    p = loadgen("--scenario", str(scenario_file(tmp_path)), "--output-dir", make(tmp_path))
    one_line_error(p, "--output-dir", *pieces)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_directory_is_one_line(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        p = loadgen("--scenario", str(scenario_file(tmp_path)), "--output-dir", str(ro / "x"))
        one_line_error(p, "--output-dir", "not writable")
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".hidden", "a\\b", "x\ny", " "])
def test_a_scenario_name_must_be_a_plain_name(tmp_path: Path, name: str) -> None:
    p = loadgen("--scenario", str(scenario_file(tmp_path, name=name)))
    one_line_error(p, "field 'name'", "must be a plain name")
    assert not (REPO / "escape").exists() and not (REPO.parent / "escape-").exists()


def test_default_directories_are_never_shared(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    sc = parse_scenario(yaml.safe_load(scenario_file(tmp_path).read_text()), "t")
    first = default_output_dir(sc)
    first.mkdir(parents=True)
    second = default_output_dir(sc)
    assert second != first and second.name.startswith(first.name)


def test_resume_runs_only_into_phases_without_results(tmp_path: Path) -> None:
    """The sweep's resume: other phases' results may stay; a phase about to run must have
    none (the sweep moves its partial data aside first), else nothing is appended."""
    sc = parse_scenario(
        {**yaml.safe_load(scenario_file(tmp_path).read_text()),
         "sweep": {"concurrency": [1, 2]}}, "t")  # fmt: skip
    out = tmp_path / "sweep-cell"
    ResultsDir(out).write_run({"old": True})
    (out / "concurrency=1").mkdir()
    (out / "concurrency=1" / "requests.jsonl").write_text('{"request_id": 1}\n')
    with canned_in_thread(openai_routes(answer)) as srv:

        def run(only: list[str]) -> Any:
            kw = {"only_phases": only, "existing": Existing.RESUME, "progress": False}
            return asyncio.run(run_scenario_async(sc, base_url=srv.url, output_dir=out, **kw))

        with pytest.raises(SpecloadError, match="phase concurrency=1 already has results"):
            run(["concurrency=1"])
        res = run(["concurrency=2"])
    assert res.exit_code == 0 and list(res.phases) == ["concurrency=2"]
    assert (out / "concurrency=1" / "requests.jsonl").read_text() == '{"request_id": 1}\n'
    assert len(list(read_records(out / "concurrency=2" / "requests.jsonl"))) == 4


def test_a_full_disk_ends_the_run_with_one_line_and_keeps_the_records(tmp_path: Path) -> None:
    """The kernel refuses writes past a size (RLIMIT_FSIZE, as a full disk refuses them):
    the run stops with a clear reason and exit 2, and every record written is readable."""
    import resource

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (24_000, 24_000))

    out = tmp_path / "out"
    with canned_in_thread(openai_routes(answer)) as srv:
        p = subprocess.run(
            [sys.executable, "-m", "loadgen", "--no-progress", "--base-url", srv.url,
             "--scenario", str(scenario_file(tmp_path, 2000)), "--output-dir", str(out)],
            capture_output=True, text=True, timeout=120, cwd=REPO, preexec_fn=limit_file_size,
        )  # fmt: skip
        sent = sum(r.path == "/v1/completions" for r in srv.requests)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and "results unwritable" in p.stderr
    assert "File too large" in p.stderr
    recs = list(read_records(out / PHASE / "requests.jsonl"))
    assert 10 < len(recs) < 2000 and sent < 2000
    assert all(r.ok for r in recs) and len({r.request_id for r in recs}) == len(recs)

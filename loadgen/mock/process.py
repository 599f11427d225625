"""Run the mock server in a subprocess: for tests and benchmarks that time a client.

Timing tests need the server out of the client's process: sharing one event loop (or one
GIL) would put the server's work inside the client's measured latencies.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from loadgen.errors import SpecloadError
from loadgen.mock.config import MockConfig


def _repo_root() -> str:
    """The folder holding the ``loadgen`` package, for the child's PYTHONPATH."""
    return str(Path(__file__).resolve().parents[2])


def start_mock_process(
    config_args: Sequence[str] | MockConfig = (), *, timeout_s: float = 15.0
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``python -m loadgen.mock`` on a free port; return (process, base URL).

    Timing tests need this: the server must not share the client's event loop.
    The caller stops it with ``stop_mock_process`` (or ``proc.terminate()``).
    """
    args = config_args.to_args() if isinstance(config_args, MockConfig) else list(config_args)
    if "--port" not in args:
        args += ["--port", "0"]
    env = dict(os.environ)
    env["PYTHONPATH"] = _repo_root() + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadgen.mock", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    line = proc.stdout.readline().decode().strip() if ready else ""
    prefix = "listening on "
    if not line.startswith(prefix):
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        err = proc.stderr.read().decode().strip().splitlines() if proc.stderr else []
        stop_mock_process(proc)
        raise SpecloadError(f"mock server did not start: {err[-1] if err else line or 'timeout'}")
    return proc, line[len(prefix) :]


def stop_mock_process(proc: subprocess.Popen[bytes], timeout_s: float = 5.0) -> int:
    """SIGTERM, then SIGKILL if it lingers; returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for s in (proc.stdout, proc.stderr):
        if s is not None:
            s.close()
    return proc.returncode


@contextlib.contextmanager
def mock_process(config_args: Sequence[str] | MockConfig = ()) -> Iterator[str]:
    """``with mock_process(["--itl-ms", "5"]) as url: ...``"""
    proc, url = start_mock_process(config_args)
    try:
        yield url
    finally:
        stop_mock_process(proc)

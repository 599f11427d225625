"""Docker backend without a Docker engine: the exact container spec, and the start/stop
logic against a fake SDK client."""

from __future__ import annotations

import http.server
import json
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from loadgen.errors import SpecloadError
from server_launch.backends import base
from server_launch.backends.base import ServerStartError
from server_launch.backends.docker import (
    DEFAULT_IMAGE,
    DockerBackend,
    container_spec,
    sdk_kwargs,
)
from server_launch.matrix import ServerOptions, ServerRun
from server_launch.specs import SpecConfig

SECRET = "hf_SuperSecretValue123"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("SPECLOAD_HF_CACHE", raising=False)
    monkeypatch.delenv("SPECLOAD_VLLM_CACHE", raising=False)


def make_run(model: str = "meta-llama/Llama-3.1-8B", spec: SpecConfig | None = None, **kw: Any):
    server = ServerOptions(
        model=model, max_model_len=4096, tensor_parallel_size=1, env={"VLLM_LOGGING_LEVEL": "INFO"}
    )
    spec = spec or SpecConfig(method="ngram", num_speculative_tokens=3, prompt_lookup_max=4)
    return ServerRun(label=spec.label or "x", server=server, spec=spec, scenarios=[], **kw)


def test_container_spec_exact(tmp_path: Path) -> None:
    spec = container_spec(make_run(), 8123)
    home = tmp_path / "home"
    assert spec == {
        "image": DEFAULT_IMAGE,
        "entrypoint": ["vllm", "serve"],
        "command": [
            "meta-llama/Llama-3.1-8B",
            "--max-model-len",
            "4096",
            "--tensor-parallel-size",
            "1",
            "--speculative-config",
            json.dumps({"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4}),
            "--host",
            "0.0.0.0",
            "--port",
            "8000",
        ],
        "name": "specload-ngram-k3-8123",
        "detach": True,
        "ipc_mode": "host",
        "device_requests": [{"count": -1, "capabilities": [["gpu"]]}],
        "volumes": {
            str(home / ".cache/huggingface"): {"bind": "/root/.cache/huggingface", "mode": "rw"},
            str(home / ".cache/vllm"): {"bind": "/root/.cache/vllm", "mode": "rw"},
        },
        "ports": {"8000/tcp": ["127.0.0.1", 8123]},
        "environment": {"VLLM_LOGGING_LEVEL": "INFO"},
        "secret_env": ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"],
        "labels": {"specload.managed": "1", "specload.label": "ngram-k3"},
    }


def test_spec_and_dry_run_never_hold_the_secret() -> None:
    backend = DockerBackend(image="vllm/vllm-openai:v9.9.9", gpus=2)
    run = make_run()
    spec = backend.spec(run, 8000)
    assert SECRET not in json.dumps(spec)
    argv = backend.command(run, 8000)
    assert SECRET not in " ".join(argv)
    assert argv[argv.index("--gpus") + 1] == "2"
    assert argv[argv.index("HF_TOKEN") - 1 : argv.index("HF_TOKEN") + 1] == ["-e", "HF_TOKEN"]
    assert "/var/run/docker.sock" not in json.dumps(spec)
    assert spec["image"] == "vllm/vllm-openai:v9.9.9"
    assert spec["device_requests"] == [{"count": 2, "capabilities": [["gpu"]]}]


def test_secrets_are_filled_only_at_start() -> None:
    spec = container_spec(make_run(), 8000)
    kw = sdk_kwargs(spec, {"HF_TOKEN": SECRET}, lambda **k: k)
    assert kw["environment"] == {"VLLM_LOGGING_LEVEL": "INFO", "HF_TOKEN": SECRET}
    assert "secret_env" not in kw
    assert kw["ports"] == {"8000/tcp": ("127.0.0.1", 8000)}
    assert SECRET not in json.dumps(spec)  # the pure spec is untouched
    assert sdk_kwargs(spec, {}, lambda **k: k)["environment"] == {"VLLM_LOGGING_LEVEL": "INFO"}


def test_real_sdk_device_request() -> None:
    import docker.types

    kw = sdk_kwargs(container_spec(make_run(), 8000), {}, docker.types.DeviceRequest)
    (dr,) = kw["device_requests"]
    assert isinstance(dr, docker.types.DeviceRequest)
    assert dr["Count"] == -1 and dr["Capabilities"] == [["gpu"]]


def test_local_models_are_mounted_read_only_at_their_absolute_path(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "target").mkdir(parents=True)
    (tmp_path / "models" / "draft").mkdir(parents=True)
    draft = SpecConfig(method="draft_model", model="models/draft", num_speculative_tokens=2)
    spec = container_spec(make_run("models/target", draft), 8000)
    target_abs, draft_abs = str(tmp_path / "models/target"), str(tmp_path / "models/draft")
    assert spec["command"][0] == target_abs
    assert spec["volumes"][target_abs] == {"bind": target_abs, "mode": "ro"}
    assert spec["volumes"][draft_abs] == {"bind": draft_abs, "mode": "ro"}
    cfg = json.loads(spec["command"][spec["command"].index("--speculative-config") + 1])
    assert cfg["model"] == draft_abs
    assert spec["name"] == "specload-draft_model-draft-k2-8000"


def test_hub_names_are_not_mounted() -> None:
    spec = container_spec(make_run("x; rm -rf /"), 8000)
    assert spec["command"][0] == "x; rm -rf /"
    assert len(spec["volumes"]) == 2  # the two caches only


def test_cache_dirs_from_env_when_the_sweep_runs_in_a_container(monkeypatch) -> None:
    monkeypatch.setenv("SPECLOAD_HF_CACHE", "/host/hf")
    monkeypatch.setenv("SPECLOAD_VLLM_CACHE", "/host/vllm")
    vols = container_spec(make_run(), 8000)["volumes"]
    assert vols["/host/hf"]["bind"] == "/root/.cache/huggingface"
    assert vols["/host/vllm"]["bind"] == "/root/.cache/vllm"


# --- a fake SDK client ------------------------------------------------------------------


class NotFound(Exception):
    pass


class FakeContainer:
    def __init__(self, name: str, labels: dict[str, str], exit_after_reloads: int | None = None):
        self.name = name
        self.labels = labels
        self.status = "running"
        self.attrs: dict[str, Any] = {"State": {"Status": "running"}}
        self.calls: list[tuple[str, Any]] = []
        self.removed = False
        self._exit_after = exit_after_reloads
        self._reloads = 0

    def reload(self) -> None:
        if self.removed:
            raise NotFound(self.name)
        self._reloads += 1
        if self._exit_after is not None and self._reloads > self._exit_after:
            self.status = "exited"
            self.attrs = {"State": {"Status": "exited", "ExitCode": 1, "OOMKilled": False}}

    def logs(self, stream: bool = False, follow: bool = False, tail: int | None = None):
        lines = [b"INFO vllm starting\n", b"ERROR CUDA error: no kernel image (fake)\n"]
        return iter(lines) if stream else b"".join(lines)

    def stop(self, timeout: int) -> None:
        self.calls.append(("stop", timeout))
        if self.removed:
            raise NotFound(self.name)
        self.status = "exited"
        self.attrs = {"State": {"Status": "exited", "ExitCode": 0}}

    def kill(self) -> None:
        self.calls.append(("kill", None))

    def remove(self, force: bool = False) -> None:
        self.calls.append(("remove", force))
        if self.removed:
            raise NotFound(self.name)
        self.removed = True


class FakeContainers:
    def __init__(self, exit_after_reloads: int | None = None) -> None:
        self.by_name: dict[str, FakeContainer] = {}
        self.run_kwargs: list[dict[str, Any]] = []
        self.exit_after = exit_after_reloads

    def run(self, **kw: Any) -> FakeContainer:
        self.run_kwargs.append(kw)
        c = FakeContainer(kw["name"], kw["labels"], self.exit_after)
        self.by_name[kw["name"]] = c
        return c

    def get(self, name: str) -> FakeContainer:
        if name not in self.by_name:
            raise NotFound(name)
        return self.by_name[name]


class FakeClient:
    def __init__(self, exit_after_reloads: int | None = None) -> None:
        self.containers = FakeContainers(exit_after_reloads)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def health_server():
    """A loopback /health that answers 200, standing in for the container's port."""

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *a: Any) -> None:
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()


def test_start_healthy_stop_remove(tmp_path: Path, health_server: int) -> None:
    client = FakeClient()
    backend = DockerBackend(client=client, stop_grace_s=7)
    log = tmp_path / "run" / "server.log"
    h = backend.start(make_run(), health_server, log)
    (kw,) = client.containers.run_kwargs
    assert kw["environment"]["HF_TOKEN"] == SECRET  # given to the SDK...
    assert SECRET not in log.read_text()  # ...but never written
    assert kw["ipc_mode"] == "host" and kw["detach"] is True
    assert h.base_url == f"http://127.0.0.1:{health_server}"
    assert h in base.live_handles()
    h.wait_healthy(10)
    assert h.is_alive()
    h.stop()
    c = client.containers.by_name[kw["name"]]
    assert c.calls == [("stop", 7), ("remove", True)]
    assert not h.is_alive()
    h.stop()  # idempotent: no second docker call
    assert c.calls == [("stop", 7), ("remove", True)]
    assert h not in base.live_handles()
    assert "CUDA error: no kernel image (fake)" in log.read_text()  # streamed logs


def test_container_exit_before_healthy_is_a_start_error(tmp_path: Path) -> None:
    backend = DockerBackend(client=FakeClient(exit_after_reloads=1))
    h = backend.start(make_run(), free_port(), tmp_path / "server.log")
    with pytest.raises(ServerStartError) as ei:
        h.wait_healthy(30)
    assert "exited with code 1" in str(ei.value)
    assert "no kernel image" in ei.value.log_tail
    h.stop()


def test_health_timeout(tmp_path: Path) -> None:
    backend = DockerBackend(client=FakeClient())
    h = backend.start(make_run(), free_port(), tmp_path / "server.log")
    with pytest.raises(ServerStartError, match=r"not healthy after 0\.5s"):
        h.wait_healthy(0.5)
    h.stop()


def test_stop_tolerates_a_container_already_gone(tmp_path: Path) -> None:
    client = FakeClient()
    h = DockerBackend(client=client).start(make_run(), free_port(), tmp_path / "s.log")
    h.container.removed = True  # e.g. someone ran `docker rm -f`
    h.stop()
    assert ("stop", 30) in h.container.calls
    assert not h.is_alive()


def test_stale_managed_container_is_removed_first(tmp_path: Path) -> None:
    client = FakeClient()
    run = make_run()
    name = container_spec(run, 8000)["name"]
    stale = FakeContainer(name, {"specload.managed": "1"})
    client.containers.by_name[name] = stale
    h = DockerBackend(client=client).start(run, 8000, tmp_path / "s.log")
    assert stale.calls == [("remove", True)]
    h.stop()


def test_gpu_runtime_missing_is_a_clear_error(tmp_path: Path) -> None:
    class NoGpu(FakeContainers):
        def run(self, **kw: Any) -> FakeContainer:
            raise RuntimeError(
                '500 Server Error: could not select device driver "" with capabilities: [[gpu]]'
            )

    client = FakeClient()
    client.containers = NoGpu()
    with pytest.raises(SpecloadError, match="NVIDIA Container Toolkit"):
        DockerBackend(client=client).start(make_run(), 8000, tmp_path / "s.log")


def test_missing_sdk_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "docker", None)
    with pytest.raises(SpecloadError, match=r"pip install 'specload\[docker\]'"):
        DockerBackend().client()


def test_unreachable_engine_is_a_one_line_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    with pytest.raises(SpecloadError, match="cannot reach the Docker engine") as ei:
        DockerBackend().client()
    assert "\n" not in str(ei.value)


def test_gpus_none_requests_no_device() -> None:
    """--gpus none (a CPU image): no device request at all, which an engine without the
    NVIDIA runtime would refuse even at count 0; the dry-run argv has no --gpus."""
    backend = DockerBackend(image="specload-vllm-cpu:latest", gpus=0)
    run = make_run()
    assert backend.spec(run, 8000)["device_requests"] == []
    assert "--gpus" not in backend.command(run, 8000)
    assert sdk_kwargs(backend.spec(run, 8000), {}, lambda **k: k)["device_requests"] == []

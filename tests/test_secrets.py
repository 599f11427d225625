"""Secrets and exposure: the API key comes only from an environment variable, reaches the
server, and is never written anywhere (run.json, requests.jsonl, summaries, metrics
scrapes, stdout/stderr); test servers listen on loopback only."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from loadgen.cli import build_parser
from loadgen.cli import main as loadgen_main
from loadgen.mock.cli import build_arg_parser
from loadgen.mock.config import MockConfig
from loadgen.mock.process import start_mock_process, stop_mock_process
from loadgen.mock.server import MockServer
from server_launch.backends.docker import DockerBackend
from server_launch.matrix import load_matrix
from tests.canned import serve_in_thread

KEY = "sk-specload-test-7f3a9c1e5b2d4a6f8e0c"
KEY_VAR = "SPECLOAD_TEST_API_KEY"


class RecordingMock(MockServer):
    """The mock server, noting the Authorization header of every request it serves."""

    def __init__(self, config: MockConfig) -> None:
        super().__init__(config)
        self.auth: list[tuple[str, str | None]] = []

    async def _dispatch(self, req: Any, reader: Any, writer: Any) -> bool:
        self.auth.append((req.path, req.headers.get("authorization")))
        return await super()._dispatch(req, reader, writer)


def mock_in_thread(config: MockConfig) -> contextlib.AbstractContextManager[RecordingMock]:
    """An in-process mock on its own event loop thread (the CLI under test runs its own)."""
    return serve_in_thread(RecordingMock(config))


def _scenario(path: Path) -> Path:
    doc = {
        "name": "secrets",
        "load": {"shape": "concurrency", "concurrency": 3},
        "num_requests": 30,
        "warmup_requests": 2,
        # no tokenizer directory: the prompt is counted by the server's /tokenize
        "prompts": {"source": "base_prompt", "base_prompt": "w1 w2 w3"},
        "output_tokens": 6,
        "request_timeout_s": 0.5,
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def _grep_tree(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_api_key_reaches_server_and_is_never_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(KEY_VAR, KEY)
    # faults too: error messages are where a header would most likely leak
    cfg = MockConfig(fail_rate="every:5", cut_rate="every:7", stall_rate="every:11")
    out = tmp_path / "out"
    with mock_in_thread(cfg) as srv:
        rc = loadgen_main(
            [
                "--scenario", str(_scenario(tmp_path / "s.yaml")), "--base-url", srv.url,
                "--output-dir", str(out), "--api-key-env", KEY_VAR, "--no-progress",
                "--label", "secret-test",
            ]
        )  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    # the key was sent: on every inference request and the model probe
    inference = [a for p, a in srv.auth if p == "/v1/completions"]
    assert len(inference) == 32  # 2 warmup + 30 measured
    assert all(a == f"Bearer {KEY}" for a in inference)
    paths_with_key = {p for p, a in srv.auth if a == f"Bearer {KEY}"}
    assert {"/v1/models", "/tokenize", "/metrics"} <= paths_with_key
    assert {p for p, a in srv.auth if a is None} <= {"/health"}  # connection warm-up only
    # ...and written nowhere
    files = [p for p in out.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"run.json", "summary.json", "summary.csv", "requests.jsonl"} <= names
    assert _grep_tree(out, KEY.encode()) == []
    assert _grep_tree(out, KEY[-12:].encode()) == []  # not even a fragment
    assert KEY not in captured.out and KEY not in captured.err
    run = (out / "run.json").read_text()
    assert KEY_VAR in run  # the variable's name is recorded, as the CLI argument


def _exit_code(argv: list[str]) -> int:
    try:
        return loadgen_main(argv)
    except SystemExit as e:  # flag errors exit from inside
        return int(e.code or 0)


def test_api_key_env_unset_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(KEY_VAR, raising=False)
    rc = _exit_code(["--scenario", "smoke", "--api-key-env", KEY_VAR])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and KEY_VAR in err and "not set" in err


@pytest.mark.parametrize("flag", ["--api-key-env", "--api-key"])
def test_key_given_instead_of_a_variable_name_is_not_echoed(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--api-key sk-...`` (argparse abbreviates it to --api-key-env) must not print the
    key back: stderr ends up in logs."""
    assert _exit_code(["--scenario", "smoke", flag, KEY]) == 2
    err = capsys.readouterr().err
    assert KEY not in err and "--api-key-env" in err and err.count("\n") == 1


def test_no_flag_takes_a_key_value() -> None:
    """Keys come from the environment only: no option stores a key itself."""
    dests = {a.dest for a in build_parser()._actions}
    assert "api_key_env" in dests
    assert not {d for d in dests if "key" in d} - {"api_key_env"}


# --- loopback only ----------------------------------------------------------------------------


def _non_loopback_ip() -> str | None:
    """This host's outward address, if it has one (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def test_mock_server_binds_loopback_by_default() -> None:
    assert MockConfig().host == "127.0.0.1"
    assert build_arg_parser().parse_args([]).host == "127.0.0.1"

    async def bound() -> list[str]:
        async with MockServer(MockConfig()) as srv:
            assert srv._server is not None
            return [s.getsockname()[0] for s in srv._server.sockets]

    assert asyncio.run(bound()) == ["127.0.0.1"]


def test_mock_process_unreachable_from_outside_address() -> None:
    proc, url = start_mock_process([])
    try:
        assert url.startswith("http://127.0.0.1:")
        port = int(url.rsplit(":", 1)[1])
        assert httpx.get(url + "/health", timeout=5).status_code == 200
        ip = _non_loopback_ip()
        if ip is not None:  # a host with only loopback has nothing else to check
            with socket.socket() as s:
                s.settimeout(2)
                assert s.connect_ex((ip, port)) != 0
    finally:
        stop_mock_process(proc)


def test_docker_publishes_the_port_on_loopback_only(tmp_path: Path) -> None:
    matrix = tmp_path / "m.yaml"
    matrix.write_text(
        yaml.safe_dump(
            {
                "model": "some-model",
                "specs": [{"method": "none"}],
                "scenarios": [
                    {
                        "name": "s",
                        "load": {"shape": "concurrency", "concurrency": 1},
                        "num_requests": 1,
                    }
                ],
            }
        )
    )
    run = load_matrix(matrix).runs[0]
    cmd = DockerBackend().command(run, 8123)
    publish = cmd[cmd.index("-p") + 1]
    assert publish.startswith("127.0.0.1:8123:")
    # tokens are passed by name (docker reads the value from its own environment)
    env_args = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-e"]
    assert all("=" not in e for e in env_args if "TOKEN" in e)

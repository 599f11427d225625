"""The inputs that gave tracebacks: each is now one stderr line naming the flag or field
(exit 2), or, where the input is only recorded (a server's /version), no error at all."""

from __future__ import annotations

import json
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from loadgen.cli import main as loadgen_main
from tests.canned import (
    OK_STREAM,
    canned_in_thread,
    openai_routes,
    response,
)
from tests.conftest import REPO

TOKENIZE_OK = [response(200, b'{"tokens": [1, 2], "count": 2}')]


def loadgen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadgen", "--no-progress", *args],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip


def one_line(p: subprocess.CompletedProcess[str], start: str, *pieces: str) -> None:
    err = p.stderr.strip()
    assert p.returncode == 2 and "Traceback" not in err and "\n" not in err, err
    assert err.startswith(f"loadgen: error: {start}"), err
    for piece in pieces:
        assert piece in err, err


def scenario(tmp: Path, **kw: Any) -> str:
    doc = {"name": "e", "load": {"shape": "concurrency", "concurrency": 1}, "num_requests": 1,
           "prompts": {"source": "base_prompt", "base_prompt": "w1 w2"}, "output_tokens": 1,
           **kw}  # fmt: skip
    path = tmp / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


@pytest.mark.parametrize(
    ("args", "flag", "why"),
    [
        (["--seed", "-1"], "--seed", "greater than or equal to 0, got -1"),
        (["--duration", "inf"], "--duration", "finite number, got inf"),
        (["--scenario", "constant", "--rate", "inf"], "--rate", "finite number, got inf"),
        (["--scenario", "constant", "--rate", "nan"], "--rate", "finite number, got nan"),
        (["--max-error-rate", "1.5"], "--max-error-rate", "less than or equal to 1, got 1.5"),
        (["--max-error-rate", "-0.1"], "--max-error-rate", "greater than or equal to 0"),
        (["--spin-ms", "100"], "--spin-ms", "less than or equal to 50, got 100"),
        (["--spin-ms", "-1"], "--spin-ms", "greater than or equal to 0"),
        (["--idle-timeout", "0"], "--idle-timeout", "greater than 0"),
        (["--scenario", "/"], "--scenario", "is a directory"),
    ],
)
def test_flags_name_themselves(args: list[str], flag: str, why: str, capsys: Any) -> None:
    scen = [] if "--scenario" in args else ["--scenario", "smoke"]
    code = loadgen_main([*scen, *args])
    one_line(subprocess.CompletedProcess(args, code, "", capsys.readouterr().err), f"{flag}: ", why)


def test_an_infinite_burst_duration_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_text("name: b\nload: {shape: burst, size: 2, interval_s: 1}\nduration_s: .inf\n")
    one_line(loadgen("--scenario", str(path)), str(path), "field 'duration_s'", "finite")


@pytest.mark.parametrize(
    ("routes", "why"),
    [
        ({"/v1/models": [response(200, b'{"data": [{"id": 5}]}')]}, "a model id is 5"),
        ({"/v1/models": [response(200, b'{"data": [{"id": null}]}')]}, "a model id is None"),
        ({"/v1/models": [response(200, b"<html>", ctype="text/html")]}, "not an OpenAI model"),
        (openai_routes(OK_STREAM, **{"/tokenize": [response(200, b"<html>x</html>",
                                                            ctype="text/html")]}),
         "/tokenize did not answer as vLLM does (content-type text/html"),
        (openai_routes(OK_STREAM, **{"/tokenize": [response(200, b'{"tokens": "ab"}')]}),
         "no 'tokens' list"),
    ],
    ids=["model id a number", "model id null", "models as HTML", "tokenize as HTML",
         "tokenize tokens a string"],
)  # fmt: skip
def test_what_a_server_answers_is_checked(tmp_path: Path, routes: Any, why: str) -> None:
    with canned_in_thread(routes) as srv:
        p = loadgen("--scenario", scenario(tmp_path), "--base-url", srv.url,
                    "--output-dir", str(tmp_path / "o"))  # fmt: skip
    one_line(p, "--base-url: ", why)


def test_a_version_that_is_not_vllms_is_only_not_recorded(tmp_path: Path) -> None:
    routes = openai_routes(OK_STREAM, **{"/version": [response(200, b"[1, 2]")],
                                         "/tokenize": TOKENIZE_OK})  # fmt: skip
    with canned_in_thread(routes) as srv:
        p = loadgen("--scenario", scenario(tmp_path), "--base-url", srv.url,
                    "--output-dir", str(tmp_path / "o"))  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "o" / "run.json").read_text())["server"]["version"] is None


@contextmanager
def plain_http_server() -> Iterator[int]:
    """Answers whatever arrives with a plain-HTTP 400, as uvicorn answers a TLS hello."""

    class Answer(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.recv(1024)
            self.request.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")

    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Answer) as srv:
        srv.daemon_threads = True
        t = threading.Thread(target=srv.serve_forever, daemon=True)
        t.start()
        try:
            yield srv.server_address[1]
        finally:
            srv.shutdown()


def test_https_to_a_plain_http_server_says_so(tmp_path: Path) -> None:
    with plain_http_server() as port:
        p = loadgen("--scenario", scenario(tmp_path), "--base-url", f"https://127.0.0.1:{port}",
                    "--output-dir", str(tmp_path / "o"))  # fmt: skip
    one_line(p, "--base-url: cannot reach https://", "speaks plain HTTP, not TLS: use http://")

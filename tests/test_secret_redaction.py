"""Secrets never reach a file or a terminal: an API key that a header cannot carry is
refused up front without being shown; a key a server echoes back (in an error body, a
stream's error object, a malformed chunk, cut short) is redacted from every error text
before it is stored or printed, in every process; credentials in ``--base-url`` are
refused, unsent and unwritten."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from loadgen.cli import main as loadgen_main
from loadgen.errors import REDACTED, SECRET_PIECE, redact, register_secret
from loadgen.http.base import TRANSPORTS
from tests.canned import (
    DONE,
    OK_CHUNK,
    Request,
    canned_in_thread,
    completion_chunk,
    event,
    openai_routes,
    response,
    sse,
    write_scenario,
)

KEY = "sk-harden-0c9f7e1d3b5a4c2e8f6d"
VAR = "SPECLOAD_HARDEN_KEY"


def scenario(tmp: Path, n: int = 12) -> str:
    return str(write_scenario(tmp / "s.yaml", name="secrets", num_requests=n, output_tokens=2))


def leaks(text: str | bytes) -> list[str]:
    """The key, or any piece of it as long as a redaction piece, found in ``text``."""
    t = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    pieces = {KEY[i : i + SECRET_PIECE] for i in range(len(KEY) - SECRET_PIECE + 1)}
    return sorted(p for p in pieces if p in t)


def tree_leaks(root: Path) -> dict[str, list[str]]:
    found = {str(p): leaks(p.read_bytes()) for p in root.rglob("*") if p.is_file()}
    return {k: v for k, v in found.items() if v}


def echoing() -> Any:
    """A server that puts the Authorization header it got into what it answers, each
    request a different way."""
    n = itertools.count()

    def answer(req: Request) -> list[Any]:
        auth = req.headers.get("authorization", "")
        key = auth.removeprefix("Bearer ")
        ok = OK_CHUNK
        way = next(n) % 6
        if way == 0:  # an error body quoting the header
            return [response(401, json.dumps({"error": f"bad header {auth!r}"}).encode())]
        if way == 1:  # an error object in the stream
            return sse([ok, event({"error": {"message": f"key {key} revoked"}}), DONE])
        if way == 2:  # a malformed chunk: the key lands inside the quoted payload
            return sse([ok, b'data: {"x": "' + ("." * 40 + key).encode() + b"\n\n", DONE])
        if way == 3:  # the key cut short, as some APIs echo it
            return [response(403, f"Incorrect API key provided: {key[:20]}...".encode())]
        if way == 4:  # an HTML page with the header in it
            return [response(200, f"<p>{auth}</p>".encode(), ctype="text/html")]
        return sse([ok, event(completion_chunk(" w2", usage=(3, 2))), DONE])

    return answer


def metrics_echo(req: Request) -> list[Any]:
    return [response(500, f"no metrics for {req.headers.get('authorization')}".encode())]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("workers", [1, 2])
def test_an_echoed_key_is_redacted_everywhere(
    tmp_path: Path, monkeypatch: Any, capsys: Any, transport: str, workers: int
) -> None:
    if workers == 2 and transport == "httpx":
        pytest.skip("one multi-process run is enough: the worker path is the same")
    monkeypatch.setenv(VAR, KEY)
    out = tmp_path / "out"
    routes = openai_routes(echoing(), **{"/metrics": metrics_echo})
    with canned_in_thread(routes) as srv:
        rc = loadgen_main(["--scenario", scenario(tmp_path), "--base-url", srv.url,
                           "--output-dir", str(out), "--api-key-env", VAR, "--no-progress",
                           "--transport", transport, "--workers", str(workers)])  # fmt: skip
        sent = [r.headers.get("authorization") for r in srv.requests if r.method == "POST"]
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert len(sent) == 12 and set(sent) == {f"Bearer {KEY}"}  # the key was used
    assert tree_leaks(out) == {} and not leaks(cap.out) and not leaks(cap.err)
    (phase,) = json.loads((out / "summary.json").read_text())["phases"].values()
    errors = [e for e in phase["errors"] if e]
    assert len(errors) == 10 and all(REDACTED in e for e in errors)  # 2 of 6 succeed
    assert phase["failed_by_kind"] == {"http": 6, "server_error": 2, "bad_sse": 2}


@pytest.mark.parametrize(
    "key",
    ["sk-abc ", " sk-abc", "sk-abc\r", "sk-abc\n", "sk-ab\tc", "sk-äbc-ü", "sk-€", "sk a"],
    ids=["trailing space", "leading space", "CR", "LF", "tab", "Latin-1", "non-Latin-1",
         "inner space"],
)  # fmt: skip
def test_a_key_a_header_cannot_carry_is_refused_unseen(
    tmp_path: Path, monkeypatch: Any, capsys: Any, key: str
) -> None:
    monkeypatch.setenv(VAR, key)
    with canned_in_thread(openai_routes(echoing())) as srv:
        rc = loadgen_main(["--scenario", scenario(tmp_path), "--base-url", srv.url,
                           "--output-dir", str(tmp_path / "o"), "--api-key-env", VAR])  # fmt: skip
        assert srv.requests == []  # refused before anything was sent
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"loadgen: error: --api-key-env: {VAR}: the API key has ")
    assert key.strip() not in err and "sk-" not in err
    assert not (tmp_path / "o").exists()


def test_credentials_in_the_url_are_refused_unsent_and_unwritten(
    tmp_path: Path, capsys: Any
) -> None:
    with canned_in_thread(openai_routes(echoing())) as srv:
        url = srv.url.replace("http://", "http://alice:s3cret-pw@")
        rc = loadgen_main(["--scenario", scenario(tmp_path), "--base-url", url,
                           "--output-dir", str(tmp_path / "o")])  # fmt: skip
        assert srv.requests == []
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "credentials in the URL" in err
    assert "s3cret-pw" not in err and "alice" not in err
    assert not (tmp_path / "o").exists()


def test_redact_takes_the_key_and_its_long_pieces() -> None:
    register_secret(KEY)
    assert redact(f"a {KEY} b") == f"a {REDACTED} b"
    assert redact(f"x{KEY[:SECRET_PIECE]}y") == f"x{REDACTED}y"  # a prefix, cut short
    assert redact(f"x{KEY[5:25]}y{KEY[-14:]}") == f"x{REDACTED}y{REDACTED}"
    assert redact(KEY[: SECRET_PIECE - 1]) == KEY[: SECRET_PIECE - 1]  # too short to tell
    assert redact("nothing secret") == "nothing secret"

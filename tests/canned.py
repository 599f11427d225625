"""A server written for the tests: it answers each request with a canned script of bytes,
pauses, clean closes and resets, so a test can give a client exactly the response it is
about (a stream whose usage arrives only at the end, a chunk with wrong types, a redirect,
gzip, a reset after ``[DONE]`` ...), byte for byte, which neither vLLM nor the mock would.

A script is a list of steps: ``bytes`` are written (and drained), a ``float`` sleeps that
many seconds, :data:`CLOSE` closes the connection cleanly (FIN), :data:`RESET` aborts it
(RST: SO_LINGER 0). A script that ends without closing leaves the connection open for the
next request (keep-alive). ``routes`` maps ``METHOD /path`` (or ``/path`` for any method) to
a script or to a function of the request that returns one; anything else gets 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tests.conftest import REPO

CLOSE = "close"
RESET = "reset"
Step = bytes | float | str
Script = list[Step]


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")


Route = bytes | Script | Callable[[Request], Script]


@dataclass
class CannedServer:
    """``async with CannedServer(routes) as srv`` serves on 127.0.0.1 at ``srv.url``."""

    routes: dict[str, Route]
    requests: list[Request] = field(default_factory=list)
    url: str = ""
    _server: asyncio.base_events.Server | None = None
    _conns: set[asyncio.StreamWriter] = field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def __aenter__(self) -> CannedServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._conns):
            w.close()
        for t in list(self._tasks):  # connections still playing a script (a long pause)
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    def script_for(self, req: Request) -> Script:
        route = self.routes.get(f"{req.method} {req.path}", self.routes.get(req.path))
        if route is None:
            return [response(404, b'{"detail":"Not Found"}')]
        script = route(req) if callable(route) else route
        return [script] if isinstance(script, bytes) else list(script)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            while True:
                req = await _read_request(reader)
                if req is None:
                    return
                self.requests.append(req)
                if not await _play(self.script_for(req), writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:  # the server is closing (asyncio's stream callback
            return  # would raise on a task that ends cancelled)
        finally:
            self._conns.discard(writer)
            writer.close()


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        k, sep, v = line.partition(":")
        if sep:
            headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "0"))
    body = await reader.readexactly(n) if n else b""
    return Request(method, path.split("?", 1)[0], headers, body)


async def _play(script: Script, writer: asyncio.StreamWriter) -> bool:
    """Play a script; False once the connection is closed."""
    for step in script:
        if isinstance(step, bytes):
            writer.write(step)
            await writer.drain()
        elif isinstance(step, float | int):
            await asyncio.sleep(step)
        elif step == CLOSE:
            await writer.drain()
            writer.close()
            return False
        elif step == RESET:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
    return True


# --- building responses ----------------------------------------------------------------------


def head(status: int, headers: dict[str, str] | None = None, reason: str = "X") -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def response(status: int, body: bytes, ctype: str = "application/json", **extra: str) -> bytes:
    """A whole content-length response."""
    hdrs = {"content-type": ctype, "content-length": str(len(body)), **extra}
    return head(status, hdrs) + body


def chunked(*pieces: Step) -> list[Step]:
    """``pieces`` as HTTP chunks (one write each), then the last chunk; a pause or another
    step among them is kept as it is."""
    out: list[Step] = [b"%x\r\n%s\r\n" % (len(p), p) if isinstance(p, bytes) else p
                       for p in pieces if p != b""]  # fmt: skip
    return [*out, b"0\r\n\r\n"]


SSE_HEAD = head(200, {"content-type": "text/event-stream", "transfer-encoding": "chunked"})
SSE_CLOSE_HEAD = head(200, {"content-type": "text/event-stream", "connection": "close"})


def event(obj: Any) -> bytes:
    """One SSE event: ``data: <json>`` (a str or bytes payload is sent as it is)."""
    if isinstance(obj, bytes):
        payload = obj
    elif isinstance(obj, str):
        payload = obj.encode()
    else:
        payload = json.dumps(obj, separators=(",", ":")).encode()
    return b"data: " + payload + b"\n\n"


DONE = event("[DONE]")


def completion_chunk(
    text: str, *, usage: tuple[int, int] | None = None, finish: str | None = None
) -> dict[str, Any]:
    """A /v1/completions stream chunk; ``usage`` is (prompt_tokens, completion_tokens)."""
    d: dict[str, Any] = {
        "id": "cmpl-1",
        "object": "text_completion",
        "model": "m",
        "choices": [{"index": 0, "text": text, "finish_reason": finish}],
    }
    if usage is not None:
        d["usage"] = {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": usage[0] + usage[1],
        }
    return d


def usage_chunk(prompt: int, completion: int) -> dict[str, Any]:
    """The final usage-only chunk (``choices: []``), as OpenAI and vLLM send it."""
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "model": "m",
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


def sse(events: list[Step], *, close_delimited: bool = False) -> Script:
    """A 200 event stream of ``events`` (each one write), chunked or close-delimited."""
    if close_delimited:
        return [SSE_CLOSE_HEAD, *events, CLOSE]
    return [SSE_HEAD, *chunked(*events)]


MODELS = response(200, json.dumps({"object": "list", "data": [{"id": "m"}]}).encode())


def openai_routes(completions: Route, **more: Route) -> dict[str, Route]:
    """What ``python -m loadgen`` asks of a server: the model list, and the stream."""
    return {"/v1/models": MODELS, "/v1/completions": completions, **more}


# One content chunk ("w1", usage 3 prompt + 1 output tokens), and the whole stream of it.
OK_CHUNK = event(completion_chunk(" w1", usage=(3, 1)))
OK_STREAM = sse([OK_CHUNK, DONE])
# The tiny model's tokenizer: a scenario naming it counts its prompt locally, so a canned
# server needs no /tokenize route.
TOKENIZER = str(REPO / "models" / "tiny-llama")


def write_scenario(path: Path, **fields: Any) -> Path:
    """A scenario file for a canned server at ``path``: a closed loop of 2 sending "w1 w2"
    (counted by :data:`TOKENIZER`) for one output token; ``fields`` replace or add
    top-level fields (``name`` and ``num_requests`` at least, as a test wants them)."""
    doc = {
        "load": {"shape": "concurrency", "concurrency": 2},
        "prompts": {"source": "base_prompt", "base_prompt": "w1 w2", "tokenizer": TOKENIZER},
        "output_tokens": 1,
        **fields,
    }
    path.write_text(yaml.safe_dump(doc))
    return path


@contextlib.contextmanager
def canned_in_thread(routes: dict[str, Route]) -> Iterator[CannedServer]:
    """A CannedServer on its own event loop thread, for a client that runs its own loop
    (the command line, in-process)."""
    with serve_in_thread(CannedServer(routes)) as srv:
        yield srv


S = TypeVar("S", bound=contextlib.AbstractAsyncContextManager[Any])


@contextlib.contextmanager
def serve_in_thread(srv: S) -> Iterator[S]:
    """Any in-process server (an async context manager that listens while entered: a
    CannedServer, the mock) on its own event loop thread, for a client that runs its own."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop: asyncio.Event | None = None

    async def serve() -> None:
        nonlocal stop
        stop = asyncio.Event()
        async with srv:
            started.set()
            await stop.wait()

    t = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    t.start()
    assert started.wait(10)
    try:
        yield srv
    finally:
        assert stop is not None
        loop.call_soon_threadsafe(stop.set)
        t.join(10)
        loop.close()

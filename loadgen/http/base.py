"""What every transport shares: the request settings, the ``Transport`` interface and its
registry, the auth header, the TLS context, and the one ladder that turns a failure into
the record's ``(ErrorKind, message)``.

Two transports implement the interface: ``raw`` (the default, :mod:`loadgen.http.raw`, a
minimal asyncio HTTP/1.1 client) and ``httpx`` (:mod:`loadgen.http.httpx_transport`).
``benchmarks/client_overhead.py`` compares them (figures in
``benchmarks/results/client_overhead.md``): raw spends less CPU per chunk, which is what
lets one process keep up with more streams. Both keep one connection per in-flight request,
fill the same ``RequestRecord`` through the same after-the-fact SSE parsing
(:mod:`loadgen.http.sse`), and fail with the same ``ErrorKind`` values and messages; they
differ in CPU per chunk and in the exact moment ``sent_s`` is taken (see ``raw``).

A new transport is one module with a class taking ``(settings, clock)`` plus one line in
``_REGISTRY``.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast

from loadgen.errors import describe_exception, one_line
from loadgen.results.records import ErrorKind, RequestRecord

Endpoint = Literal["completions", "chat"]
# A prompt as sent: the text, or a chat's messages ({"role": ..., "content": ...}).
Prompt = str | list[dict[str, str]]
TransportName = Literal["httpx", "raw"]
Clock = Callable[[], float]
MAX_ERROR_CHARS = 300  # a record's error message is one line of at most this many


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The header that carries the API key (never recorded anywhere), or none."""
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


@dataclass(frozen=True)
class RequestSettings:
    """What every request of a run shares."""

    base_url: str
    model: str
    endpoint: Endpoint = "completions"
    temperature: float = 0.0
    top_p: float | None = None
    ignore_eos: bool = True
    timeout_s: float = 600.0
    api_key: str | None = None  # sent as a header, never recorded
    extra_body: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        path = "/v1/chat/completions" if self.endpoint == "chat" else "/v1/completions"
        return self.base_url.rstrip("/") + path

    def headers(self, request_id: str) -> dict[str, str]:
        return {
            "content-type": "application/json",
            "x-request-id": request_id,
            **auth_headers(self.api_key),
        }

    def body(self, prompt: Prompt, max_tokens: int) -> dict[str, Any]:
        """The request's JSON; ``prompt`` is the text, or for chat the whole message list
        (a multi-turn replay's history)."""
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": max_tokens,
            "temperature": self.temperature,
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        }
        if self.ignore_eos:
            body["ignore_eos"] = True
        if self.top_p is not None:
            body["top_p"] = self.top_p
        if isinstance(prompt, list):
            body["messages"] = prompt
        elif self.endpoint == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        body.update(self.extra_body)
        return body


def now_clock(origin: float) -> Clock:
    """Seconds since ``origin`` on the monotonic high-resolution clock."""
    pc = time.perf_counter
    return lambda: pc() - origin


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context for every connection of both transports: building one loads the
    whole trust store, far too much CPU to spend per client."""
    return ssl.create_default_context()


# --- the transports ----------------------------------------------------------------------


class Transport(Protocol):
    """Sends requests for one phase; one connection per in-flight request."""

    name: str

    def prefill(self, n: int) -> None:
        """Get ``n`` request slots ready before the clock starts (cheap, no I/O)."""

    async def connect(self) -> None:
        """Open the prefilled slots' connections, so measured requests don't pay for it."""

    async def send_request(
        self,
        record: RequestRecord,
        prompt: Prompt,
        max_tokens: int,
        request_id: str,
        reply: list[str] | None = None,
    ) -> RequestRecord:
        """Send one streaming request and fill ``record``; never raises except on cancel.
        ``reply``: when given, the generated text of a successful request is appended to
        it (a multi-turn replay's next turn needs the answer)."""

    async def aclose(self) -> None:
        """Close every connection."""


# name -> (module, class); imported on first use, so a run loads only the one it uses.
_REGISTRY: dict[TransportName, tuple[str, str]] = {
    "httpx": ("loadgen.http.httpx_transport", "HttpxTransport"),
    "raw": ("loadgen.http.raw", "RawTransport"),
}
TRANSPORTS: tuple[TransportName, ...] = tuple(_REGISTRY)


def make_transport(name: str, settings: RequestSettings, clock: Clock) -> Transport:
    """The transport registered as ``name`` (the scenario's ``transport`` field)."""
    where = _REGISTRY.get(cast(TransportName, name))
    if where is None:
        raise ValueError(f"unknown transport {name!r} (known: {', '.join(TRANSPORTS)})")
    cls = getattr(importlib.import_module(where[0]), where[1])
    return cast(Transport, cls(settings, clock))


# --- failures ------------------------------------------------------------------------------


class RequestFailed(Exception):
    """A request's failure named by its cause, not by the library that saw it: a transport
    raises these (or maps its library's errors to them), and :func:`describe_failure`
    reads them like any other exception."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    @classmethod
    def connect(cls, base_url: str, cause: BaseException) -> RequestFailed:
        """Nothing was sent: refused, DNS, TLS."""
        detail = describe_exception(cause, MAX_ERROR_CHARS)
        return cls(ErrorKind.CONNECT, f"cannot connect to {base_url}: {detail}")

    @classmethod
    def stalled(cls, what: str, seconds: float) -> RequestFailed:
        """Connecting, writing or reading made no progress for ``seconds``."""
        return cls(ErrorKind.TIMEOUT, f"{what}: stalled for {seconds:g} s")

    @classmethod
    def stream_cut(cls, detail: str) -> RequestFailed:
        """The server hung up mid-response, or broke HTTP framing."""
        return cls(ErrorKind.STREAM_CUT, f"stream cut: {detail}")

    @classmethod
    def http_status(cls, status: int, body: str) -> RequestFailed:
        """The server answered ``status`` >= 400; its body's message is kept, on one line."""
        return cls(ErrorKind.HTTP, f"HTTP {status}: {one_line(body, MAX_ERROR_CHARS)}")


def describe_failure(exc: BaseException, settings: RequestSettings) -> tuple[ErrorKind, str]:
    """The one ladder both transports use: what a request's exception means for its record.
    A cancel is the run stopping; ``TimeoutError`` is the request's own deadline (both
    transports wrap a request in ``asyncio.timeout(timeout_s)``); anything unforeseen
    costs one record (``other``), never the run."""
    if isinstance(exc, RequestFailed):
        return exc.kind, str(exc)
    if isinstance(exc, asyncio.CancelledError):
        return ErrorKind.CANCELLED, "cancelled before the stream finished"
    if isinstance(exc, TimeoutError):
        return ErrorKind.TIMEOUT, f"no complete response within {settings.timeout_s:g} s"
    return ErrorKind.OTHER, f"{type(exc).__name__}: {one_line(exc, MAX_ERROR_CHARS)}"

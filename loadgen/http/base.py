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
import json
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast
from urllib.parse import urlsplit

from loadgen.errors import SpecloadError, describe_exception, one_line, register_secret
from loadgen.results.records import ErrorKind, RequestRecord

if TYPE_CHECKING:
    from loadgen.http.sse import TextTokenizer

Endpoint = Literal["completions", "chat"]
# A prompt as sent: the text, or a chat's messages ({"role": ..., "content": ...}).
Prompt = str | list[dict[str, str]]
TransportName = Literal["httpx", "raw"]
Clock = Callable[[], float]
MAX_ERROR_CHARS = 300  # a record's error message is one line of at most this many
CONNECT_TIMEOUT_MAX_S = 30.0  # connecting: min(this, the request deadline), both transports


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The header that carries the API key (never recorded anywhere), or none."""
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


def check_api_key(api_key: str, source: str = "--api-key-env") -> None:
    """That the key can be sent as a header, before anything is sent: an HTTP library's
    own error quotes the header whole ("Illegal header value b'Bearer sk-...\\r'") or
    raises on a non-Latin-1 character. The message says what is wrong, never the key."""
    bad = next((i for i, c in enumerate(api_key) if not "\x21" <= c <= "\x7e"), None)
    if bad is None:
        return
    c = api_key[bad]
    what = (
        "a non-ASCII character"
        if ord(c) > 0x7E
        else "whitespace"
        if c in " \t"
        else f"a control character ({c!a})"
    )
    where = (
        "at its end" if bad == len(api_key) - 1 else "at its start" if bad == 0 else
        f"at position {bad + 1} of {len(api_key)}"
    )  # fmt: skip
    raise SpecloadError(
        f"{source}: the API key has {what} {where}, which an HTTP header cannot carry "
        "(a stray newline or space from the file it came from?); the key is not shown"
    )


def check_base_url(base_url: str) -> None:
    """An http(s) URL with a host and no credentials in it. ``user:password@`` is refused
    rather than half-supported: it would be written to run.json, the server samples and
    every error message, and sit in shell history and process lists. The message never
    repeats the URL (it holds the password)."""
    try:
        u = urlsplit(base_url)
        port = u.port
    except ValueError as e:
        raise SpecloadError(f"--base-url: not a valid URL: {e} (the URL is not shown)") from None
    if u.username is not None or u.password is not None:
        raise SpecloadError(
            "--base-url: credentials in the URL (user:password@host) are not accepted: they "
            "would be recorded with the results; put the key in an environment variable "
            "and pass --api-key-env VAR (the URL is not shown)"
        )
    if u.scheme not in ("http", "https") or not u.hostname:
        raise SpecloadError(f"--base-url: give an http:// or https:// URL, got {base_url!r}")
    del port  # parsed only to reject a bad one


@dataclass(frozen=True)
class RequestSettings:
    """What every request of a run shares."""

    base_url: str
    model: str
    endpoint: Endpoint = "completions"
    temperature: float = 0.0
    top_p: float | None = None
    ignore_eos: bool = True
    timeout_s: float = 600.0  # the whole request's deadline (request_timeout_s)
    # Until the first byte of the response body (None: the deadline alone): queueing
    # before the first token can legitimately take long.
    first_byte_timeout_s: float | None = None
    # Between two reads once the body has started: a stream that stalls gives its slot
    # back after this, not after the whole deadline.
    idle_timeout_s: float = 30.0
    api_key: str | None = None  # sent as a header, never recorded
    extra_body: dict[str, Any] = field(default_factory=dict)
    # A local tokenizer (directory or tokenizer.json) that counts each chunk's tokens from
    # its text when the server's usage is not per chunk (loadgen.http.sse.settle_tokens).
    tokenizer: str | None = None

    def __post_init__(self) -> None:
        register_secret(self.api_key)

    @property
    def url(self) -> str:
        path = "/v1/chat/completions" if self.endpoint == "chat" else "/v1/completions"
        return self.base_url.rstrip("/") + path

    def headers(self, request_id: str) -> dict[str, str]:
        return {
            "content-type": "application/json",
            # Bytes are parsed as they came off the socket: nothing compressed, please.
            "accept-encoding": "identity",
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


@functools.cache
def output_tokenizer(path: str | None) -> TextTokenizer | None:
    """The tokenizer that counts output text (``RequestSettings.tokenizer``), loaded once
    per process: loading one takes far longer than a request's parse."""
    if path is None:
        return None
    from loadgen.config.prompts.tokenizers import LocalTokenizer

    try:
        return LocalTokenizer(path)
    except SpecloadError:  # not on this host (a Ray actor elsewhere): counts stay unknown
        return None


def max_output_tokens(body: dict[str, Any]) -> int | None:
    """The most output tokens a request body asks for: its max_tokens (or
    ``max_completion_tokens``, which ``extra_body`` may set instead) times its ``n``
    choices. A server's usage count beyond it is not believed (it would make the summary's
    per-token arrays that large); None when the body sets no whole-number limit."""
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    n = body.get("n", 1)
    if type(limit) is not int or type(n) is not int or limit <= 0:
        return None
    return limit * max(n, 1)


def request_body(
    settings: RequestSettings, record: RequestRecord, prompt: Prompt, max_tokens: int
) -> bytes:
    """The request's JSON body as sent, built the one way both transports send it; notes
    on ``record`` the most output tokens the body asks for (:func:`max_output_tokens`)."""
    body = settings.body(prompt, max_tokens)
    record.expected_output_tokens = max_output_tokens(body)
    return json.dumps(body).encode()


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
    register_secret(settings.api_key)  # a worker's settings arrive pickled, not constructed
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
    def first_byte(cls, seconds: float) -> RequestFailed:
        """No byte of the response body within ``first_byte_timeout_s`` of sending."""
        msg = f"first byte: nothing of the response body within {seconds:g} s"
        return cls(ErrorKind.TIMEOUT, f"{msg} (first_byte_timeout_s)")

    @classmethod
    def idle(cls, seconds: float) -> RequestFailed:
        """The body started, then nothing arrived for ``idle_timeout_s``."""
        msg = f"idle: the stream stalled for {seconds:g} s"
        return cls(ErrorKind.TIMEOUT, f"{msg} (idle_timeout_s)")

    @classmethod
    def stream_cut(cls, detail: str) -> RequestFailed:
        """The server hung up mid-response, or broke HTTP framing."""
        return cls(ErrorKind.STREAM_CUT, f"stream cut: {detail}")

    @classmethod
    def http_status(cls, status: int, body: str) -> RequestFailed:
        """The server answered ``status`` >= 400; its body's message is kept, on one line."""
        return cls(ErrorKind.HTTP, f"HTTP {status}: {one_line(body, MAX_ERROR_CHARS)}")

    @classmethod
    def not_a_stream(cls, status: int, why: str, body: bytes) -> RequestFailed:
        """The answer is not an event stream (:func:`not_a_stream` says why): ``http``,
        with the status, the reason and the start of the body."""
        if status >= 400:
            return cls.http_status(status, body.decode("utf-8", "replace"))
        encoded = why.startswith("content-encoding")  # compressed bytes are not a message
        text = "" if encoded else one_line(body[:2048].decode("utf-8", "replace"), MAX_ERROR_CHARS)
        return cls(ErrorKind.HTTP, f"HTTP {status}: {why}" + (f": {text}" if text else ""))


def not_a_stream(status: int, headers: Mapping[str, str]) -> str | None:
    """Why a response cannot be the event stream asked for, or None when it can be: a
    status outside 2xx (a redirect is named, never followed: the request would be sent
    again elsewhere), a body encoded although none was asked for, or a content type other
    than ``text/event-stream`` (an HTML error page, a whole JSON completion). Both
    transports judge every response by this, so they agree."""
    if not 200 <= status < 300:
        if 300 <= status < 400:
            return f"redirect to {headers.get('location', '?')} (not followed)"
        return f"status {status}"
    enc = headers.get("content-encoding", "identity").strip().lower()
    if enc not in ("identity", ""):
        return f"content-encoding {enc} (none was asked for)"
    ctype = headers.get("content-type")
    if ctype is not None and ctype.split(";", 1)[0].strip().lower() != "text/event-stream":
        return f"content-type {ctype}, not an event stream"
    return None


def connect_timeout_s(settings: RequestSettings) -> float:
    """How long connecting may take, both transports: at most ``CONNECT_TIMEOUT_MAX_S``."""
    return min(CONNECT_TIMEOUT_MAX_S, settings.timeout_s)


def check_stall(
    settings: RequestSettings, now: float, sent: float, last_read: float | None
) -> tuple[RequestFailed | None, float]:
    """The first-byte and idle limits, checked by one timer per request (each transport
    keeps its own, re-armed only when it fires: no work per read). ``last_read``: when the
    last byte of the body arrived, None before the first. Returns the failure when a limit
    has passed, else None and the seconds until the next check. A limit at or beyond the
    request deadline is left to the deadline (``asyncio.timeout`` around the request)."""
    deadline = settings.timeout_s
    idle = settings.idle_timeout_s if settings.idle_timeout_s < deadline else None
    if last_read is None:
        first = settings.first_byte_timeout_s
        if first is None or first >= deadline:
            return None, idle or deadline
        waited = now - sent
        if waited >= first * 0.999:  # timers may fire a hair early
            return RequestFailed.first_byte(first), 0.0
        return None, min(idle or deadline, first - waited)
    if idle is None:
        return None, deadline
    quiet = now - last_read
    if quiet >= idle * 0.999:
        return RequestFailed.idle(idle), 0.0
    return None, idle - quiet


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
        deadline = f"no complete response within {settings.timeout_s:g} s (request_timeout_s)"
        return ErrorKind.TIMEOUT, f"deadline: {deadline}"
    return ErrorKind.OTHER, f"{type(exc).__name__}: {one_line(exc, MAX_ERROR_CHARS)}"

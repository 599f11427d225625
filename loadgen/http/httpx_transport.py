"""The ``httpx`` transport: one ``httpx.AsyncClient`` per in-flight request.

Each read from the socket (``aiter_raw``) gets one clock stamp and is kept as bytes; the
SSE parse (:mod:`loadgen.http.sse`) runs once the stream has ended. httpx's errors are
named by cause (:class:`~loadgen.http.base.RequestFailed`) and read by the ladder the
raw transport shares (:func:`~loadgen.http.base.describe_failure`).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx

from loadgen.errors import describe_exception
from loadgen.http.base import (
    MAX_ERROR_CHARS,
    Clock,
    Prompt,
    RequestFailed,
    RequestSettings,
    check_stall,
    connect_timeout_s,
    describe_failure,
    not_a_stream,
    output_tokenizer,
    request_body,
    tls_context,
)
from loadgen.http.sse import fail, parse_partial, parse_stream, response_text
from loadgen.results.records import RequestRecord


def make_http_client(settings: RequestSettings) -> httpx.AsyncClient:
    """One client per in-flight slot: requests sharing one client's pool wait on each
    other inside httpx, and that wait would be measured as server latency (TTFT)."""
    return httpx.AsyncClient(
        verify=tls_context(),
        timeout=httpx.Timeout(settings.timeout_s, connect=connect_timeout_s(settings)),
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        http2=False,
        trust_env=False,
    )


class HttpxTransport:
    """httpx clients handed out one per in-flight request (LIFO, so connections stay warm)."""

    name = "httpx"

    def __init__(self, settings: RequestSettings, clock: Clock) -> None:
        self._settings = settings
        self._clock = clock
        self._free: list[httpx.AsyncClient] = []
        self._all: list[httpx.AsyncClient] = []
        self._parse_lock = asyncio.Lock()

    def prefill(self, n: int) -> None:
        """Create clients before the clock starts: creating one costs enough CPU to delay
        the sends around it."""
        while len(self._all) < n:
            c = make_http_client(self._settings)
            self._all.append(c)
            self._free.append(c)

    async def connect(self) -> None:
        """GET /health on each pre-created client, so the first measured requests don't pay
        the TCP handshake. Servers without /health just answer 404."""
        url = self._settings.base_url.rstrip("/") + "/health"

        async def one(c: httpx.AsyncClient) -> None:
            with contextlib.suppress(httpx.HTTPError):
                await c.get(url, timeout=5.0)

        await asyncio.gather(*(one(c) for c in self._free))

    async def send_request(
        self,
        record: RequestRecord,
        prompt: Prompt,
        max_tokens: int,
        request_id: str,
        reply: list[str] | None = None,
    ) -> RequestRecord:
        client = self._take()
        try:
            return await send_request(
                client,
                self._settings,
                record,
                prompt,
                max_tokens,
                self._clock,
                request_id,
                self._parse_lock,
                reply,
            )
        finally:
            self._give_back(client, healthy=record.error is None)

    def _take(self) -> httpx.AsyncClient:
        if self._free:
            return self._free.pop()
        c = make_http_client(self._settings)
        self._all.append(c)
        return c

    def _give_back(self, client: httpx.AsyncClient, healthy: bool) -> None:
        if healthy:
            self._free.append(client)
        else:
            self._all.remove(client)
            asyncio.get_running_loop().create_task(client.aclose())

    async def aclose(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self._all), return_exceptions=True)
        self._all.clear()
        self._free.clear()


async def send_request(
    client: httpx.AsyncClient,
    settings: RequestSettings,
    record: RequestRecord,
    prompt: Prompt,
    max_tokens: int,
    clock: Clock,
    request_id: str,
    parse_lock: asyncio.Lock | None = None,
    reply: list[str] | None = None,
) -> RequestRecord:
    """Send one streaming request and fill ``record`` in place. Never raises except on cancel.
    ``parse_lock``: one per transport, so finished streams are parsed one at a time;
    ``reply``: the generated text is appended to it when the request succeeded."""
    tokenizer = output_tokenizer(settings.tokenizer)
    reads: list[tuple[float, bytes]] = []
    body = request_body(settings, record, prompt, max_tokens)
    headers = settings.headers(request_id)

    async def trace(event: str, _info: dict[str, Any]) -> None:
        # TTFT counts from the moment the request goes on the wire: httpx's own Python work
        # before that is client cost, not server latency, and shows up in dispatch lag.
        if event == "http11.send_request_headers.started":
            record.sent_s = clock()
        elif event == "http11.send_request_body.complete":
            record.written_s = clock()

    record.sent_s = clock()  # until the request is on the wire (or if it never gets there)
    parsed = False
    watch: _Watchdog | None = None
    try:
        async with asyncio.timeout(settings.timeout_s) as deadline:
            watch = _Watchdog(settings, clock, record, reads, deadline)
            async with client.stream(
                "POST", settings.url, content=body, headers=headers, extensions={"trace": trace}
            ) as resp:
                record.status_code = resp.status_code
                why = not_a_stream(resp.status_code, resp.headers)
                if why is not None:
                    failed = RequestFailed.not_a_stream(resp.status_code, why, await _excerpt(resp))
                    record.end_s = clock()
                    fail(record, failed.kind, str(failed))
                    return record
                await _read_raw(resp, reads, clock)
            watch.cancel()
        record.end_s = clock()
        parsed = True
        await parse_stream(record, reads, lock=parse_lock, tokenizer=tokenizer)
        if reply is not None and record.error is None:
            reply.append(response_text(reads))
    except (asyncio.CancelledError, Exception) as e:
        cancelled = isinstance(e, asyncio.CancelledError)
        if cancelled and parsed:  # the stream was whole and its parse finished: it stands
            raise
        record.end_s = clock()
        parse_partial(record, reads, tokenizer)
        if watch is not None:
            watch.cancel()
            if watch.failed is not None and isinstance(e, TimeoutError):
                e = watch.failed  # the first-byte or idle limit, not the deadline
        fail(record, *describe_failure(_by_cause(e, settings), settings))
        if cancelled:
            raise
    return record


class _Watchdog:
    """The first-byte and idle limits for one httpx request (:func:`check_stall`, as the
    raw transport checks them): a timer that, when a limit passes, moves the request's
    deadline to now and remembers which limit it was. Reads are stamped anyway, so this
    costs no work per read."""

    def __init__(
        self,
        settings: RequestSettings,
        clock: Clock,
        record: RequestRecord,
        reads: list[tuple[float, bytes]],
        deadline: asyncio.Timeout,
    ) -> None:
        self.settings, self.clock, self.record, self.reads = settings, clock, record, reads
        self.deadline = deadline
        self.failed: RequestFailed | None = None
        self._loop = asyncio.get_running_loop()
        _, wait = check_stall(settings, clock(), record.sent_s, None)
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(wait, self._check)

    def _check(self) -> None:
        last = self.reads[-1][0] if self.reads else None
        failed, wait = check_stall(self.settings, self.clock(), self.record.sent_s, last)
        if failed is None:
            self._timer = self._loop.call_later(wait, self._check)
        elif not self.deadline.expired():
            self.failed = failed
            self._timer = None
            self.deadline.reschedule(self._loop.time())

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


async def _read_raw(resp: httpx.Response, reads: list[tuple[float, bytes]], clock: Clock) -> None:
    """The body's socket reads, each stamped. A body that ends when the connection does
    (no length, not chunked) ends there however the connection ends: a reset after the
    last byte is its end, as for the raw transport, and the parse judges what arrived."""
    close_delimited = "content-length" not in resp.headers and (
        "transfer-encoding" not in resp.headers
    )
    try:
        async for raw in resp.aiter_raw():
            reads.append((clock(), raw))
    except (httpx.ReadError, httpx.RemoteProtocolError):
        if not close_delimited:
            raise


async def _excerpt(resp: httpx.Response, limit: int = 64 * 1024) -> bytes:
    """The start of a body that is not a stream (an error message, an HTML page): enough
    for the record's one line, without reading a body of any size into memory."""
    out = bytearray()
    with contextlib.suppress(httpx.HTTPError):
        async for piece in resp.aiter_raw():
            out += piece
            if len(out) >= limit:
                break
    return bytes(out)


def _by_cause(e: BaseException, settings: RequestSettings) -> BaseException:
    """httpx's exceptions as :class:`RequestFailed` causes; anything else as it is.
    (A ``ConnectTimeout`` is a ``TimeoutException``: a stall, as with the raw transport.)"""
    if isinstance(e, httpx.ConnectTimeout):
        return RequestFailed.stalled("ConnectTimeout", connect_timeout_s(settings))
    if isinstance(e, httpx.TimeoutException):
        return RequestFailed.stalled(type(e).__name__, settings.timeout_s)
    if isinstance(e, httpx.ConnectError):
        return RequestFailed.connect(settings.base_url, e)
    if isinstance(e, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        return RequestFailed.stream_cut(describe_exception(e, MAX_ERROR_CHARS))
    return e

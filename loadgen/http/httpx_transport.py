"""The ``httpx`` transport: one ``httpx.AsyncClient`` per in-flight request.

Each read from the socket (``aiter_raw``) gets one clock stamp and is kept as bytes; the
SSE parse (:mod:`loadgen.http.sse`) runs once the stream has ended. httpx's errors are
named by cause (:class:`~loadgen.http.base.RequestFailed`) and read by the ladder the
raw transport shares (:func:`~loadgen.http.base.describe_failure`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import httpx

from loadgen.errors import describe_exception
from loadgen.http.base import (
    MAX_ERROR_CHARS,
    Clock,
    Prompt,
    RequestFailed,
    RequestSettings,
    describe_failure,
    tls_context,
)
from loadgen.http.sse import fail, parse_partial, parse_stream, response_text
from loadgen.results.records import RequestRecord


def make_http_client(settings: RequestSettings) -> httpx.AsyncClient:
    """One client per in-flight slot: requests sharing one client's pool wait on each
    other inside httpx, and that wait would be measured as server latency (TTFT)."""
    return httpx.AsyncClient(
        verify=tls_context(),
        timeout=httpx.Timeout(settings.timeout_s, connect=min(30.0, settings.timeout_s)),
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
    reads: list[tuple[float, bytes]] = []
    body = json.dumps(settings.body(prompt, max_tokens)).encode()
    headers = settings.headers(request_id)
    record.expected_output_tokens = max_tokens

    async def trace(event: str, _info: dict[str, Any]) -> None:
        # TTFT counts from the moment the request goes on the wire: httpx's own Python work
        # before that is client cost, not server latency, and shows up in dispatch lag.
        if event == "http11.send_request_headers.started":
            record.sent_s = clock()
        elif event == "http11.send_request_body.complete":
            record.written_s = clock()

    record.sent_s = clock()  # until the request is on the wire (or if it never gets there)
    parsed = False
    try:
        async with asyncio.timeout(settings.timeout_s):
            async with client.stream(
                "POST", settings.url, content=body, headers=headers, extensions={"trace": trace}
            ) as resp:
                record.status_code = resp.status_code
                if resp.status_code >= 400:
                    text = (await resp.aread()).decode("utf-8", "replace")
                    record.end_s = clock()
                    failed = RequestFailed.http_status(resp.status_code, text)
                    fail(record, failed.kind, str(failed))
                    return record
                async for raw in resp.aiter_raw():
                    reads.append((clock(), raw))
        record.end_s = clock()
        parsed = True
        await parse_stream(record, reads, lock=parse_lock)
        if reply is not None and record.error is None:
            reply.append(response_text(reads))
    except (asyncio.CancelledError, Exception) as e:
        cancelled = isinstance(e, asyncio.CancelledError)
        if cancelled and parsed:  # the stream was whole and its parse finished: it stands
            raise
        record.end_s = clock()
        parse_partial(record, reads)
        fail(record, *describe_failure(_by_cause(e, settings), settings))
        if cancelled:
            raise
    return record


def _by_cause(e: BaseException, settings: RequestSettings) -> BaseException:
    """httpx's exceptions as :class:`RequestFailed` causes; anything else as it is.
    (A ``ConnectTimeout`` is a ``TimeoutException``: a stall, as with the raw transport.)"""
    if isinstance(e, httpx.TimeoutException):
        return RequestFailed.stalled(type(e).__name__, settings.timeout_s)
    if isinstance(e, httpx.ConnectError):
        return RequestFailed.connect(settings.base_url, e)
    if isinstance(e, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        return RequestFailed.stream_cut(describe_exception(e, MAX_ERROR_CHARS))
    return e

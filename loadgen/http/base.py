"""How requests reach the server: the interface the runner uses, and its two implementations.

``raw`` (the default, ``loadgen.http.raw``, a minimal asyncio HTTP/1.1 client) and
``httpx`` (``loadgen.http.client``). benchmarks/client_overhead.py compares them: raw spends about
a third of httpx's CPU per chunk and keeps up with vLLM's own benchmark client where httpx
did not. Both keep one connection per in-flight request, fill the same
``RequestRecord`` through the same after-the-fact SSE parsing, and fail with the same
``error_kind`` values; they differ in CPU per chunk and in the exact moment ``sent_s`` is
taken (see ``transport_raw``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Literal, Protocol

import httpx

from loadgen.http.client import RequestSettings, make_http_client, send_request
from loadgen.results.records import RequestRecord

TransportName = Literal["httpx", "raw"]
TRANSPORTS: tuple[TransportName, ...] = ("httpx", "raw")


class Transport(Protocol):
    """Sends requests for one phase; one connection per in-flight request."""

    name: str

    def prefill(self, n: int) -> None:
        """Get ``n`` request slots ready before the clock starts (cheap, no I/O)."""

    async def connect(self) -> None:
        """Open the prefilled slots' connections, so measured requests don't pay for it."""

    async def send_request(
        self, record: RequestRecord, prompt: str, max_tokens: int, request_id: str
    ) -> RequestRecord:
        """Send one streaming request and fill ``record``; never raises except on cancel."""

    async def aclose(self) -> None:
        """Close every connection."""


def make_transport(name: str, settings: RequestSettings, clock: Callable[[], float]) -> Transport:
    if name == "raw":
        from loadgen.http.raw import RawTransport

        return RawTransport(settings, clock)
    if name == "httpx":
        return HttpxTransport(settings, clock)
    raise ValueError(f"unknown transport {name!r} (known: {', '.join(TRANSPORTS)})")


class HttpxTransport:
    """httpx clients handed out one per in-flight request (LIFO, so connections stay warm)."""

    name = "httpx"

    def __init__(self, settings: RequestSettings, clock: Callable[[], float]) -> None:
        self._settings = settings
        self._clock = clock
        self._free: list[httpx.AsyncClient] = []
        self._all: list[httpx.AsyncClient] = []
        self._parse_lock = asyncio.Lock()

    def prefill(self, n: int) -> None:
        """Create clients before the clock starts (a client costs ~4 ms of CPU)."""
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
        self, record: RequestRecord, prompt: str, max_tokens: int, request_id: str
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

"""The HTTP/1.1 the mock speaks: read one request, write a response head or body.

A minimal parser on raw asyncio streams, no framework, because the mock must serve tens
of thousands of chunks per second from one process. Named ``http11`` rather than ``http``
so that it never shadows the standard library's ``http`` package.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from http import HTTPStatus


@dataclass(slots=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool
    chunked_ok: bool  # HTTP/1.1: stream with chunked encoding, else close-delimited
    received: float = 0.0  # time.time() when the request head had arrived (before parsing)


class BadRequest(Exception):
    """The bytes are not an HTTP/1.1 request the mock can read: answer 400 and close."""


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """One HTTP/1.1 request, or None at a clean EOF between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        received = time.time()
    except asyncio.IncompleteReadError as e:
        if e.partial.strip():
            raise BadRequest("incomplete request head") from None
        return None
    except asyncio.LimitOverrunError:
        raise BadRequest("request head too large") from None
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, version = lines[0].split(" ", 2)
    except ValueError:
        raise BadRequest("bad request line") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    te = headers.get("transfer-encoding", "").lower()
    if "chunked" in te:
        body = await _read_chunked(reader)
    else:
        try:
            n = int(headers.get("content-length", "0"))
        except ValueError:
            raise BadRequest("bad content-length") from None
        body = await reader.readexactly(n) if n > 0 else b""
    conn = headers.get("connection", "").lower()
    http11 = version.strip().upper() == "HTTP/1.1"
    keep = ("close" not in conn) if http11 else ("keep-alive" in conn)
    return Request(method.upper(), target.split("?", 1)[0], headers, body, keep, http11, received)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    """A chunked request body (its trailers read and dropped)."""
    parts: list[bytes] = []
    while True:
        size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            break
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
    return b"".join(parts)


def response_head(status: int, ctype: str, extra: str, keep_alive: bool) -> str:
    """Status line and headers; ``extra`` holds the length or transfer-encoding line."""
    conn = "" if keep_alive else "connection: close\r\n"
    return (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        f"content-type: {ctype}\r\n{extra}{conn}server: mockserver\r\n\r\n"
    )


def http_response(
    status: int, body: bytes, keep_alive: bool, ctype: str = "application/json"
) -> bytes:
    extra = f"content-length: {len(body)}\r\n"
    return response_head(status, ctype, extra, keep_alive).encode() + body


def sse_chunk(data: str) -> str:
    """One SSE event as one HTTP chunk (the size counts bytes; our payloads are ASCII-safe)."""
    ev = f"data: {data}\n\n"
    return f"{len(ev.encode()):x}\r\n{ev}\r\n"


def sse_raw(data: str) -> str:
    """One SSE event on a close-delimited (HTTP/1.0) stream."""
    return f"data: {data}\n\n"

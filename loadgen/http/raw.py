"""The ``raw`` transport: a minimal HTTP/1.1 streaming client on ``asyncio.Protocol``.

Why it exists: with httpx, each socket read of a stream passes through httpx, httpcore and
h11 and wakes the request's task, a large share of loadgen's CPU at high chunk rates, and
vLLM's own benchmark client (aiohttp) kept up with more streams on the same box
(``benchmarks/results/client_overhead.md``). Here a read costs one ``data_received`` call:
one ``clock()`` stamp, enough framing (chunked or content-length) to know where the
response ends, and an append. The request's task sleeps until the response is complete (or
fails), then the same after-the-fact SSE parsing as the httpx path
(:func:`loadgen.http.sse.parse_stream`) fills the record, so records are identical in shape.

What it speaks: HTTP/1.1 POST with a JSON body over plain TCP or TLS (``https://``, the
default trust store), responses framed by ``transfer-encoding: chunked``, ``content-length``
or the connection closing; one kept-alive connection per in-flight request, reused while
the server keeps it open. No redirects, proxies, compression or HTTP/2 (the httpx path does
none of these for inference requests either): a redirect, a compressed body or another
content type is an ``http`` failure naming it (:func:`~loadgen.http.base.not_a_stream`,
shared with httpx, so the two agree; ``tests/test_conformance.py`` holds them to it).

Timestamps differ from the httpx path in one place: ``sent_s`` is taken just before the
request's bytes are handed to the transport (``transport.write``), after they are built;
httpx's trace hook fires at ``send_request_headers.started``, before h11 serialises the
head, so its ``sent_s`` is earlier by that serialisation. Each
``data_received`` call gets one ``clock()`` stamp, as each httpx raw read does; ``end_s``
is the stamp of the read that completed the response rather than when the task resumed.

Errors use the httpx path's kinds and messages (:class:`~loadgen.http.base.RequestFailed`,
:func:`~loadgen.http.base.describe_failure`): ``connect`` (refused, DNS, TLS), ``http``
(status >= 400, with an excerpt of the body), ``timeout`` (connect, read idle or the
request deadline), ``stream_cut`` (the server hung up mid-response or broke HTTP framing),
the SSE kinds from parsing, and ``cancelled``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import cast
from urllib.parse import urlsplit

from loadgen.errors import SpecloadError, one_line
from loadgen.http.base import (
    Clock,
    Prompt,
    RequestFailed,
    RequestSettings,
    auth_headers,
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

_MAX_HEAD = 64 * 1024
_MAX_LINE = 4096  # a chunk-size or trailer line

# Response parsing states.
_IDLE, _HEAD, _CHUNKED, _LENGTH, _UNTIL_CLOSE = range(5)


class _Conn(asyncio.Protocol):
    """One connection, one response at a time. ``data_received`` runs once per socket read:
    it stamps the read and frames the body; nothing else happens until the response ends."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.transport: asyncio.Transport | None = None
        self.reusable = False  # until connected; False once the stream state is unknown
        self.closed = False
        self.done: asyncio.Future[None] | None = None
        self.end_t = 0.0
        self.last_t = 0.0
        self.paused = False
        self.sent_t = 0.0
        self._settings: RequestSettings | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._reset_exchange(_IDLE)

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods
        self.transport = cast(asyncio.Transport, transport)
        self.reusable = True
        # pause_writing() iff bytes are left in the buffer, resume_writing() when the last
        # of them went to the kernel (written_s). Plain transports pause when size > high,
        # asyncio's TLS transport when size >= high: high=0 there would pause at once.
        tls = transport.get_extra_info("ssl_object") is not None
        self.transport.set_write_buffer_limits(high=1 if tls else 0)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self._state != _IDLE and self.written_t is None:
            self.written_t = self.clock()

    def data_received(self, data: bytes) -> None:
        t = self.clock()
        self.last_t = t
        state = self._state
        if state == _CHUNKED:
            self._chunked(data, 0, t)
        elif state == _UNTIL_CLOSE:
            self.reads.append((t, data))
        elif state == _LENGTH:
            self._length(data, 0, t)
        elif state == _HEAD:
            self._head(data, t)
        else:  # bytes nobody asked for: the connection's state is unknown
            self.reusable = False
            self.close()

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost() decides what it means

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        state = self._state
        if state == _UNTIL_CLOSE:
            self._finish(self.clock())
        elif state != _IDLE:
            if state == _HEAD and not self._buf:
                why = "server disconnected without sending a response"
            elif state == _HEAD:
                why = "server disconnected in the middle of the response head"
            else:
                how = "incomplete chunked read" if state == _CHUNKED else "incomplete body"
                why = f"peer closed connection without sending complete message body ({how})"
            if exc is not None:
                why += f": {exc}"
            self._fail(why)

    # --- one exchange -------------------------------------------------------------------

    def begin(self, settings: RequestSettings) -> asyncio.Future[None]:
        """Get ready for the next response; the future resolves when it ends either way."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        self._reset_exchange(_HEAD)
        self._settings = settings
        self.last_t = self.sent_t = self.clock()
        _, wait = check_stall(settings, self.sent_t, self.sent_t, None)
        self._idle = loop.call_later(wait, self._check_idle)
        return self.done

    def _reset_exchange(self, state: int) -> None:
        """The per-response state, fresh: at construction and before each request."""
        self.reads: list[tuple[float, bytes]] = []  # (arrival, body bytes) per read
        self.status = 0
        self.headers: dict[str, str] = {}
        self.error: RequestFailed | None = None
        self.written_t: float | None = None
        self._state = state
        self._buf = b""
        self._left = 0
        self._crlf = 0
        self._trailers = False
        self._keep_alive = True

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection mid-response (cancel, deadline): it can't carry another."""
        self.reusable = False
        self._state = _IDLE
        self._stop_idle()
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def _finish(self, t: float) -> None:
        self._state = _IDLE
        self.end_t = t
        if not self._keep_alive:
            self.reusable = False
        self._stop_idle()
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    def _fail(self, why: str | RequestFailed) -> None:
        """End the exchange failed: ``why`` is a cut stream's detail, or the failure."""
        if self.error is None:
            self.error = RequestFailed.stream_cut(why) if isinstance(why, str) else why
        self.close()
        self._finish(self.clock())

    def _check_idle(self) -> None:
        """The first-byte and idle limits: one timer per request, re-armed when it fires
        early (``data_received`` only stamps ``last_t``; it never touches the timer)."""
        if self._state == _IDLE or self._settings is None:
            return
        last = self.last_t if self.reads else None
        failed, wait = check_stall(self._settings, self.clock(), self.sent_t, last)
        if failed is not None:
            self._fail(failed)
        else:
            self._idle = asyncio.get_running_loop().call_later(wait, self._check_idle)

    def _stop_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    # --- framing --------------------------------------------------------------------------

    def _head(self, data: bytes, t: float) -> None:
        buf = self._buf + data if self._buf else data
        i = buf.find(b"\r\n\r\n")
        if i < 0:
            if len(buf) > _MAX_HEAD:
                self._fail("response head too large")
            else:
                self._buf = buf
            return
        self._buf = b""
        try:
            version, status, headers = parse_head(buf[:i])
        except ValueError as e:
            self._fail(str(e))
            return
        pos = i + 4
        if 100 <= status < 200:  # an interim response (100 Continue): the real one follows
            if pos < len(buf):
                self._head(buf[pos:], t)
            return
        self.status = status
        self.headers = headers
        conn = headers.get("connection", "").lower()
        self._keep_alive = "close" not in conn and (version != "HTTP/1.0" or "keep-alive" in conn)
        te = headers.get("transfer-encoding")
        cl = headers.get("content-length")
        if te is not None:
            if te.lower().rsplit(",", 1)[-1].strip() != "chunked":
                self._bad_head(f"unsupported transfer-encoding {te!r}")
                return
            self._state = _CHUNKED
            self._chunked(buf, pos, t)
        elif status in (204, 304):
            self._finish(t)
        elif cl is not None:
            values = {v.strip() for v in cl.split(",")}  # a repeated header, joined
            try:
                n = int(values.pop()) if len(values) == 1 else -1  # identical copies: one
            except ValueError:
                n = -1
            if n < 0:
                self._bad_head(f"bad content-length {cl!r}")
                return
            self._state = _LENGTH
            self._left = n
            if n == 0:
                if pos < len(buf):
                    self.reusable = False
                self._finish(t)
            else:
                self._length(buf, pos, t)
        else:  # the body runs until the server closes the connection
            self._state = _UNTIL_CLOSE
            self._keep_alive = False
            if pos < len(buf):
                self.reads.append((t, buf[pos:]))

    def _bad_head(self, why: str) -> None:
        """A head whose framing can't be trusted: no response was received (as httpx's
        h11 judges it, so both transports record no status)."""
        self.status = 0
        self.headers = {}
        self._fail(why)

    def _length(self, data: bytes, pos: int, t: float) -> None:
        n = len(data) - pos
        left = self._left
        if n <= 0:
            return
        if n < left:
            self.reads.append((t, data[pos:] if pos else data))
            self._left = left - n
            return
        self.reads.append((t, data[pos : pos + left]))
        self._left = 0
        if n > left:
            self.reusable = False  # more bytes than the response had
        self._finish(t)

    def _chunked(self, data: bytes, pos: int, t: float) -> None:
        """Chunked transfer-encoding: the chunks' data of this read become one body piece."""
        n = len(data)
        left = self._left
        crlf = self._crlf
        pieces: list[bytes] = []
        while pos < n:
            if left:  # inside a chunk's data
                end = pos + left
                if end > n:
                    pieces.append(data[pos:] if pos else data)
                    left = end - n
                    break
                pieces.append(data[pos:end])
                pos = end
                left = 0
                crlf = 2
                continue
            if crlf:  # the CRLF that closes a chunk's data (skipped, not parsed: it's hot)
                k = min(crlf, n - pos)
                pos += k
                crlf -= k
                continue
            i = data.find(b"\n", pos)  # a line is due: a chunk size or a trailer
            if i < 0:
                rest = data[pos:]
                self._buf = self._buf + rest if self._buf else rest
                if len(self._buf) > _MAX_LINE:
                    self._fail("chunk-size line too long")
                    return
                break
            if self._buf:
                line = self._buf + data[pos:i]
                self._buf = b""
            else:
                line = data[pos:i]
            pos = i + 1
            if self._trailers:
                if not line.strip():  # the empty line that ends the message
                    if pieces:
                        self.reads.append((t, b"".join(pieces)))
                    if pos < n:
                        self.reusable = False
                    self._finish(t)
                    return
                continue
            try:
                size = int(line, 16)  # int() ignores the CR
            except ValueError:
                digits = line.split(b";", 1)[0].strip()  # chunk extensions
                try:
                    size = int(digits, 16)
                except ValueError:
                    size = -1
            if size < 0:
                self._fail(f"bad chunk-size line {one_line(repr(line[:40]))}")
                return
            if size == 0:
                self._trailers = True
            left = size
        self._left = left
        self._crlf = crlf
        if pieces:
            self.reads.append((t, pieces[0] if len(pieces) == 1 else b"".join(pieces)))


def parse_head(head: bytes) -> tuple[str, int, dict[str, str]]:
    """(version, status, lower-cased headers) of a response head, without its final CRLFs."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError(f"bad status line {one_line(lines[0][:80])!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        k, sep, v = line.partition(":")
        if not sep:
            raise ValueError(f"bad header line {one_line(line[:80])!r}")
        k = k.strip().lower()
        v = v.strip()
        headers[k] = f"{headers[k]}, {v}" if k in headers else v
    return parts[0], int(parts[1]), headers


class RawTransport:
    """Connections handed out one per in-flight request (LIFO, so they stay warm)."""

    name = "raw"

    def __init__(self, settings: RequestSettings, clock: Clock) -> None:
        self._settings = settings
        self._clock = clock
        u = urlsplit(settings.url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise SpecloadError(
                f"--base-url: the raw transport needs an http:// or https:// URL, got "
                f"{settings.base_url!r}"
            )
        self._host = u.hostname
        self._port = u.port or (443 if u.scheme == "https" else 80)
        self._ssl = tls_context() if u.scheme == "https" else None
        host = f"[{u.hostname}]" if ":" in u.hostname else u.hostname
        if u.port is not None:
            host += f":{u.port}"
        target = (u.path or "/") + (f"?{u.query}" if u.query else "")
        head = (
            f"POST {target} HTTP/1.1\r\nhost: {host}\r\naccept: */*\r\n"
            "accept-encoding: identity\r\n"
            "content-type: application/json\r\nuser-agent: specload-raw\r\n"
        )
        for name, value in auth_headers(settings.api_key).items():  # never recorded
            head += f"{name}: {value}\r\n"
        self._head = head.encode("latin-1")
        self._connect_timeout_s = connect_timeout_s(settings)
        self._want = 0
        self._free: list[_Conn] = []
        self._all: set[_Conn] = set()
        self._parse_lock = asyncio.Lock()  # finished streams are parsed one at a time
        self._tokenizer = output_tokenizer(settings.tokenizer)

    def prefill(self, n: int) -> None:
        self._want = max(self._want, n)

    async def connect(self) -> None:
        async def one() -> None:
            with contextlib.suppress(RequestFailed):  # the requests record it
                self._free.append(await self._open())

        await asyncio.gather(*(one() for _ in range(self._want - len(self._free))))

    async def send_request(
        self,
        record: RequestRecord,
        prompt: Prompt,
        max_tokens: int,
        request_id: str,
        reply: list[str] | None = None,
    ) -> RequestRecord:
        s = self._settings
        clock = self._clock
        body = request_body(s, record, prompt, max_tokens)
        msg = b"".join(
            (
                self._head,
                b"x-request-id: ",
                request_id.encode("latin-1", "replace"),
                b"\r\ncontent-length: ",
                str(len(body)).encode(),
                b"\r\n\r\n",
                body,
            )
        )
        record.sent_s = clock()  # until the request is on the wire (or if it never gets there)
        conn: _Conn | None = None
        parsed = False
        try:
            async with asyncio.timeout(s.timeout_s):
                conn = await self._take()
                done = conn.begin(s)
                assert conn.transport is not None
                record.sent_s = clock()
                conn.transport.write(msg)
                if not conn.paused:
                    record.written_s = clock()
                await done
            if conn.written_t is not None:
                record.written_s = conn.written_t
            record.status_code = conn.status or None
            not_stream = not_a_stream(conn.status, conn.headers) if conn.status else None
            if conn.error is not None:
                record.end_s = conn.end_t
                if not_stream is None:
                    parse_partial(record, conn.reads, self._tokenizer)
                fail(record, conn.error.kind, str(conn.error))
            elif not_stream is not None:
                record.end_s = conn.end_t
                body = b"".join(b for _, b in conn.reads)
                failed = RequestFailed.not_a_stream(conn.status, not_stream, body)
                fail(record, failed.kind, str(failed))
            else:
                record.end_s = conn.end_t
                parsed = True
                await parse_stream(
                    record, conn.reads, lock=self._parse_lock, tokenizer=self._tokenizer
                )
                if reply is not None and record.error is None:
                    reply.append(response_text(conn.reads))
        # Everything, a bug included: it must cost one record, not the run.
        except (asyncio.CancelledError, Exception) as e:
            cancelled = isinstance(e, asyncio.CancelledError)
            if cancelled and parsed:  # the response was whole and its parse finished
                raise
            record.end_s = clock()
            self._partial(record, conn)
            fail(record, *describe_failure(e, s))
            if cancelled:
                raise
        finally:
            if conn is not None:
                self._give_back(conn)
        return record

    def _partial(self, record: RequestRecord, conn: _Conn | None) -> None:
        """Keep what arrived before a failure; the connection is dropped."""
        if conn is None:
            return
        conn.abort()
        record.status_code = conn.status or None
        if conn.status and not_a_stream(conn.status, conn.headers) is None:
            parse_partial(record, conn.reads, self._tokenizer)

    async def _take(self) -> _Conn:
        while self._free:
            c = self._free.pop()
            if c.reusable and not c.closed:
                return c
            self._drop(c)
        return await self._open()

    def _give_back(self, conn: _Conn) -> None:
        if conn.reusable and not conn.closed and conn.error is None:
            self._free.append(conn)
        else:
            self._drop(conn)

    def _drop(self, conn: _Conn) -> None:
        conn.close()
        self._all.discard(conn)

    async def _open(self) -> _Conn:
        loop = asyncio.get_running_loop()
        conn = _Conn(self._clock)
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                await loop.create_connection(
                    lambda: conn,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                )
        except TimeoutError:
            raise RequestFailed.stalled("ConnectTimeout", self._connect_timeout_s) from None
        except OSError as e:
            raise RequestFailed.connect(self._settings.base_url, e) from None
        self._all.add(conn)
        return conn

    async def aclose(self) -> None:
        for c in list(self._all):
            c.close()
        self._all.clear()
        self._free.clear()
        await asyncio.sleep(0)  # let the transports' close callbacks run

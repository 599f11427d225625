"""The request settings, the httpx transport, and the SSE parsing both transports share:
one OpenAI-compatible streaming request -> one RequestRecord (``loadgen.http.base`` picks
httpx or the raw asyncio client, ``loadgen.http.raw``).

Timing is taken when bytes arrive (each read from the socket gets one timestamp), and
parsing happens after the stream ends, so JSON decoding never delays a timestamp. That
parse yields to the event loop every ``PARSE_SLICE_EVENTS`` events: a 512-token stream
takes a few ms to parse, and other streams' reads would wait that long to be stamped.
Token counts per chunk come from the server's cumulative ``completion_tokens``
(``stream_options.continuous_usage_stats``): under speculative decoding one chunk carries
several tokens, and counting chunks would understate throughput and overstate ITL.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import ssl
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from loadgen.results.records import RequestRecord

Endpoint = Literal["completions", "chat"]
_MAX_ERROR_CHARS = 300
# Events parsed between yields to the event loop (~0.2 ms of work on a slow core).
PARSE_SLICE_EVENTS = 64


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
        h = {"content-type": "application/json", "x-request-id": request_id}
        if self.api_key:
            h["authorization"] = f"Bearer {self.api_key}"
        return h

    def body(self, prompt: str, max_tokens: int) -> dict[str, Any]:
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
        if self.endpoint == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        body.update(self.extra_body)
        return body


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One TLS context for all clients: building one per client costs ~100 ms of CPU."""
    return ssl.create_default_context()


def make_http_client(settings: RequestSettings) -> httpx.AsyncClient:
    """One client per in-flight slot: a shared pool overstated TTFT by ~43 ms at 64 streams."""
    return httpx.AsyncClient(
        verify=_ssl_context(),
        timeout=httpx.Timeout(settings.timeout_s, connect=min(30.0, settings.timeout_s)),
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        http2=False,
        trust_env=False,
    )


class StreamError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


async def send_request(
    client: httpx.AsyncClient,
    settings: RequestSettings,
    record: RequestRecord,
    prompt: str,
    max_tokens: int,
    clock: Callable[[], float],
    request_id: str,
    parse_lock: asyncio.Lock | None = None,
) -> RequestRecord:
    """Send one streaming request and fill ``record`` in place. Never raises except on cancel.
    ``parse_lock``: one per transport, so finished streams are parsed one at a time."""
    reads: list[tuple[float, bytes]] = []
    body = json.dumps(settings.body(prompt, max_tokens)).encode()
    headers = settings.headers(request_id)
    record.expected_output_tokens = max_tokens

    async def trace(event: str, _info: dict[str, Any]) -> None:
        # TTFT counts from the moment the request goes on the wire: httpx's own
        # Python work before that (~1 ms a request) is client cost, not server latency,
        # and shows up in dispatch lag instead.
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
                    _fail(record, "http", f"HTTP {resp.status_code}: {_one_line(text)}")
                    return record
                async for raw in resp.aiter_raw():
                    reads.append((clock(), raw))
        record.end_s = clock()
        parsed = True
        await parse_stream(record, reads, lock=parse_lock)
    except asyncio.CancelledError:
        if parsed:  # the stream was whole and its parse finished: the record stands
            raise
        record.end_s = clock()
        _parse_partial(record, reads)
        _fail(record, "cancelled", "cancelled before the stream finished")
        raise
    except TimeoutError:
        record.end_s = clock()
        _parse_partial(record, reads)
        _fail(record, "timeout", f"no complete response within {settings.timeout_s:g} s")
    except httpx.TimeoutException as e:
        record.end_s = clock()
        _parse_partial(record, reads)
        _fail(record, "timeout", f"{type(e).__name__}: stalled for {settings.timeout_s:g} s")
    except (httpx.ConnectError, httpx.ConnectTimeout) as e:
        record.end_s = clock()
        _fail(record, "connect", f"cannot connect to {settings.base_url}: {_one_line(str(e))}")
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as e:
        record.end_s = clock()
        _parse_partial(record, reads)
        _fail(record, "stream_cut", f"stream cut: {_one_line(str(e)) or type(e).__name__}")
    except StreamError as e:
        _fail(record, e.kind, str(e))
    except httpx.HTTPError as e:
        record.end_s = clock()
        _fail(record, "other", f"{type(e).__name__}: {_one_line(str(e))}")
    return record


def _fail(record: RequestRecord, kind: str, message: str) -> None:
    if record.error is None:
        record.error_kind = kind
        record.error = message[:_MAX_ERROR_CHARS]


def _one_line(text: str) -> str:
    return " ".join(text.split())[:_MAX_ERROR_CHARS]


# --- SSE parsing (after the fact) ------------------------------------------------------------


def iter_events(reads: list[tuple[float, bytes]]) -> list[tuple[float, bytes]]:
    """Split timed reads into SSE ``data:`` payloads, each stamped with the arrival time of
    the read that completed it."""
    return list(_iter_events(reads))


def _iter_events(reads: list[tuple[float, bytes]]) -> Iterator[tuple[float, bytes]]:
    buf = b""
    for t, raw in reads:
        lines = (buf + raw if buf else raw).split(b"\n")
        buf = lines.pop()  # an unfinished line waits for the next read
        for line in lines:
            if line.startswith(b"data:"):
                yield t, line[5:].strip()
    if buf.strip().startswith(b"data:"):
        yield reads[-1][0], buf.strip()[5:].strip()


def _drain(steps: Generator[None, None, bool]) -> bool:
    """Run a parse to the end without yielding to the loop; its return value."""
    try:
        while True:
            next(steps)
    except StopIteration as stop:
        return bool(stop.value)


async def parse_stream(
    record: RequestRecord,
    reads: list[tuple[float, bytes]],
    every: int | None = None,
    lock: asyncio.Lock | None = None,
) -> None:
    """``_parse_stream``, letting the event loop run every ``every`` events (default
    ``PARSE_SLICE_EVENTS``). If cancelled meanwhile, the parse still finishes (the record
    must be whole), then re-raises.

    ``lock`` (one per transport) makes finished streams wait their turn: when many streams
    end together, the loop otherwise runs a slice of each of them between two polls for
    I/O, and a chunk arriving meanwhile is stamped that much late."""
    steps = _parse_steps(record, reads, PARSE_SLICE_EVENTS if every is None else every)
    try:
        async with lock if lock is not None else contextlib.nullcontext():
            for _ in steps:
                await asyncio.sleep(0)
    except asyncio.CancelledError:
        _drain(steps)  # synchronous: nothing else runs meanwhile, lock held or not
        raise


def _parse_stream(record: RequestRecord, reads: list[tuple[float, bytes]]) -> None:
    _drain(_parse_steps(record, reads, 0))


def _parse_steps(
    record: RequestRecord, reads: list[tuple[float, bytes]], every: int
) -> Generator[None, None, bool]:
    done = yield from _fill_steps(record, _iter_events(reads), strict=True, every=every)
    if record.error is not None:
        return False
    if not done:
        _fail(record, "stream_cut", "stream ended before data: [DONE]")
    elif not record.chunk_times:
        _fail(record, "empty", "the response carried no output token")
    return done


def _parse_partial(record: RequestRecord, reads: list[tuple[float, bytes]]) -> None:
    """Keep what arrived before a failure, for diagnosis; the record is failed anyway."""
    if reads:
        _fill_from_events(record, iter_events(reads), strict=False)


def _fill_from_events(
    record: RequestRecord, events: Iterable[tuple[float, bytes]], *, strict: bool
) -> bool:
    """Fill chunk times/tokens from parsed events. Returns True if [DONE] was seen."""
    return _drain(_fill_steps(record, events, strict=strict, every=0))


def _fill_steps(
    record: RequestRecord, events: Iterable[tuple[float, bytes]], *, strict: bool, every: int
) -> Generator[None, None, bool]:
    """``_fill_from_events`` as a generator that yields every ``every`` events (0: never)."""
    cumulative = 0
    have_usage = False
    done = False
    n = 0
    for t, payload in events:
        if every:
            n += 1
            if n == every:
                n = 0
                yield
        if payload == b"[DONE]":
            done = True
            break
        fast = _scan_chunk(payload)
        if fast is not None:
            new_total, prompt_tokens, has_choices, finish = fast
            text = ""
        else:
            try:
                obj = json.loads(payload)
            except ValueError:
                if strict:
                    _fail(record, "bad_sse", f"invalid JSON in a chunk: {payload[:80]!r}")
                    return False
                continue
            if not isinstance(obj, dict):
                if strict:
                    _fail(record, "bad_sse", f"chunk is not a JSON object: {payload[:80]!r}")
                    return False
                continue
            if "error" in obj and not obj.get("choices"):
                err = obj["error"]
                msg = err.get("message", err) if isinstance(err, dict) else err
                _fail(record, "server_error", f"server error in stream: {_one_line(str(msg))}")
                return False
            usage = obj.get("usage")
            choices = obj.get("choices") or []
            has_choices = bool(choices)
            text = _choice_text(choices[0]) if choices else ""
            finish = choices[0].get("finish_reason") if choices else None
            new_total = prompt_tokens = None
            if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
                new_total = int(usage["completion_tokens"])
                if usage.get("prompt_tokens") is not None:
                    prompt_tokens = int(usage["prompt_tokens"])
        if finish:
            record.finish_reason = finish
        if new_total is not None:
            have_usage = True
            if prompt_tokens is not None:
                record.prompt_tokens = prompt_tokens
            gained = new_total - cumulative
            if has_choices and gained > 0:
                record.chunk_times.append(t)
                record.chunk_tokens.append(gained)
                cumulative = new_total
            elif not has_choices:
                # The final usage-only chunk: the authoritative count.
                record.output_tokens = new_total
                if gained > 0 and record.chunk_tokens:
                    record.chunk_tokens[-1] += gained
                cumulative = new_total
        elif has_choices and text:
            record.chunk_times.append(t)
            record.chunk_tokens.append(1)
    if not have_usage:
        record.usage_source = "chunks"
    if record.output_tokens is None:
        record.output_tokens = cumulative if have_usage else sum(record.chunk_tokens)
    if record.chunk_times:
        record.first_token_s = record.chunk_times[0]
    return done


_USAGE_AT = b',"usage":{'
_COMPLETION_RE = re.compile(rb'"completion_tokens":(\d+)')
_PROMPT_RE = re.compile(rb'"prompt_tokens":(\d+)')
_FINISH_RE = re.compile(rb'"finish_reason":"([^"\\]*)"')
_VLLM_USAGE_RE = re.compile(
    rb',"usage":\{"prompt_tokens":(\d+),"total_tokens":\d+,"completion_tokens":(\d+)\}\}\Z'
)


def _scan_chunk(payload: bytes) -> tuple[int, int | None, bool, str | None] | None:
    """The fields a chunk's accounting needs, by a byte scan instead of ``json.loads``:
    (completion_tokens, prompt_tokens, has choices, finish_reason), or None when the payload
    is not vLLM-shaped (``choices`` first, a flat ``usage`` object as the last key) and needs
    a real parse.

    Sound because a key pattern (quote, name, quote, colon) cannot occur inside a JSON
    string, where quotes are escaped. It matters because a finished stream is parsed on the
    event loop, and other streams' chunks wait for it."""
    i = payload.rfind(_USAGE_AT)
    if i < 0 or not payload.endswith(b"}}") or not payload.startswith(b'{"'):
        return None
    u = _VLLM_USAGE_RE.match(payload, i)  # vLLM's own field order: one match does it all
    if u is not None:
        total, prompt = int(u[2]), int(u[1])
    else:
        usage = payload[i + len(_USAGE_AT) : -2]
        if b"{" in usage or b"}" in usage:
            return None
        c = _COMPLETION_RE.search(usage)
        if c is None:
            return None
        p = _PROMPT_RE.search(usage)
        total, prompt = int(c.group(1)), int(p.group(1)) if p else None
    j = payload.find(b'"choices":[', 0, i)
    if j < 0:
        return None
    nxt = payload[j + 11]
    if nxt == 0x7B:  # '{': one or more choices
        f = _FINISH_RE.search(payload, j, i)
        return total, prompt, True, f.group(1).decode() if f else None
    if nxt == 0x5D and b'"error"' not in payload:  # ']': the usage-only chunk
        return total, prompt, False, None
    return None


def _choice_text(choice: dict[str, Any]) -> str:
    if "text" in choice:
        return choice.get("text") or ""
    delta = choice.get("delta") or {}
    return delta.get("content") or delta.get("reasoning_content") or ""


def now_clock(origin: float) -> Callable[[], float]:
    """Seconds since ``origin`` on the monotonic high-resolution clock."""
    pc = time.perf_counter
    return lambda: pc() - origin

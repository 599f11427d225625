"""Server-sent events, parsed after the stream ended: timed socket reads -> a filled
``RequestRecord``. Both transports call :func:`parse_stream` once a response is whole, and
:func:`parse_partial` on what arrived before a failure; :func:`fail` sets a record's error.

Timing is taken when bytes arrive (each read from the socket gets one timestamp), and
parsing happens after the stream ends, so JSON decoding never delays a timestamp. That
parse yields to the event loop every ``PARSE_SLICE_EVENTS`` events: a long stream takes
milliseconds to parse, and other streams' reads would wait that long to be stamped.
Token counts per chunk come from the server's cumulative ``completion_tokens``
(``stream_options.continuous_usage_stats``): under speculative decoding one chunk carries
several tokens, and counting chunks would understate throughput and overstate ITL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Generator, Iterable, Iterator
from typing import Any

from loadgen.errors import one_line
from loadgen.http.base import MAX_ERROR_CHARS
from loadgen.results.records import ErrorKind, RequestRecord

# Events parsed between yields to the event loop: small enough that a slice is a fraction
# of a millisecond, large enough that the yields cost little.
PARSE_SLICE_EVENTS = 64


def fail(record: RequestRecord, kind: ErrorKind, message: str) -> None:
    """Mark ``record`` failed; the first failure stands (a later one is its consequence)."""
    if record.error is None:
        record.error_kind = kind
        record.error = message[:MAX_ERROR_CHARS]


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
        fail(record, ErrorKind.STREAM_CUT, "stream ended before data: [DONE]")
    elif not record.chunk_times:
        fail(record, ErrorKind.EMPTY, "the response carried no output token")
    return done


def parse_partial(record: RequestRecord, reads: list[tuple[float, bytes]]) -> None:
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
                new_total, prompt_tokens, has_choices, finish, text = _json_chunk(payload)
            except _BadChunk as e:
                if strict or e.kind is ErrorKind.SERVER_ERROR:
                    fail(record, e.kind, str(e))
                    return False
                continue
        if not has_choices and _METRICS_KEY in payload:
            take_server_metrics(record, payload)
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


# vLLM's per-request figures ride on the final usage-only chunk (``choices: []``) under
# "metrics". A key pattern cannot occur inside a JSON string (quotes are escaped there).
_METRICS_KEY = b'"metrics":{'


def take_server_metrics(record: RequestRecord, payload: bytes) -> None:
    """Keep the ``metrics`` object of the chunk ``payload`` as the server sent it (vLLM
    --enable-per-request-metrics / --per-request-spec-decode-metrics); once per request, so
    the second JSON parse of that one chunk costs nothing that matters."""
    try:
        obj = json.loads(payload)
    except ValueError:
        return
    metrics = obj.get("metrics") if isinstance(obj, dict) else None
    if isinstance(metrics, dict):
        record.server_metrics = metrics


def response_text(reads: list[tuple[float, bytes]]) -> str:
    """The generated text of a whole stream, its chunks' text joined: what a multi-turn
    replay sends back as the assistant's turn. A separate pass (the accounting parse keeps
    no text), made only for the requests that need it."""
    parts: list[str] = []
    for _, payload in _iter_events(reads):
        if payload == b"[DONE]":
            break
        try:
            obj = json.loads(payload)
        except ValueError:
            continue
        choices = obj.get("choices") if isinstance(obj, dict) else None
        if choices and isinstance(choices[0], dict):
            parts.append(_content_text(choices[0]))
    return "".join(parts)


def _content_text(choice: dict[str, Any]) -> str:
    """A choice's answer text (a reasoning model's reasoning is not part of the answer)."""
    if "text" in choice:
        return choice.get("text") or ""
    delta = choice.get("delta") or {}
    return delta.get("content") or ""


class _BadChunk(Exception):
    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _json_chunk(payload: bytes) -> tuple[int | None, int | None, bool, str | None, str]:
    """(completion_tokens, prompt_tokens, has choices, finish_reason, text) of a chunk that
    the byte scan left to ``json.loads``. Raises ``_BadChunk`` for what is not a chunk."""
    try:
        obj = json.loads(payload)
    except ValueError:
        raise _BadChunk(ErrorKind.BAD_SSE, f"invalid JSON in a chunk: {payload[:80]!r}") from None
    if not isinstance(obj, dict):
        raise _BadChunk(ErrorKind.BAD_SSE, f"chunk is not a JSON object: {payload[:80]!r}")
    if "error" in obj and not obj.get("choices"):
        err = obj["error"]
        msg = err.get("message", err) if isinstance(err, dict) else err
        why = f"server error in stream: {one_line(msg, MAX_ERROR_CHARS)}"
        raise _BadChunk(ErrorKind.SERVER_ERROR, why)
    usage = obj.get("usage")
    choices = obj.get("choices") or []
    text = _choice_text(choices[0]) if choices else ""
    finish = choices[0].get("finish_reason") if choices else None
    total = prompt = None
    if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
        total = int(usage["completion_tokens"])
        if usage.get("prompt_tokens") is not None:
            prompt = int(usage["prompt_tokens"])
    return total, prompt, bool(choices), finish, text


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

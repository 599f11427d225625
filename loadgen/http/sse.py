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
import bisect
import contextlib
import itertools
import json
import re
from collections.abc import Generator, Iterable, Iterator
from typing import Any, Protocol

from loadgen.errors import one_line, redact
from loadgen.http.base import MAX_ERROR_CHARS
from loadgen.results.records import ErrorKind, RequestRecord

# Events parsed between yields to the event loop: small enough that a slice is a fraction
# of a millisecond, large enough that the yields cost little.
PARSE_SLICE_EVENTS = 64


def fail(record: RequestRecord, kind: ErrorKind, message: str) -> None:
    """Mark ``record`` failed; the first failure stands (a later one is its consequence).
    Secrets are redacted from the message before it is cut and stored."""
    if record.error is None:
        record.error_kind = kind
        record.error = redact(message)[:MAX_ERROR_CHARS]


def iter_events(reads: list[tuple[float, bytes]]) -> list[tuple[float, bytes]]:
    """Split timed reads into SSE events' data, each stamped with the arrival time of the
    read that completed it (the one holding the blank line that ends the event)."""
    return list(_iter_events(reads))


def _iter_events(reads: list[tuple[float, bytes]]) -> Iterator[tuple[float, bytes]]:
    """The SSE spec's event stream: lines end with CRLF, LF or a bare CR; an event's
    ``data:`` lines are joined with a newline (one JSON object may span several); a blank
    line ends the event; comments (``:``) and other fields (``event:``, ``id:``) are
    ignored. An event still open when the stream ends is kept (a server that closes
    without the final blank line), stamped with the last read."""
    buf = b""
    pending: bytes | None = None  # the open event's data so far
    t = 0.0
    for t, raw in reads:
        text = buf + raw if buf else raw
        held = b""
        if b"\r" in text:  # CR line endings (rare): normalised before splitting
            if text.endswith(b"\r"):  # maybe half of a CRLF split across two reads
                text, held = text[:-1], b"\r"
            text = text.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = text.split(b"\n")
        buf = lines.pop() + held if held else lines.pop()  # an unfinished line waits
        for line in lines:
            if line:
                if line.startswith(b"data: "):
                    data = line[6:]
                elif line.startswith(b"data:"):
                    data = line[5:]
                else:  # a comment or another field
                    continue
                pending = data if pending is None else pending + b"\n" + data
            elif pending is not None:  # the blank line: the event is whole
                yield t, pending
                pending = None
    last = buf.rstrip(b"\r")
    if last.startswith(b"data:"):
        data = last[6:] if last.startswith(b"data: ") else last[5:]
        pending = data if pending is None else pending + b"\n" + data
    if pending is not None:
        yield t, pending


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
    tokenizer: TextTokenizer | None = None,
) -> None:
    """``_parse_stream``, letting the event loop run every ``every`` events (default
    ``PARSE_SLICE_EVENTS``). If cancelled meanwhile, the parse still finishes (the record
    must be whole), then re-raises.

    ``lock`` (one per transport) makes finished streams wait their turn: when many streams
    end together, the loop otherwise runs a slice of each of them between two polls for
    I/O, and a chunk arriving meanwhile is stamped that much late. ``tokenizer`` counts
    each chunk's tokens from its text when the server's usage does not (see
    :func:`settle_tokens`)."""
    steps = _parse_steps(record, reads, PARSE_SLICE_EVENTS if every is None else every, tokenizer)
    try:
        async with lock if lock is not None else contextlib.nullcontext():
            for _ in steps:
                await asyncio.sleep(0)
    except asyncio.CancelledError:
        _drain(steps)  # synchronous: nothing else runs meanwhile, lock held or not
        raise


def _parse_stream(
    record: RequestRecord,
    reads: list[tuple[float, bytes]],
    tokenizer: TextTokenizer | None = None,
) -> None:
    _drain(_parse_steps(record, reads, 0, tokenizer))


def _parse_steps(
    record: RequestRecord,
    reads: list[tuple[float, bytes]],
    every: int,
    tokenizer: TextTokenizer | None = None,
) -> Generator[None, None, bool]:
    done = yield from _fill_steps(
        record, _iter_events(reads), strict=True, every=every, tokenizer=tokenizer
    )
    if record.error is not None:
        return False
    if not done:
        fail(record, ErrorKind.STREAM_CUT, "stream ended before data: [DONE]")
    elif not record.chunk_times:
        fail(record, ErrorKind.EMPTY, "the response carried no output token")
    return done


def parse_partial(
    record: RequestRecord,
    reads: list[tuple[float, bytes]],
    tokenizer: TextTokenizer | None = None,
) -> None:
    """Keep what arrived before a failure, for diagnosis; the record is failed anyway."""
    if reads:
        _fill_from_events(record, iter_events(reads), strict=False, tokenizer=tokenizer)


def _fill_from_events(
    record: RequestRecord,
    events: Iterable[tuple[float, bytes]],
    *,
    strict: bool,
    tokenizer: TextTokenizer | None = None,
) -> bool:
    """Fill chunk times/tokens from parsed events. Returns True if [DONE] was seen."""
    return _drain(_fill_steps(record, events, strict=strict, every=0, tokenizer=tokenizer))


def _fill_steps(
    record: RequestRecord,
    events: Iterable[tuple[float, bytes]],
    *,
    strict: bool,
    every: int,
    tokenizer: TextTokenizer | None = None,
) -> Generator[None, None, bool]:
    """``_fill_from_events`` as a generator that yields every ``every`` events (0: never).

    Each event is read into (running usage count, text) and kept; how they become token
    counts is decided once the stream is over (:func:`settle_tokens`), since whether the
    server's counts are per chunk is only known then. A chunk that is not what an
    OpenAI-compatible server sends (invalid JSON, wrong types, a count no request could
    produce) fails the record as ``bad_sse``; whatever else goes wrong reading one also
    fails the record, never the caller."""
    cap = output_token_cap(record.expected_output_tokens)
    got = _Chunks()
    rows = got.rows
    scan = _scan_chunk
    done = False
    n = 0
    for t, payload in events:
        if every:
            n += 1
            if n == every:
                n = 0
                yield
        if payload == b"[DONE]" or (len(payload) < 16 and payload.strip() == b"[DONE]"):
            done = True
            break
        try:
            chunk = scan(payload)  # vLLM's shape, by a byte scan; else the checked parse
            if chunk is None or chunk[0] > cap:  # type: ignore[operator]
                chunk = _json_chunk(payload, cap)
            total, prompt, has_choices, finish, text = chunk
            if has_choices and (total is not None or text):  # role/keep-alive: neither
                rows.append((t, total, text, payload))
            elif not has_choices and total is not None:
                got.usage_total = total
            if not has_choices and _METRICS_KEY in payload:
                take_server_metrics(record, payload)  # vLLM's per-request figures
            if finish:
                got.finish = finish
            if prompt is not None:
                got.prompt = prompt
        except _BadChunk as e:
            if strict or e.kind is ErrorKind.SERVER_ERROR:
                fail(record, e.kind, str(e))
                break
        except Exception as e:  # a bug here costs this record, never the caller
            if strict:
                fail(record, ErrorKind.BAD_SSE, f"unreadable chunk ({type(e).__name__}: {e})")
            break
    if got.finish is not None:
        record.finish_reason = got.finish
    if got.prompt is not None:
        record.prompt_tokens = got.prompt
    try:
        settle_tokens(record, got, tokenizer)
    except Exception as e:  # a bug: the counts are unknown, and the record says why
        record.chunk_tokens = []
        record.output_tokens = None
        if strict:
            fail(record, ErrorKind.OTHER, f"counting tokens failed: {type(e).__name__}: {e}")
    if record.chunk_times:
        record.first_token_s = record.chunk_times[0]
    return done and record.error is None


# --- from chunks to token counts -------------------------------------------------------------

# No request asks for more output tokens than this: the bound on a usage count when the
# request's own max_tokens is not known (a count beyond it is a server's error, and would
# make the summary's per-token arrays that large).
MAX_OUTPUT_TOKENS = 1 << 22


def output_token_cap(expected: int | None) -> int:
    """The most output tokens a server may report for a request that asked for
    ``expected`` (the body's max_tokens times its ``n``): more is a server error."""
    return expected if expected is not None and expected > 0 else MAX_OUTPUT_TOKENS


class TextTokenizer(Protocol):
    """What counting a stream's tokens from its text needs: where each token ends."""

    def token_ends(self, text: str) -> list[int]:
        """The end offset (in characters) of each of ``text``'s tokens."""
        ...


class _Chunks:
    """A stream's content chunks as read, before their tokens are counted: one row per
    chunk of (arrival time, the server's running ``completion_tokens`` or None, the text
    or None when the byte scan read only the usage, the payload); and what the stream
    said once: the total of a usage-only chunk (``choices: []``), prompt tokens, finish."""

    __slots__ = ("finish", "prompt", "rows", "usage_total")

    def __init__(self) -> None:
        self.rows: list[tuple[float, int | None, str | None, bytes]] = []
        self.usage_total: int | None = None
        self.prompt: int | None = None
        self.finish: str | None = None


def settle_tokens(record: RequestRecord, got: _Chunks, tokenizer: TextTokenizer | None) -> None:
    """Token counts from a whole stream, never guessed (``usage_source`` says whence):

    - ``usage``: every chunk carried the server's running count (vLLM's
      ``continuous_usage_stats``) and they add up to its final total: each chunk's tokens
      are the count's increase, exact, speculated tokens included.
    - ``usage_total``: the server counted only the total (OpenAI, SGLang, TGI, llama.cpp:
      in a last usage chunk, or on the last content chunk). Per-chunk counts come from the
      text with ``tokenizer`` when it gives the same total, else they are unknown
      (``chunk_tokens`` empty): counting 1 per chunk would be wrong under speculation.
    - ``tokenizer``: no usage at all; the total and per-chunk counts from the text.
    - ``none``: no usage and no tokenizer: the output token count is unknown.

    A chunk's time is when its bytes arrived; a chunk of text without a count is a
    content chunk (it had tokens) whether or not they can be counted.
    """
    if _from_running_counts(record, got):
        return
    rows = [(t, total, _text_of(p) if x is None else x) for t, total, x, p in got.rows]
    server_total = got.usage_total
    if server_total is None:
        server_total = max((c for _, c, _ in rows if c is not None), default=None)
    record.chunk_times = [t for t, _, x in rows if x]
    texts = [x for _, _, x in rows if x]
    counts = None
    if tokenizer is not None:
        with contextlib.suppress(Exception):  # a text it cannot take: counts unknown
            counts = chunk_tokens_from_text(texts, tokenizer)
    record.chunk_tokens = []
    if server_total is not None:
        record.usage_source = "usage_total"
        record.output_tokens = server_total
        if counts is not None and sum(counts) == server_total:
            record.chunk_tokens = counts
    elif counts is not None:
        record.usage_source = "tokenizer"
        record.output_tokens = sum(counts)
        record.chunk_tokens = counts
    else:
        record.usage_source = "none"
        record.output_tokens = None


def _from_running_counts(record: RequestRecord, got: _Chunks) -> bool:
    """Per-chunk counts from the server's running count, when every content chunk
    carried one, never decreasing, ending at the final usage total when there is one;
    False (the record untouched) when the counts are not per chunk."""
    times: list[float] = []
    tokens: list[int] = []
    cumulative = 0
    for t, total, _, _ in got.rows:
        if total is None or total < cumulative:
            return False
        if total > cumulative:
            times.append(t)
            tokens.append(total - cumulative)
            cumulative = total
    if got.usage_total is not None and got.usage_total != cumulative:
        return False
    record.chunk_times = times
    record.chunk_tokens = tokens
    record.output_tokens = cumulative
    record.usage_source = "usage"
    return True


def chunk_tokens_from_text(texts: list[str], tokenizer: TextTokenizer) -> list[int]:
    """Tokens per chunk from the text: the whole text tokenized once, each token counted
    in the chunk that holds its last character (a token arrives when all of it has).
    Tokenizing chunk by chunk would split tokens at chunk edges and miscount."""
    ends = tokenizer.token_ends("".join(texts))
    counts = [0] * len(texts)
    if not texts:
        return counts
    bounds = list(itertools.accumulate(len(x) for x in texts))  # chunk i ends at bounds[i]
    for e in ends:
        i = bisect.bisect_left(bounds, e)  # the chunk holding character e - 1
        counts[min(i, len(texts) - 1)] += 1
    return counts


# --- reading one chunk -----------------------------------------------------------------------

# (completion_tokens, prompt_tokens, has choices, finish_reason, text or None: not read)
_Chunk = tuple[int | None, int | None, bool, str | None, str | None]


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


def _json_chunk(payload: bytes, cap: int = MAX_OUTPUT_TOKENS) -> _Chunk:
    """(completion_tokens, prompt_tokens, has choices, finish_reason, text) of a chunk that
    the byte scan left to ``json.loads``, each field type-checked: raises ``_BadChunk``
    for what is not a chunk (the message quotes the field, never the whole payload)."""
    obj = _json_object(payload)
    if "error" in obj and not obj.get("choices"):
        err = obj["error"]
        msg = err.get("message", err) if isinstance(err, dict) else err
        why = f"server error in stream: {one_line(msg, MAX_ERROR_CHARS)}"
        raise _BadChunk(ErrorKind.SERVER_ERROR, why)
    choices = obj.get("choices")
    if choices is None:
        choices = []
    if not isinstance(choices, list):
        raise _bad("choices", choices, "a list")
    choice = choices[0] if choices else None
    if choices and not isinstance(choice, dict):
        raise _bad("choices[0]", choice, "an object")
    text = _choice_text(choice) if choice is not None else ""
    finish = choice.get("finish_reason") if choice is not None else None
    if finish is not None and not isinstance(finish, str):
        raise _bad("choices[0].finish_reason", finish, "a string")
    total = prompt = None
    usage = obj.get("usage")
    if usage is not None:
        if not isinstance(usage, dict):
            raise _bad("usage", usage, "an object")
        total = _token_count(usage, "completion_tokens", cap)
        prompt = _token_count(usage, "prompt_tokens", MAX_PROMPT_TOKENS)
    return total, prompt, bool(choices), finish, text


MAX_PROMPT_TOKENS = 1 << 31  # a prompt count is summed, never expanded: any int64 is safe


def _json_object(payload: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        raise _BadChunk(ErrorKind.BAD_SSE, f"invalid JSON in a chunk: {_quote(payload)}") from None
    if not isinstance(obj, dict):
        raise _BadChunk(ErrorKind.BAD_SSE, f"chunk is not a JSON object: {_quote(payload)}")
    return obj


def _quote(payload: bytes, limit: int = 80) -> str:
    """The start of a payload for an error message: secrets redacted before the cut."""
    return repr(redact(payload[:1024].decode("utf-8", "replace"))[:limit])


def _token_count(usage: dict[str, Any], key: str, cap: int) -> int | None:
    """A usage count: a whole number in [0, cap], or None when absent."""
    v = usage.get(key)
    if v is None:
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if type(v) is not int or v < 0:
        raise _bad(f"usage.{key}", v, "a token count")
    if v > cap:
        raise _BadChunk(
            ErrorKind.BAD_SSE,
            f"usage.{key} is {v}, more than the {cap} tokens this request can produce",
        )
    return v


def _bad(field: str, value: Any, what: str) -> _BadChunk:
    shown = one_line(repr(value), 40)
    return _BadChunk(ErrorKind.BAD_SSE, f"malformed chunk: {field} is not {what} ({shown})")


def _text_of(payload: bytes) -> str:
    """The text of a chunk the byte scan read (needed only when counts are not per chunk)."""
    try:
        text = _json_chunk(payload)[4]
    except _BadChunk:
        return ""
    return text or ""


_USAGE_AT = b',"usage":{'
# At most 15 digits, and the whole number: a longer one is left to the checked parse.
_COMPLETION_RE = re.compile(rb'"completion_tokens":(\d{1,15})(?![\d.eE])')
_PROMPT_RE = re.compile(rb'"prompt_tokens":(\d{1,15})(?![\d.eE])')
_FINISH_RE = re.compile(rb'"finish_reason":"([^"\\]*)"')
_VLLM_USAGE_RE = re.compile(
    rb',"usage":\{"prompt_tokens":(\d{1,15}),"total_tokens":\d+,"completion_tokens":(\d{1,15})\}\}\Z'
)


def _scan_chunk(payload: bytes) -> _Chunk | None:
    """The fields a chunk's accounting needs, by a byte scan instead of ``json.loads``:
    (completion_tokens, prompt_tokens, has choices, finish_reason, None: the text is not
    read), or None when the payload
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
        if p is None and b'"prompt_tokens"' in usage:
            return None  # there, but not a plain number: the checked parse says what
        total, prompt = int(c.group(1)), int(p.group(1)) if p else None
    j = payload.find(b'"choices":[', 0, i)
    if j < 0:
        return None
    nxt = payload[j + 11]
    if nxt == 0x7B:  # '{': one or more choices
        f = _FINISH_RE.search(payload, j, i)
        return total, prompt, True, f.group(1).decode() if f else None, None
    if nxt == 0x5D and b'"error"' not in payload:  # ']': the usage-only chunk
        return total, prompt, False, None, None
    return None


def _choice_text(choice: dict[str, Any]) -> str:
    """A choice's text: ``text`` (completions) or the delta's content (chat)."""
    if "text" in choice:
        text = choice["text"]
        field = "choices[0].text"
    else:
        delta = choice.get("delta")
        if delta is None:
            return ""
        if not isinstance(delta, dict):
            raise _bad("choices[0].delta", delta, "an object")
        text = delta.get("content") or delta.get("reasoning_content")
        field = "choices[0].delta.content"
    if text is None:
        return ""
    if not isinstance(text, str):
        raise _bad(field, text, "a string")
    return text

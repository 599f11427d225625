"""One conformance table, run against every transport: each case is a server's answer,
byte for byte (tests/canned.py), and the record both transports must make of it: the
error kind, the status, the token counts and where they came from.

The cases are the ways servers other than vLLM answer (usage only at the end, usage on the
last content chunk, none at all), the ways a chunk can be malformed, valid SSE written
unusually, HTTP that is not a stream (redirects, HTML, compression), framing the two
transports once judged differently, and the three time limits. A transport that disagrees
with another on any row fails here.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from loadgen.http.base import TRANSPORTS, RequestSettings, make_transport
from loadgen.results.records import RequestRecord
from tests.canned import (
    CLOSE,
    DONE,
    RESET,
    SSE_CLOSE_HEAD,
    SSE_HEAD,
    TOKENIZER,
    CannedServer,
    Request,
    Route,
    chunked,
    completion_chunk,
    event,
    head,
    response,
    sse,
    usage_chunk,
)

ANY = object()  # the field is not checked


@dataclass(frozen=True)
class Case:
    """A server's answer to one streaming request, and the record it must give."""

    id: str
    script: Route
    kind: str | None  # error_kind; None: a success
    status: int | None = 200
    chunk_tokens: Any = ANY
    output_tokens: Any = ANY
    usage_source: Any = ANY
    chunks: Any = ANY  # how many chunk times
    error_has: str = ""  # a piece of the error message
    settings: dict[str, Any] = field(default_factory=dict)
    max_tokens: int = 8


def running(texts: list[str], counts: list[int], prompt: int = 3) -> list[bytes]:
    """vLLM with continuous usage: every chunk carries the running completion count."""
    out, total = [], 0
    for text, k in zip(texts, counts, strict=True):
        total += k
        out.append(event(completion_chunk(text, usage=(prompt, total))))
    return out


def plain(texts: list[str]) -> list[bytes]:
    """Content chunks without usage."""
    return [event(completion_chunk(t)) for t in texts]


WORDS = [" w1", " w2", " w3 w4", " w5", " w6 w7 w8"]  # 8 words: 8 tokens, 5 chunks
WORDS_COUNTS = [1, 1, 2, 1, 3]


def bad(payload: bytes | dict[str, Any]) -> Route:
    """A stream whose second chunk is ``payload`` (then the rest as usual)."""
    first = event(completion_chunk(" w1", usage=(3, 1)))
    return sse([first, event(payload), event(completion_chunk(" w2", usage=(3, 2))), DONE])


def gzip_aware(req: Request) -> list[bytes | float | str]:
    """A server that compresses whenever the client says it may (as many proxies do)."""
    body = b"".join([*running(WORDS, WORDS_COUNTS), DONE])
    if "gzip" in req.headers.get("accept-encoding", ""):
        z = gzip.compress(body)
        hdrs = {"content-type": "text/event-stream", "content-encoding": "gzip"}
        return [head(200, {**hdrs, "content-length": str(len(z))}), z]
    return [*sse([body])]


OK_BODY = b"".join([*running(WORDS, WORDS_COUNTS), DONE])

CASES = [
    # --- how servers count tokens -------------------------------------------------------
    Case("running usage, one token per chunk", sse([*running(["a"] * 8, [1] * 8), DONE]),
         None, chunk_tokens=[1] * 8, output_tokens=8, usage_source="usage"),
    Case("running usage, speculated chunks", sse([*running(WORDS, WORDS_COUNTS), DONE]),
         None, chunk_tokens=WORDS_COUNTS, output_tokens=8, usage_source="usage"),
    Case("running usage and a final usage chunk that agrees",
         sse([*running(WORDS, WORDS_COUNTS), event(usage_chunk(3, 8)), DONE]),
         None, chunk_tokens=WORDS_COUNTS, output_tokens=8, usage_source="usage"),
    Case("usage only in a final chunk (OpenAI, SGLang): per-chunk unknown",
         sse([*plain(["a"] * 8), event(usage_chunk(3, 8)), DONE]),
         None, chunk_tokens=[], output_tokens=8, usage_source="usage_total", chunks=8),
    Case("usage only on the last content chunk (TGI, llama.cpp): per-chunk unknown",
         sse([*plain(["a"] * 7), event(completion_chunk("a", usage=(3, 8), finish="length")),
              DONE]),
         None, chunk_tokens=[], output_tokens=8, usage_source="usage_total", chunks=8),
    Case("final usage, split by the tokenizer when it agrees on the total",
         sse([*plain(WORDS), event(usage_chunk(3, 8)), DONE]),
         None, chunk_tokens=WORDS_COUNTS, output_tokens=8, usage_source="usage_total",
         settings={"tokenizer": TOKENIZER}),
    Case("final usage the tokenizer disagrees with: per-chunk unknown, the total stands",
         sse([*plain(WORDS), event(usage_chunk(3, 9)), DONE]),
         None, chunk_tokens=[], output_tokens=9, usage_source="usage_total", chunks=5,
         settings={"tokenizer": TOKENIZER}, max_tokens=9),
    Case("no usage, a tokenizer: counts from the text", sse([*plain(WORDS), DONE]),
         None, chunk_tokens=WORDS_COUNTS, output_tokens=8, usage_source="tokenizer",
         settings={"tokenizer": TOKENIZER}),
    Case("no usage, no tokenizer: counts unknown", sse([*plain(WORDS), DONE]),
         None, chunk_tokens=[], output_tokens=None, usage_source="none", chunks=5),
    Case("running counts that end below the final total are not per chunk",
         sse([*running(["a"] * 8, [1] * 8), event(usage_chunk(3, 9)), DONE]),
         None, chunk_tokens=[], output_tokens=9, usage_source="usage_total", max_tokens=9),
    Case("running counts that go down are not per chunk",
         sse([event(completion_chunk("a", usage=(3, 2))),
              event(completion_chunk("b", usage=(3, 1))), DONE]),
         None, chunk_tokens=[], output_tokens=2, usage_source="usage_total"),
    Case("chat-style role chunk without text or usage is not a chunk",
         sse([event({"choices": [{"delta": {"role": "assistant"}}]}),
              event({"choices": [{"delta": {"content": "a"}}], "usage": {"completion_tokens": 1}}),
              DONE]),
         None, chunk_tokens=[1], output_tokens=1, usage_source="usage"),
    # --- malformed chunks: a failed record with its kind, never a silent success ---------
    Case("usage count as a string", bad({"choices": [{"text": "a"}],
                                         "usage": {"completion_tokens": "5"}}),
         "bad_sse", error_has="usage.completion_tokens"),
    Case("usage count NaN", bad(b'{"choices":[{"text":"a"}],"usage":{"completion_tokens":NaN}}'),
         "bad_sse", error_has="usage.completion_tokens"),
    Case("usage count negative", bad({"choices": [{"text": "a"}],
                                      "usage": {"completion_tokens": -1}}),
         "bad_sse", error_has="usage.completion_tokens"),
    Case("usage count fractional", bad({"choices": [{"text": "a"}],
                                        "usage": {"completion_tokens": 2.5}}),
         "bad_sse", error_has="usage.completion_tokens"),
    Case("usage count true", bad({"choices": [{"text": "a"}],
                                  "usage": {"completion_tokens": True}}),
         "bad_sse", error_has="usage.completion_tokens"),
    Case("prompt count as a string", bad({"choices": [{"text": "a"}],
                                          "usage": {"prompt_tokens": "x", "completion_tokens": 2}}),
         "bad_sse", error_has="usage.prompt_tokens"),
    Case("usage as a list", bad({"choices": [{"text": "a"}], "usage": [1]}),
         "bad_sse", error_has="usage is not an object"),
    Case("choices: [null]", bad({"choices": [None]}), "bad_sse", error_has="choices[0]"),
    Case("choices as a string", bad({"choices": "a"}), "bad_sse", error_has="choices"),
    Case("delta as a string", bad({"choices": [{"delta": "a"}]}), "bad_sse",
         error_has="choices[0].delta"),
    Case("text as a number", bad({"choices": [{"text": 5}]}), "bad_sse",
         error_has="choices[0].text"),
    Case("content as a list", bad({"choices": [{"delta": {"content": ["a"]}}]}), "bad_sse",
         error_has="choices[0].delta.content"),
    Case("finish_reason as a number", bad({"choices": [{"text": "a", "finish_reason": 1}]}),
         "bad_sse", error_has="finish_reason"),
    Case("invalid JSON", bad(b'{"choices": [{"te'), "bad_sse", error_has="invalid JSON"),
    Case("a JSON array", bad(b"[1, 2]"), "bad_sse", error_has="not a JSON object"),
    Case("JSON nested past the parser's depth", bad(b"[" * 100_000), "bad_sse",
         error_has="invalid JSON"),
    Case("an error object in the stream", bad({"error": {"message": "boom", "code": 500}}),
         "server_error", error_has="boom"),
    # --- what a server can make the client allocate ----------------------------------
    Case("a usage count of 3e9 (vLLM-shaped chunk)",
         sse([event(completion_chunk("a", usage=(3, 3_000_000_000))), DONE]),
         "bad_sse", error_has="more than the 8 tokens"),
    Case("a usage count of 20 digits", bad(
        b'{"choices":[{"text":"a"}],"usage":{"prompt_tokens":3,"completion_tokens":'
        + b"9" * 20 + b"}}"), "bad_sse", error_has="completion_tokens"),
    Case("a final usage beyond max_tokens",
         sse([*plain(["a"] * 8), event(usage_chunk(3, 9)), DONE]),
         "bad_sse", error_has="more than the 8 tokens"),
    # --- valid SSE written unusually --------------------------------------------------
    Case("one event's JSON over two data: lines (joined with a newline)",
         sse([b'data: {"choices":[{"text":" w1"}],\ndata: "usage":{"completion_tokens":1}}\n\n',
              DONE]),
         None, chunk_tokens=[1], output_tokens=1, usage_source="usage"),
    Case("bare-CR line endings", sse([event(completion_chunk(" w1", usage=(3, 1)))
                                       .replace(b"\n", b"\r"), b"data: [DONE]\r\r"]),
         None, chunk_tokens=[1], output_tokens=1),
    Case("CRLF split between two reads", sse([
        b"data: " + json.dumps(completion_chunk(" w1", usage=(3, 1))).encode() + b"\r",
        b"\n\r\n", b"data: [DONE]\r\n\r\n"]), None, chunk_tokens=[1], output_tokens=1),
    Case("comments, event and id fields, no space after the colon",
         sse([b": ping\n\nevent: message\nid: 1\ndata:"
              + json.dumps(completion_chunk(" w1", usage=(3, 1))).encode() + b"\n\n", DONE]),
         None, chunk_tokens=[1], output_tokens=1),
    Case("content-type with a charset", [head(200, {
        "content-type": "text/event-stream; charset=utf-8", "transfer-encoding": "chunked"}),
        *chunked(OK_BODY)], None, chunk_tokens=WORDS_COUNTS),
    Case("an event stream without a final blank line",
         [SSE_CLOSE_HEAD, *running(WORDS, WORDS_COUNTS), b"data: [DONE]", CLOSE],
         None, chunk_tokens=WORDS_COUNTS),
    # --- HTTP that is not a stream: http, with the status and why ----------------------
    Case("301 redirect", [response(301, b"moved", ctype="text/plain", location="/elsewhere")],
         "http", status=301, error_has="HTTP 301: redirect to /elsewhere (not followed)"),
    Case("307 redirect, empty body", [response(307, b"", location="https://x/v1")],
         "http", status=307, error_has="redirect to https://x/v1"),
    Case("200 text/html", [response(200, b"<html><h1>Login</h1></html>", ctype="text/html")],
         "http", status=200, error_has="content-type text/html, not an event stream: <html>"),
    Case("200 with a whole JSON completion (stream ignored)",
         [response(200, json.dumps(completion_chunk("w1 w2", usage=(3, 2))).encode())],
         "http", status=200, error_has="content-type application/json"),
    Case("500 with a body", [response(500, b'{"message":"boom"}')], "http", status=500,
         error_has="HTTP 500: {\"message\":\"boom\"}"),
    Case("a server that compresses when the client lets it", gzip_aware, None,
         chunk_tokens=WORDS_COUNTS, output_tokens=8),
    Case("a server that compresses anyway", [head(200, {
        "content-type": "text/event-stream", "content-encoding": "gzip",
        "content-length": str(len(gzip.compress(OK_BODY)))}), gzip.compress(OK_BODY)],
         "http", status=200, error_has="content-encoding gzip (none was asked for)"),
    # --- framing the transports once judged differently ---------------------------------
    Case("Content-Length twice, the same value", [head(200, {
        "content-type": "text/event-stream", "content-length": str(len(OK_BODY)),
        "Content-Length": str(len(OK_BODY))}), OK_BODY], None, chunk_tokens=WORDS_COUNTS),
    Case("Content-Length twice, different values", [head(200, {
        "content-type": "text/event-stream", "content-length": str(len(OK_BODY)),
        "Content-Length": str(len(OK_BODY) + 1)}), OK_BODY], "stream_cut", status=None),
    Case("reset after [DONE] on a close-delimited body",
         [SSE_CLOSE_HEAD, OK_BODY, 0.05, RESET], None, chunk_tokens=WORDS_COUNTS),
    Case("reset before [DONE] on a close-delimited body",
         [SSE_CLOSE_HEAD, *running(WORDS, WORDS_COUNTS), 0.05, RESET], "stream_cut",
         error_has="before data: [DONE]", chunks=5),
    Case("clean close before [DONE] on a close-delimited body",
         [SSE_CLOSE_HEAD, *running(WORDS, WORDS_COUNTS), CLOSE], "stream_cut",
         error_has="before data: [DONE]", chunks=5),
    Case("reset in the middle of a chunked body",
         [SSE_HEAD, *chunked(*running(WORDS[:2], [1, 1]))[:-1], 0.05, RESET], "stream_cut",
         chunks=2),
    Case("closed before any response", [CLOSE], "stream_cut", status=None),
    # --- the three time limits: each a timeout naming the limit that fired --------------
    Case("a stream that stalls after two chunks: the idle limit, not the deadline",
         [SSE_HEAD, *chunked(*running(WORDS[:2], [1, 1]))[:-1], 30.0], "timeout",
         error_has="idle: the stream stalled for 0.3 s (idle_timeout_s)", chunks=2,
         settings={"idle_timeout_s": 0.3, "timeout_s": 20.0}),
    Case("a long wait for the first byte is queueing, not idleness",
         [SSE_HEAD, 0.6, *chunked(*running(WORDS, WORDS_COUNTS), DONE)], None,
         chunk_tokens=WORDS_COUNTS, settings={"idle_timeout_s": 0.3}),
    Case("no body byte within the first-byte limit", [SSE_HEAD, 30.0], "timeout",
         error_has="first byte: nothing of the response body within 0.3 s",
         settings={"first_byte_timeout_s": 0.3, "timeout_s": 20.0}),
    Case("no response at all within the first-byte limit", [30.0], "timeout", status=None,
         error_has="first byte: nothing of the response body within 0.3 s",
         settings={"first_byte_timeout_s": 0.3, "timeout_s": 20.0}),
    Case("a trickle that never stalls meets the whole-request deadline",
         [SSE_HEAD, *[x for c in chunked(*running(["a"] * 40, [1] * 40))[:-1] for x in (c, 0.05)]],
         "timeout", error_has="deadline: no complete response within 0.6 s (request_timeout_s)",
         settings={"idle_timeout_s": 0.3, "timeout_s": 0.6}, max_tokens=40),
    Case("a body longer than its Content-Length is cut at it", [head(200, {
        "content-type": "text/event-stream", "content-length": str(len(OK_BODY))}),
        OK_BODY + b"data: junk\n\n"], None, chunk_tokens=WORDS_COUNTS),
]  # fmt: skip


def run_case(transport: str, case: Case) -> RequestRecord:
    async def go() -> RequestRecord:
        async with CannedServer({"/v1/completions": case.script}) as srv:
            s = RequestSettings(base_url=srv.url, model="m", **{"timeout_s": 5.0, **case.settings})
            t0 = time.perf_counter()
            t = make_transport(transport, s, lambda: time.perf_counter() - t0)
            rec = RequestRecord(request_id=0, phase="p", scheduled_s=0.0, sent_s=0.0)
            try:
                await asyncio.wait_for(t.send_request(rec, "w1", case.max_tokens, "r-0"), 30)
            finally:
                await t.aclose()
            return rec

    return asyncio.run(go())


def check(rec: RequestRecord, case: Case) -> None:
    if case.kind == "timeout":  # the limit fired, not a later one (the scripts wait 30 s)
        assert rec.e2e_s is not None and rec.e2e_s < 5
    assert rec.error_kind == case.kind, rec.error
    assert rec.status_code == case.status
    assert (rec.error is None) == (case.kind is None)
    assert case.error_has in (rec.error or "")
    assert "\n" not in (rec.error or "") and len(rec.error or "") <= 300
    assert rec.end_s is not None and rec.end_s >= rec.sent_s
    for name in ("chunk_tokens", "output_tokens", "usage_source"):
        want = getattr(case, name)
        if want is not ANY:
            assert getattr(rec, name) == want, name
    if case.chunks is not ANY:
        assert len(rec.chunk_times) == case.chunks
    if rec.ok:  # what a success always holds
        assert rec.first_token_s == rec.chunk_times[0]
        assert rec.chunk_times == sorted(rec.chunk_times)
        if rec.chunk_tokens:
            assert len(rec.chunk_tokens) == len(rec.chunk_times)
            assert sum(rec.chunk_tokens) == rec.output_tokens


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_conformance(transport: str, case: Case) -> None:
    check(run_case(transport, case), case)


def test_the_transports_agree_on_every_case() -> None:
    """Not only each against the table: the two records equal field for field, timings
    aside (what the table leaves unchecked must agree too)."""
    timing = {"sent_s", "written_s", "first_token_s", "end_s", "chunk_times"}
    for case in CASES[:12]:
        a, b = (run_case(t, case) for t in TRANSPORTS)
        da = {k: v for k, v in json.loads(a.to_json()).items() if k not in timing}
        db = {k: v for k, v in json.loads(b.to_json()).items() if k not in timing}
        assert da == db, case.id

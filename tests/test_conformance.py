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
from pathlib import Path
from typing import Any

import pytest

from loadgen.http.base import TRANSPORTS, RequestSettings, make_transport
from loadgen.results.records import RequestRecord
from tests.canned import (
    DONE,
    CannedServer,
    Request,
    Route,
    completion_chunk,
    event,
    head,
    sse,
    usage_chunk,
)

TOKENIZER = str(Path(__file__).resolve().parent.parent / "models" / "tiny-llama")
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

"""A fast mock of vLLM's OpenAI-compatible streaming server, with exact ground-truth timing.

Why it exists: the client's timing maths needs a server whose chunk times are *known*
(``--log`` records ``time.time()`` after each chunk's socket write), fault paths need a
server that fails on demand, and load tests need more chunks/s than a CPU vLLM gives.
So it is raw asyncio streams plus a minimal HTTP/1.1 parser: no framework on the hot path.

Chunk JSON is byte-for-byte what vLLM 0.32 emits (``model_dump_json`` of its pydantic
models) for completions and chat, including chat's first ``role: assistant`` chunk.

Timing model (on ``time.monotonic``; the log holds ``time.time``): the request is
"received" (the log's ``recv``) when its head has arrived, before any parsing, and
"admitted" when its body is read and a ``--max-num-seqs`` slot frees (at once by
default). Chunk ``i`` is scheduled at the absolute time
``admit + ttft + i * itl + U(-jitter, +jitter)`` (never before chunk ``i-1``), so sleep
overshoot never accumulates. The logged time of a chunk is taken
right after ``writer.write()`` + ``await writer.drain()``: drain returns at once unless
the socket buffer is full, so this is the moment the bytes were handed to the kernel,
which is the closest server-side analogue of "the client could read it now".

Tokens per chunk (``--tokens-per-chunk``): ``"3"`` (every chunk 3 tokens), ``"1,3,2"``
(a per-request cycle) or ``"spec:K:P"``: each chunk carries ``1 + a`` tokens where ``a``
is the number of *leading* successes in ``K`` Bernoulli(P) trials, which is how draft
verification accepts a prefix (mean ``1 + P + P^2 + ... + P^K``). The last chunk is
truncated to ``max_tokens``. When chunks may carry more than one token (or
``--num-spec-tokens`` is set), ``/metrics`` exposes vLLM's spec-decode counters with
every streamed chunk counted as one draft of ``K`` tokens that accepted ``n - 1``:
``drafts == chunks``, ``accepted == tokens - chunks``, ``per_pos[j]`` counts chunks
with ``n - 1 > j``.

Several processes (``--reuse-port``): one asyncio process serves some tens of thousands
of chunks/s; to load-test a client with several processes of its own, start N mocks with
``--reuse-port`` on one port and the kernel spreads the connections over them (each keeps
its own ``/metrics`` and ``--log``, so give each its own log file).

Faults (per request; at most one, first match wins in the order fail, cut, stall,
malformed): rates are a probability ``"0.1"`` or a deterministic ``"every:N"`` (the
N-th, 2N-th, ... inference request). The header ``x-mock-fault`` overrides them.
``cut`` closes the connection after ``len(chunks) // 2`` chunks (no ``[DONE]``, no final
HTTP chunk); ``stall`` sends that many chunks then sends nothing until the client hangs up;
``malformed`` inserts one invalid JSON ``data:`` line before the middle chunk and
otherwise completes; ``nousage`` omits all usage; ``empty`` streams 0 tokens; a status
fault answers at once with vLLM's error JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import re
import select
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from http import HTTPStatus
from pathlib import Path
from typing import Any, TextIO

from loadgen.errors import SpecloadError

FAULTS = ("cut", "stall", "malformed", "nousage", "empty", "500", "429", "503", "400")
STATUS_FAULTS = (500, 429, 503, 400)
_ERROR_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    405: "MethodNotAllowed",
    411: "LengthRequired",
    429: "TooManyRequests",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}
_UNKNOWN_WORD_BASE = 1_000_000  # unknown words hash into [1e6, 2e6): never clash with small wN
_WORD_RE = re.compile(r"w(0|[1-9][0-9]{0,8})")


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True, slots=True)
class ChunkPlan:
    """How many tokens each chunk carries: a fixed cycle, or spec-style prefix acceptance."""

    cycle: tuple[int, ...] = (1,)
    spec_k: int = 0  # >0: "spec:K:P" mode
    spec_p: float = 0.0

    @property
    def max_chunk(self) -> int:
        return self.spec_k + 1 if self.spec_k else max(self.cycle)

    def sizes(self, total: int, rng: random.Random) -> list[int]:
        """Chunk sizes summing to ``total``, the last one truncated."""
        out: list[int] = []
        left = total
        i = 0
        while left > 0:
            if self.spec_k:
                n = 1
                while n <= self.spec_k and rng.random() < self.spec_p:
                    n += 1
            else:
                n = self.cycle[i % len(self.cycle)]
            n = min(n, left)
            out.append(n)
            left -= n
            i += 1
        return out


def parse_tokens_per_chunk(text: str) -> ChunkPlan:
    """Parse ``--tokens-per-chunk``: ``"3"``, ``"1,3,2"`` or ``"spec:K:P"``."""
    flag = "--tokens-per-chunk"
    text = str(text).strip()
    if text.startswith("spec:"):
        parts = text.split(":")
        try:
            k, p = int(parts[1]), float(parts[2])
            if len(parts) != 3:
                raise ValueError
        except (ValueError, IndexError):
            raise SpecloadError(f"{flag}: expected spec:K:P, got {text!r}") from None
        if k < 1 or not 0.0 <= p <= 1.0:
            raise SpecloadError(f"{flag}: spec:K:P needs K >= 1 and 0 <= P <= 1, got {text!r}")
        return ChunkPlan(spec_k=k, spec_p=p)
    try:
        cycle = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise SpecloadError(
            f"{flag}: expected an int, 'k1,k2,...' or spec:K:P, got {text!r}"
        ) from None
    if not cycle or min(cycle) < 1:
        raise SpecloadError(f"{flag}: token counts must be >= 1, got {text!r}")
    return ChunkPlan(cycle=cycle)


@dataclass(frozen=True, slots=True)
class FaultRate:
    """A per-request fault rate: a probability, or every N-th request."""

    prob: float = 0.0
    every: int = 0

    def hit(self, n: int, u: float) -> bool:
        if self.every:
            return n % self.every == 0
        return u < self.prob


def parse_rate(text: str | float, flag: str) -> FaultRate:
    """Parse ``"0.1"`` (probability) or ``"every:N"`` (deterministic)."""
    s = str(text).strip()
    if s.startswith("every:"):
        try:
            n = int(s[6:])
        except ValueError:
            n = 0
        if n < 1:
            raise SpecloadError(f"{flag}: every:N needs an integer N >= 1, got {s!r}")
        return FaultRate(every=n)
    try:
        p = float(s)
    except ValueError:
        raise SpecloadError(f"{flag}: expected a probability or every:N, got {s!r}") from None
    if not 0.0 <= p <= 1.0:
        raise SpecloadError(f"{flag}: probability must be in [0, 1], got {s!r}")
    return FaultRate(prob=p)


@dataclass(slots=True)
class MockConfig:
    """Everything the mock server can be told; each field is one CLI flag (``_`` -> ``-``)."""

    host: str = "127.0.0.1"
    port: int = 0
    model: str = "mock-model"
    max_model_len: int = 4096
    default_max_tokens: int = 16  # when the request names no max_tokens
    ttft_ms: float = 0.0
    itl_ms: float = 0.0
    tokens_per_chunk: str = "1"
    num_spec_tokens: int | None = None  # K for the metrics; default: from tokens_per_chunk
    jitter_ms: float = 0.0
    eos_prob: float = 0.0  # per-token stop probability unless the request sets ignore_eos
    seed: int = 0
    max_num_seqs: int = 0  # 0 = unlimited; above it requests wait (num_requests_waiting)
    kv_capacity_tokens: int = 100_000  # kv_cache_usage_perc = live tokens / this
    fail_status: int = 500
    fail_rate: str = "0"
    cut_rate: str = "0"
    stall_rate: str = "0"
    malformed_rate: str = "0"
    no_usage: bool = False
    empty: bool = False
    log: str | None = None
    log_flush_s: float = 0.2
    loop: str = "auto"  # auto (uvloop if importable) | asyncio | uvloop
    reuse_port: bool = False  # SO_REUSEPORT: several mock processes share one port
    plan: ChunkPlan = field(init=False, repr=False)
    rates: tuple[FaultRate, FaultRate, FaultRate, FaultRate] = field(init=False, repr=False)
    spec_k: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.plan = parse_tokens_per_chunk(self.tokens_per_chunk)
        self.rates = (
            parse_rate(self.fail_rate, "--fail-rate"),
            parse_rate(self.cut_rate, "--cut-rate"),
            parse_rate(self.stall_rate, "--stall-rate"),
            parse_rate(self.malformed_rate, "--malformed-rate"),
        )
        for name in ("ttft_ms", "itl_ms", "jitter_ms"):
            if getattr(self, name) < 0:
                raise SpecloadError(f"--{name.replace('_', '-')}: must be >= 0")
        for name in ("max_num_seqs", "port"):
            if getattr(self, name) < 0:
                raise SpecloadError(f"--{name.replace('_', '-')}: must be >= 0")
        if self.default_max_tokens < 1:
            raise SpecloadError("--default-max-tokens: must be >= 1")
        if self.kv_capacity_tokens < 1:
            raise SpecloadError("--kv-capacity-tokens: must be >= 1")
        if not 0.0 <= self.eos_prob <= 1.0:
            raise SpecloadError("--eos-prob: must be in [0, 1]")
        if self.fail_status not in STATUS_FAULTS:
            raise SpecloadError(f"--fail-status: must be one of {STATUS_FAULTS}")
        if self.loop not in ("auto", "asyncio", "uvloop"):
            raise SpecloadError("--loop: must be auto, asyncio or uvloop")
        if self.log_flush_s <= 0:
            raise SpecloadError("--log-flush-s: must be > 0")
        need = self.plan.max_chunk - 1
        if self.num_spec_tokens is None:
            self.spec_k = need
        elif self.num_spec_tokens < need:
            raise SpecloadError(
                f"--num-spec-tokens: {self.num_spec_tokens} < {need} "
                "(a chunk can carry more accepted tokens than that)"
            )
        else:
            self.spec_k = self.num_spec_tokens

    def to_args(self) -> list[str]:
        """CLI arguments that rebuild this config (for ``start_mock_process``)."""
        out: list[str] = []
        for f in fields(self):
            if not f.init:
                continue
            v = getattr(self, f.name)
            flag = "--" + f.name.replace("_", "-")
            if isinstance(v, bool):
                if v:
                    out.append(flag)
            elif v is not None:
                out += [flag, str(v)]
        return out


def build_arg_parser() -> argparse.ArgumentParser:
    """The CLI; flags mirror ``MockConfig`` fields one to one."""
    d = MockConfig()
    p = argparse.ArgumentParser(
        prog="python -m loadgen.mock",
        description="Mock vLLM OpenAI-compatible streaming server with ground-truth timing.",
    )
    a = p.add_argument
    a("--host", default=d.host)
    a("--port", type=int, default=d.port, help="0 = pick a free port")
    a("--model", default=d.model, help="served model name")
    a("--max-model-len", type=int, default=d.max_model_len)
    a("--default-max-tokens", type=int, default=d.default_max_tokens)
    a("--ttft-ms", type=float, default=d.ttft_ms, help="admission -> first chunk")
    a("--itl-ms", type=float, default=d.itl_ms, help="delay between chunks")
    a("--tokens-per-chunk", default=d.tokens_per_chunk, help="N | k1,k2,... | spec:K:P")
    a("--num-spec-tokens", type=int, default=None, help="K for spec-decode metrics")
    a("--jitter-ms", type=float, default=d.jitter_ms, help="uniform +- per chunk")
    a("--eos-prob", type=float, default=d.eos_prob, help="per-token stop unless ignore_eos")
    a("--seed", type=int, default=d.seed)
    a("--max-num-seqs", type=int, default=d.max_num_seqs, help="0 = unlimited")
    a("--kv-capacity-tokens", type=int, default=d.kv_capacity_tokens)
    a("--fail-status", type=int, default=d.fail_status, help="500|429|503|400")
    a("--fail-rate", default=d.fail_rate, help="probability or every:N")
    a("--cut-rate", default=d.cut_rate, help="probability or every:N")
    a("--stall-rate", default=d.stall_rate, help="probability or every:N")
    a("--malformed-rate", default=d.malformed_rate, help="probability or every:N")
    a("--no-usage", action="store_true", help="never send usage")
    a("--empty", action="store_true", help="every response has 0 tokens")
    a("--log", default=None, help="ground-truth JSONL, one line per finished request")
    a("--log-flush-s", type=float, default=d.log_flush_s)
    a("--loop", default=d.loop, help="auto | asyncio | uvloop")
    a("--uvloop", dest="loop", action="store_const", const="uvloop", help="= --loop uvloop")
    a(
        "--reuse-port",
        action="store_true",
        help="SO_REUSEPORT: start several mocks on one --port; the kernel spreads connections",
    )
    return p


def config_from_args(argv: Sequence[str] | None = None) -> MockConfig:
    ns = build_arg_parser().parse_args(argv)
    return MockConfig(**vars(ns))


# ----------------------------------------------------------------------------- tokenizer


def word_to_token(word: str) -> int:
    """``wN`` -> N; any other word -> a stable hash in [1e6, 2e6)."""
    m = _WORD_RE.fullmatch(word)
    if m:
        return int(m.group(1))
    return _UNKNOWN_WORD_BASE + zlib.crc32(word.encode()) % _UNKNOWN_WORD_BASE


def tokenize(text: str) -> list[int]:
    """Whitespace words, one token each: cheap, deterministic, invertible for ``wN``."""
    return [word_to_token(w) for w in text.split()]


def detokenize(tokens: Sequence[int]) -> str:
    return " ".join(f"w{t}" for t in tokens)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def prompt_token_count(body: dict[str, Any], chat: bool) -> int:
    """Prompt tokens = words in the prompt (or in all message contents), or len(token ids)."""
    if chat:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise ValueError("'messages' must be a non-empty list")
        return sum(
            len(_content_text(m.get("content")).split()) for m in msgs if isinstance(m, dict)
        )
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return len(prompt.split())
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        return len(prompt)
    raise ValueError("'prompt' must be a string or a list of token ids (one prompt)")


def output_text(start: int, n: int) -> str:
    """Text of output tokens ``start .. start+n-1``: `` w<i>`` each, so it tokenizes back."""
    return "".join([f" w{i}" for i in range(start, start + n)])


# ----------------------------------------------------------------------------- metrics


@dataclass(slots=True)
class _Live:
    """A request being served, for the gauges."""

    prompt_tokens: int
    generated: int = 0


@dataclass(slots=True)
class MockMetrics:
    """Counters and gauges behind ``/metrics``; updated per streamed chunk."""

    spec_k: int = 0
    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_per_pos: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    generation_tokens: int = 0
    requests_success: int = 0
    waiting: int = 0
    connections: int = 0  # accepted TCP connections (tests check keep-alive with it)

    def __post_init__(self) -> None:
        self.accepted_per_pos = [0] * self.spec_k

    def observe_chunk(self, n: int) -> None:
        self.generation_tokens += n
        if self.spec_k:
            acc = n - 1
            self.num_drafts += 1
            self.num_draft_tokens += self.spec_k
            self.num_accepted_tokens += acc
            pos = self.accepted_per_pos
            for j in range(acc):
                pos[j] += 1


def render_metrics(m: MockMetrics, model: str, running: int, kv_usage: float) -> str:
    """Prometheus text in vLLM's names and labels (``model_name``, ``engine``)."""
    lab = f'model_name="{model}",engine="0"'
    out: list[str] = []

    def metric(name: str, kind: str, doc: str, rows: list[tuple[str, float]]) -> None:
        out.append(f"# HELP {name} {doc}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(f"{name}{{{labels}}} {float(v)}" for labels, v in rows)

    metric(
        "vllm:num_requests_running",
        "gauge",
        "Number of requests in model execution batches.",
        [(lab, running)],
    )
    metric(
        "vllm:num_requests_waiting",
        "gauge",
        "Number of requests waiting to be processed.",
        [(lab, m.waiting)],
    )
    metric(
        "vllm:kv_cache_usage_perc",
        "gauge",
        "KV-cache usage. 1 means 100 percent usage.",
        [(lab, kv_usage)],
    )
    metric(
        "vllm:prompt_tokens_total",
        "counter",
        "Number of prefill tokens processed.",
        [(lab, m.prompt_tokens)],
    )
    metric(
        "vllm:generation_tokens_total",
        "counter",
        "Number of generation tokens processed.",
        [(lab, m.generation_tokens)],
    )
    metric(
        "vllm:request_success_total",
        "counter",
        "Count of successfully processed requests.",
        [(lab, m.requests_success)],
    )
    if m.spec_k:
        metric(
            "vllm:spec_decode_num_drafts_total",
            "counter",
            "Number of spec decoding drafts.",
            [(lab, m.num_drafts)],
        )
        metric(
            "vllm:spec_decode_num_draft_tokens_total",
            "counter",
            "Number of draft tokens.",
            [(lab, m.num_draft_tokens)],
        )
        metric(
            "vllm:spec_decode_num_accepted_tokens_total",
            "counter",
            "Number of accepted tokens.",
            [(lab, m.num_accepted_tokens)],
        )
        metric(
            "vllm:spec_decode_num_accepted_tokens_per_pos_total",
            "counter",
            "Accepted tokens per draft position.",
            [(f'{lab},position="{j}"', v) for j, v in enumerate(m.accepted_per_pos)],
        )
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- HTTP


@dataclass(slots=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool
    chunked_ok: bool  # HTTP/1.1: stream with chunked encoding, else close-delimited
    received: float = 0.0  # time.time() when the request head had arrived (before parsing)


class _BadRequest(Exception):
    pass


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """One HTTP/1.1 request, or None at a clean EOF between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        received = time.time()
    except asyncio.IncompleteReadError as e:
        if e.partial.strip():
            raise _BadRequest("incomplete request head") from None
        return None
    except asyncio.LimitOverrunError:
        raise _BadRequest("request head too large") from None
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, version = lines[0].split(" ", 2)
    except ValueError:
        raise _BadRequest("bad request line") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    te = headers.get("transfer-encoding", "").lower()
    if "chunked" in te:
        parts: list[bytes] = []
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(parts)
    else:
        try:
            n = int(headers.get("content-length", "0"))
        except ValueError:
            raise _BadRequest("bad content-length") from None
        body = await reader.readexactly(n) if n > 0 else b""
    conn = headers.get("connection", "").lower()
    http11 = version.strip().upper() == "HTTP/1.1"
    keep = ("close" not in conn) if http11 else ("keep-alive" in conn)
    return Request(method.upper(), target.split("?", 1)[0], headers, body, keep, http11, received)


def _head(status: int, ctype: str, extra: str, keep_alive: bool) -> str:
    conn = "" if keep_alive else "connection: close\r\n"
    return (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        f"content-type: {ctype}\r\n{extra}{conn}server: mockserver\r\n\r\n"
    )


def http_response(
    status: int, body: bytes, keep_alive: bool, ctype: str = "application/json"
) -> bytes:
    return _head(status, ctype, f"content-length: {len(body)}\r\n", keep_alive).encode() + body


def error_body(status: int, message: str) -> bytes:
    """vLLM's ErrorResponse JSON."""
    err = {
        "message": message,
        "type": _ERROR_TYPES.get(status, HTTPStatus(status).phrase),
        "param": None,
        "code": status,
    }
    return json.dumps({"error": err}, separators=(",", ":")).encode()


# ----------------------------------------------------------------------------- server


@dataclass(slots=True)
class _Job:
    """One inference request being served: what was asked, what happened."""

    request_id: str | int
    chat: bool
    stream: bool
    prompt_tokens: int
    max_tokens: int
    include_usage: bool
    continuous: bool
    fault: str | None
    recv: float
    rng: random.Random
    chunks: list[list[float]] = field(default_factory=list)
    start: float | None = None
    end: float | None = None
    status: int = 200
    outcome: str = "done"
    finish_reason: str | None = None
    completion_tokens: int = 0


class MockServer:
    """The server; ``async with MockServer(cfg) as srv: srv.url`` runs it in the current loop."""

    def __init__(self, config: MockConfig | None = None) -> None:
        self.config = config or MockConfig()
        self.metrics = MockMetrics(spec_k=self.config.spec_k)
        self._live: dict[int, _Live] = {}
        self._n = 0  # inference request counter (1-based after increment)
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[Any]] = set()
        self._sem = (
            asyncio.Semaphore(self.config.max_num_seqs) if self.config.max_num_seqs else None
        )
        self._log: TextIO | None = None
        self._flusher: asyncio.Task[None] | None = None
        self.port = 0
        self.created = int(time.time())

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    async def start(self) -> MockServer:
        cfg = self.config
        if cfg.log:
            self._log = open(cfg.log, "a", buffering=1 << 16)  # noqa: SIM115 - closed in close()
            self._flusher = asyncio.create_task(self._flush_loop())
        self._server = await asyncio.start_server(
            self._on_conn,
            cfg.host,
            cfg.port,
            limit=1 << 20,
            backlog=4096,
            reuse_port=cfg.reuse_port or None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._conns):
                t.cancel()
            await asyncio.gather(*self._conns, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        if self._log is not None:
            self._log.close()
            self._log = None

    async def __aenter__(self) -> MockServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def flush_log(self) -> None:
        if self._log is not None:
            self._log.flush()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.log_flush_s)
            self.flush_log()

    # -- connection loop

    async def _on_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        self.metrics.connections += 1
        try:
            while True:
                try:
                    req = await read_request(reader)
                except _BadRequest as e:
                    writer.write(http_response(400, error_body(400, str(e)), False))
                    await writer.drain()
                    break
                if req is None:
                    break
                keep = await self._dispatch(req, reader, writer)
                if not (keep and req.keep_alive):
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._conns.discard(task)
            writer.close()

    async def _dispatch(
        self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Serve one request; False = close the connection afterwards."""
        path, method = req.path, req.method
        if path in ("/v1/completions", "/v1/chat/completions"):
            if method != "POST":
                return await self._reply(writer, req, 405, error_body(405, "Method Not Allowed"))
            return await self._inference(
                req, reader, writer, chat=path.endswith("chat/completions")
            )
        if path == "/health" and method == "GET":
            return await self._reply(writer, req, 200, b"")
        if path == "/v1/models" and method == "GET":
            return await self._reply(writer, req, 200, self._models_body())
        if path == "/metrics" and method == "GET":
            text = render_metrics(
                self.metrics, self.config.model, len(self._live), self._kv_usage()
            )
            return await self._reply(
                writer, req, 200, text.encode(), "text/plain; version=0.0.4; charset=utf-8"
            )
        if path in ("/tokenize", "/detokenize"):
            if method != "POST":
                return await self._reply(writer, req, 405, error_body(405, "Method Not Allowed"))
            return await self._tokenize(req, writer, path == "/tokenize")
        return await self._reply(writer, req, 404, error_body(404, f"no route {method} {path}"))

    async def _reply(
        self,
        writer: asyncio.StreamWriter,
        req: Request,
        status: int,
        body: bytes,
        ctype: str = "application/json",
    ) -> bool:
        writer.write(http_response(status, body, req.keep_alive, ctype))
        await writer.drain()
        return True

    def _models_body(self) -> bytes:
        m = self.config.model
        card = {
            "id": m,
            "object": "model",
            "created": self.created,
            "owned_by": "vllm",
            "root": m,
            "parent": None,
            "max_model_len": self.config.max_model_len,
            "permission": [],
        }
        return json.dumps({"object": "list", "data": [card]}, separators=(",", ":")).encode()

    def _kv_usage(self) -> float:
        live = sum(x.prompt_tokens + x.generated for x in self._live.values())
        return min(1.0, live / self.config.kv_capacity_tokens)

    async def _tokenize(self, req: Request, writer: asyncio.StreamWriter, forward: bool) -> bool:
        try:
            body = json.loads(req.body or b"{}")
            if forward:
                if "messages" in body:
                    text = " ".join(_content_text(m.get("content")) for m in body["messages"])
                else:
                    text = body["prompt"]
                    if not isinstance(text, str):
                        raise ValueError("'prompt' must be a string")
                toks = tokenize(text)
                out: dict[str, Any] = {
                    "count": len(toks),
                    "max_model_len": self.config.max_model_len,
                    "tokens": toks,
                    "token_strs": None,
                }
            else:
                toks = body["tokens"]
                if not isinstance(toks, list) or not all(isinstance(t, int) for t in toks):
                    raise ValueError("'tokens' must be a list of ints")
                out = {"prompt": detokenize(toks)}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            return await self._reply(writer, req, 400, error_body(400, f"bad request: {e}"))
        return await self._reply(writer, req, 200, json.dumps(out, separators=(",", ":")).encode())

    # -- inference

    def _pick_fault(self, header: str | None, n: int, rng: random.Random) -> str | None:
        if header is not None:
            return None if header in ("", "none") else header
        cfg = self.config
        u = rng.random()
        lo = 0.0
        names = (str(cfg.fail_status), "cut", "stall", "malformed")
        for name, rate in zip(names, cfg.rates, strict=True):
            if rate.every:
                if rate.hit(n, u):
                    return name
            elif lo <= u < lo + rate.prob:
                return name
            else:
                lo += rate.prob
        if cfg.empty:
            return "empty"
        if cfg.no_usage:
            return "nousage"
        return None

    async def _inference(
        self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, chat: bool
    ) -> bool:
        # The log's "recv" is when the request's head arrived, so the logged TTFT includes
        # this server's own parsing, as a real server's would.
        recv = req.received or time.time()
        cfg = self.config
        self._n += 1
        n = self._n
        rid: str | int = req.headers.get("x-request-id") or n
        header_fault = req.headers.get("x-mock-fault")
        if header_fault is not None and header_fault.strip().lower() not in (*FAULTS, "", "none"):
            msg = f"x-mock-fault: unknown fault {header_fault!r}; one of {', '.join(FAULTS)}"
            return await self._reply(writer, req, 400, error_body(400, msg))
        try:
            body = json.loads(req.body)
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
            model = body.get("model")
            if model is not None and model != cfg.model:
                return await self._reply(
                    writer, req, 404, error_body(404, f"The model `{model}` does not exist.")
                )
            prompt_tokens = prompt_token_count(body, chat)
            mt = body.get("max_completion_tokens") if chat else None
            max_tokens = mt if mt is not None else body.get("max_tokens")
            max_tokens = cfg.default_max_tokens if max_tokens is None else max_tokens
            if not isinstance(max_tokens, int) or max_tokens < 1:
                raise ValueError("max_tokens must be an integer >= 1")
            so = body.get("stream_options") or {}
            include_usage = bool(so.get("include_usage"))
        except (ValueError, TypeError, AttributeError) as e:
            return await self._reply(writer, req, 400, error_body(400, str(e)))
        rng = random.Random(cfg.seed * 1_000_003 + n)
        job = _Job(
            request_id=rid,
            chat=chat,
            stream=bool(body.get("stream")),
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens,
            include_usage=include_usage,
            continuous=include_usage and bool(so.get("continuous_usage_stats")),
            fault=self._pick_fault(
                header_fault.strip().lower() if header_fault else header_fault, n, rng
            ),
            recv=recv,
            rng=rng,
        )
        try:
            return await self._run_job(job, body, req, reader, writer)
        finally:
            if job.end is None:
                job.end = time.time()
                job.outcome = "client_closed" if job.outcome == "done" else job.outcome
            self._write_log(job)

    async def _run_job(
        self,
        job: _Job,
        body: dict[str, Any],
        req: Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        cfg = self.config
        fault = job.fault
        if fault is not None and fault.isdigit():
            job.status = int(fault)
            job.outcome = "error"
            await self._reply(
                writer, req, job.status, error_body(job.status, f"mock fault {fault}")
            )
            job.end = time.time()
            return True
        # how many tokens, and how they split into chunks
        if fault == "empty":
            total, finish = 0, "stop"
        elif cfg.eos_prob > 0 and not body.get("ignore_eos"):
            u = 1.0 - job.rng.random()  # (0, 1]
            geo = 1 + int(math.log(u) / math.log1p(-cfg.eos_prob)) if cfg.eos_prob < 1 else 1
            total, finish = (geo, "stop") if geo < job.max_tokens else (job.max_tokens, "length")
        else:
            total, finish = job.max_tokens, "length"
        sizes = cfg.plan.sizes(total, job.rng) if total else [0]
        job.finish_reason = finish
        live = _Live(job.prompt_tokens)
        if self._sem is not None:
            self.metrics.waiting += 1
            try:
                await self._sem.acquire()
            finally:
                self.metrics.waiting -= 1
        job.start = time.time()  # wall clock first: the schedule base is never before it
        t_admit = time.monotonic()  # not loop.time(): uvloop's is cached per iteration, in ms
        self._live[id(live)] = live
        self.metrics.prompt_tokens += job.prompt_tokens
        try:
            targets = self._schedule(t_admit, len(sizes), job.rng)
            if job.stream:
                return await self._stream(job, sizes, targets, req, reader, writer, live)
            return await self._whole(job, sizes, targets, req, reader, writer, live)
        finally:
            del self._live[id(live)]
            if self._sem is not None:
                self._sem.release()

    def _schedule(self, t0: float, n: int, rng: random.Random) -> list[float]:
        """Absolute monotonic times of each chunk: no drift, never out of order."""
        cfg = self.config
        ttft, itl, jit = cfg.ttft_ms / 1e3, cfg.itl_ms / 1e3, cfg.jitter_ms / 1e3
        out: list[float] = []
        prev = t0
        for i in range(n):
            t = t0 + ttft + i * itl
            if jit:
                t += rng.uniform(-jit, jit)
            t = max(t, prev)
            out.append(t)
            prev = t
        return out

    async def _stall(self, job: _Job, reader: asyncio.StreamReader) -> bool:
        """Hang until the client gives up (EOF) or the server shuts down."""
        job.outcome = "stall"
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass
        job.end = time.time()
        return False

    async def _whole(
        self,
        job: _Job,
        sizes: list[int],
        targets: list[float],
        req: Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        live: _Live,
    ) -> bool:
        """Non-streaming: one JSON body when the last chunk would have gone out."""
        while (delay := targets[-1] - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        fault = job.fault
        if fault == "cut":
            job.outcome = "cut"
            writer.close()
            job.end = time.time()
            return False
        if fault == "stall":
            return await self._stall(job, reader)
        total = sum(sizes)
        for n in sizes:
            if n:
                self.metrics.observe_chunk(n)
        live.generated = total
        job.completion_tokens = total
        p = job.prompt_tokens
        usage = {
            "prompt_tokens": p,
            "total_tokens": p + total,
            "completion_tokens": total,
            "prompt_tokens_details": None,
            "completion_tokens_details": None,
        }
        text = output_text(0, total)
        if job.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": text,
                    "refusal": None,
                    "annotations": None,
                    "audio": None,
                    "function_call": None,
                    "reasoning": None,
                },
                "logprobs": None,
                "finish_reason": job.finish_reason,
                "stop_reason": None,
                "token_ids": None,
                "routed_experts": None,
            }
            rid, obj = f"chatcmpl-{job.request_id}", "chat.completion"
        else:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": job.finish_reason,
                "stop_reason": None,
                "token_ids": None,
                "prompt_logprobs": None,
                "prompt_token_ids": None,
                "routed_experts": None,
            }
            rid, obj = f"cmpl-{job.request_id}", "text_completion"
        resp: dict[str, Any] = {
            "id": rid,
            "object": obj,
            "created": int(job.recv),
            "model": self.config.model,
            "choices": [choice],
            "service_tier": None,
            "system_fingerprint": None,
        }
        if fault != "nousage":
            resp["usage"] = usage
        data = json.dumps(resp, separators=(",", ":")).encode()
        if fault == "malformed":
            data = data[: len(data) // 2]
            job.outcome = "malformed"
        writer.write(http_response(200, data, req.keep_alive))
        await writer.drain()
        job.end = time.time()
        job.chunks.append([job.end, total])
        self.metrics.requests_success += 1
        return True

    async def _stream(
        self,
        job: _Job,
        sizes: list[int],
        targets: list[float],
        req: Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        live: _Live,
    ) -> bool:
        """SSE: one HTTP chunk per event, chunk i written at targets[i] (time.monotonic)."""
        mono = time.monotonic
        cfg = self.config
        fault = job.fault
        chunked = req.chunked_ok
        keep = req.keep_alive and chunked
        head = _head(
            200,
            "text/event-stream; charset=utf-8",
            "transfer-encoding: chunked\r\n" if chunked else "",
            keep,
        )
        writer.write(head.encode())
        usage_on = fault != "nousage"
        continuous = job.continuous and usage_on
        model = json.dumps(cfg.model)
        created = int(job.recv)
        p = job.prompt_tokens
        if job.chat:
            pre = (
                f'{{"id":"chatcmpl-{job.request_id}","object":"chat.completion.chunk",'
                f'"created":{created},"model":{model},"choices":'
            )
            role = pre + '[{"index":0,"delta":{"role":"assistant","content":""},'
            role += '"logprobs":null,"finish_reason":null}]'
            if continuous:
                role += ',"usage":' + _usage(p, 0)
            role += ',"prompt_token_ids":null,"prompt_text":null}'
            body_open = pre + '[{"index":0,"delta":{"content":"'
            mid_open = '"},"logprobs":null,"finish_reason":'
            fin_open = "null"  # chat sets stop_reason only on the finishing chunk
            mid_close = ',"token_ids":null}]'
        else:
            pre = (
                f'{{"id":"cmpl-{job.request_id}","object":"text_completion",'
                f'"created":{created},"model":{model},"choices":'
            )
            role = ""
            body_open = pre + '[{"index":0,"text":"'
            mid_open = '","logprobs":null,"finish_reason":'
            fin_open = 'null,"stop_reason":null'
            mid_close = ',"prompt_token_ids":null,"token_ids":null}]'
        # faults strike before chunk len//2: half the chunks got out (none if there is one)
        cut_at = len(sizes) // 2 if fault in ("cut", "stall", "malformed") else -1
        frame = _frame if chunked else _raw
        metrics = self.metrics
        done = 0
        last = len(sizes) - 1
        for i, n in enumerate(sizes):
            while (delay := targets[i] - mono()) > 0:  # timers may fire early
                await asyncio.sleep(delay)
            if writer.transport.is_closing():
                job.outcome = "client_closed"
                return False
            if i == cut_at:
                if fault == "cut":
                    job.outcome = "cut"
                    writer.close()
                    job.end = time.time()
                    return False
                if fault == "stall":
                    return await self._stall(job, reader)
            parts: list[str] = []
            if i == 0 and role:
                parts.append(frame(role))
            if i == cut_at:  # malformed
                parts.append(frame('{"id":"malformed","choices":[{"index":0,"text":'))
                job.outcome = "malformed"
            text = output_text(done, n)
            done += n
            fin = f'"{job.finish_reason}","stop_reason":null' if i == last else fin_open
            ev = body_open + text + mid_open + fin + mid_close
            if continuous:
                ev += ',"usage":' + _usage(p, done)
            parts.append(frame(ev + "}"))
            if i == last:
                if job.include_usage and usage_on:
                    parts.append(frame(pre + '[],"usage":' + _usage(p, done) + "}"))
                parts.append(frame("[DONE]"))
                if chunked:
                    parts.append("0\r\n\r\n")
            writer.write("".join(parts).encode())
            await writer.drain()
            t = time.time()
            job.chunks.append([t, n])
            live.generated = done
            job.completion_tokens = done
            if n:
                metrics.observe_chunk(n)
        job.end = job.chunks[-1][0]
        metrics.requests_success += 1
        if not chunked:
            return False
        return keep

    def _write_log(self, job: _Job) -> None:
        """One JSON line per request. ``recv``: body fully read; ``start``: admitted (a
        ``--max-num-seqs`` slot); ``chunks``: [time.time() after write+drain, tokens];
        ``outcome``: done | error | cut | stall | malformed | client_closed."""
        if self._log is None:
            return
        rec = {
            "request_id": job.request_id,
            "chat": job.chat,
            "stream": job.stream,
            "recv": job.recv,
            "start": job.start,
            "chunks": job.chunks,
            "end": job.end,
            "fault": job.fault,
            "outcome": job.outcome,
            "status": job.status,
            "prompt_tokens": job.prompt_tokens,
            "completion_tokens": job.completion_tokens,
            "finish_reason": job.finish_reason,
        }
        self._log.write(json.dumps(rec, separators=(",", ":")) + "\n")


def _frame(data: str) -> str:
    """One SSE event as one HTTP chunk (the size counts bytes; our payloads are ASCII-safe)."""
    ev = f"data: {data}\n\n"
    return f"{len(ev.encode()):x}\r\n{ev}\r\n"


def _usage(prompt: int, completion: int) -> str:
    """vLLM's UsageInfo JSON (field order included) for streamed chunks."""
    total = prompt + completion
    return f'{{"prompt_tokens":{prompt},"total_tokens":{total},"completion_tokens":{completion}}}'


def _raw(data: str) -> str:
    return f"data: {data}\n\n"


# ----------------------------------------------------------------------------- process helpers


def _repo_root() -> str:
    return str(Path(__file__).resolve().parents[2])


def start_mock_process(
    config_args: Sequence[str] | MockConfig = (), *, timeout_s: float = 15.0
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``python -m loadgen.mock`` on a free port; return (process, base URL).

    Timing tests need this: the server must not share the client's event loop.
    The caller stops it with ``stop_mock_process`` (or ``proc.terminate()``).
    """
    args = config_args.to_args() if isinstance(config_args, MockConfig) else list(config_args)
    if "--port" not in args:
        args += ["--port", "0"]
    env = dict(os.environ)
    env["PYTHONPATH"] = _repo_root() + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadgen.mock", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    line = proc.stdout.readline().decode().strip() if ready else ""
    prefix = "listening on "
    if not line.startswith(prefix):
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        err = proc.stderr.read().decode().strip().splitlines() if proc.stderr else []
        stop_mock_process(proc)
        raise SpecloadError(f"mock server did not start: {err[-1] if err else line or 'timeout'}")
    return proc, line[len(prefix) :]


def stop_mock_process(proc: subprocess.Popen[bytes], timeout_s: float = 5.0) -> int:
    """SIGTERM, then SIGKILL if it lingers; returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for s in (proc.stdout, proc.stderr):
        if s is not None:
            s.close()
    return proc.returncode


@contextlib.contextmanager
def mock_process(config_args: Sequence[str] | MockConfig = ()) -> Iterator[str]:
    """``with mock_process(["--itl-ms", "5"]) as url: ...``"""
    proc, url = start_mock_process(config_args)
    try:
        yield url
    finally:
        stop_mock_process(proc)


# ----------------------------------------------------------------------------- CLI


async def serve(config: MockConfig) -> None:
    """Run until SIGINT/SIGTERM; print the URL as the first stdout line."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with MockServer(config) as srv:
        print(f"listening on {srv.url}", flush=True)
        await stop.wait()


def _run(config: MockConfig) -> None:
    if config.loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if config.loop == "uvloop":
                raise SpecloadError("--loop uvloop: uvloop is not installed") from None
        else:
            uvloop.run(serve(config))
            return
    asyncio.run(serve(config))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        _run(config_from_args(argv))
    except SpecloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # port in use, bad host
        print(f"error: --host/--port: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The mock OpenAI-compatible streaming server: a fast stand-in for vLLM with exact
ground-truth timing.

Why it exists: the client's timing maths needs a server whose chunk times are *known*
(``--log`` records ``time.time()`` after each chunk's socket write), fault paths need a
server that fails on demand, and load tests need more chunks/s than a CPU vLLM gives.
So it is raw asyncio streams plus a minimal HTTP/1.1 parser (``http11``): no framework on
the hot path.

Timing model (on ``time.monotonic``; the log holds ``time.time``): the request is
"received" (the log's ``recv``) when its head has arrived, before any parsing, and
"admitted" when its body is read and a ``--max-num-seqs`` slot frees (at once by
default; first come, first served: ``queueing``). From admission the chunks follow an
absolute schedule (``chunks.chunk_times``, plus ``--token-ms`` per token: ``queueing``),
so sleep overshoot never accumulates. The logged time of a chunk is taken right after
``writer.write()`` + ``await writer.drain()``: drain returns at once unless the socket
buffer is full, so this is the moment the bytes were handed to the kernel, which is the
closest server-side analogue of "the client could read it now".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from loadgen.mock.chunks import chunk_times, completion_length
from loadgen.mock.config import MockConfig
from loadgen.mock.faults import FAULTS
from loadgen.mock.http11 import (
    BadRequest,
    Request,
    http_response,
    read_request,
    response_head,
    sse_chunk,
    sse_raw,
)
from loadgen.mock.prometheus import MockMetrics, render_metrics
from loadgen.mock.queueing import SlotQueue, add_token_time
from loadgen.mock.responses import (
    completion_body,
    error_body,
    models_body,
    stream_pieces,
    usage_json,
)
from loadgen.mock.tokens import content_text, detokenize, output_text, prompt_token_count, tokenize


@dataclass(slots=True)
class _Job:
    """One inference request being served: what was asked, what was planned (its chunk
    sizes and their due times on ``time.monotonic``), what happened."""

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
    sizes: list[int] = field(default_factory=list)
    targets: list[float] = field(default_factory=list)


class MockServer:
    """The server; ``async with MockServer(cfg) as srv: srv.url`` runs it in the current loop."""

    def __init__(self, config: MockConfig | None = None) -> None:
        self.config = config or MockConfig()
        self.metrics = MockMetrics(spec_k=self.config.spec_k)
        self._live: dict[int, _Job] = {}  # admitted, not finished: for the gauges
        self._n = 0  # inference request counter (1-based after increment)
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[Any]] = set()
        self._sem = SlotQueue(self.config.max_num_seqs) if self.config.max_num_seqs else None
        self._log: TextIO | None = None
        self._flusher: asyncio.Task[None] | None = None
        self.port = 0
        self.created = int(time.time())
        self.drift_origin = self.config.drift_origin or time.time()

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
                except BadRequest as e:
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
            body = models_body(self.config.model, self.created, self.config.max_model_len)
            return await self._reply(writer, req, 200, body)
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

    def _kv_usage(self) -> float:
        live = sum(j.prompt_tokens + j.completion_tokens for j in self._live.values())
        return min(1.0, live / self.config.kv_capacity_tokens)

    async def _tokenize(self, req: Request, writer: asyncio.StreamWriter, forward: bool) -> bool:
        try:
            body = json.loads(req.body or b"{}")
            if forward:
                if "messages" in body:
                    text = " ".join(content_text(m.get("content")) for m in body["messages"])
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
            fault=cfg.faults.pick(
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
        else:
            stop_early = not body.get("ignore_eos")
            total, finish = completion_length(job.max_tokens, cfg.eos_prob, stop_early, job.rng)
        job.sizes = cfg.plan.sizes(total, job.rng) if total else [0]
        job.finish_reason = finish
        t_admit = None
        if self._sem is not None:
            self.metrics.waiting += 1
            try:
                t_admit = await self._sem.acquire()
            finally:
                self.metrics.waiting -= 1
        job.start = time.time()  # wall clock first: the schedule base is never before it
        now = time.monotonic()  # not loop.time(): uvloop's is cached per iteration, in ms
        if t_admit is None:
            t_admit = now
        else:  # admitted when the slot was due to free (queueing.SlotQueue), maybe just before
            job.start -= now - t_admit
        self._live[id(job)] = job
        self.metrics.prompt_tokens += job.prompt_tokens
        try:
            ttft, itl, jit = cfg.ttft_ms / 1e3, cfg.itl_ms / 1e3, cfg.jitter_ms / 1e3
            slow = cfg.drift_plan.factor(job.start - self.drift_origin)  # 1.0 without drift
            ttft, itl = ttft * slow, itl * slow
            job.targets = chunk_times(t_admit, len(job.sizes), ttft, itl, jit, job.rng)
            job.targets = add_token_time(job.targets, job.sizes, cfg.token_ms / 1e3)
            if job.stream:
                return await self._stream(job, req, reader, writer)
            return await self._whole(job, req, reader, writer)
        finally:
            del self._live[id(job)]
            if self._sem is not None:
                # due to end at its last chunk's time; sooner if it was cut short
                due = job.targets[-1] if job.targets else None
                self._sem.release(None if due is None else min(due, time.monotonic()))

    async def _break_off(
        self, job: _Job, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """The ``cut`` fault (close the connection) or ``stall`` (hang until the client
        gives up, EOF, or the server shuts down); False: the connection is done."""
        if job.fault == "cut":
            job.outcome = "cut"
            writer.close()
            job.end = time.time()
            return False
        job.outcome = "stall"
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass
        job.end = time.time()
        return False

    async def _whole(
        self, job: _Job, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Non-streaming: one JSON body when the last chunk would have gone out."""
        while (delay := job.targets[-1] - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        fault = job.fault
        if fault in ("cut", "stall"):
            return await self._break_off(job, reader, writer)
        total = sum(job.sizes)
        for n in job.sizes:
            if n:
                self.metrics.observe_chunk(n)
        job.completion_tokens = total
        data = completion_body(
            chat=job.chat,
            request_id=job.request_id,
            created=int(job.recv),
            model=self.config.model,
            text=output_text(0, total),
            finish_reason=job.finish_reason,
            prompt_tokens=job.prompt_tokens,
            completion_tokens=total,
            with_usage=fault != "nousage",
        )
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
        self, job: _Job, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """SSE: one HTTP chunk per event, chunk i written at targets[i] (time.monotonic).

        The per-chunk loop is the mock's hot path: what it needs sits in locals.
        """
        mono = time.monotonic
        cfg = self.config
        sizes, targets = job.sizes, job.targets
        fault = job.fault
        chunked = req.chunked_ok
        keep = req.keep_alive and chunked
        head = response_head(
            200,
            "text/event-stream; charset=utf-8",
            "transfer-encoding: chunked\r\n" if chunked else "",
            keep,
        )
        writer.write(head.encode())
        usage_on = fault != "nousage"
        continuous = job.continuous and usage_on
        p = job.prompt_tokens
        pre, role, body_open, mid_open, fin_open, mid_close = stream_pieces(
            chat=job.chat,
            request_id=job.request_id,
            created=int(job.recv),
            model=cfg.model,
            prompt_tokens=p,
            continuous=continuous,
        )
        # faults strike before chunk len//2: half the chunks got out (none if there is one)
        cut_at = len(sizes) // 2 if fault in ("cut", "stall", "malformed") else -1
        frame = sse_chunk if chunked else sse_raw
        metrics = self.metrics
        done = 0
        last = len(sizes) - 1
        for i, n in enumerate(sizes):
            while (delay := targets[i] - mono()) > 0:  # timers may fire early
                await asyncio.sleep(delay)
            if writer.transport.is_closing():
                job.outcome = "client_closed"
                return False
            if i == cut_at and fault != "malformed":  # cut or stall
                return await self._break_off(job, reader, writer)
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
                ev += ',"usage":' + usage_json(p, done)
            parts.append(frame(ev + "}"))
            if i == last:
                if job.include_usage and usage_on:
                    parts.append(frame(pre + '[],"usage":' + usage_json(p, done) + "}"))
                parts.append(frame("[DONE]"))
                if chunked:
                    parts.append("0\r\n\r\n")
            writer.write("".join(parts).encode())
            await writer.drain()
            t = time.time()
            job.chunks.append([t, n])
            job.completion_tokens = done
            if n:
                metrics.observe_chunk(n)
        job.end = job.chunks[-1][0]
        metrics.requests_success += 1
        if not chunked:
            return False
        return keep

    def _write_log(self, job: _Job) -> None:
        """One JSON line per request. ``recv``: head arrived; ``start``: admitted (a
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


async def serve(config: MockConfig) -> None:
    """Run until SIGINT/SIGTERM; print the URL as the first stdout line."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with MockServer(config) as srv:
        print(f"listening on {srv.url}", flush=True)
        await stop.wait()

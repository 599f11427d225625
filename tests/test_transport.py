"""The two transports behind one interface: same records, same error kinds.

Every fault runs through both ``httpx`` and ``raw`` against the in-process mock; the raw
client's HTTP framing (chunked, content-length, close-delimited, reads split anywhere) is
also checked against hand-written responses and byte-level splits.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.cli import main as loadgen_main
from loadgen.http import httpx_transport
from loadgen.http import raw as transport_raw
from loadgen.http.base import TRANSPORTS, RequestSettings, Transport, make_transport
from loadgen.http.raw import _Conn, parse_head
from loadgen.mock.config import MockConfig
from loadgen.mock.process import mock_process
from loadgen.mock.server import MockServer
from loadgen.results.files import read_records
from loadgen.results.records import RequestRecord
from tests.conftest import free_port

BOTH = pytest.mark.parametrize("transport", TRANSPORTS)
DATA = Path(__file__).parent / "data"  # a self-signed certificate for 127.0.0.1, tests only


def _rec(i: int = 0) -> RequestRecord:
    return RequestRecord(request_id=i, phase="p", scheduled_s=0.0, sent_s=0.0)


async def _send(
    t: Transport, i: int = 0, max_tokens: int = 8, prompt: str = "w1 w2"
) -> RequestRecord:
    rec = _rec(i)
    await t.send_request(rec, prompt, max_tokens, f"r-{i}")
    return rec


def run_mock(
    transport: str,
    body: Callable[[Transport, MockServer], Awaitable[Any]],
    *,
    timeout_s: float = 5.0,
    api_key: str | None = None,
    **cfg: Any,
) -> Any:
    """Run ``body(transport, server)`` against an in-process mock."""

    async def go() -> Any:
        async with MockServer(MockConfig(**cfg)) as srv:
            s = RequestSettings(
                base_url=srv.url, model="mock-model", timeout_s=timeout_s, api_key=api_key
            )
            t0 = time.perf_counter()
            t = make_transport(transport, s, lambda: time.perf_counter() - t0)
            try:
                return await body(t, srv)
            finally:
                await t.aclose()

    return asyncio.run(go())


def one(transport: str, max_tokens: int = 8, **cfg: Any) -> RequestRecord:
    return run_mock(transport, lambda t, _s: _send(t, max_tokens=max_tokens), **cfg)


# --- the same record through either transport ---------------------------------------------


@BOTH
@pytest.mark.parametrize("tokens_per_chunk", ["1", "1,3,2"])
def test_stream_fills_the_record(transport: str, tokens_per_chunk: str) -> None:
    rec = one(transport, max_tokens=12, tokens_per_chunk=tokens_per_chunk, itl_ms=1.0)
    assert rec.ok, rec.error
    want = [1] * 12 if tokens_per_chunk == "1" else [1, 3, 2, 1, 3, 2]
    assert rec.chunk_tokens == want and rec.output_tokens == 12
    assert rec.status_code == 200 and rec.finish_reason == "length"
    assert rec.prompt_tokens == 2 and rec.usage_source == "usage"
    assert rec.expected_output_tokens == 12
    assert rec.written_s is not None and rec.sent_s <= rec.written_s
    assert rec.first_token_s == rec.chunk_times[0]
    assert rec.chunk_times == sorted(rec.chunk_times)
    assert rec.end_s is not None and rec.chunk_times[-1] <= rec.end_s


@BOTH
@pytest.mark.parametrize(
    ("cfg", "kind", "status"),
    [
        ({"cut_rate": "every:1"}, "stream_cut", 200),
        ({"malformed_rate": "every:1"}, "bad_sse", 200),
        ({"empty": True}, "empty", 200),
        ({"fail_rate": "every:1", "fail_status": 500}, "http", 500),
        ({"fail_rate": "every:1", "fail_status": 429}, "http", 429),
        ({"fail_rate": "every:1", "fail_status": 400}, "http", 400),
    ],
)
def test_faults_have_the_same_kind(transport: str, cfg: dict, kind: str, status: int) -> None:
    rec = one(transport, **cfg)
    assert rec.error_kind == kind and rec.status_code == status, rec.error
    assert rec.error and "\n" not in rec.error and rec.end_s is not None
    if kind == "http":  # the body's message is kept, on one line
        assert rec.error.startswith(f"HTTP {status}: ") and f"mock fault {status}" in rec.error
    if kind == "stream_cut":  # what arrived before the cut is kept: half the chunks
        assert rec.error.startswith("stream cut: ") and rec.chunk_tokens == [1] * 4


@BOTH
def test_no_usage_leaves_the_counts_unknown(transport: str) -> None:
    rec = one(transport, no_usage=True)
    assert rec.ok and rec.usage_source == "none" and rec.chunk_tokens == []
    assert len(rec.chunk_times) == 8 and rec.output_tokens is None


@BOTH
def test_stall_times_out_and_keeps_partial_data(transport: str) -> None:
    t0 = time.monotonic()
    rec = run_mock(transport, lambda t, _s: _send(t), timeout_s=0.3, stall_rate="every:1")
    assert rec.error_kind == "timeout" and rec.chunk_tokens == [1] * 4
    assert 0.25 <= rec.e2e_s <= 1.0 and time.monotonic() - t0 < 2.0  # type: ignore[operator]


@BOTH
def test_trickle_hits_the_total_deadline(transport: str) -> None:
    rec = run_mock(transport, lambda t, _s: _send(t, max_tokens=30), timeout_s=0.5, itl_ms=100.0)
    assert rec.error_kind == "timeout" and "0.5 s" in (rec.error or "")
    assert 3 <= len(rec.chunk_times) <= 7


@BOTH
def test_connection_refused(transport: str) -> None:
    async def go() -> RequestRecord:
        s = RequestSettings(base_url=f"http://127.0.0.1:{free_port()}", model="m")
        t = make_transport(transport, s, time.perf_counter)
        t.prefill(2)
        await t.connect()  # failures here are left for the requests to record
        try:
            return await _send(t)
        finally:
            await t.aclose()

    rec = asyncio.run(go())
    assert rec.error_kind == "connect" and "cannot connect to http://127.0.0.1:" in rec.error  # type: ignore[operator]


@BOTH
def test_cancel_marks_the_record_and_reraises(transport: str) -> None:
    async def body(t: Transport, _srv: MockServer) -> RequestRecord:
        rec = _rec()
        task = asyncio.create_task(t.send_request(rec, "w1", 50, "r0"))
        await asyncio.sleep(0.15)  # a few 20 ms chunks in; they are parsed on the way out
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return rec

    rec = run_mock(transport, body, itl_ms=20.0)
    assert rec.error_kind == "cancelled" and len(rec.chunk_times) >= 1


@BOTH
def test_keep_alive_reuses_one_connection(transport: str) -> None:
    async def body(t: Transport, srv: MockServer) -> tuple[list[RequestRecord], int, int]:
        t.prefill(1)
        await t.connect()
        recs = [await _send(t, i) for i in range(5)]
        before_cut = srv.metrics.connections
        # a cut stream drops its connection; the next request opens a new one and succeeds
        srv.config.cut_rate = "every:1"
        srv.config.__post_init__()
        recs.append(await _send(t, 5))
        srv.config.cut_rate = "0"
        srv.config.__post_init__()
        recs.append(await _send(t, 6))
        return recs, before_cut, srv.metrics.connections

    recs, before_cut, after = run_mock(transport, body)
    assert all(r.ok for r in recs[:5]) and recs[5].error_kind == "stream_cut" and recs[6].ok
    assert before_cut == 1 and after == 2


# --- raw framing against hand-written responses ---------------------------------------------

SSE = b"".join(
    b"data: " + json.dumps(ev, separators=(",", ":")).encode() + b"\n\n"
    for ev in [
        {"choices": [{"index": 0, "text": " a"}], "usage": {"completion_tokens": 1}},
        {"choices": [{"index": 0, "text": " b", "finish_reason": "length"}],
         "usage": {"prompt_tokens": 3, "completion_tokens": 3}},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 3}},
    ]
) + b"data: [DONE]\n\n"  # fmt: skip


def _chunked(body: bytes, size: int) -> bytes:
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\nx-t: 1\r\n\r\n"


RESPONSES = {
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + _chunked(SSE, 37),
    "content-length": b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(SSE), SSE),
    "close": b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + SSE,
    "interim": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
    % (len(SSE), SSE),
}


class _Server:
    """Answers every request with ``response``, written in ``pieces`` with pauses between
    (so the client sees several reads); records what it was sent."""

    def __init__(self, response: bytes, pieces: int = 3) -> None:
        self.response = response
        self.pieces = pieces
        self.requests: list[bytes] = []
        self.connections = 0

    async def handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                n = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                self.requests.append(head + await r.readexactly(n))
                step = -(-len(self.response) // self.pieces)
                for i in range(0, len(self.response), step):
                    w.write(self.response[i : i + step])
                    await w.drain()
                    await asyncio.sleep(0.01)
                if b"connection: close" in self.response.lower():
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()


def run_server(
    srv: _Server,
    n: int = 2,
    api_key: str | None = None,
    transport: str = "raw",
    tls: ssl.SSLContext | None = None,
) -> list[RequestRecord]:
    async def go() -> list[RequestRecord]:
        server = await asyncio.start_server(srv.handle, "127.0.0.1", 0, ssl=tls)
        port = server.sockets[0].getsockname()[1]
        url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/"
        s = RequestSettings(base_url=url, model="m", api_key=api_key, timeout_s=10.0)
        t = make_transport(transport, s, time.perf_counter)
        try:
            return [await _send(t, i) for i in range(n)]
        finally:
            await t.aclose()
            server.close()

    return asyncio.run(go())


@pytest.mark.parametrize("kind", list(RESPONSES))
def test_raw_framings(kind: str) -> None:
    srv = _Server(RESPONSES[kind])
    recs = run_server(srv)
    for r in recs:
        assert r.ok, r.error
        assert r.chunk_tokens == [1, 2] and r.output_tokens == 3 and r.finish_reason == "length"
    # keep-alive unless the response is delimited by the connection closing
    assert srv.connections == (2 if kind == "close" else 1)
    head = srv.requests[0].split(b"\r\n\r\n")[0].decode().lower()
    assert head.startswith("post /v1/completions http/1.1\r\n")
    assert "x-request-id: r-0" in head and "host: 127.0.0.1:" in head


def _server_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(DATA / "tls-test-only.crt", DATA / "tls-test-only.key")
    return ctx


@BOTH
def test_https(transport: str, monkeypatch: Any) -> None:
    trusted = ssl.create_default_context(cafile=str(DATA / "tls-test-only.crt"))
    monkeypatch.setattr(httpx_transport, "tls_context", lambda: trusted)
    monkeypatch.setattr(transport_raw, "tls_context", lambda: trusted)
    srv = _Server(RESPONSES["chunked"])
    recs = run_server(srv, transport=transport, tls=_server_tls())
    assert all(r.ok and r.chunk_tokens == [1, 2] for r in recs), recs[0].error
    assert srv.connections == 1  # kept alive over TLS too
    # written_s is when the request left the buffer, not when the response came back (asyncio's
    # TLS transport pauses writing at size >= high, so high=0 would pause at once)
    assert all(r.written_s is not None and r.written_s < r.chunk_times[0] for r in recs), [
        (r.written_s, r.chunk_times[:1]) for r in recs
    ]


@BOTH
def test_https_untrusted_certificate_is_a_connect_error(transport: str) -> None:
    (rec,) = run_server(_Server(RESPONSES["chunked"]), n=1, transport=transport, tls=_server_tls())
    assert rec.error_kind == "connect" and "CERTIFICATE_VERIFY_FAILED" in (rec.error or "")


def test_raw_sends_the_api_key_and_never_records_it(tmp_path: Path) -> None:
    key = "sk-secret-raw-1234"
    body = b'{"error":{"message":"bad key","code":401}}'
    srv = _Server(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    (rec,) = run_server(srv, n=1, api_key=key)
    assert f"authorization: Bearer {key}".encode() in srv.requests[0]
    assert rec.error_kind == "http" and rec.status_code == 401 and "bad key" in (rec.error or "")
    assert key not in rec.to_json()


@pytest.mark.parametrize(
    ("response", "why"),
    [
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk-size"),
        (b"garbage\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nConnection: close\r\n\r\ndata: ", "body"),
    ],
)
def test_raw_broken_http_is_a_stream_cut(response: bytes, why: str) -> None:
    (rec,) = run_server(_Server(response, pieces=1), n=1)
    assert rec.error_kind == "stream_cut" and why in (rec.error or ""), rec.error


class _FakeTransport:
    def __init__(self) -> None:
        self.closed = False

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def get_extra_info(self, name: str) -> None:
        return None

    def close(self) -> None:
        self.closed = True

    abort = close


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(["chunked", "content-length", "interim"]),
    cuts=st.lists(st.integers(min_value=1, max_value=2000), max_size=12),
)
def test_raw_framing_survives_any_split(kind: str, cuts: list[int]) -> None:
    """Whatever the read boundaries, the body is the same bytes and the response ends once."""
    wire = RESPONSES[kind]
    bounds = sorted({c % len(wire) for c in cuts} - {0})

    async def go() -> tuple[_Conn, bytes]:
        ticks = iter(range(1, 1000))
        conn = _Conn(lambda: float(next(ticks)))
        conn.connection_made(_FakeTransport())  # type: ignore[arg-type]
        done = conn.begin(RequestSettings(base_url="http://x", model="m", timeout_s=5.0))
        for a, b in zip([0, *bounds], [*bounds, len(wire)], strict=True):
            assert not done.done()
            conn.data_received(wire[a:b])
        assert done.done()
        return conn, b"".join(p for _, p in conn.reads)

    conn, body = asyncio.run(go())
    assert conn.error is None and conn.status == 200 and body == SSE
    assert conn.reusable
    times = [t for t, _ in conn.reads]
    assert times == sorted(times) and len(set(times)) == len(times)  # one stamp per read


def test_parse_head() -> None:
    v, status, h = parse_head(b"HTTP/1.1 404 Not Found\r\nA: 1\r\nSet-X: a\r\nset-x: b")
    assert (v, status, h) == ("HTTP/1.1", 404, {"a": "1", "set-x": "a, b"})
    with pytest.raises(ValueError, match="bad header line"):
        parse_head(b"HTTP/1.1 200 OK\r\nno colon")


# --- the flag --------------------------------------------------------------------------------


def test_transport_flag_reaches_the_run(tmp_path: Path) -> None:
    sc = tmp_path / "s.yaml"
    sc.write_text(
        json.dumps(
            {
                "load": {"shape": "concurrency", "concurrency": 3},
                "num_requests": 9,
                "prompts": {"source": "base_prompt", "base_prompt": "w1 w2"},
                "output_tokens": 6,
            }
        )
    )
    with mock_process(["--tokens-per-chunk", "2"]) as url:
        code = loadgen_main(["--scenario", str(sc), "--base-url", url, "--transport", "raw",
                             "--output-dir", str(tmp_path / "r"), "--no-progress"])  # fmt: skip
    assert code == 0
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["scenario"]["transport"] == "raw" and run["loadgen"]["transport"] == "raw"
    recs = list(read_records(tmp_path / "r" / "concurrency=3" / "requests.jsonl"))
    assert len(recs) == 9 and all(r.ok and r.chunk_tokens == [2, 2, 2] for r in recs)


def test_bad_transport_flag_is_one_line(capsys: Any) -> None:
    with pytest.raises(SystemExit) as e:
        loadgen_main(["--scenario", "smoke", "--transport", "curl"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "--transport" in err[0]


# --- the parse after the stream: sliced, so other streams' reads are stamped meanwhile -------


def _mock_reads(n: int) -> list[tuple[float, bytes]]:
    def ev(i: int) -> bytes:
        usage = {"prompt_tokens": 4, "total_tokens": 4 + i, "completion_tokens": i}
        obj = {"id": "c", "choices": [{"index": 0, "text": f" w{i}"}], "usage": usage}
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    reads = [(0.01 * i, ev(i)) for i in range(1, n + 1)]
    return [*reads, (9.0, b"data: [DONE]\n\n")]


def test_sliced_parse_matches_and_yields() -> None:
    from loadgen.http.sse import _parse_steps, _parse_stream, parse_stream

    reads = _mock_reads(300)
    want = _rec()
    _parse_stream(want, reads)
    assert want.ok and want.output_tokens == 300 and len(want.chunk_times) == 300
    got = _rec()
    assert len(list(_parse_steps(got, reads, 64))) == 300 // 64  # one yield per 64 events
    assert got == want

    async def cancelled_midway() -> RequestRecord:
        rec = _rec()
        task = asyncio.create_task(parse_stream(rec, reads, every=16))
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # a slice or two in
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return rec

    assert asyncio.run(cancelled_midway()) == want  # finished anyway: the record is whole


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(max_size=20),
    finish=st.sampled_from([None, "length", "stop"]),
    choices=st.booleans(),
    order=st.permutations(["prompt_tokens", "total_tokens", "completion_tokens"]),
    numbers=st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6)),
    tail=st.sampled_from(["", ',"x":null']),
)
def test_byte_scan_agrees_with_json_on_generated_chunks(
    text: str, finish: str | None, choices: bool, order: list[str], numbers: tuple, tail: str
) -> None:
    """_scan_chunk (its vLLM-order fast match and its general scan) reads what json does,
    or defers to json (None)."""
    from loadgen.http.sse import _scan_chunk

    usage = dict(zip(order, numbers, strict=True))
    ch = [{"index": 0, "text": text, "finish_reason": finish}] if choices else []
    head = json.dumps({"id": "x", "choices": ch, "usage": usage}, separators=(",", ":"))
    payload = (head[:-1] + tail + "}").encode()
    got = _scan_chunk(payload)
    if tail:
        assert got is None  # usage is not the last key: json parses it
        return
    want_finish = finish if choices else None
    want = (usage["completion_tokens"], usage["prompt_tokens"], choices, want_finish, None)
    assert got == want  # (the text is not read: None)


def test_parse_lock_serialises_parses_and_survives_cancel() -> None:
    """With a lock, two finished streams are parsed one after the other (the loop polls
    I/O between single slices), and a cancel while waiting still leaves a whole record."""
    from loadgen.http.sse import _parse_stream, parse_stream

    reads = _mock_reads(200)
    want = _rec()
    _parse_stream(want, reads)

    async def go() -> tuple[list[str], RequestRecord]:
        lock = asyncio.Lock()
        order: list[str] = []

        async def one(name: str, rec: RequestRecord) -> None:
            await parse_stream(rec, reads, every=16, lock=lock)
            order.append(name)

        a, b, c = _rec(), _rec(), _rec()
        ta = asyncio.create_task(one("a", a))
        tb = asyncio.create_task(one("b", b))
        for _ in range(4):
            await asyncio.sleep(0)
        assert not ta.done() and not b.chunk_times  # a is mid-parse, b waits its turn
        assert lock.locked()
        tc = asyncio.create_task(parse_stream(c, reads, every=16, lock=lock))
        await asyncio.sleep(0)
        tc.cancel()  # waiting for the lock: it parses anyway, then re-raises
        with pytest.raises(asyncio.CancelledError):
            await tc
        await asyncio.gather(ta, tb)
        assert a == b == want and not lock.locked()
        return order, c

    order, c = asyncio.run(go())
    assert order == ["a", "b"] and c == want

"""The mock server is ground truth for the client's timing tests, so it is tested hard:
exact vLLM shapes, usage maths, every fault, chunk spacing, metrics consistency."""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from loadgen.errors import SpecloadError
from loadgen.mock.chunks import ChunkPlan, parse_tokens_per_chunk
from loadgen.mock.config import MockConfig
from loadgen.mock.faults import parse_rate
from loadgen.mock.process import mock_process, start_mock_process, stop_mock_process
from loadgen.mock.server import MockServer
from loadgen.mock.tokens import detokenize, tokenize

STREAM_USAGE = {"include_usage": True, "continuous_usage_stats": True}


def run(cfg: MockConfig, fn: Callable[[MockServer, httpx.AsyncClient], Awaitable[Any]]) -> Any:
    """Run ``fn`` against an in-process server in a fresh loop."""

    async def main() -> Any:
        async with (
            MockServer(cfg) as srv,
            httpx.AsyncClient(base_url=srv.url, timeout=5.0) as client,
        ):
            return await fn(srv, client)

    return asyncio.run(main())


async def sse(
    client: httpx.AsyncClient,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> tuple[int, list[str]]:
    """POST and collect the ``data:`` payloads of an SSE response."""
    out: list[str] = []
    async with client.stream("POST", path, json=body, headers=headers) as r:
        if r.status_code != 200:
            await r.aread()
            return r.status_code, [r.text]
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["transfer-encoding"] == "chunked"
        async for line in r.aiter_lines():
            if line:
                assert line.startswith("data: "), line
                out.append(line[6:])
    return 200, out


def comp(max_tokens: int = 5, **kw: Any) -> dict[str, Any]:
    return {"model": "mock-model", "prompt": "one two three", "max_tokens": max_tokens, **kw}


def chat(max_tokens: int = 5, **kw: Any) -> dict[str, Any]:
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a b c"}]
    return {"model": "mock-model", "messages": msgs, "max_tokens": max_tokens, **kw}


# ------------------------------------------------------------------ pure parts


def test_tokens_per_chunk_parsing_and_sizes() -> None:
    import random

    assert parse_tokens_per_chunk("3").sizes(10, random.Random(0)) == [3, 3, 3, 1]
    assert parse_tokens_per_chunk("1,2").sizes(7, random.Random(0)) == [1, 2, 1, 2, 1]
    plan = parse_tokens_per_chunk("spec:4:0.7")
    assert plan == ChunkPlan(spec_k=4, spec_p=0.7) and plan.max_chunk == 5
    sizes = plan.sizes(10_000, random.Random(1))
    assert sum(sizes) == 10_000 and max(sizes) <= 5 and min(sizes) >= 1
    mean = 10_000 / len(sizes)
    expect = sum(0.7**j for j in range(5))  # 1 + p + ... + p^K
    assert abs(mean - expect) < 0.05
    for bad in ("0", "spec:0:0.5", "spec:2:1.5", "x", "spec:2"):
        with pytest.raises(SpecloadError, match="--tokens-per-chunk"):
            parse_tokens_per_chunk(bad)


def test_rates_and_config_errors_name_the_flag() -> None:
    assert parse_rate("every:3", "--cut-rate").every == 3
    assert parse_rate("0.25", "--cut-rate").prob == 0.25
    with pytest.raises(SpecloadError, match="--cut-rate"):
        parse_rate("2", "--cut-rate")
    with pytest.raises(SpecloadError, match="--stall-rate"):
        MockConfig(stall_rate="every:0")
    with pytest.raises(SpecloadError, match="--fail-status"):
        MockConfig(fail_status=418)
    with pytest.raises(SpecloadError, match="--num-spec-tokens"):
        MockConfig(tokens_per_chunk="4", num_spec_tokens=2)
    cfg = MockConfig(itl_ms=5, tokens_per_chunk="spec:3:0.5", no_usage=True)
    assert cfg.spec_k == 3
    assert "--no-usage" in cfg.to_args() and "--itl-ms" in cfg.to_args()


def test_tokenizer_round_trip() -> None:
    assert tokenize("w1  w22\nw0") == [1, 22, 0]
    assert detokenize([1, 22, 0]) == "w1 w22 w0"
    hashed = tokenize("hello hello world")
    assert hashed[0] == hashed[1] != hashed[2] and hashed[0] >= 1_000_000


# ------------------------------------------------------------------ HTTP shapes


def test_completions_stream_shape_and_continuous_usage() -> None:
    async def go(srv: MockServer, c: httpx.AsyncClient) -> None:
        status, data = await sse(
            c, "/v1/completions", comp(7, stream=True, stream_options=STREAM_USAGE)
        )
        assert status == 200 and data[-1] == "[DONE]"
        chunks = [json.loads(d) for d in data[:-1]]
        *content, final = chunks
        assert len(content) == 7
        text = "".join(ch["choices"][0]["text"] for ch in content)
        assert text == " w0 w1 w2 w3 w4 w5 w6"
        first = content[0]
        assert list(first) == ["id", "object", "created", "model", "choices", "usage"]
        assert first["object"] == "text_completion" and first["model"] == "mock-model"
        assert list(first["choices"][0]) == [
            "index",
            "text",
            "logprobs",
            "finish_reason",
            "stop_reason",
            "prompt_token_ids",
            "token_ids",
        ]
        for i, ch in enumerate(content, 1):
            assert ch["usage"] == {
                "prompt_tokens": 3,
                "total_tokens": 3 + i,
                "completion_tokens": i,
            }
        assert [ch["choices"][0]["finish_reason"] for ch in content][-2:] == [None, "length"]
        assert final["choices"] == [] and final["usage"]["completion_tokens"] == 7

    run(MockConfig(), go)


def test_chat_stream_role_chunk_and_usage_only_when_asked() -> None:
    async def go(srv: MockServer, c: httpx.AsyncClient) -> None:
        _, data = await sse(c, "/v1/chat/completions", chat(4, stream=True))
        chunks = [json.loads(d) for d in data[:-1]]
        assert data[-1] == "[DONE]"
        role = chunks[0]
        assert role["object"] == "chat.completion.chunk"
        assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert all("usage" not in ch for ch in chunks)  # no stream_options: no usage
        content = "".join(ch["choices"][0]["delta"]["content"] for ch in chunks[1:])
        assert content == " w0 w1 w2 w3"
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"

        _, data = await sse(
            c, "/v1/chat/completions", chat(3, stream=True, stream_options={"include_usage": True})
        )
        final = json.loads(data[-2])
        # prompt tokens = words over all messages: "be brief" + "a b c"
        assert final["usage"] == {"prompt_tokens": 5, "total_tokens": 8, "completion_tokens": 3}
        assert all("usage" not in json.loads(d) for d in data[:-2])  # not continuous

    run(MockConfig(), go)


def test_non_stream_shapes_models_health_tokenize() -> None:
    async def go(srv: MockServer, c: httpx.AsyncClient) -> None:
        r = await c.post("/v1/completions", json=comp(3))
        body = r.json()
        assert body["choices"][0]["text"] == " w0 w1 w2"
        assert body["usage"]["completion_tokens"] == 3 and body["usage"]["prompt_tokens"] == 3
        r = await c.post("/v1/chat/completions", json=chat(2, max_completion_tokens=4))
        msg = r.json()["choices"][0]["message"]
        assert msg["role"] == "assistant" and msg["content"] == " w0 w1 w2 w3"
        models = (await c.get("/v1/models")).json()
        assert [m["id"] for m in models["data"]] == ["mock-model"]
        assert (await c.get("/health")).status_code == 200
        tok = (await c.post("/tokenize", json={"model": "mock-model", "prompt": "w5 w7 w9"})).json()
        assert tok["tokens"] == [5, 7, 9] and tok["count"] == 3 and tok["max_model_len"] == 4096
        detok = await c.post("/detokenize", json={"model": "mock-model", "tokens": tok["tokens"]})
        assert detok.json() == {"prompt": "w5 w7 w9"}
        assert (await c.post("/v1/completions", json=comp(model="other"))).status_code == 404
        assert (await c.post("/v1/completions", json=comp(max_tokens=0))).status_code == 400
        assert (await c.get("/nope")).status_code == 404

    run(MockConfig(), go)


def test_eos_prob_stops_early_unless_ignore_eos() -> None:
    async def go(srv: MockServer, c: httpx.AsyncClient) -> tuple[list[Any], list[Any]]:
        free, forced = [], []
        for _ in range(10):
            free.append((await c.post("/v1/completions", json=comp(50))).json())
            forced.append((await c.post("/v1/completions", json=comp(50, ignore_eos=True))).json())
        return free, forced

    free, forced = run(MockConfig(eos_prob=0.2, seed=1), go)
    assert all(r["usage"]["completion_tokens"] == 50 for r in forced)
    assert all(r["choices"][0]["finish_reason"] == "length" for r in forced)
    early = [r for r in free if r["usage"]["completion_tokens"] < 50]
    assert len(early) >= 8 and all(r["choices"][0]["finish_reason"] == "stop" for r in early)


# ------------------------------------------------------------------ faults


@pytest.mark.parametrize("code", [500, 429, 503, 400])
def test_status_fault_via_header(code: int) -> None:
    async def go(srv: MockServer, c: httpx.AsyncClient) -> None:
        r = await c.post(
            "/v1/completions", json=comp(stream=True), headers={"x-mock-fault": str(code)}
        )
        assert r.status_code == code
        assert r.json()["error"]["code"] == code
        ok = await c.post("/v1/completions", json=comp())  # the next one is fine
        assert ok.status_code == 200

    run(MockConfig(), go)


def test_cut_stall_malformed_nousage_empty_via_header(tmp_path: Path) -> None:
    log = tmp_path / "gt.jsonl"

    async def go(srv: MockServer, c: httpx.AsyncClient) -> None:
        body = comp(8, stream=True, stream_options=STREAM_USAGE)
        got: list[str] = []
        with pytest.raises(httpx.RemoteProtocolError):
            async with c.stream(
                "POST", "/v1/completions", json=body, headers={"x-mock-fault": "cut"}
            ) as r:
                async for line in r.aiter_lines():
                    got.append(line)
        assert "data: [DONE]" not in got and sum(x.startswith("data: {") for x in got) == 4

        got = []
        with pytest.raises(httpx.ReadTimeout):
            async with c.stream(
                "POST",
                "/v1/completions",
                json=body,
                headers={"x-mock-fault": "stall"},
                timeout=httpx.Timeout(5.0, read=0.3),
            ) as r:
                async for line in r.aiter_lines():
                    got.append(line)
        assert sum(x.startswith("data: {") for x in got) == 4

        _, data = await sse(c, "/v1/completions", body, {"x-mock-fault": "malformed"})
        bad = 0
        for d in data[:-1]:
            try:
                json.loads(d)
            except json.JSONDecodeError:
                bad += 1
        assert bad == 1 and data[-1] == "[DONE]"

        _, data = await sse(
            c,
            "/v1/chat/completions",
            chat(3, stream=True, stream_options=STREAM_USAGE),
            {"x-mock-fault": "nousage"},
        )
        assert data[-1] == "[DONE]" and all("usage" not in json.loads(d) for d in data[:-1])

        _, data = await sse(c, "/v1/completions", body, {"x-mock-fault": "empty"})
        chunks = [json.loads(d) for d in data[:-1]]
        assert "".join(ch["choices"][0]["text"] for ch in chunks if ch["choices"]) == ""
        assert chunks[-1]["usage"]["completion_tokens"] == 0
        r = await c.post("/v1/completions", json=comp(), headers={"x-mock-fault": "bogus"})
        assert r.status_code == 400 and "x-mock-fault" in r.json()["error"]["message"]
        await asyncio.sleep(0.05)  # let the stalled request see the client hang up

    run(MockConfig(itl_ms=1, log=str(log)), go)
    recs = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r["outcome"] for r in recs[:5]] == ["cut", "stall", "malformed", "done", "done"]
    assert [r["fault"] for r in recs[:5]] == ["cut", "stall", "malformed", "nousage", "empty"]


def test_fault_rates_every_n_are_deterministic() -> None:
    async def go(srv: MockServer, c: httpx.AsyncClient) -> list[int]:
        return [(await c.post("/v1/completions", json=comp(1))).status_code for _ in range(6)]

    assert run(MockConfig(fail_rate="every:3", fail_status=503), go) == [
        200,
        200,
        503,
        200,
        200,
        503,
    ]


def test_fault_probability_is_seeded() -> None:
    async def go(srv: MockServer, c: httpx.AsyncClient) -> list[int]:
        return [(await c.post("/v1/completions", json=comp(1))).status_code for _ in range(40)]

    a = run(MockConfig(fail_rate="0.5", fail_status=429, seed=7), go)
    b = run(MockConfig(fail_rate="0.5", fail_status=429, seed=7), go)
    assert a == b and 5 < a.count(429) < 35


# ------------------------------------------------------------------ metrics, keep-alive, queue


def test_metrics_consistent_with_streamed_chunks() -> None:
    def scrape(text: str) -> dict[str, float]:
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, val = line.rsplit(" ", 1)
                out[name] = float(val)
        return out

    async def go(srv: MockServer, c: httpx.AsyncClient) -> None:
        sizes: list[int] = []
        for _ in range(10):
            _, data = await sse(
                c, "/v1/completions", comp(25, stream=True, stream_options=STREAM_USAGE)
            )
            prev = 0
            for d in data[:-2]:
                done = json.loads(d)["usage"]["completion_tokens"]
                sizes.append(done - prev)
                prev = done
        m = scrape((await c.get("/metrics")).text)
        lab = 'model_name="mock-model",engine="0"'
        k = 3
        assert max(sizes) > 1 and max(sizes) <= k + 1
        assert m[f"vllm:spec_decode_num_drafts_total{{{lab}}}"] == len(sizes)
        assert m[f"vllm:spec_decode_num_draft_tokens_total{{{lab}}}"] == k * len(sizes)
        accepted = sum(sizes) - len(sizes)
        assert m[f"vllm:spec_decode_num_accepted_tokens_total{{{lab}}}"] == accepted
        per_pos = [
            m[f'vllm:spec_decode_num_accepted_tokens_per_pos_total{{{lab},position="{j}"}}']
            for j in range(k)
        ]
        assert per_pos == [sum(1 for s in sizes if s - 1 > j) for j in range(k)]
        assert m[f"vllm:generation_tokens_total{{{lab}}}"] == 250
        assert m[f"vllm:num_requests_running{{{lab}}}"] == 0

    run(MockConfig(tokens_per_chunk="spec:3:0.6", seed=3), go)


def test_no_spec_metrics_without_multi_token_chunks() -> None:
    async def go(srv: MockServer, c: httpx.AsyncClient) -> str:
        await c.post("/v1/completions", json=comp(3))
        return (await c.get("/metrics")).text

    text = run(MockConfig(), go)
    assert "vllm:num_requests_waiting" in text and "spec_decode" not in text


def test_keep_alive_many_requests_one_connection() -> None:
    async def go(srv: MockServer, c: httpx.AsyncClient) -> None:
        for i in range(5):
            status, data = await sse(c, "/v1/completions", comp(3, stream=True))
            assert status == 200 and data[-1] == "[DONE]", i
            assert (await c.post("/v1/chat/completions", json=chat(2))).status_code == 200
            assert (await c.get("/metrics")).status_code == 200
        assert srv.metrics.connections == 1

    run(MockConfig(), go)


def test_raw_pipelined_requests_on_one_socket() -> None:
    """Two requests written back to back on one socket get two full responses."""

    async def go(srv: MockServer, c: httpx.AsyncClient) -> bytes:
        body = json.dumps(comp(2, stream=True)).encode()
        req = (
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        last = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(req + req + last)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return data

    data = run(MockConfig(), go)
    assert data.count(b"HTTP/1.1 200 OK") == 3
    assert data.count(b"data: [DONE]") == 2 and data.count(b"0\r\n\r\n") >= 2


def test_http10_stream_is_close_delimited_and_single_chunk_cut() -> None:
    async def go(srv: MockServer, c: httpx.AsyncClient) -> tuple[bytes, list[str]]:
        body = json.dumps(comp(3, stream=True)).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(
            b"POST /v1/completions HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        data = await asyncio.wait_for(reader.read(), 5)  # returns only because the server closes
        writer.close()
        got: list[str] = []
        with pytest.raises(httpx.RemoteProtocolError):
            req = comp(1, stream=True)
            async with c.stream(
                "POST", "/v1/completions", json=req, headers={"x-mock-fault": "cut"}
            ) as r:
                got += [line async for line in r.aiter_lines()]
        return data, got

    data, got = run(MockConfig(), go)
    assert b"transfer-encoding" not in data.lower() and data.count(b"data: {") == 3
    assert data.endswith(b"data: [DONE]\n\n")
    assert got == []  # a 1-chunk stream is cut before its only chunk


def test_max_num_seqs_queues_and_gauges() -> None:
    async def go(srv: MockServer, c: httpx.AsyncClient) -> None:
        tasks = [asyncio.create_task(c.post("/v1/completions", json=comp(1))) for _ in range(3)]
        lab = '{model_name="mock-model",engine="0"}'
        for _ in range(100):  # until all three arrived: one admitted, two queued
            m = (await c.get("/metrics")).text
            if f"vllm:num_requests_waiting{lab} 2.0" in m:
                break
            await asyncio.sleep(0.01)
        assert f"vllm:num_requests_waiting{lab} 2.0" in m
        assert f"vllm:num_requests_running{lab} 1.0" in m
        assert f"vllm:kv_cache_usage_perc{lab} 3e-05" in m  # 3 prompt tokens / 100000
        assert all(r.status_code == 200 for r in await asyncio.gather(*tasks))

    run(MockConfig(max_num_seqs=1, ttft_ms=250), go)


# ------------------------------------------------------------------ timing ground truth


def test_log_chunk_times_follow_absolute_schedule_and_match_client(tmp_path: Path) -> None:
    """Out-of-process server (the timing contract): chunk i at start + ttft + i*itl."""
    log = tmp_path / "gt.jsonl"
    ttft, itl, n = 0.040, 0.020, 40
    args = ["--ttft-ms", "40", "--itl-ms", "20", "--log", str(log), "--log-flush-s", "0.05"]
    proc, url = start_mock_process(args)
    try:
        arrivals: list[float] = []
        with httpx.Client(base_url=url, timeout=5) as c:
            body = comp(n, stream=True)
            with c.stream(
                "POST", "/v1/completions", json=body, headers={"x-request-id": "r1"}
            ) as r:
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        arrivals.append(time.time())
        deadline = time.time() + 3
        while not log.exists() or not log.read_text().strip():
            assert time.time() < deadline, "log never flushed"
            time.sleep(0.02)
    finally:
        assert stop_mock_process(proc) == 0  # clean SIGTERM shutdown
    rec = json.loads(log.read_text().splitlines()[0])
    assert rec["request_id"] == "r1" and rec["outcome"] == "done"
    times = [t for t, k in rec["chunks"]]
    assert [k for _, k in rec["chunks"]] == [1] * n
    # offsets from the absolute schedule. Bounds sit well under the faults they catch (a
    # wrong base or an off-by-one chunk is >= itl = 20 ms late) and well over a busy CI
    # box's wake-up overshoot (one run there saw a median of 3.9 ms on every chunk).
    offs = [t - (rec["start"] + ttft + i * itl) for i, t in enumerate(times)]
    half = n // 2
    assert min(offs) > -0.0005 and statistics.median(offs) < 0.010, offs
    # no drift: relative sleeps would add each wake-up's overshoot to every later chunk,
    # so the second half would sit ~n/2 overshoots later than the first. (Earlier is
    # fine: after a CPU stall an absolute schedule catches up.)
    drift = statistics.median(offs[half:]) - statistics.median(offs[:half])
    assert drift < 0.005, offs  # a relative schedule drifts ~n/2 overshoots: >= 20 ms
    # the client read each chunk right after the server wrote it (same host clock)
    lags = [a - t for a, t in zip(arrivals, times, strict=True)]
    assert min(lags) > -0.005 and statistics.median(lags) < 0.010, lags


def test_cli_bad_flag_is_one_line_error() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "loadgen.mock", "--tokens-per-chunk", "spec:x"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "--tokens-per-chunk" in r.stderr


def test_mock_process_context_manager_serves() -> None:
    with mock_process(MockConfig(model="m2", tokens_per_chunk="2")) as url:
        with httpx.Client(base_url=url, timeout=5) as c:
            assert c.get("/v1/models").json()["data"][0]["id"] == "m2"
        host, port = url.rsplit(":", 1)
        assert host == "http://127.0.0.1"
        with socket.create_connection(("127.0.0.1", int(port)), timeout=2):
            pass


def test_reuse_port_lets_several_processes_share_a_port() -> None:
    """Two mocks on one port (SO_REUSEPORT): either serves; stopping one leaves the other."""
    first, url = start_mock_process(["--reuse-port", "--model", "a"])
    port = url.rsplit(":", 1)[1]
    try:
        second, url2 = start_mock_process(["--reuse-port", "--port", port, "--model", "b"])
        try:
            assert url2 == url
            seen = set()
            for _ in range(64):  # a fresh connection each: the kernel picks a process
                with httpx.Client(trust_env=False) as c:
                    seen.add(c.get(url + "/v1/models").json()["data"][0]["id"])
                if seen == {"a", "b"}:
                    break
            assert seen == {"a", "b"}
            stop_mock_process(first)
            with httpx.Client(trust_env=False) as c:
                assert c.get(url + "/v1/models").json()["data"][0]["id"] == "b"
        finally:
            stop_mock_process(second)
    finally:
        stop_mock_process(first)
    # without the flag a second bind on the port fails, with a one-line error
    solo, url3 = start_mock_process([])
    try:
        with pytest.raises(SpecloadError, match="did not start"):
            start_mock_process(["--port", url3.rsplit(":", 1)[1]])
    finally:
        stop_mock_process(solo)

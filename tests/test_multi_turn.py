"""Multi-turn replay against a logging chat server written here: the request for turn k
carries exactly the earlier turns and the server's earlier answers, in order; the think
time between an answer and the next turn is kept; conversations are the unit of
concurrency; summaries give per-turn latency."""

from __future__ import annotations

import json
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from loadgen.config.prompts.base import Prompt
from loadgen.config.scenario import MultiTurn, parse_scenario
from loadgen.engine.conversation import ConversationPlan, turn_request_id
from loadgen.engine.run import run_scenario
from loadgen.results.files import read_records

THINK_S = 0.1
# 5 + 4 + 3 + 1 turns: 9 think times, so the median is not one wake-up on a busy box
CONVERSATIONS = [
    {"question_id": 1, "category": "writing",
     "turns": ["Write a poem.", "Shorter.", "In French.", "As a haiku.", "Title it."]},
    {"question_id": 2, "category": "math",
     "turns": ["What is 2+2?", "Times 3?", "Minus 1?", "Squared?"]},
    {"question_id": 3, "category": "code", "turns": ["Sort a list.", "In place?", "Stable?"]},
    {"question_id": 4, "category": "qa", "turns": ["Why is the sky blue?"]},
]  # fmt: skip


class _Handler(BaseHTTPRequestHandler):
    """Logs every chat request (its messages, its id, when it arrived, when its answer was
    written) and answers ``answer to <x-request-id>``, streamed in three SSE events."""

    protocol_version = "HTTP/1.1"
    log: list[dict[str, Any]]
    lock: threading.Lock

    def log_message(self, *_: Any) -> None:
        pass

    def _send(self, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(200)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            self._send(json.dumps({"data": [{"id": "m", "max_model_len": 4096}]}).encode())
        else:
            self.send_error(404)

    def do_POST(self) -> None:
        recv = time.perf_counter()
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if self.path == "/tokenize":
            n = len(body["prompt"].split()) + (1 if body.get("add_special_tokens") else 0)
            self._send(json.dumps({"tokens": [5] * n}).encode())
            return
        rid = self.headers["x-request-id"]
        answer = f"answer to {rid}"
        words = answer.split(" ")
        events = []
        for i, w in enumerate(words):
            chunk = {
                "id": "c",
                "object": "chat.completion.chunk",
                "choices": [
                    {
                        "index": 0,
                        "delta": {"content": w if i == 0 else " " + w},
                        "finish_reason": "stop" if i == len(words) - 1 else None,
                    }
                ],
                "usage": {"prompt_tokens": 7, "total_tokens": 8 + i, "completion_tokens": i + 1},
            }
            events.append(json.dumps(chunk))
        sse = "".join(f"data: {e}\n\n" for e in [*events, "[DONE]"]).encode()
        self._send(sse, "text/event-stream")
        with self.lock:
            self.log.append(
                {"id": rid, "messages": body["messages"], "answer": answer, "recv": recv,
                 "done": time.perf_counter()}
            )  # fmt: skip


@pytest.fixture
def chat_server():
    log: list[dict[str, Any]] = []
    handler = type("H", (_Handler,), {"log": log, "lock": threading.Lock()})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", log
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("workers", [1, 2])
def test_turns_carry_the_history_and_think_time_is_kept(
    chat_server, tmp_path: Path, workers: int
) -> None:
    """``workers=2``: the conversations split over two processes, each keeping its own."""
    url, log = chat_server
    suite = tmp_path / "question.jsonl"
    suite.write_text("".join(json.dumps(c) + "\n" for c in CONVERSATIONS))
    doc = {
        "load": {"shape": "concurrency", "concurrency": 2},
        "num_requests": 4,
        "endpoint": "chat",
        "prompts": {"source": "specbench", "path": str(suite)},
        "multi_turn": {"think_time_s": THINK_S},
        "output_tokens": 8,
        "ignore_eos": False,
        "workers": workers,
    }
    scenario = parse_scenario(doc, "mt.yaml")
    result = run_scenario(scenario, base_url=url, output_dir=tmp_path / "out", progress=False)
    assert result.complete and result.exit_code == 0
    (slug,) = result.phases
    recs = [r for r in read_records(tmp_path / "out" / slug / "requests.jsonl")]
    assert len(recs) == 13 and all(r.ok for r in recs)
    by_id = {entry["id"]: entry for entry in log}
    prefix = next(iter(by_id)).rsplit("-", 1)[0]
    turns_of = {c["turns"][0]: c["turns"] for c in CONVERSATIONS}
    for r in recs:
        assert r.conversation is not None and r.turn is not None
        assert r.request_id == turn_request_id(r.conversation, r.turn)
        entry = by_id[f"{prefix}-{r.request_id}"]
        first = entry["messages"][0]["content"]
        turns = turns_of[first]
        expect = []
        for j in range(1, r.turn):
            earlier = by_id[f"{prefix}-{turn_request_id(r.conversation, j)}"]
            expect += [
                {"role": "user", "content": turns[j - 1]},
                {"role": "assistant", "content": earlier["answer"]},
            ]
        expect.append({"role": "user", "content": turns[r.turn - 1]})
        assert entry["messages"] == expect  # exactly the earlier turns and answers, in order
        assert (
            r.category
            == CONVERSATIONS[[c["turns"][0] for c in CONVERSATIONS].index(first)]["category"]
        )
    # think time: the client's gap from an answer's last byte to the next turn's send, and
    # the server's from writing the answer to receiving the next turn
    client_gaps, server_gaps = [], []
    recs_by = {(r.conversation, r.turn): r for r in recs}
    for (c, k), r in recs_by.items():
        prev = recs_by.get((c, k - 1))
        if prev is None:
            continue
        assert prev.end_s is not None
        client_gaps.append(r.sent_s - prev.end_s - THINK_S)
        server_gaps.append(
            by_id[f"{prefix}-{r.request_id}"]["recv"]
            - by_id[f"{prefix}-{prev.request_id}"]["done"]
            - THINK_S
        )
    assert len(client_gaps) == 9
    assert min(client_gaps) >= -1e-4
    assert abs(statistics.median(client_gaps)) < 0.005
    assert abs(statistics.median(server_gaps)) < 0.005
    # concurrency counts conversations: never more than 2 open at once
    spans = {}
    for r in recs:
        lo, hi = spans.get(r.conversation, (r.sent_s, r.end_s))
        spans[r.conversation] = (min(lo, r.sent_s), max(hi, r.end_s))
    for _, (lo, _hi) in spans.items():
        assert sum(a <= lo < b for a, b in spans.values()) <= 2
    flat = result.phases[slug]
    assert set(flat["by_turn"]) == {"1", "2", "3", "4", "5"}
    assert [flat["by_turn"][str(k)]["completed"] for k in range(1, 6)] == [4, 3, 3, 2, 1]
    assert flat["output_lengths"] == "natural"


def test_think_times_and_turns() -> None:
    plan = ConversationPlan.of(
        MultiTurn(think_time_s=1.0, think_time="exponential", max_turns=2), seed=7
    )
    a, b = plan.think_times(5, 50), plan.think_times(5, 50)
    assert a == b and a != plan.think_times(6, 50)  # per conversation, reproducible
    assert 0.6 < statistics.mean(a) < 1.5
    assert ConversationPlan.of(MultiTurn(think_time_s=0.5), 0).think_times(1, 3) == [0.5] * 3
    assert plan.turns(Prompt("a", None, turns=("a", "b", "c"))) == ("a", "b")
    assert plan.turns(Prompt("x", None)) == ("x",)


def test_multi_turn_needs_chat() -> None:
    doc = {"load": {"shape": "concurrency", "concurrency": 1}, "num_requests": 1, "multi_turn": {}}
    with pytest.raises(Exception, match="multi_turn: needs endpoint: chat"):
        parse_scenario(doc, "x.yaml")
    with pytest.raises(ValidationError):
        MultiTurn(max_turns=1000)

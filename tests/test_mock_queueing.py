"""The mock's queueing mode is the queue tests/queueing.py computes: slots served first come,
first served, a fixed service time per token. The capacity tests rely on it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from loadgen.config.scenario import parse_scenario
from loadgen.engine.run import run_scenario
from loadgen.mock.process import mock_process
from loadgen.mock.queueing import SlotQueue, add_token_time
from loadgen.results.files import read_records
from tests.queueing import closed_loop_waits, fifo_waits


def test_slot_queue_is_first_come_first_served() -> None:
    async def main() -> list[int]:
        q = SlotQueue(1)
        order: list[int] = []
        await q.acquire()

        async def one(i: int) -> None:
            await q.acquire()
            order.append(i)
            await asyncio.sleep(0)
            q.release()

        tasks = [asyncio.create_task(one(i)) for i in range(6)]
        await asyncio.sleep(0)
        tasks[2].cancel()  # a waiter that gives up leaves no hole
        await asyncio.sleep(0)
        q.release()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert q.waiting == 0
        await q.acquire()  # every slot came back
        return order

    assert asyncio.run(main()) == [0, 1, 3, 4, 5]


def test_token_time() -> None:
    assert add_token_time([1.0, 2.0, 3.0], [1, 3, 2], 0.5) == [1.5, 4.0, 6.0]
    assert add_token_time([1.0], [4], 0.0) == [1.0]


@pytest.mark.parametrize("load", ["poisson", "concurrency"])
def test_measured_ttft_is_the_queue_computed(tmp_path: Path, load: str) -> None:
    """2 slots, 4 tokens of 10 ms each (S = 40 ms, 50 req/s at most): each request's TTFT,
    as loadgen measures it against the mock process, is the wait the FIFO queue gives for
    the times the requests actually left, plus the first token's 10 ms."""
    slots, token_s, tokens, n = 2, 0.010, 4, 60
    doc = {
        "load": {"shape": "poisson", "rate": 45.0}
        if load == "poisson"
        else {"shape": "concurrency", "concurrency": 5},
        "num_requests": n,
        "prompts": {"source": "base_prompt", "base_prompt": "w1 w2"},
        "output_tokens": tokens,
    }
    flags = ["--max-num-seqs", str(slots), "--token-ms", str(token_s * 1e3)]
    with mock_process(flags) as url:
        res = run_scenario(
            parse_scenario(doc, "q"), base_url=url, output_dir=tmp_path, progress=False
        )
    (slug,) = res.phases
    recs = sorted(read_records(tmp_path / slug / "requests.jsonl"), key=lambda r: r.sent_s)
    sent = np.array([r.sent_s for r in recs])
    ttft = np.array([r.first_token_s - r.sent_s for r in recs])
    service = tokens * token_s
    if load == "poisson":
        predicted = fifo_waits(sent, service, slots) + token_s
    else:
        predicted = closed_loop_waits(5, n, service, slots) + token_s
    err = np.abs(ttft - predicted)
    ms = {k: round(1e3 * float(v), 2) for k, v in (("median", np.median(err)),
          ("p90", np.percentile(err, 90)), ("ttft_p90", np.percentile(ttft, 90)))}  # fmt: skip
    print(f"TTFT vs the queue, ms: errors {ms}")
    # The mock's timers wake up to a millisecond late and a slot frees only then, so the
    # lateness adds up along a busy period: a few ms, on a busy 2-core box.
    assert np.median(err) < 0.005 and np.percentile(ttft, 90) == pytest.approx(
        np.percentile(predicted, 90), abs=0.010
    )
    assert ttft.max() > 2 * token_s  # requests did queue

"""Whatever a response holds and whatever a transport raises, every request ends as a
record with a failure kind, the error budget counts it, and its slot lives on: a closed
loop asked for N requests sends N. No "Task exception was never retrieved", no traceback."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from loadgen.config.prompts.base import Prompt
from loadgen.config.shapes.base import Schedule
from loadgen.engine import phase as phase_mod
from loadgen.engine.phase import PhaseRunner, RequestPlan
from loadgen.engine.stop import StopSignal
from loadgen.http.base import RequestSettings
from loadgen.results.files import read_records
from loadgen.results.records import RequestRecord
from tests.canned import (
    DONE,
    OK_CHUNK,
    Request,
    canned_in_thread,
    event,
    openai_routes,
    sse,
    write_scenario,
)
from tests.conftest import REPO


def every_other_malformed() -> Any:
    """Odd-numbered requests get a chunk whose ``choices`` is ``[null]``."""
    n = itertools.count()

    def answer(_req: Request) -> list[Any]:
        good = [OK_CHUNK, DONE]
        if next(n) % 2:
            return sse([event({"choices": [None]}), *good])
        return sse(good)

    return answer


def scenario_file(tmp: Path, **kw: Any) -> Path:
    return write_scenario(tmp / "s.yaml", **{"name": "robust", "num_requests": 10, **kw})


def loadgen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadgen", "--no-progress", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def test_malformed_chunks_fail_their_records_and_lose_no_slot(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with canned_in_thread(openai_routes(every_other_malformed())) as srv:
        p = loadgen("--scenario", str(scenario_file(tmp_path)), "--base-url", srv.url,
                    "--output-dir", str(out))  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "Task exception" not in p.stderr and "Traceback" not in p.stderr
    (phase,) = json.loads((out / "summary.json").read_text())["phases"].values()
    recs = list(read_records(out / "concurrency=2" / "requests.jsonl"))
    assert len(recs) == 10 == phase["completed"] + phase["failed"]  # 10 asked, 10 sent
    assert phase["failed"] == 5 and phase["failed_by_kind"] == {"bad_sse": 5}
    assert all("choices[0] is not an object" in (r.error or "") for r in recs if not r.ok)


def test_the_error_budget_sees_malformed_chunks(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with canned_in_thread(openai_routes(every_other_malformed())) as srv:
        p = loadgen("--scenario", str(scenario_file(tmp_path, num_requests=40)),
                    "--base-url", srv.url, "--output-dir", str(out),
                    "--max-error-rate", "0.2")  # fmt: skip
    assert p.returncode == 3, p.stderr
    assert "error budget exceeded" in p.stderr and "Traceback" not in p.stderr


class RaisingTransport:
    """A transport with a bug: every third request raises instead of filling its record."""

    name = "raising"

    def __init__(self, *_a: Any) -> None:
        self.n = itertools.count()

    def prefill(self, n: int) -> None: ...

    async def connect(self) -> None: ...

    async def send_request(
        self, record: RequestRecord, prompt: str, max_tokens: int, request_id: str
    ) -> RequestRecord:
        await asyncio.sleep(0.001)
        if next(self.n) % 3 == 2:
            raise RuntimeError("a bug in the transport")
        record.chunk_times, record.chunk_tokens, record.output_tokens = [0.5], [1], 1
        record.first_token_s = record.end_s = 0.5
        return record

    async def aclose(self) -> None: ...


class Collect:
    def __init__(self) -> None:
        self.records: list[RequestRecord] = []

    def write(self, record: RequestRecord) -> None:
        self.records.append(record)


@pytest.mark.parametrize("closed", [True, False])
def test_a_transport_that_raises_costs_one_record_not_a_slot(
    monkeypatch: pytest.MonkeyPatch, closed: bool
) -> None:
    monkeypatch.setattr(phase_mod, "make_transport", lambda *a: RaisingTransport(*a))
    unretrieved: list[Any] = []

    async def go() -> tuple[Collect, Any]:
        asyncio.get_running_loop().set_exception_handler(lambda _l, ctx: unretrieved.append(ctx))
        settings = RequestSettings(base_url="http://127.0.0.1:9", model="m")
        plan = RequestPlan(settings, [Prompt("w1", 2)], output_tokens=1, id_prefix="t")
        out = Collect()
        t0 = time.perf_counter()
        runner = PhaseRunner(
            plan,
            phase_name="p",
            clock=lambda: time.perf_counter() - t0,
            writer=out,
            sinks=[],
            stop=StopSignal(),
            max_error_rate=0.9,
        )
        if closed:
            sched = Schedule(offsets=None, concurrency=2, num_requests=12, duration_s=None)
        else:
            import numpy as np

            sched = Schedule(offsets=np.linspace(0, 0.05, 12), concurrency=None,
                             num_requests=None, duration_s=None)  # fmt: skip
        outcome = await runner.run(sched)
        return out, outcome

    out, outcome = asyncio.run(go())
    assert len(out.records) == 12 == outcome.sent  # every request asked for was sent
    failed = [r for r in out.records if not r.ok]
    assert len(failed) == 4 == outcome.failed  # the budget counted them
    assert all(r.error_kind == "other" and "RuntimeError: a bug" in (r.error or "") for r in failed)
    assert all(r.end_s is not None for r in failed)
    assert not unretrieved

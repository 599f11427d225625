"""Long runs stay flat in memory: the run's summary sink keeps no records and no per-chunk
data (it reads chunks back from requests.jsonl), and gives the same summary, key for key,
as the in-memory accumulator and as the code before it (commit c767ba0's golden file)."""

from __future__ import annotations

import asyncio
import gc
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

import loadgen.results.summary as metrics_mod
from loadgen.engine.phase import PhaseRunner, RequestPlan
from loadgen.engine.stop import StopSignal
from loadgen.http.base import RequestSettings, now_clock
from loadgen.mock.config import MockConfig
from loadgen.mock.server import MockServer
from loadgen.results.files import RecordWriter, read_records
from loadgen.results.records import RequestRecord
from loadgen.results.summary import StreamingSummary, SummaryAccumulator, summarize
from tests.synthetic import GOLDEN_KW as KW
from tests.synthetic import GOLDEN_N_DETAILED, GOLDEN_SEED, canonical, digest, synthetic_records

GOLDEN = Path(__file__).parent / "data" / "summary_golden.json"


def streamed(
    recs: list[RequestRecord], path: Path, *, garbage_before: bool = True
) -> StreamingSummary:
    """Write ``recs`` as the runner does (file first, then the sink) and return the sink."""
    if garbage_before:  # an earlier run's records in the same file must be skipped
        with RecordWriter(path) as w:
            for r in recs[:50]:
                w.write(r)
    with RecordWriter(path) as w:
        sink = StreamingSummary(path, w.start_offset)
        for r in recs:
            w.write(r)
            sink.add(r)
    return sink


def same(a: dict[str, Any], b: dict[str, Any]) -> None:
    a, b = dict(a), dict(b)
    a.pop("date"), b.pop("date")
    assert a.keys() == b.keys()
    diff = [k for k in a if a[k] != b[k]]
    assert not diff, {k: (a[k], b[k]) for k in diff[:5]}


@pytest.mark.parametrize("block", [1 << 20, 997])
@pytest.mark.parametrize("detailed", [False, True])
def test_streaming_summary_equals_in_memory_summary(tmp_path, block, detailed):
    """Every key equal (floats bit for bit), over 3,000 records with warmups, failures,
    multi-token and 0-token chunks, and chunk blocks that split the file."""
    recs = synthetic_records(3000, seed=3)
    assert sum(r.warmup for r in recs) > 50 and sum(not r.ok for r in recs) > 100
    assert any(max(r.chunk_tokens, default=1) > 1 for r in recs)
    sink = streamed(recs, tmp_path / "requests.jsonl")
    with mock.patch.object(metrics_mod, "_BLOCK_CHUNKS", block):
        a = sink.summary(detailed=detailed, **KW)
        b = summarize(recs, detailed=detailed, **KW)
    same(a, b)
    assert a["num_prompts"] == sum(not r.warmup for r in recs)
    assert a["request_goodput"] is not None and a["failed"] > 100


def test_summaries_equal_the_pre_streaming_code():
    """Both implementations reproduce what commit c767ba0's summary gave for the same
    records (tests/data/make_summary_golden.py), exactly."""
    golden = json.loads(GOLDEN.read_text())
    recs = synthetic_records(golden["n"], GOLDEN_SEED)
    keys = golden["summary"].keys()
    assert _golden_keys(summarize(recs, detailed=False, **KW), keys) == golden["summary"]
    detailed = summarize(recs[:GOLDEN_N_DETAILED], detailed=True, **KW)
    assert digest(_golden_keys(detailed, keys)) == golden["detailed_sha256"]


def _golden_keys(summary: dict, keys) -> dict:
    """The keys the golden file has: keys added since must leave those unchanged."""
    return json.loads(canonical({k: v for k, v in summary.items() if k in keys or k == "date"}))


def test_streaming_summary_matches_the_golden_too(tmp_path):
    golden = json.loads(GOLDEN.read_text())
    recs = synthetic_records(golden["n"], GOLDEN_SEED)
    keys = golden["summary"].keys()
    sink = streamed(recs, tmp_path / "r.jsonl")
    assert _golden_keys(sink.summary(detailed=False, **KW), keys) == golden["summary"]
    sink = streamed(recs[:GOLDEN_N_DETAILED], tmp_path / "d.jsonl")
    assert (
        digest(_golden_keys(sink.summary(detailed=True, **KW), keys)) == golden["detailed_sha256"]
    )


@pytest.mark.parametrize("detailed", [False, True])
def test_one_token_chunks_shortcut_changes_nothing(tmp_path, detailed):
    """With one token per chunk the summary skips the per-token arrays (they equal the
    per-chunk ones); every key must be what the full computation gives."""
    recs = synthetic_records(2000, seed=4)
    for r in recs:
        r.chunk_tokens = [1] * len(r.chunk_times)
        if r.chunk_tokens and r.ok:
            r.chunk_tokens[0] = 3  # the first chunk may carry several: not an ITL sample
            r.output_tokens = len(r.chunk_times) + 2

    def fast_equals_full(path: Path, **kw: bool) -> dict:
        sink = streamed(recs, path, **kw)
        assert sink._sizes.one_token_chunks()
        fast = sink.summary(detailed=detailed, **KW)
        with mock.patch.object(metrics_mod._SampleSizes, "one_token_chunks", lambda _s: False):
            full = summarize(recs, detailed=detailed, **KW)
        same(fast, full)
        return fast

    fast = fast_equals_full(tmp_path / "r.jsonl")
    assert fast["mean_tokens_per_chunk"] == 1.0 and fast["mean_itl_token_ms"] > 0
    # one chunk per request: no ITL and no tokens-per-chunk sample at all (statistics 0.0)
    for r in recs:
        del r.chunk_times[1:], r.chunk_tokens[1:]
    fast = fast_equals_full(tmp_path / "one.jsonl", garbage_before=False)
    assert fast["mean_tokens_per_chunk"] == 0.0 and fast["completed"] > 1000
    mixed = SummaryAccumulator()
    mixed.extend(synthetic_records(200, seed=4))
    assert not mixed._sizes.one_token_chunks()


def test_streaming_summary_holds_no_per_chunk_data(tmp_path):
    """Memory per request is the same for 1-chunk and 500-chunk requests."""
    short = synthetic_records(500, seed=1)
    long = synthetic_records(500, seed=1)
    for r in long:
        r.chunk_times = [r.sent_s + 0.001 * j for j in range(500)]
        r.chunk_tokens = [1] * 500
    a = streamed(short, tmp_path / "a.jsonl", garbage_before=False)
    b = streamed(long, tmp_path / "b.jsonl", garbage_before=False)
    assert a.nbytes() == b.nbytes() <= 70 * len(a)
    acc = SummaryAccumulator()
    acc.extend(long)
    assert acc.nbytes() > 500 * 12 * len(acc)  # the in-memory one does hold the chunks


def test_streaming_summary_refuses_a_file_that_does_not_match(tmp_path):
    recs = [r for r in synthetic_records(40, seed=2) if not r.warmup]
    path = tmp_path / "r.jsonl"
    sink = streamed(recs, path, garbage_before=False)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-3]))
    with pytest.raises(RuntimeError, match="file changed under the run"):
        sink.summary(duration_s=1.0)
    path.write_text("".join(lines[1:]))
    with pytest.raises(RuntimeError, match="file changed under the run"):
        sink.summary(duration_s=1.0)


def test_streaming_summary_skips_lines_the_sink_never_took(tmp_path):
    """A torn line (disk full, a crash) or a record the sink rejected is skipped on the way
    back, as add() skipped it, instead of failing the whole summary."""
    recs = [r for r in synthetic_records(60, seed=4) if not r.warmup]
    path = tmp_path / "r.jsonl"
    sink = streamed(recs, path, garbage_before=False)
    lines = path.read_text().splitlines(keepends=True)
    foreign = json.dumps({**json.loads(lines[5]), "request_id": -7}) + "\n"
    torn = '{"request_id": 3, "chunk_ti\n'
    path.write_text("".join([*lines[:10], torn, foreign, *lines[10:]]))
    same(sink.summary(duration_s=1.0), summarize(recs, duration_s=1.0))


def test_record_writer_closes_a_torn_last_line(tmp_path):
    """A killed run's half-written last line must not swallow the next run's first record."""
    path = tmp_path / "requests.jsonl"
    a, b = [r for r in synthetic_records(10, seed=5) if not r.warmup][:2]
    path.write_text(a.to_json() + "\n" + '{"request_id": 99, "sent')
    with RecordWriter(path) as w:
        w.write(b)
    assert [r.request_id for r in read_records(path)] == [a.request_id, b.request_id]
    assert path.read_text().count("\n") == 3


# --- the runner keeps nothing ------------------------------------------------------------------


class LiveRecordProbe:
    """A sink that counts RequestRecord objects still alive, every ``every`` records."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.seen = 0
        self.alive: list[int] = []

    def add(self, record: RequestRecord) -> None:
        self.seen += 1
        if self.seen % self.every == 0:
            gc.collect()
            self.alive.append(sum(isinstance(o, RequestRecord) for o in gc.get_objects()))


def test_runner_retains_no_records_over_2000_requests(tmp_path):
    """2,000 requests at concurrency 16 against the mock: at every check the live records
    are the ones in flight (<= 16 plus the one being finished), and the sink's arrays
    grow by the per-request columns only."""
    conc, n = 16, 2000

    async def go() -> tuple[StreamingSummary, LiveRecordProbe, Path, float]:
        cfg = MockConfig(ttft_ms=1.0, itl_ms=0.2, port=0)
        async with MockServer(cfg) as srv:
            settings = RequestSettings(base_url=srv.url, model=cfg.model, timeout_s=10.0)
            clock = now_clock(0.0)
            path = tmp_path / "requests.jsonl"
            probe = LiveRecordProbe(every=250)
            with RecordWriter(path) as writer:
                sink = StreamingSummary(path, writer.start_offset)
                runner = PhaseRunner(
                    RequestPlan(settings, [_prompt()], output_tokens=16, id_prefix="mem"),
                    phase_name="mem",
                    clock=clock,
                    writer=writer,
                    sinks=[sink, probe],
                    stop=StopSignal(),
                )
                from loadgen.config.shapes.base import Schedule

                out = await runner.run(Schedule(None, conc, n, None), warmup_requests=20)
            return sink, probe, path, out.duration_s

    sink, probe, path, duration = asyncio.run(go())
    assert len(sink) == n and probe.seen == n + 20
    assert len(probe.alive) == (n + 20) // 250
    assert max(probe.alive) <= conc + 1, probe.alive
    assert sink.nbytes() <= 70 * n
    recs = list(read_records(path))
    assert len(recs) == n + 20 and all(r.ok for r in recs)
    same(sink.summary(duration_s=duration), summarize(recs, duration_s=duration))


def _prompt() -> Any:
    from loadgen.config.prompts.base import Prompt

    return Prompt("w1 w2 w3 w4", 4)


# --- records on disk ---------------------------------------------------------------------------


def test_to_json_is_byte_identical_to_asdict_and_round_trips():
    for r in synthetic_records(200, seed=5):
        r.error = None if r.error is None else r.error + ' "quoted" é \n'
        line = r.to_json()
        assert line == json.dumps(asdict(r), separators=(",", ":"))
        back = RequestRecord.from_dict(json.loads(line))
        assert back == r
        assert back.chunk_times == r.chunk_times  # floats bit for bit


def test_old_format_lines_still_read(tmp_path):
    """Lines without the newer fields (written_s, worker, usage_source, ...) and with
    fields this version does not know read back, with defaults for what is missing."""
    old = {
        "request_id": 3,
        "phase": "concurrency=4",
        "scheduled_s": 1.0,
        "sent_s": 1.25,
        "prompt_tokens": 32,
        "first_token_s": 1.5,
        "end_s": 2.0,
        "chunk_times": [1.5, 1.75, 2.0],
        "chunk_tokens": [1, 2, 1],
        "output_tokens": 4,
        "finish_reason": "length",
        "status_code": 200,
        "error": None,
        "warmup": False,
        "a_future_field": {"x": 1},
    }
    path = tmp_path / "requests.jsonl"
    new = synthetic_records(3, seed=9)
    path.write_text(json.dumps(old) + "\n" + "".join(r.to_json() + "\n" for r in new))
    recs = list(read_records(path))
    assert len(recs) == 4 and recs[1:] == new
    r = recs[0]
    assert (r.request_id, r.chunk_tokens, r.written_s, r.worker) == (3, [1, 2, 1], None, 0)
    assert r.usage_source == "usage" and r.ttft_s == pytest.approx(0.25)
    # and the streaming summary reads such a file like the in-memory one
    sink = StreamingSummary(path)
    for rec in recs:
        sink.add(rec)
    same(sink.summary(duration_s=2.0), summarize(recs, duration_s=2.0))

"""loadgen.results.server_metrics: Prometheus parsing, spec-decode deltas, gauges, the sampler."""

from __future__ import annotations

import asyncio
import json
import math

import httpx
import prometheus_client
import pytest

from loadgen.results.server_metrics import (
    GAUGE_SUMMARY_KEYS,
    SPEC_BENCH_KEYS,
    GaugeSampler,
    by_label,
    gauge_sample,
    metric_mean,
    metric_sum,
    parse_prometheus,
    scrape,
    spec_decode_counters,
    spec_decode_delta,
    summarize_sample_file,
    summarize_samples,
)

MODEL = "Qwen/Qwen3-0.6B"


def vllm_metrics(
    *,
    drafts: float | None = None,
    draft_tokens: float = 0.0,
    accepted: float = 0.0,
    per_pos: dict[int, float] | None = None,
    running: float = 0.0,
    waiting: float = 0.0,
    kv: float = 0.0,
    engines: int = 1,
) -> str:
    """A /metrics page as vLLM V1 exposes it (prometheus_client text format 0.0.4).

    Names, labels (model_name, engine, position), HELP texts and the ``_created`` series
    follow vllm/v1/metrics/loggers.py and vllm/v1/spec_decode/metrics.py; counter values
    are split evenly over ``engines``.
    """
    lines: list[str] = []

    def fam(name: str, typ: str, help_: str, rows: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {typ}")
        lines.extend(f"{name}{labels} {value!r}" for labels, value in rows)

    def lab(e: int, extra: str = "") -> str:
        return f'{{engine="{e}",model_name="{MODEL}"{extra}}}'

    fam(
        "vllm:num_requests_running",
        "gauge",
        "Number of requests in model execution batches.",
        [(lab(e), running / engines) for e in range(engines)],
    )
    fam(
        "vllm:num_requests_waiting",
        "gauge",
        "Number of requests waiting to be processed.",
        [(lab(e), waiting / engines) for e in range(engines)],
    )
    fam(
        "vllm:num_requests_waiting_by_reason",
        "gauge",
        "Number of waiting requests by reason.",
        [(lab(e, ',reason="capacity"'), 99.0) for e in range(engines)],
    )
    fam(
        "vllm:kv_cache_usage_perc",
        "gauge",
        "KV-cache usage. 1 means 100 percent usage.",
        [(lab(e), kv) for e in range(engines)],
    )
    fam(
        "vllm:prompt_tokens_total",
        "counter",
        "Number of prefill tokens processed.",
        [(lab(e), 1234.0) for e in range(engines)],
    )
    fam(
        "vllm:prompt_tokens_created",
        "gauge",
        "Number of prefill tokens processed.",
        [(lab(e), 1.7e9) for e in range(engines)],
    )
    lines += [
        "# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.",
        "# TYPE vllm:time_to_first_token_seconds histogram",
        f'vllm:time_to_first_token_seconds_bucket{{engine="0",le="0.001",model_name="{MODEL}"}} 0',
        f'vllm:time_to_first_token_seconds_bucket{{engine="0",le="+Inf",model_name="{MODEL}"}} 5',
        f'vllm:time_to_first_token_seconds_count{{engine="0",model_name="{MODEL}"}} 5.0',
        f'vllm:time_to_first_token_seconds_sum{{engine="0",model_name="{MODEL}"}} 0.75',
    ]
    if drafts is not None:
        for name, help_, value in (
            ("vllm:spec_decode_num_drafts", "Number of spec decoding drafts.", drafts),
            ("vllm:spec_decode_num_draft_tokens", "Number of draft tokens.", draft_tokens),
            ("vllm:spec_decode_num_accepted_tokens", "Number of accepted tokens.", accepted),
        ):
            fam(
                f"{name}_total",
                "counter",
                help_,
                [(lab(e), value / engines) for e in range(engines)],
            )
            fam(f"{name}_created", "gauge", help_, [(lab(e), 1.7e9) for e in range(engines)])
        rows = [
            (lab(e, f',position="{p}"'), v / engines)
            for p, v in (per_pos or {}).items()
            for e in range(engines)
        ]
        fam(
            "vllm:spec_decode_num_accepted_tokens_per_pos_total",
            "counter",
            "Accepted tokens per draft position.",
            rows,
        )
    return "\n".join(lines) + "\n"


# --- parsing --------------------------------------------------------------------------------


def test_parse_skips_comments_and_keeps_series_apart():
    p = parse_prometheus(vllm_metrics(drafts=10, draft_tokens=30, accepted=12, running=3))
    assert metric_sum(p, "vllm:num_requests_running") == 3.0
    assert metric_sum(p, "vllm:prompt_tokens_total") == 1234.0
    assert metric_sum(p, "vllm:prompt_tokens_created") == 1.7e9  # its own series, not summed in
    assert metric_sum(p, "vllm:time_to_first_token_seconds_count") == 5.0
    inf_bucket = (
        "vllm:time_to_first_token_seconds_bucket",
        frozenset({("engine", "0"), ("le", "+Inf"), ("model_name", MODEL)}),
    )
    assert p[inf_bucket] == 5.0
    assert not any(name.startswith("#") or name == "" for name, _ in p)
    assert metric_sum(p, "vllm:does_not_exist") is None


def test_parse_label_escapes_special_values_timestamps_and_garbage():
    text = "\n".join(
        [
            "# EOF-like comment",
            r'm{a="q\"uote",b="back\\slash",c="new\nline",d="x}, y=\"z\""} 1.5',
            "plain 2",
            "nan_metric NaN",
            "pinf +Inf",
            "ninf -Inf",
            'stamp{a="1"} 7 1712345678000',
            "sci 1.5e+03",
            "empty_labels{} 4",
            'spaced{ a = "1" , } 5',
            'broken{a="1" 3',
            "novalue",
            "bad_value abc",
            "# EOF",
        ]
    )
    p = parse_prometheus(text)
    labels = {"a": 'q"uote', "b": "back\\slash", "c": "new\nline", "d": 'x}, y="z"'}
    assert p[("m", frozenset(labels.items()))] == 1.5
    assert p[("plain", frozenset())] == 2.0
    assert math.isnan(p[("nan_metric", frozenset())])
    assert p[("pinf", frozenset())] == math.inf
    assert p[("ninf", frozenset())] == -math.inf
    assert p[("stamp", frozenset({("a", "1")}))] == 7.0  # timestamp ignored
    assert p[("sci", frozenset())] == 1500.0
    assert p[("empty_labels", frozenset())] == 4.0
    assert p[("spaced", frozenset({("a", "1")}))] == 5.0
    assert {n for n, _ in p} == {
        "m",
        "plain",
        "nan_metric",
        "pinf",
        "ninf",
        "stamp",
        "sci",
        "empty_labels",
        "spaced",
    }


def test_parse_what_prometheus_client_writes():
    """The exposition library vLLM uses, escapes and _created series included."""
    reg = prometheus_client.CollectorRegistry()
    c = prometheus_client.Counter(
        "vllm:spec_decode_num_drafts", "Drafts.", ["model_name", "engine"], registry=reg
    )
    weird = 'my "model"\\v2\nnew'
    c.labels(weird, "0").inc(7)
    c.labels(weird, "1").inc(5)
    g = prometheus_client.Gauge(
        "vllm:kv_cache_usage_perc", "KV.", ["model_name", "engine"], registry=reg
    )
    g.labels(weird, "0").set(0.25)
    g.labels(weird, "1").set(float("nan"))
    p = parse_prometheus(prometheus_client.generate_latest(reg).decode())
    assert metric_sum(p, "vllm:spec_decode_num_drafts_total") == 12.0
    assert by_label(p, "vllm:spec_decode_num_drafts_total", "model_name") == {weird: 12.0}
    assert metric_mean(p, "vllm:kv_cache_usage_perc") == 0.25  # NaN engine ignored
    assert metric_sum(p, "vllm:spec_decode_num_drafts_created") is not None


# --- spec decode ----------------------------------------------------------------------------


def test_spec_decode_delta_hand_computed():
    before = parse_prometheus(
        vllm_metrics(drafts=100, draft_tokens=300, accepted=150, per_pos={0: 80, 1: 50, 2: 20})
    )
    after = parse_prometheus(
        vllm_metrics(drafts=300, draft_tokens=900, accepted=510, per_pos={0: 260, 1: 170, 2: 80})
    )
    s = spec_decode_delta(before, after)
    assert s is not None
    assert (s.num_drafts, s.draft_tokens, s.accepted_tokens) == (200, 600, 360)
    assert s.acceptance_rate == pytest.approx(0.6)
    assert s.acceptance_length == pytest.approx(1 + 360 / 200)
    assert s.per_position_acceptance_rates == pytest.approx([0.9, 0.6, 0.3])
    keys = s.as_bench_keys()
    assert tuple(keys) == SPEC_BENCH_KEYS
    assert keys["spec_decode_acceptance_rate"] == pytest.approx(60.0)  # percent, as vllm
    assert keys["spec_decode_per_position_acceptance_rates"] == pytest.approx([0.9, 0.6, 0.3])
    assert isinstance(keys["spec_decode_num_drafts"], int)


def test_spec_decode_sums_engines():
    kw = dict(drafts=40, draft_tokens=120, accepted=60, per_pos={0: 30, 1: 20, 2: 10})
    one = spec_decode_delta(None, parse_prometheus(vllm_metrics(**kw)))
    two = spec_decode_delta(None, parse_prometheus(vllm_metrics(**kw, engines=2)))
    assert one == two
    assert two is not None and two.num_drafts == 40


def test_spec_decode_absent_means_no_speculation():
    plain = parse_prometheus(vllm_metrics())
    assert spec_decode_counters(plain) is None
    assert spec_decode_delta(plain, plain) is None
    assert spec_decode_delta(None, plain) is None
    # present before, gone after (a restart without speculation): nothing to report
    spec = parse_prometheus(vllm_metrics(drafts=5, draft_tokens=15, accepted=5))
    assert spec_decode_delta(spec, plain) is None


def test_spec_decode_absent_before_counts_from_zero():
    after = parse_prometheus(vllm_metrics(drafts=10, draft_tokens=30, accepted=15, per_pos={0: 9}))
    for before in (None, {}, parse_prometheus(vllm_metrics())):
        s = spec_decode_delta(before, after)
        assert s is not None and (s.num_drafts, s.draft_tokens, s.accepted_tokens) == (10, 30, 15)
        assert s.per_position_acceptance_rates == pytest.approx([0.9])


def test_spec_decode_zero_drafts_has_no_rates():
    m = parse_prometheus(vllm_metrics(drafts=50, draft_tokens=150, accepted=70, per_pos={0: 40}))
    s = spec_decode_delta(m, m)
    assert s is not None
    assert (s.num_drafts, s.draft_tokens, s.accepted_tokens) == (0, 0, 0)
    assert s.acceptance_rate is None and s.acceptance_length is None
    assert s.per_position_acceptance_rates == []
    keys = s.as_bench_keys()
    assert keys["spec_decode_acceptance_rate"] is None
    assert keys["spec_decode_num_drafts"] == 0
    json.dumps(keys, allow_nan=False)


def test_spec_decode_missing_positions():
    before = parse_prometheus(vllm_metrics(drafts=0, per_pos={0: 0, 1: 5}))
    # position 1 vanished after (vllm then counts it as unchanged); position 3 appeared
    # without position 2 (a gap: reported as None, so index i stays position i)
    after = parse_prometheus(
        vllm_metrics(drafts=10, draft_tokens=40, accepted=12, per_pos={0: 8, 3: 4})
    )
    s = spec_decode_delta(before, after)
    assert s is not None
    assert s.per_position_acceptance_rates == [pytest.approx(0.8), 0.0, None, pytest.approx(0.4)]
    # no per-position series at all: empty list, totals still there
    s2 = spec_decode_delta(
        None, parse_prometheus(vllm_metrics(drafts=4, draft_tokens=8, accepted=2))
    )
    assert s2 is not None and s2.per_position_acceptance_rates == []
    assert s2.acceptance_length == pytest.approx(1.5)


def test_spec_decode_counter_reset_counts_after_as_delta():
    before = parse_prometheus(vllm_metrics(drafts=1000, draft_tokens=3000, accepted=1500))
    after = parse_prometheus(vllm_metrics(drafts=10, draft_tokens=30, accepted=12))
    s = spec_decode_delta(before, after)
    assert s is not None and (s.num_drafts, s.draft_tokens, s.accepted_tokens) == (10, 30, 12)
    assert s.acceptance_rate == pytest.approx(0.4)


# --- gauges ---------------------------------------------------------------------------------


def test_gauge_sample_sums_counts_and_averages_usage():
    p = parse_prometheus(vllm_metrics(running=6, waiting=4, kv=0.3, engines=2))
    assert gauge_sample(p, 1.5) == {
        "t": 1.5,
        "num_requests_running": 6.0,
        "num_requests_waiting": 4.0,
        "kv_cache_usage_perc": pytest.approx(0.3),
    }


def test_gauge_sample_old_kv_name_and_absent_gauges():
    p = parse_prometheus('vllm:gpu_cache_usage_perc{model_name="m"} 0.75\n')
    row = gauge_sample(p, 0.0)
    assert row["kv_cache_usage_perc"] == 0.75
    assert row["num_requests_running"] is None and row["num_requests_waiting"] is None
    new_and_old = parse_prometheus(
        'vllm:gpu_cache_usage_perc{model_name="m"} 0.75\n'
        'vllm:kv_cache_usage_perc{model_name="m"} 0.5\n'
    )
    assert gauge_sample(new_and_old, 0.0)["kv_cache_usage_perc"] == 0.5


def test_summarize_samples():
    rows = [
        {"t": 0, "num_requests_running": 2, "num_requests_waiting": 0, "kv_cache_usage_perc": 0.1},
        {"t": 1, "num_requests_running": 4, "num_requests_waiting": 6, "kv_cache_usage_perc": 0.5},
        {
            "t": 2,
            "num_requests_running": None,
            "num_requests_waiting": None,
            "kv_cache_usage_perc": None,
            "error": "ConnectError: refused",
        },
        {"t": 3, "num_requests_running": 6, "num_requests_waiting": 3, "kv_cache_usage_perc": None},
    ]
    s = summarize_samples(rows)
    assert tuple(s) == GAUGE_SUMMARY_KEYS
    assert s["mean_num_requests_running"] == pytest.approx(4.0)
    assert s["max_num_requests_running"] == 6
    assert s["mean_num_requests_waiting"] == pytest.approx(3.0)
    assert s["max_num_requests_waiting"] == 6
    assert s["mean_kv_cache_usage_perc"] == pytest.approx(0.3)
    assert s["max_kv_cache_usage_perc"] == pytest.approx(0.5)
    assert (s["num_server_samples"], s["num_server_scrape_errors"]) == (3, 1)
    empty = summarize_samples([])
    assert empty["mean_num_requests_running"] is None and empty["num_server_samples"] == 0


def test_summarize_sample_file_skips_bad_lines(tmp_path):
    f = tmp_path / "server_samples.jsonl"
    f.write_text(
        '{"t":0,"num_requests_running":3}\nnot json\n[1]\n{"t":1,"num_requests_running":5}\n'
    )
    s = summarize_sample_file(f)
    assert s["mean_num_requests_running"] == pytest.approx(4.0)
    assert s["num_server_samples"] == 2


# --- I/O ------------------------------------------------------------------------------------


class FakeServer:
    """An httpx MockTransport /metrics whose gauges change per scrape; some scrapes fail."""

    def __init__(self, fail_on: set[int]) -> None:
        self.calls = 0
        self.fail_on = fail_on

    def __call__(self, request: httpx.Request) -> httpx.Response:
        n = self.calls
        self.calls += 1
        assert request.url.path == "/metrics"
        if n in self.fail_on:
            if n % 2:
                raise httpx.ConnectError("connection refused", request=request)
            return httpx.Response(500, text="oops")
        return httpx.Response(200, text=vllm_metrics(running=n, waiting=2 * n, kv=n / 100))


def test_scrape_returns_text_and_raises_on_http_error():
    asyncio.run(_test_scrape_returns_text_and_raises_on_http_error())


async def _test_scrape_returns_text_and_raises_on_http_error():
    server = FakeServer(fail_on={1, 2})
    async with httpx.AsyncClient(transport=httpx.MockTransport(server)) as client:
        text = await scrape(client, "http://127.0.0.1:8000/")
        assert "vllm:num_requests_running" in text
        with pytest.raises(httpx.ConnectError):
            await scrape(client, "http://127.0.0.1:8000")
        with pytest.raises(httpx.HTTPStatusError):
            await scrape(client, "http://127.0.0.1:8000")


def test_gauge_sampler_polls_writes_jsonl_tolerates_failures_and_stops(tmp_path):
    asyncio.run(_test_gauge_sampler_polls_writes_jsonl_tolerates_failures_and_stops(tmp_path))


async def _test_gauge_sampler_polls_writes_jsonl_tolerates_failures_and_stops(tmp_path):
    server = FakeServer(fail_on={1, 2})
    path = tmp_path / "phase" / "server_samples.jsonl"
    ticks = iter(range(1000))
    async with httpx.AsyncClient(transport=httpx.MockTransport(server)) as client:
        async with GaugeSampler(
            client, "http://127.0.0.1:8000", path, interval_s=0.01, clock=lambda: next(ticks)
        ) as sampler:
            for _ in range(500):
                await asyncio.sleep(0.01)
                if len(sampler.samples) >= 6:
                    break
        n_at_exit = server.calls
        await asyncio.sleep(0.05)
        assert server.calls == n_at_exit  # stopped: no polls after exit
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == sampler.samples and len(rows) >= 6
    assert [r["t"] for r in rows] == list(range(len(rows)))  # the given clock
    assert "error" not in rows[0] and rows[0]["num_requests_running"] == 0
    assert rows[1]["error"].startswith("ConnectError") and rows[1]["num_requests_running"] is None
    assert rows[2]["error"].startswith("HTTPStatusError")
    assert rows[3]["num_requests_running"] == 3 and rows[3]["num_requests_waiting"] == 6
    assert rows[3]["kv_cache_usage_perc"] == pytest.approx(0.03)
    s = summarize_samples(rows)
    assert s["num_server_scrape_errors"] == 2 and s["num_server_samples"] == len(rows) - 2
    assert sampler.stats.summary() == s  # summarised as the rows came
    await sampler.stop()  # idempotent


def test_gauge_sampler_without_rows_summarises_the_same(tmp_path):
    """keep_rows=False (what a run uses): no row is held, the summary is the file's."""

    async def go() -> GaugeSampler:
        server = FakeServer(fail_on={2})
        ticks = iter(range(1000))
        async with (
            httpx.AsyncClient(transport=httpx.MockTransport(server)) as client,
            GaugeSampler(
                client,
                "http://127.0.0.1:8000",
                tmp_path / "s.jsonl",
                interval_s=0.01,
                clock=lambda: next(ticks),
                keep_rows=False,
            ) as sampler,
        ):
            while sampler.stats.n_ok + sampler.stats.n_err < 6:
                await asyncio.sleep(0.01)
        return sampler

    sampler = asyncio.run(go())
    assert sampler.samples == []
    s = summarize_sample_file(tmp_path / "s.jsonl")
    assert sampler.stats.summary() == s and s["num_server_scrape_errors"] == 1
    assert s["max_num_requests_running"] is not None


def test_gauge_sampler_keeps_cadence_and_rejects_bad_interval():
    asyncio.run(_test_gauge_sampler_keeps_cadence_and_rejects_bad_interval())


async def _test_gauge_sampler_keeps_cadence_and_rejects_bad_interval():
    server = FakeServer(fail_on=set())
    async with httpx.AsyncClient(transport=httpx.MockTransport(server)) as client:
        with pytest.raises(ValueError, match="interval_s"):
            GaugeSampler(client, "http://x", interval_s=0)
    loop = asyncio.get_running_loop()
    t0 = loop.time()  # before the sampler starts, so its ticks all fall in the window
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(server)) as client,
        GaugeSampler(client, "http://127.0.0.1:8000", interval_s=0.05) as sampler,
    ):
        await asyncio.sleep(0.52)
        elapsed = loop.time() - t0
    # one poll per 0.05 s grid tick (0, 0.05, ...): a busy loop may skip ticks, never add
    assert 4 <= len(sampler.samples) <= math.floor(elapsed / 0.05) + 1
    assert server.calls == len(sampler.samples)


def test_reads_the_mock_servers_metrics():
    """loadgen.mock's /metrics (what the integration tests scrape) parses the same."""
    from loadgen.mock.prometheus import MockMetrics, render_metrics

    m = MockMetrics(spec_k=3)
    before = parse_prometheus(render_metrics(m, MODEL, running=0, kv_usage=0.0))
    for n in (1, 4, 2, 3):  # tokens per chunk: 1 + accepted drafts
        m.observe_chunk(n)
    after = parse_prometheus(render_metrics(m, MODEL, running=2, kv_usage=0.5))
    s = spec_decode_delta(before, after)
    assert s is not None
    assert (s.num_drafts, s.draft_tokens, s.accepted_tokens) == (4, 12, 6)
    assert s.acceptance_length == pytest.approx(2.5)
    assert s.per_position_acceptance_rates == pytest.approx([0.75, 0.5, 0.25])
    row = gauge_sample(after, 3.0)
    assert (row["num_requests_running"], row["kv_cache_usage_perc"]) == (2.0, 0.5)

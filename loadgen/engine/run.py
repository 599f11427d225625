"""Run a scenario against a server: the one entry point the CLI and server_launch share.

scenario -> arrival schedule -> client -> records -> metrics -> results directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import json
import os
import platform
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from loadgen.config.arrivals import Schedule, build_schedule
from loadgen.config.prompts import LocalTokenizer, ServerTokenizer, Tokenizer, load_prompts
from loadgen.config.scenario import MAX_WORKERS, Phase, Scenario
from loadgen.engine.phase import PhaseRunner
from loadgen.engine.progress import LiveProgress
from loadgen.engine.stop import StopReason, StopSignal, exit_code
from loadgen.engine.workers.pool import WorkerInit, WorkerPool
from loadgen.errors import ExitCode, SpecloadError
from loadgen.http.base import RequestSettings, auth_headers, now_clock
from loadgen.results import server_metrics
from loadgen.results.files import (
    REQUESTS_FILE,
    ResultsDir,
    merge_worker_records,
    slugify,
)
from loadgen.results.records import RequestRecord
from loadgen.results.summary import StreamingSummary

HEALTH_INTERVAL_S = 5.0
DETAILED_MAX_REQUESTS = 20_000
_PROMPT_POOL_MAX = 10_000
_PROMPT_POOL_UNCOUNTED = 1_000  # timed phases: prompts cycle after this many


@dataclass
class RunResult:
    output_dir: Path
    complete: bool
    phases: dict[str, dict[str, Any]]
    exit_code: ExitCode
    stop_reason: str | None = None  # the line for people, as summary.json has it


@dataclass(frozen=True)
class ServerInfo:
    models: list[str]
    version: str | None
    max_model_len: int | None


async def probe_server(base_url: str, api_key: str | None = None) -> ServerInfo:
    """Ask the server what it serves; a clear one-line error if it can't be reached."""
    headers = auth_headers(api_key)
    url = base_url.rstrip("/")
    async with httpx.AsyncClient(timeout=10.0, trust_env=False, headers=headers) as c:
        try:
            r = await c.get(url + "/v1/models")
        except httpx.HTTPError as e:
            reason = " ".join(str(e).split()) or type(e).__name__
            raise SpecloadError(f"--base-url: cannot reach {url}: {reason}") from None
        if r.status_code != 200:
            raise SpecloadError(
                f"--base-url: {url}/v1/models answered HTTP {r.status_code}: {r.text[:200]}"
            )
        try:
            data = r.json()["data"]
            models = [m["id"] for m in data]
            mml = next((m.get("max_model_len") for m in data if m.get("max_model_len")), None)
        except (ValueError, KeyError, TypeError):
            raise SpecloadError(
                f"--base-url: {url}/v1/models is not an OpenAI model list"
            ) from None
        version = None
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            v = await c.get(url + "/version")
            if v.status_code == 200:
                version = v.json().get("version")
    return ServerInfo(models=models, version=version, max_model_len=mml)


def resolve_model(requested: str | None, served: list[str], base_url: str) -> str:
    if requested:
        if requested not in served:
            raise SpecloadError(
                f"--model: '{requested}' is not served by {base_url} (served: {', '.join(served)})"
            )
        return requested
    if len(served) == 1:
        return served[0]
    if not served:
        raise SpecloadError(f"--model: {base_url} serves no model")
    raise SpecloadError(f"--model: {base_url} serves several models, pick one: {', '.join(served)}")


def make_tokenizer(
    scenario: Scenario, base_url: str, model: str, api_key: str | None, tdir: str | None = None
) -> Tokenizer:
    """The prompts' tokenizer: a local directory when we have one, else the server's."""
    tdir = scenario.prompts.tokenizer or tdir
    if tdir is None and Path(model, "tokenizer.json").is_file():
        tdir = model  # vLLM names a model served from a directory by its path
    if tdir is not None:
        return LocalTokenizer(tdir)
    headers = auth_headers(api_key)
    client = httpx.Client(timeout=30.0, trust_env=False, headers=headers)
    return ServerTokenizer(base_url, model, client)


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), for saying which machine a run used."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def host_info() -> dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
    }


async def run_scenario_async(
    scenario: Scenario,
    *,
    base_url: str,
    output_dir: Path,
    model: str | None = None,
    label: str | None = None,
    spec: dict[str, Any] | None = None,
    api_key: str | None = None,
    progress: bool = True,
    health_check: Callable[[], bool] | None = None,
    cli: list[str] | None = None,
    only_phases: list[str] | None = None,
    tokenizer: str | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
) -> RunResult:
    """Run every phase of ``scenario``; ``workers`` (default: the scenario's) processes
    share each phase's schedule, as Ray actors when ``ray_address`` is given."""
    n_workers = scenario.workers if workers is None else workers
    if isinstance(n_workers, bool) or not isinstance(n_workers, int):
        raise SpecloadError(f"--workers: must be an integer, got {n_workers!r}")
    if not 1 <= n_workers <= MAX_WORKERS:
        raise SpecloadError(f"--workers: must be from 1 to {MAX_WORKERS}, got {n_workers}")
    if ray_address:
        from loadgen.engine.workers.ray_actors import require_ray

        require_ray()
    info = await probe_server(base_url, api_key)
    model = resolve_model(model or scenario.model, info.models, base_url)
    phases = scenario.phases()
    if only_phases is not None:
        phases = [p for p in phases if slugify(p.name) in only_phases]
    schedules = [
        build_schedule(
            p.load, num_requests=p.num_requests, duration_s=p.duration_s, seed=scenario.seed
        )
        for p in phases
    ]
    pool = await _start_pool(n_workers, ray_address)
    try:
        return await _run_phases(
            scenario,
            phases=phases,
            schedules=schedules,
            pool=pool,
            info=info,
            model=model,
            base_url=base_url,
            output_dir=output_dir,
            label=label,
            spec=spec,
            api_key=api_key,
            progress=progress,
            health_check=health_check,
            cli=cli,
            tokenizer=tokenizer,
        )
    finally:
        if pool is not None:
            await pool.close()


async def _start_pool(n: int, ray_address: str | None) -> WorkerPool | None:
    if ray_address:
        from loadgen.engine.workers.ray_actors import start_ray_pool

        return await start_ray_pool(n, ray_address)
    return WorkerPool.start_local(n) if n > 1 else None


async def _run_phases(
    scenario: Scenario,
    *,
    phases: list[Phase],
    schedules: list[Schedule],
    pool: WorkerPool | None,
    info: ServerInfo,
    model: str,
    base_url: str,
    output_dir: Path,
    label: str | None,
    spec: dict[str, Any] | None,
    api_key: str | None,
    progress: bool,
    health_check: Callable[[], bool] | None,
    cli: list[str] | None,
    tokenizer: str | None,
) -> RunResult:
    tok = make_tokenizer(scenario, base_url, model, api_key, tokenizer)
    prompt_set = await asyncio.to_thread(
        load_prompts,
        scenario.prompts,
        prompts_needed_for(phases, schedules),
        seed=scenario.seed,
        tokenizer=tok,
    )
    prompts = prompt_set.prompts

    origin_perf = time.perf_counter()
    origin_wall = time.time()
    clock = now_clock(origin_perf)
    results = ResultsDir(output_dir)
    results.write_run(
        {
            "scenario": scenario.model_dump(mode="json"),
            "label": label,
            "spec": spec,
            "base_url": base_url,
            "model": model,
            "cli": cli or [],
            "server": {"version": info.version, "max_model_len": info.max_model_len},
            "host": host_info(),
            "loadgen": {
                "python": sys.version.split()[0],
                "httpx": httpx.__version__,
                "transport": scenario.transport,
                "event_loop": _loop_name(),
            },
            "started_at": _dt.datetime.fromtimestamp(origin_wall, _dt.UTC).isoformat(),
            "epoch_origin": origin_wall,
            "prompts": {"count": len(prompts), "skipped_bad_lines": prompt_set.skipped},
            "workers": pool.describe() if pool is not None else {"count": 1, "backend": None},
        }
    )
    settings = RequestSettings(
        base_url=base_url,
        model=model,
        endpoint=scenario.endpoint,
        temperature=scenario.temperature,
        top_p=scenario.top_p,
        ignore_eos=scenario.ignore_eos,
        timeout_s=scenario.request_timeout_s,
        api_key=api_key,
        extra_body=scenario.extra_body,
    )
    stop = StopSignal()
    loop = asyncio.get_running_loop()
    installed = _install_signal_handlers(loop, stop)
    live = LiveProgress(progress)
    summaries: dict[str, dict[str, Any]] = {}
    id_prefix = f"specload-{os.getpid()}-{int(origin_wall)}"
    if pool is not None:
        await pool.init(
            WorkerInit(
                settings=settings,
                prompts=prompts,
                output_tokens=scenario.output_tokens,
                id_prefix=id_prefix,
                origin_wall=origin_wall,
                transport=scenario.transport,
                spin_s=scenario.spin_ms / 1e3,
            )
        )
    next_id = 0
    health_task = asyncio.create_task(_watch_health(health_check, stop)) if health_check else None
    try:
        for phase, schedule in zip(phases, schedules, strict=True):
            if stop.is_set():
                break
            slug = slugify(phase.name)
            summary = await _run_phase(
                phase=phase,
                slug=slug,
                schedule=schedule,
                scenario=scenario,
                settings=settings,
                prompts=prompts,
                results=results,
                clock=clock,
                stop=stop,
                live=live,
                id_prefix=id_prefix,
                first_id=next_id,
                extra={
                    "date": _dt.datetime.now().strftime("%Y%m%d-%H%M%S"),
                    "backend": "openai-chat" if scenario.endpoint == "chat" else "openai",
                    "label": label,
                    "model_id": model,
                    "tokenizer_id": scenario.prompts.tokenizer or tokenizer or model,
                    "scenario": scenario.name,
                    "server_version": info.version,
                },
                api_key=api_key,
                pool=pool,
            )
            next_id += 1_000_000
            summaries[slug] = summary
            results.write_summary(
                complete=False,
                scenario=scenario.name,
                label=label,
                phases=summaries,
                stop_reason=stop.message,
            )
    finally:
        live.stop()
        if health_task:
            health_task.cancel()
        for sig in installed:
            loop.remove_signal_handler(sig)
    complete = not stop.is_set() and len(summaries) == len(phases)
    results.write_summary(
        complete=complete,
        scenario=scenario.name,
        label=label,
        phases=summaries,
        stop_reason=stop.message,
    )
    return RunResult(
        output_dir, complete, summaries, exit_code(complete, stop.reason), stop.message
    )


def prompts_needed_for(phases: list[Phase], schedules: list[Schedule]) -> int:
    need = 0
    for phase, sched in zip(phases, schedules, strict=True):
        n = (
            sched.num_requests
            if sched.closed
            else (0 if sched.offsets is None else len(sched.offsets))
        )
        need = max(need, (n or _PROMPT_POOL_UNCOUNTED) + phase.warmup_requests)
    return min(max(need, 1), _PROMPT_POOL_MAX)


async def _run_phase(
    *,
    phase: Phase,
    slug: str,
    schedule: Schedule,
    scenario: Scenario,
    settings: RequestSettings,
    prompts: list[Any],
    results: ResultsDir,
    clock: Callable[[], float],
    stop: StopSignal,
    live: LiveProgress,
    id_prefix: str,
    first_id: int,
    extra: dict[str, Any],
    api_key: str | None,
    pool: WorkerPool | None = None,
) -> dict[str, Any]:
    pdir = results.phase_dir(slug)
    headers = auth_headers(api_key)
    async with httpx.AsyncClient(timeout=10.0, trust_env=False, headers=headers) as ctl:
        scraped: dict[str, str | None] = {}

        async def measure_start() -> None:
            # After warmup: the counters' deltas then cover measured requests only.
            scraped["before"] = await _scrape(ctl, settings.base_url, pdir / "metrics_before.prom")

        total = schedule.num_requests if schedule.offsets is None else len(schedule.offsets)
        live.start_phase(phase.name, total)
        sampler = server_metrics.GaugeSampler(
            ctl, settings.base_url, pdir / "server_samples.jsonl", clock=clock, keep_rows=False
        )
        workers_extra: dict[str, Any] = {}
        if pool is None:
            with results.records(slug) as writer:
                # Per-request columns only: the summary reads chunk times back from the
                # records file, so memory does not grow with every token of a long run.
                acc = StreamingSummary(writer.path, writer.start_offset)
                runner = PhaseRunner(
                    settings=settings,
                    phase_name=phase.name,
                    prompts=prompts,
                    output_tokens=scenario.output_tokens,
                    clock=clock,
                    writer=writer,
                    sinks=[acc, live],
                    stop=stop,
                    id_prefix=id_prefix,
                    first_request_id=first_id,
                    max_error_rate=scenario.max_error_rate,
                    transport=scenario.transport,
                    spin_s=scenario.spin_ms / 1e3,
                )
                async with sampler:
                    outcome = await runner.run(schedule, phase.warmup_requests, measure_start)
            duration_s = outcome.duration_s
        else:
            # Fed from the merge below, in the merged file's order (its offset is 0).
            acc = StreamingSummary(pdir / REQUESTS_FILE, 0)
            async with sampler:
                wout = await pool.run_phase(
                    phase_name=phase.name,
                    schedule=schedule,
                    warmup_requests=phase.warmup_requests,
                    first_id=first_id,
                    phase_dir=pdir,
                    clock=clock,
                    stop=stop,
                    on_measure_start=measure_start,
                    max_error_rate=scenario.max_error_rate,
                    live=live,
                )
            duration_s = wout.duration_s
            workers_extra = {"workers": wout.active, "workers_start_late_ms": wout.late_s * 1e3}
        live.stop()
        after = await _scrape(ctl, settings.base_url, pdir / "metrics_after.prom")
        before = scraped.get("before")
    if pool is not None:
        # One requests.jsonl sorted by send time, fed to the summary in that order.
        def feed(line: bytes) -> None:
            with contextlib.suppress(ValueError, TypeError):
                acc.add(RequestRecord.from_dict(json.loads(line)))

        await asyncio.to_thread(merge_worker_records, pdir, feed)
    extra = dict(extra)
    extra.update(workers_extra)
    extra["repeat"] = phase.repeat
    extra["complete"] = not stop.is_set()
    if stop.message:
        extra["stop_reason"] = stop.message
    spec = None
    if before is not None and after is not None:
        spec = server_metrics.spec_decode_delta(
            server_metrics.parse_prometheus(before), server_metrics.parse_prometheus(after)
        )
    summary = acc.summary(
        duration_s=duration_s,
        slo=scenario.slo,
        phase=phase.name,
        load=phase.load,
        extra=extra,
        spec_decode=spec,
        server_gauges=sampler.stats.summary(),
        # Per-request lists (ttfts, itls, ...) as vllm saves them, up to a size where
        # summary.json stays readable; requests.jsonl has them all anyway.
        detailed=len(acc) <= DETAILED_MAX_REQUESTS,
    )
    results.write_phase_summary(slug, summary)
    return summary


async def _scrape(client: httpx.AsyncClient, base_url: str, save_to: Path) -> str | None:
    """Raw /metrics text, saved beside the records; None where the server has none."""
    try:
        text = await server_metrics.scrape(client, base_url)
    except Exception:  # a server without /metrics is still a server we can load
        return None
    if text is not None:
        save_to.write_text(text)
    return text


async def _watch_health(check: Callable[[], bool], stop: StopSignal) -> None:
    while not stop.is_set():
        await asyncio.sleep(HEALTH_INTERVAL_S)
        ok = await asyncio.to_thread(check)
        if not ok:
            stop.set(StopReason.SERVER_LOST, "server lost: health check failed during the run")
            return


def _install_signal_handlers(loop: asyncio.AbstractEventLoop, stop: StopSignal) -> list[int]:
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            why = f"interrupted by {signal.Signals(sig).name}"
            loop.add_signal_handler(sig, stop.set, StopReason.INTERRUPTED, why)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread: the caller handles signals
    return installed


def _loop_name() -> str:
    """The running event loop's module: uvloop when installed (the ``fast`` extra)."""
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def run_scenario(scenario: Scenario, **kwargs: Any) -> RunResult:
    """Synchronous wrapper (server_launch calls this between server starts)."""
    try:
        import uvloop  # type: ignore[import-not-found]

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    return runner(run_scenario_async(scenario, **kwargs))

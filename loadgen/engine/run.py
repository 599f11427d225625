"""Run a scenario against a server: the one entry point the CLI and server_launch share.

scenario -> arrival schedule -> client -> records -> metrics -> results directory.

:func:`run_scenario_async` asks the server what it serves, plans the phases, loads the
prompts and starts the run's clock (a :class:`~loadgen.engine.context.RunContext`); each
phase then runs through a :class:`~loadgen.engine.driver.PhaseDriver` (this process, or a
pool of workers), with what every phase needs around it here: live progress, ``/metrics``
before and after, the gauge sampler, and the phase's summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as _dt
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from loadgen.config.prompts.base import PromptSet, check_prompts, load_prompts
from loadgen.config.prompts.tokenizers import Tokenizer
from loadgen.config.scenario import Scenario
from loadgen.engine.context import PhaseHost, PhasePlan, PhaseStrategy, RunContext, phase_plan
from loadgen.engine.conversation import ConversationPlan
from loadgen.engine.driver import InProcess, PhaseDriver, PhaseRun
from loadgen.engine.host import event_loop_name, host_info
from loadgen.engine.phase import RequestPlan
from loadgen.engine.progress import LiveProgress
from loadgen.engine.server import ServerInfo, make_tokenizer, probe_server, resolve_model
from loadgen.engine.stop import StopReason, StopSignal, exit_code
from loadgen.engine.workers.pool import WorkerPool
from loadgen.errors import ExitCode
from loadgen.http.base import (
    RequestSettings,
    auth_headers,
    check_api_key,
    check_base_url,
    now_clock,
)
from loadgen.results import server_metrics
from loadgen.results.files import (
    Existing,
    ResultsDir,
    ResultsUnwritable,
    check_output_dir,
    slugify,
)

T = TypeVar("T")
HEALTH_INTERVAL_S = 5.0
DETAILED_MAX_REQUESTS = 20_000
_PROMPT_POOL_MAX = 10_000
_PROMPT_POOL_UNCOUNTED = 1_000  # timed phases: prompts cycle after this many


@dataclass
class RunResult:
    output_dir: Path
    complete: bool
    phases: dict[str, dict[str, Any]]  # slug -> the phase's flat summary
    exit_code: ExitCode
    stop_reason: str | None = None  # the line for people, as summary.json has it


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
    ray_address: str | None = None,
    existing: Existing | str = Existing.REFUSE,
) -> RunResult:
    """Run every phase of ``scenario`` (those whose slug is in ``only_phases``, when
    given); ``scenario.workers`` processes share each phase's schedule, as Ray actors on
    the cluster at ``ray_address`` when given. A search (``scenario.search``) chooses its
    phases as it runs. ``existing`` says what to do with an ``output_dir`` that already
    holds files: refuse (the default), overwrite the previous run, or resume (the sweep: the
    phases about to run must have no results yet; a search takes back the probes an
    interrupted run of it finished there)."""
    # Ctrl-C / SIGTERM stop every stage from here on, preparation included (each awaited
    # through _or_stop): the handlers only set the run's stop signal.
    stop = StopSignal()
    loop = asyncio.get_running_loop()
    installed = install_stop_handlers(loop, stop)
    try:
        async with open_run(
            scenario, stop=stop, base_url=base_url, output_dir=output_dir, model=model,
            label=label, spec=spec, api_key=api_key, progress=progress,
            health_check=health_check, cli=cli, only_phases=only_phases, tokenizer=tokenizer,
            ray_address=ray_address, existing=existing,
        ) as run:  # fmt: skip
            finished = await run.strategy.run(run.host)
        return run.result(finished)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


@dataclass
class OpenRun:
    """A run whose server answered, whose prompts are loaded and whose clock runs: what
    :func:`open_run` yields. ``strategy`` runs its phases through ``host``; whoever holds
    several open runs (server_launch's alternated capacity searches, one per co-resident
    server) decides whose phase runs next. :meth:`result` ends it."""

    ctx: RunContext
    host: _Host
    strategy: PhaseStrategy

    def result(self, finished: bool) -> RunResult:
        """The run's summary.json, final, and its result; ``finished``: every phase the
        strategy meant to run did (what ``strategy.run`` returns)."""
        ctx = self.ctx
        complete = finished and not ctx.stop.is_set()
        try:
            _write_summary(ctx, self.host.summaries, complete=complete)
        except ResultsUnwritable as e:
            ctx.stop.set(StopReason.RESULTS_UNWRITABLE, _unwritable(e))
        return RunResult(
            ctx.results.root,
            complete,
            self.host.summaries,
            exit_code(complete, ctx.stop.reason),
            ctx.stop.message,
        )


@contextlib.asynccontextmanager
async def open_run(
    scenario: Scenario,
    *,
    stop: StopSignal,
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
    ray_address: str | None = None,
    existing: Existing | str = Existing.REFUSE,
) -> AsyncIterator[OpenRun]:
    """A run of ``scenario`` made ready (the arguments are :func:`run_scenario_async`'s),
    held open while the caller runs its phases: the server probed, the prompts loaded,
    run.json written, the workers and the health watch started; on exit they stop.
    ``stop`` is the run's stop signal, set by whoever handles signals (the caller: this
    installs no handlers), by the health watch and by the phases."""
    existing = Existing(existing)
    check_base_url(base_url)  # no credentials in it: it is written to run.json
    if api_key is not None:
        check_api_key(api_key, "api_key")
    plans = plan_phases(scenario, only_phases)
    check_output_dir(output_dir, existing, [p.slug for p in plans])  # before any request
    if ray_address:
        from loadgen.engine.workers.ray_actors import require_ray

        require_ray()
    check_prompts(scenario.prompts)  # a missing prompt suite fails before the server is asked
    info = await _or_stop(probe_server(base_url, api_key), stop)
    model = resolve_model(model or scenario.model, info.models, base_url)
    driver = await _or_stop(_start_driver(scenario.workers, ray_address), stop)
    try:
        prompt_tokenizer, prompt_set = await _or_stop(
            _in_daemon_thread(
                _prepare_prompts, scenario, plans, base_url, model, api_key, tokenizer
            ),
            stop,
        )
        ctx = _context(
            scenario, plans, base_url, model, api_key, prompt_tokenizer, prompt_set,
            output_dir, existing, stop, progress, info, label, tokenizer,
        )  # fmt: skip
        ctx.results.write_run(_run_json(ctx, spec, cli, prompt_set, driver.describe()))
        strategy = _strategy(ctx, plans, resume=existing is Existing.RESUME)
        health_task = None
        try:
            await driver.prepare(ctx)
            if health_check:
                health_task = asyncio.create_task(_watch_health(health_check, ctx.stop))
            yield OpenRun(ctx, _Host(ctx, driver), strategy)
        finally:
            ctx.live.stop()
            if health_task:
                health_task.cancel()
    finally:
        await driver.close()


def _prepare_prompts(
    scenario: Scenario,
    plans: list[PhasePlan],
    base_url: str,
    model: str,
    api_key: str | None,
    tokenizer: str | None,
) -> tuple[Tokenizer, PromptSet]:
    """The prompts' tokenizer and the prompts (blocking: a tokenizer to load, maybe many
    /tokenize round trips; run in a daemon thread, see :func:`_in_daemon_thread`)."""
    prompt_tokenizer = make_tokenizer(scenario, base_url, model, api_key, tokenizer)
    prompt_set = load_prompts(
        scenario.prompts,
        prompts_needed_for(plans) if scenario.search is None else _search_prompts(scenario),
        seed=scenario.seed,
        tokenizer=prompt_tokenizer,
    )
    return prompt_tokenizer, prompt_set


def _context(
    scenario: Scenario,
    plans: list[PhasePlan],
    base_url: str,
    model: str,
    api_key: str | None,
    prompt_tokenizer: Tokenizer,
    prompt_set: PromptSet,
    output_dir: Path,
    existing: Existing,
    stop: StopSignal,
    progress: bool,
    info: ServerInfo,
    label: str | None,
    tokenizer_dir: str | None,
) -> RunContext:
    """The run's context; its clock starts here. The results directory is made (or, with
    --overwrite, emptied) only now, once the server answered and the prompts are ready."""
    origin_perf = time.perf_counter()
    origin_wall = time.time()
    settings = _request_settings(scenario, base_url, model, api_key)
    # A local tokenizer also counts output text where the server's usage is not per
    # chunk (the server's /tokenize is not used for that: it would load the server).
    settings = dataclasses.replace(settings, tokenizer=getattr(prompt_tokenizer, "path", None))
    return RunContext(
        scenario=scenario,
        requests=RequestPlan(
            settings,
            prompt_set.prompts,
            output_tokens=scenario.output_tokens,
            id_prefix=f"specload-{os.getpid()}-{int(origin_wall)}",
            transport=scenario.transport,
            spin_s=scenario.spin_ms / 1e3,
            conversations=None
            if scenario.multi_turn is None
            else ConversationPlan.of(scenario.multi_turn, scenario.seed),
        ),
        results=ResultsDir.create(output_dir, existing, [p.slug for p in plans]),
        clock=now_clock(origin_perf),
        origin_wall=origin_wall,
        stop=stop,
        live=LiveProgress(progress),
        server=info,
        model=model,
        label=label,
        tokenizer_id=scenario.prompts.tokenizer or tokenizer_dir or model,
    )


async def _or_stop(aw: Awaitable[T], stop: StopSignal) -> T:
    """``aw``'s result, unless the run is stopped first (Ctrl-C while the server is
    probed or prompts are prepared): then it is abandoned and the interrupt raised, so
    every stage stops within a moment, not when a slow /tokenize finally answers."""
    task = asyncio.ensure_future(aw)
    if stop.is_set():
        task.cancel()
        raise KeyboardInterrupt(stop.message)
    waiter = asyncio.ensure_future(stop.event.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if task.done():
        return task.result()
    task.cancel()
    raise KeyboardInterrupt(stop.message)


def _in_daemon_thread(fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """``fn(*args)`` in a daemon thread, as a future of this loop. Not ``to_thread``: the
    loop's executor is joined when the loop closes, and an abandoned interpreter waits for
    a non-daemon thread at exit, so an interrupt would wait for the blocking call."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not fut.done():
            (fut.set_result if ok else fut.set_exception)(value)

    def run() -> None:
        try:
            result: Any = (True, fn(*args))
        except BaseException as e:  # handed to the awaiting task, whatever it is
            result = (False, e)
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: abandoned
            loop.call_soon_threadsafe(settle, *result)

    threading.Thread(target=run, name="loadgen-prepare", daemon=True).start()
    return fut


def plan_phases(scenario: Scenario, only_phases: list[str] | None = None) -> list[PhasePlan]:
    """The phases to run, each with its schedule and its block of request ids."""
    phases = scenario.phases()
    if only_phases is not None:
        phases = [p for p in phases if slugify(p.name) in only_phases]
    return [phase_plan(p, k, scenario.seed) for k, p in enumerate(phases)]


class FixedPhases:
    """The phases of the scenario, listed in advance, one after the other."""

    def __init__(self, plans: list[PhasePlan]) -> None:
        self.plans = plans

    async def run(self, host: PhaseHost) -> bool:
        ran = 0
        for plan in self.plans:
            if host.ctx.stop.is_set():
                break
            await host.run(plan)
            ran += 1
        return ran == len(self.plans)


def _strategy(ctx: RunContext, plans: list[PhasePlan], *, resume: bool) -> PhaseStrategy:
    search = ctx.scenario.search
    if search is None:
        return FixedPhases(plans)
    from loadgen.config.search import SearchKind

    if search.kind is SearchKind.SATURATION:
        from loadgen.engine.saturation import SaturationSweep

        return SaturationSweep(ctx)
    from loadgen.engine.capacity import CapacityRun

    return CapacityRun(ctx, resume=resume)


def prompts_needed_for(plans: list[PhasePlan]) -> int:
    """Prompts to load: the most any phase sends (a timed phase cycles through a pool)."""
    need = 0
    for plan in plans:
        sched = plan.schedule
        n = (
            sched.num_requests
            if sched.closed
            else (0 if sched.offsets is None else len(sched.offsets))
        )
        need = max(need, (n or _PROMPT_POOL_UNCOUNTED) + plan.phase.warmup_requests)
    return min(max(need, 1), _PROMPT_POOL_MAX)


def _search_prompts(scenario: Scenario) -> int:
    """Prompts a search's probes need: each sends ``num_requests`` (a timed probe cycles
    through a pool, its count depending on the level the search picks)."""
    n = scenario.num_requests or _PROMPT_POOL_UNCOUNTED
    return min(n + scenario.warmup_requests, _PROMPT_POOL_MAX)


async def _start_driver(workers: int, ray_address: str | None) -> PhaseDriver:
    if ray_address:
        from loadgen.engine.workers.ray_actors import start_ray_pool

        return await start_ray_pool(workers, ray_address)
    return WorkerPool.start_local(workers) if workers > 1 else InProcess()


def _request_settings(
    scenario: Scenario, base_url: str, model: str, api_key: str | None
) -> RequestSettings:
    return RequestSettings(
        base_url=base_url,
        model=model,
        endpoint=scenario.endpoint,
        temperature=scenario.temperature,
        top_p=scenario.top_p,
        ignore_eos=scenario.ignore_eos,
        timeout_s=scenario.request_timeout_s,
        first_byte_timeout_s=scenario.first_byte_timeout_s,
        idle_timeout_s=scenario.idle_timeout_s,
        api_key=api_key,
        extra_body=scenario.extra_body,
    )


def _run_json(
    ctx: RunContext,
    spec: dict[str, Any] | None,
    cli: list[str] | None,
    prompt_set: PromptSet,
    workers: dict[str, Any],
) -> dict[str, Any]:
    """run.json: how the results were made (never the API key)."""
    return {
        "scenario": ctx.scenario.model_dump(mode="json"),
        "label": ctx.label,
        "spec": spec,
        "base_url": ctx.requests.settings.base_url,
        "model": ctx.model,
        "cli": cli or [],
        "server": {"version": ctx.server.version, "max_model_len": ctx.server.max_model_len},
        "host": host_info(),
        "loadgen": {
            "python": sys.version.split()[0],
            "httpx": httpx.__version__,
            "transport": ctx.scenario.transport,
            "event_loop": event_loop_name(),
        },
        "started_at": _dt.datetime.fromtimestamp(ctx.origin_wall, _dt.UTC).isoformat(),
        "epoch_origin": ctx.origin_wall,
        "prompts": {"count": len(prompt_set.prompts), "skipped_bad_lines": prompt_set.skipped},
        "workers": workers,
    }


class _Host:
    """The :class:`PhaseHost` of one run: runs each phase, keeps the run's summary.json.
    A full disk stops the run (the records so far stay on disk)."""

    def __init__(self, ctx: RunContext, driver: PhaseDriver) -> None:
        self.ctx = ctx
        self.driver = driver
        self.summaries: dict[str, dict[str, Any]] = {}

    async def run(self, plan: PhasePlan, *, listed: bool = True) -> dict[str, Any]:
        try:
            summary = await _run_phase(self.ctx, plan, self.driver)
            if listed:
                self.summaries[plan.slug] = summary
                _write_summary(self.ctx, self.summaries, complete=False)
        except ResultsUnwritable as e:
            self.ctx.stop.set(StopReason.RESULTS_UNWRITABLE, _unwritable(e))
            return {}
        return summary

    def adopt(self, slug: str, summary: dict[str, Any]) -> None:
        self.summaries[slug] = summary


def _unwritable(e: ResultsUnwritable) -> str:
    return f"results unwritable: {str(e).removeprefix('--output-dir: ')}"


def _write_summary(ctx: RunContext, phases: dict[str, dict[str, Any]], complete: bool) -> None:
    ctx.results.write_summary(
        complete=complete,
        scenario=ctx.scenario.name,
        label=ctx.label,
        phases=phases,
        stop_reason=ctx.stop.message,
    )


async def _run_phase(ctx: RunContext, plan: PhasePlan, driver: PhaseDriver) -> dict[str, Any]:
    """One phase through ``driver``, between two /metrics scrapes; its summary."""
    extra = _phase_extra(ctx)  # "date": when the phase started
    pdir = ctx.results.phase_dir(plan.slug)
    base_url = ctx.requests.settings.base_url
    headers = auth_headers(ctx.requests.settings.api_key)
    async with httpx.AsyncClient(timeout=10.0, trust_env=False, headers=headers) as ctl:
        scraped: dict[str, str | None] = {}

        async def measure_start() -> None:
            # After warmup: the counters' deltas then cover measured requests only.
            scraped["before"] = await _scrape(ctl, base_url, pdir / "metrics_before.prom")

        ctx.live.start_phase(plan.phase.name, plan.total)
        every = ctx.scenario.server_gauges_s
        sampler = server_metrics.GaugeSampler(
            ctl, base_url, pdir / "server_samples.jsonl", clock=ctx.clock, keep_rows=False,
            interval_s=every or 1.0,
        )  # fmt: skip
        async with sampler if every else contextlib.nullcontext():
            ran = await driver.run(ctx, plan, measure_start)
        ctx.live.stop()
        after = await _scrape(ctl, base_url, pdir / "metrics_after.prom")
    await driver.collect(ctx, plan, ran)
    spec = None
    before = scraped.get("before")
    if before is not None and after is not None:
        parsed_before = server_metrics.parse_prometheus(before)
        parsed_after = server_metrics.parse_prometheus(after)
        spec = server_metrics.spec_decode_delta(parsed_before, parsed_after)
        extra.update(server_metrics.prefix_cache_delta(parsed_before, parsed_after))
    summary = ran.summary.summary(
        duration_s=ran.duration_s,
        slo=ctx.scenario.slo,
        phase=plan.phase.name,
        load=plan.phase.load,
        extra=_summary_extra(ctx, plan, ran, extra),
        spec_decode=spec,
        server_gauges=sampler.stats.summary() if every else None,
        # Per-request lists (ttfts, itls, ...) as vllm saves them, up to a size where
        # summary.json stays readable; requests.jsonl has them all anyway.
        detailed=len(ran.summary) <= DETAILED_MAX_REQUESTS,
    )
    ctx.results.write_phase_summary(plan.slug, summary)
    return summary


def _phase_extra(ctx: RunContext) -> dict[str, Any]:
    """The keys every phase's summary carries about the run (as vllm bench serve's)."""
    return {
        "date": _dt.datetime.now().strftime("%Y%m%d-%H%M%S"),
        "backend": "openai-chat" if ctx.scenario.endpoint == "chat" else "openai",
        "label": ctx.label,
        "model_id": ctx.model,
        "tokenizer_id": ctx.tokenizer_id,
        "scenario": ctx.scenario.name,
        "server_version": ctx.server.version,
        "output_lengths": ctx.scenario.output_lengths,
        "prompt_source": ctx.scenario.prompts.source,
    }


def _summary_extra(
    ctx: RunContext, plan: PhasePlan, ran: PhaseRun, extra: dict[str, Any]
) -> dict[str, Any]:
    out = {**extra, **ran.extra, "repeat": plan.phase.repeat, "complete": not ctx.stop.is_set()}
    if ctx.stop.message:
        out["stop_reason"] = ctx.stop.message
    return out


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


def install_stop_handlers(loop: asyncio.AbstractEventLoop, stop: StopSignal) -> list[int]:
    """Ctrl-C and SIGTERM set ``stop`` (on this loop, main thread only); the signals handled."""
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            why = f"interrupted by {signal.Signals(sig).name}"
            loop.add_signal_handler(sig, stop.set, StopReason.INTERRUPTED, why)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread: the caller handles signals
    return installed


def run_scenario(scenario: Scenario, **kwargs: Any) -> RunResult:
    """:func:`run_scenario_async` on uvloop when installed (server_launch calls this
    between server starts)."""
    return run_async(run_scenario_async(scenario, **kwargs))


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to its end in a new event loop: uvloop's when installed."""
    try:
        import uvloop  # type: ignore[import-not-found]

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    return runner(main)

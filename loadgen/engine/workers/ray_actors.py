"""``--ray-address``: the workers of :mod:`loadgen.engine.workers.pool` as Ray actors.

Each actor runs the same :class:`~loadgen.engine.workers.core.WorkerCore` on the same shared clock
(wall-clock start ``T`` from the driver, mapped onto the actor's ``perf_counter``), so on
other hosts the records line up to within the hosts' NTP offset. Actors keep their records
in memory and the driver pulls them every quarter second into ``requests.w<K>.jsonl``,
then merges them as for local workers: the results directory is the same. The ``loadgen``
package is shipped to the cluster (``runtime_env.py_modules``); its dependencies (httpx,
numpy, pydantic) must be installed on the nodes. Ray is imported only here, and only when
``--ray-address`` is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from loadgen.engine.stop import StopReason, StopSignal
from loadgen.engine.workers.core import (
    LineBuffer,
    PhaseJob,
    WorkerCore,
    WorkerInit,
    WorkerLost,
    WorkerResult,
    wait_go_or_stop,
)
from loadgen.engine.workers.pool import WorkerPool
from loadgen.errors import SpecloadError, one_line

ACTOR_START_TIMEOUT_S = 120.0
RAY_GO_MARGIN_S = 0.5  # the shared start is this far ahead of the go calls
MISSING_RAY = (
    "--ray-address: ray is not installed; install the 'ray' extra "
    "(pip install 'specload[ray]') or drop --ray-address"
)


class RayActorBody:
    """The actor (wrapped by ``ray.remote`` at run time): one worker on a Ray node."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.core: WorkerCore | None = None
        self.buffer = LineBuffer()
        self.job: PhaseJob | None = None
        self.stop_signal: StopSignal | None = None
        self.go_future: asyncio.Future[tuple[float, float]] | None = None
        self.ready_event: asyncio.Event | None = None

    async def ping(self) -> str:
        import socket

        return socket.gethostname()

    async def init(self, init: WorkerInit) -> None:
        self.core = WorkerCore(self.index, init)

    async def begin(self, job: PhaseJob) -> None:
        self.job = job
        self.stop_signal = StopSignal()
        self.go_future = asyncio.get_running_loop().create_future()
        self.ready_event = asyncio.Event()

    async def run(self) -> WorkerResult:
        assert self.core and self.job and self.stop_signal and self.go_future and self.ready_event
        core, stop, go, ready = self.core, self.stop_signal, self.go_future, self.ready_event

        async def rendezvous() -> tuple[float, float]:
            ready.set()
            return await wait_go_or_stop(go, stop, core.clock)

        return await core.run_phase(self.job, self.buffer, rendezvous, stop)

    async def wait_ready(self) -> None:
        assert self.ready_event is not None
        await self.ready_event.wait()

    async def go(self, wall: float, at: float) -> None:
        if self.go_future is not None and not self.go_future.done():
            self.go_future.set_result((wall, at))

    async def stop(self, reason: StopReason, message: str) -> None:
        if self.stop_signal is not None:
            self.stop_signal.set(reason, message)

    async def drain(self) -> list[str]:
        return self.buffer.drain()


def _why(e: BaseException) -> str:
    """The last line of a Ray error (they carry whole tracebacks)."""
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return one_line(lines[-1] if lines else type(e).__name__)


class RayWorker:
    """The driver's handle on one actor (the WorkerHandle protocol)."""

    def __init__(self, index: int, actor: Any, ray: Any) -> None:
        self.index = index
        self.actor = actor
        self.ray = ray
        self._run_task: asyncio.Task[Any] | None = None
        self._path: Path | None = None

    async def _call(self, ref: Any) -> Any:
        try:
            return await ref
        except asyncio.CancelledError:
            raise
        except Exception as e:
            raise WorkerLost(f"worker {self.index} (Ray actor) failed: {_why(e)}") from None

    async def init(self, init: Any) -> None:
        await self._call(self.actor.init.remote(init))

    async def begin(self, job: PhaseJob, records_path: Path) -> None:
        self._path = records_path
        await self._call(self.actor.begin.remote(job))
        self._run_task = asyncio.ensure_future(self._call(self.actor.run.remote()))

    async def ready(self) -> None:
        assert self._run_task is not None
        ready = asyncio.ensure_future(self._call(self.actor.wait_ready.remote()))
        try:
            await asyncio.wait({ready, self._run_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not ready.done():
                ready.cancel()
        if not ready.done() or ready.cancelled():
            self._run_task.result()  # the phase ended first: raise its error
            return
        ready.result()

    async def go(self, wall: float, at: float) -> None:
        await self._call(self.actor.go.remote(wall, at))

    def stop(self, reason: StopReason, message: str) -> None:
        with contextlib.suppress(Exception):
            self.actor.stop.remote(reason, message)

    async def done(self) -> WorkerResult:
        assert self._run_task is not None
        return await asyncio.shield(self._run_task)

    async def new_lines(self) -> list[bytes]:
        lines = await self._call(self.actor.drain.remote())
        if not lines or self._path is None:
            return []
        data = "".join(line + "\n" for line in lines).encode()
        with open(self._path, "ab") as f:
            f.write(data)
        return data.splitlines()

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.ray.kill(self.actor, no_restart=True)

    async def close(self) -> None:
        self.kill()


class RayPool(WorkerPool):
    async def close(self) -> None:
        await super().close()
        with contextlib.suppress(Exception):
            import ray

            ray.shutdown()

    async def init(self, init: WorkerInit) -> None:
        import ray

        ref = ray.put(init)  # the prompts travel once, not once per actor
        for h in self.handles:
            try:
                await h.init(ref)
            except WorkerLost as e:
                self.lost = str(e)


def require_ray() -> None:
    """Fail at once, before any server is probed, when ``ray`` is missing."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise SpecloadError(MISSING_RAY)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise SpecloadError(MISSING_RAY) from None
    return ray


async def start_ray_pool(n: int, address: str) -> WorkerPool:
    """Connect to the cluster at ``address`` and start ``n`` worker actors, spread over
    its nodes. One-line errors for a missing ray, an unreachable cluster, too few CPUs."""
    ray = _import_ray()
    package = str(Path(__file__).resolve().parents[2])
    try:
        ray.init(  # in the main thread: Ray warns when it can't set its SIGTERM handler
            address=address,
            runtime_env={"py_modules": [package]},
            logging_level=logging.WARNING,
            log_to_driver=False,
            ignore_reinit_error=True,
        )
    except Exception as e:
        raise SpecloadError(f"--ray-address: cannot connect to {address}: {_why(e)}") from None
    try:
        cpus = ray.cluster_resources().get("CPU", 0)
        if cpus < n:
            raise SpecloadError(
                f"--workers: {n} workers need {n} CPUs, the Ray cluster at {address} has {cpus:g}"
            )
        actor_cls = ray.remote(RayActorBody)
        actors = [
            actor_cls.options(num_cpus=1, scheduling_strategy="SPREAD", max_restarts=0).remote(k)
            for k in range(n)
        ]
        try:
            hosts = await asyncio.wait_for(
                asyncio.gather(*(a.ping.remote() for a in actors)), ACTOR_START_TIMEOUT_S
            )
        except TimeoutError:
            for a in actors:
                with contextlib.suppress(Exception):
                    ray.kill(a)
            raise SpecloadError(
                f"--ray-address: {n} worker actors did not start within "
                f"{ACTOR_START_TIMEOUT_S:.0f} s (are {n} CPUs free?)"
            ) from None
        except SpecloadError:
            raise
        except Exception as e:
            why = _why(e)
            raise SpecloadError(f"--ray-address: worker actors failed to start: {why}") from None
    except BaseException:
        with contextlib.suppress(Exception):
            ray.shutdown()
        raise
    handles = [RayWorker(k, a, ray) for k, a in enumerate(actors)]
    return RayPool(
        handles, "ray", RAY_GO_MARGIN_S, {"ray_address": address, "worker_hosts": list(hosts)}
    )

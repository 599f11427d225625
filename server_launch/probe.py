"""A *probe*: one measured loadgen phase at one load level on one of several co-resident
servers. The paired sweep alternates probes between servers (``balanced_order``); any other
caller that compares servers side by side (a capacity search, say) can do the same:

    with CoResident(backend, say=print) as servers:
        a = servers.start(run_a, port_a, log_a)
        b = servers.start(run_b, port_b, log_b)
        servers.wait_healthy(deadline_s)
        for k in range(4):
            for r in balanced_order(k, [a, b]):
                p = run_probe(r, scenario, slug, out / f"round-{k + 1:02d}" / r.label)
                if p.server_lost or servers.lost():
                    ...

A probe never overlaps another: while one server is measured the others are idle, so
co-residency costs memory, not compute. ``run_probe`` also greps the server's log between
the probe's start and end for kernel compilation (vLLM's JIT monitor warns "... JIT
compilation during inference ..."; Triton prints "Triton autotuning for function ..."), which
makes a measured phase slower than the steady state it stands for.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadgen.errors import ExitCode, describe_exception
from loadgen.report.verdict import balanced_order as _order
from server_launch.backends.base import (
    ServerBackend,
    ServerHandle,
    ServerStartError,
    http_healthy,
    install_signal_handlers,
    wait_port_free,
)

if TYPE_CHECKING:
    from loadgen.config.scenario import Scenario
    from server_launch.matrix import ServerRun
    from server_launch.sweep import Runner

JIT_RE = re.compile(r"JIT compilation|autotuning for function", re.IGNORECASE)
MAX_JIT_LINES = 20


@dataclasses.dataclass
class Resident:
    """A server up for side-by-side comparison: its run (configuration), handle and log."""

    run: ServerRun
    handle: ServerHandle
    log_path: Path
    port: int

    @property
    def label(self) -> str:
        return self.run.label

    def alive(self) -> bool:
        return self.handle.is_alive()

    def healthy(self) -> bool:
        return self.handle.is_alive() and http_healthy(self.handle.base_url)


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """How one probe went. ``summary`` is the phase's flat summary (None: it has none)."""

    label: str
    out_dir: Path
    summary: dict[str, Any] | None
    complete: bool
    server_lost: bool
    interrupted: bool
    reason: str | None
    jit: list[str]
    started_at: float  # time.time()
    duration_s: float

    def to_json(self, root: Path) -> dict[str, Any]:
        return {
            "label": self.label,
            "dir": str(self.out_dir.relative_to(root)),
            "complete": self.complete,
            "server_lost": self.server_lost,
            "reason": self.reason,
            "jit": self.jit,
            "started_at": self.started_at,
            "duration_s": round(self.duration_s, 3),
        }


def balanced_order(round_index: int, residents: Sequence[Resident]) -> list[Resident]:
    """Round ``round_index``'s order: forward, then backward (A B | B A | ...)."""
    by_label = {r.label: r for r in residents}
    return [by_label[x] for x in _order(round_index, [r.label for r in residents])]


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def jit_lines(log_path: Path, start: int, end: int | None = None) -> list[str]:
    """Kernel-compilation lines the server logged between byte offsets ``start`` and ``end``."""
    try:
        with open(log_path, "rb") as f:
            f.seek(start)
            data = f.read(None if end is None else max(0, end - start))
    except OSError:
        return []
    lines = data.decode("utf-8", errors="replace").splitlines()
    return [ln.strip()[:300] for ln in lines if JIT_RE.search(ln)][:MAX_JIT_LINES]


def run_probe(
    resident: Resident,
    scenario: Scenario,
    slug: str,
    out_dir: Path,
    *,
    runner: Runner | None = None,
    progress: bool = False,
) -> ProbeResult:
    """Run phase ``slug`` of ``scenario`` once against ``resident`` into ``out_dir`` (a
    loadgen results directory of its own). Exceptions from the run become a failed probe;
    Ctrl-C propagates."""
    from server_launch.sweep import _default_runner, run_kwargs

    runner = runner or _default_runner
    kwargs = run_kwargs(resident.run, scenario, resident.handle, out_dir, progress)
    kwargs["health_check"] = resident.healthy
    kwargs["only_phases"] = [slug]
    start_offset = log_size(resident.log_path)
    t_wall, t0 = time.time(), time.monotonic()
    try:
        result = runner(scenario, **kwargs)
    except Exception as e:  # a probe that breaks is a failed probe, not a crashed sweep
        lost = not resident.alive()
        return ProbeResult(
            resident.label, out_dir, None, False, lost, False, describe_exception(e),
            jit_lines(resident.log_path, start_offset), t_wall, time.monotonic() - t0,
        )  # fmt: skip
    finally:
        install_signal_handlers()  # asyncio's run resets SIGTERM (see sweep.py)
    summary = (result.phases or {}).get(slug)
    complete = summary is not None and bool(summary.get("complete", result.complete))
    return ProbeResult(
        label=resident.label,
        out_dir=out_dir,
        summary=summary,
        complete=complete,
        server_lost=result.exit_code == ExitCode.SERVER_LOST or not resident.alive(),
        interrupted=result.exit_code == ExitCode.INTERRUPTED,
        reason=result.stop_reason,
        jit=jit_lines(resident.log_path, start_offset),
        started_at=t_wall,
        duration_s=time.monotonic() - t0,
    )


class CoResident:
    """Servers started side by side on one machine; all stopped on exit from the ``with``.

    ``start`` launches without waiting, so the servers load their models at the same time;
    ``wait_healthy`` then waits for each. A server that fails to start raises
    ServerStartError naming it (``failed_label``) with its log tail."""

    def __init__(self, backend: ServerBackend, say: Callable[[str], None] | None = None) -> None:
        self.backend = backend
        self.say = say or (lambda _msg: None)
        self.residents: dict[str, Resident] = {}

    def __enter__(self) -> CoResident:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def start(
        self, run: ServerRun, port: int, log_path: Path, port_free_wait_s: float = 15.0
    ) -> Resident:
        wait_port_free(port, port_free_wait_s)
        self.say(f"[{run.label}] starting server ({self.backend.name}) on port {port}")
        handle = self.backend.start(run, port, log_path)
        r = Resident(run, handle, log_path, port)
        self.residents[run.label] = r
        return r

    def wait_healthy(self, deadline_s: float, labels: Sequence[str] | None = None) -> None:
        for label in labels or list(self.residents):
            r = self.residents[label]
            try:
                r.handle.wait_healthy(deadline_s)
            except ServerStartError as e:
                e.failed_label = label  # type: ignore[attr-defined]
                raise
            self.say(f"[{label}] server healthy at {r.handle.base_url}")

    def lost(self) -> list[str]:
        """Labels of residents whose server is gone."""
        return [lb for lb, r in self.residents.items() if not r.alive()]

    def stop(self, label: str) -> None:
        r = self.residents.pop(label, None)
        if r is not None:
            self.say(f"[{label}] stopping server")
            r.handle.stop()

    def stop_all(self) -> None:
        for label in list(self.residents):
            self.stop(label)

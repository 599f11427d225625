"""A search scenario (``search:``) in a paired sweep: one search per co-resident server.

*Capacity* (``search: {kind: capacity}``): each server's search is loadgen's own
:class:`~loadgen.engine.capacity.CapacityRun` in a loadgen run of its own, held open
(:func:`loadgen.engine.run.open_run`: a PhaseHost per server) while this module decides
whose probe runs next. Round k goes over the searches still running, forward for even k and
backward for odd (baseline, candidate | candidate, baseline | ...; with three servers
A B C | C B A), one probe at a time while the other servers idle. Each search picks its own
levels from its own verdicts, so what alternates is *time*, not levels: whatever the machine
does over the searches (drift, a step, a neighbour) falls on every server's probes alike on
average, instead of on whichever server was searched second. A search that has finished
leaves the rotation and the others' remaining probes run back to back. The capacity, its
interval and every verdict are each search's own, exactly as a search alone computes them
(docs/capacity.md).

*Saturation* (``search: {kind: saturation}``): the servers' sweeps run one after the other,
each a whole loadgen run while the others idle: not alternated (search.json says
``pairing: sequential``).

Layout (``CELL = SWEEP_DIR/paired/<group>/<scenario>/<kind>/``)::

    CELL/search.json   the timeline: every probe in the order it ran, on which server, when,
                       kernel compilation seen in that server's log meanwhile; how it ended;
                       an earlier attempt's timeline under "earlier"
    CELL/<label>/      one loadgen RUN_DIR per server: run.json, summary.json, capacity.json
                       (or saturation.json), a phase directory per probe

Ending early: Ctrl-C (or SIGTERM) stops every search at once (the probe in flight is cut
and not counted), each capacity.json says ``stopped``, and KeyboardInterrupt goes up to the
sweep (servers stopped, state saved, exit 130). A server that dies stops every search of
the group; each keeps its finished probes. ``--resume`` starts the servers again and each
search takes back its finished probes (CapacityRun's resume), then they go on alternating.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadgen.config.search import SearchKind
from loadgen.engine.capacity import CapacityRun
from loadgen.engine.run import OpenRun, install_stop_handlers, open_run, run_async
from loadgen.engine.stop import StopReason, StopSignal
from loadgen.errors import ExitCode, describe_exception
from loadgen.report.paired import SEARCH_FILE
from loadgen.report.verdict import balanced_order
from loadgen.results.capacity import SearchStop
from loadgen.results.files import atomic_write_json
from server_launch.backends.base import install_signal_handlers
from server_launch.paired_level import supersede
from server_launch.probe import Resident, jit_lines, log_size

if TYPE_CHECKING:
    from loadgen.config.scenario import Scenario
    from server_launch.sweep import RunKwargs, Runner

ORDER_TEXT = "balanced: round k forward, round k+1 backward (A B | B A; A B C | C B A)"


class SearchStatus(StrEnum):
    """How a search cell ended (search.json's ``status``)."""

    RUNNING = "running"
    DONE = "done"  # every server's search came to its answer
    FAILED = "failed"  # a search ended without one (error budget, an error); servers fine
    LOST = "lost"  # a server died: every search stopped, finished probes kept
    INTERRUPTED = "interrupted"


@dataclasses.dataclass
class SearchOutcome:
    status: SearchStatus
    probes: int = 0  # probes run or taken back, all servers together
    lost: list[str] = dataclasses.field(default_factory=list)  # labels of dead servers
    reason: str | None = None


@dataclasses.dataclass
class GroupStop(StopSignal):
    """The stop a signal sets: it sets every member run's stop too (each run keeps its own
    signal, so a run stopped for its own reason, say its error budget, stops alone)."""

    members: list[StopSignal] = dataclasses.field(default_factory=list)

    def set(self, reason: StopReason, message: str) -> None:
        super().set(reason, message)
        for m in self.members:
            m.set(reason, message)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _read(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


class SearchCell:
    """One search scenario of one group: a search per server in ``residents`` (the
    baseline first); see the module docstring."""

    def __init__(
        self,
        residents: Sequence[Resident],
        scenario: Scenario,
        cell_dir: Path,
        *,
        group: str,
        runner: Runner | None = None,
        progress: bool = False,
        say: Callable[[str], None] = lambda _m: None,
        lost: Callable[[], list[str]] | None = None,
    ) -> None:
        assert scenario.search is not None
        self.residents = list(residents)
        self.by_label = {r.label: r for r in self.residents}
        self.scenario, self.kind = scenario, scenario.search.kind
        self.dir, self.group = cell_dir, group
        self.runner, self.progress, self.say = runner, progress, say
        self.lost = lost or (lambda: [r.label for r in self.residents if not r.alive()])
        self.alternated = self.kind is SearchKind.CAPACITY
        self.doc: dict[str, Any] = {}

    # --- the cell ----------------------------------------------------------------------

    def run(self) -> SearchOutcome:
        """Every server's search; KeyboardInterrupt passes through once search.json says so."""
        earlier = _read(self.dir / SEARCH_FILE)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.doc = {
            "scenario": self.scenario.name,
            "kind": self.kind.value,
            "pairing": "alternated" if self.alternated else "sequential",
            "order": ORDER_TEXT if self.alternated else "one server after the other",
            "group": self.group,
            "baseline": self.residents[0].label,
            "servers": [r.label for r in self.residents],
            "status": SearchStatus.RUNNING,
            "started_at": _now(),
            "probes": [],  # capacity: every probe, in the order it ran
            "runs": [],  # saturation: every server's sweep, in the order it ran
            "done": [],  # saturation: the servers whose sweep finished (an attempt's too)
            "earlier": [],
        }
        if earlier is not None:  # a resumed cell: the earlier attempts' timelines are kept
            self.doc["earlier"] = [*earlier.get("earlier", []), _without(earlier, "earlier")]
            self.doc["done"] = list(earlier.get("done") or [])
        self._save()
        try:
            # capacity: the searches' probes in turn; saturation: one server after the other
            outcome = run_async(self._alternate()) if self.alternated else self._one_after_another()
        except KeyboardInterrupt:
            self._end(SearchOutcome(SearchStatus.INTERRUPTED, reason="interrupted"))
            raise
        except Exception as e:  # a search that breaks fails its cell, not the sweep
            lost = self.lost()
            status = SearchStatus.LOST if lost else SearchStatus.FAILED
            outcome = SearchOutcome(status, lost=lost, reason=describe_exception(e))
        finally:
            install_signal_handlers()  # asyncio's run resets SIGTERM (see sweep.py)
        return self._end(outcome)

    def _end(self, outcome: SearchOutcome) -> SearchOutcome:
        outcome.probes = len(self.doc["probes"]) or len(self.doc["runs"])
        self.doc.update(
            status=outcome.status, ended_at=_now(), lost=outcome.lost, reason=outcome.reason
        )
        self._save()
        return outcome

    def _save(self) -> None:
        atomic_write_json(self.dir / SEARCH_FILE, self.doc)

    def _kwargs(self, r: Resident) -> RunKwargs:
        from server_launch.sweep import run_kwargs

        kwargs = run_kwargs(r.run, self.scenario, r.handle, self.dir / r.label, self.progress)
        kwargs["health_check"] = r.healthy
        return kwargs

    # --- capacity: the searches' probes in turn ------------------------------------------

    async def _alternate(self) -> SearchOutcome:
        """Open a run per server, take turns, close them (summary.json final). Ctrl-C at
        any point (a server being asked, prompts loading, a probe) stops them all."""
        loop = asyncio.get_running_loop()
        stops = {r.label: StopSignal() for r in self.residents}
        signalled = GroupStop(members=list(stops.values()))
        installed = install_stop_handlers(loop, signalled)
        try:
            runs: dict[str, OpenRun] = {}
            async with contextlib.AsyncExitStack() as stack:
                for r in self.residents:
                    kwargs = self._kwargs(r)
                    # its earlier probes, if any, are taken back (CapacityRun's resume)
                    kwargs["existing"] = "resume"
                    run = open_run(self.scenario, stop=stops[r.label], **kwargs)
                    runs[r.label] = await stack.enter_async_context(run)
                finished, outcome = await self._take_turns(runs, signalled)
            for label, run in runs.items():
                run.result(finished[label])
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
        if signalled.is_set():
            raise KeyboardInterrupt(signalled.message)
        return outcome

    async def _take_turns(
        self, runs: dict[str, OpenRun], signalled: StopSignal
    ) -> tuple[dict[str, bool], SearchOutcome]:
        """The rounds (module docstring) until every search is over or one must stop all;
        per server whether its search finished, and how the cell ended."""
        labels = list(runs)
        searches = {label: _capacity_run(run) for label, run in runs.items()}
        for i, search in enumerate(searches.values(), start=1):
            search.alternation = {
                "group": self.group,
                "baseline": labels[0],
                "servers": labels,
                "position": i,
                "order": ORDER_TEXT,
            }
            search.begin()
        live, k = list(labels), 0
        outcome: SearchOutcome | None = None
        try:
            while live and outcome is None:
                for label in balanced_order(k, live):
                    if not await self._turn(label, searches[label], runs[label]):
                        live.remove(label)
                    outcome = self._must_stop(runs, signalled)
                    if outcome is not None:
                        break
                k += 1
        finally:
            for search in searches.values():
                search.end()
        finished = {lb: s.machine.stop is not SearchStop.STOPPED for lb, s in searches.items()}
        if outcome is None:
            unfinished = [lb for lb in labels if not finished[lb]]
            outcome = SearchOutcome(SearchStatus.DONE)
            if unfinished:
                why = "; ".join(f"{lb}: {runs[lb].ctx.stop.message}" for lb in unfinished)
                outcome = SearchOutcome(SearchStatus.FAILED, reason=f"stopped early: {why}")
        return finished, outcome

    async def _turn(self, label: str, search: CapacityRun, run: OpenRun) -> bool:
        """One probe of ``label``'s search (or none: its search is over); False when it is."""
        r = self.by_label[label]
        before, taken = len(search.probes), len(search.taken_back)
        offset = log_size(r.log_path)
        t_wall, t0 = time.time(), time.monotonic()
        more = await search.probe(run.host)
        if len(search.probes) > before:
            entry = search.probes[-1]
            taken_back = len(search.taken_back) > taken
            jit = [] if taken_back else jit_lines(r.log_path, offset)
            self.doc["probes"].append(
                {
                    "label": label,
                    "index": entry["index"],
                    "phase": entry["phase"],
                    "level": entry["level"],
                    "started_at": t_wall,
                    "duration_s": round(time.monotonic() - t0, 3),
                    "taken_back": taken_back,
                    "complete": entry.get("complete"),
                    "verdict": entry.get("verdict"),
                    "jit": jit,
                }
            )
            self._save()
            if jit:
                self.say(f"[{label}] {entry['phase']}: kernel compilation meanwhile: {jit[0]}")
        return more

    def _must_stop(self, runs: dict[str, OpenRun], signalled: StopSignal) -> SearchOutcome | None:
        """After a turn: a signal, or a lost server (dead, or its run's health watch
        failed), ends every search; the survivors' runs say why."""
        if signalled.is_set():
            return SearchOutcome(SearchStatus.INTERRUPTED, reason=signalled.message)
        gone = [lb for lb, run in runs.items() if run.ctx.stop.reason is StopReason.SERVER_LOST]
        lost = list(dict.fromkeys([*self.lost(), *gone]))
        if not lost:
            return None
        first = runs.get(lost[0])
        why = first.ctx.stop.message if first is not None and first.ctx.stop.message else None
        why = why or f"server lost: {', '.join(lost)}"
        why = why if why.startswith("server lost") else f"server lost: {why}"
        for label, run in runs.items():
            if _capacity_run(run).machine.stop is not None:  # its search was over already
                continue
            beside = f"server lost beside this one ({', '.join(lost)}): its search stopped too"
            run.ctx.stop.set(StopReason.SERVER_LOST, why if label in lost else beside)
        return SearchOutcome(SearchStatus.LOST, lost=lost, reason=why)

    # --- saturation: one server after the other ------------------------------------------

    def _one_after_another(self) -> SearchOutcome:
        """Each server's saturation sweep in turn while the others idle; a sweep an earlier
        attempt finished is kept, an unfinished one moved aside and run again."""
        from server_launch.sweep import _default_runner

        runner = self.runner or _default_runner
        failed: list[str] = []
        for r in self.residents:
            out = self.dir / r.label
            if r.label in self.doc["done"] and (out / "summary.json").is_file():
                self.say(f"[{r.label}] {self.scenario.name}: finished earlier, kept")
                continue
            supersede(out)
            self.say(f"[{r.label}] {self.scenario.name}: saturation sweep (the others idle)")
            t_wall, t0 = time.time(), time.monotonic()
            result = runner(self.scenario, **self._kwargs(r))
            self.doc["runs"].append(
                {
                    "label": r.label,
                    "started_at": t_wall,
                    "duration_s": round(time.monotonic() - t0, 3),
                    "complete": result.complete,
                    "reason": result.stop_reason,
                }
            )
            self._save()
            if result.exit_code == ExitCode.INTERRUPTED and result.stop_reason:
                raise KeyboardInterrupt(result.stop_reason or "interrupted")
            lost = self.lost()
            if result.exit_code == ExitCode.SERVER_LOST or lost:
                why = result.stop_reason or f"server lost: {', '.join(lost or [r.label])}"
                return SearchOutcome(SearchStatus.LOST, lost=lost or [r.label], reason=why)
            if result.complete:
                self.doc["done"].append(r.label)
            else:
                failed.append(f"{r.label}: {result.stop_reason or 'incomplete'}")
        if failed:
            return SearchOutcome(SearchStatus.FAILED, reason="; ".join(failed))
        return SearchOutcome(SearchStatus.DONE)


def _capacity_run(run: OpenRun) -> CapacityRun:
    strategy = run.strategy
    assert isinstance(strategy, CapacityRun), type(strategy)
    return strategy


def _without(doc: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != key}

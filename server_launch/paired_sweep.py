"""The paired sweep: the baseline stays up, candidates come in beside it a group at a time,
and every load level is measured side by side (``paired_level.LevelRun``).

Layout (the sequential sweep's, plus ``paired/``)::

    SWEEP_DIR/sweep.json                          state: mode "paired", the plan, every cell
    SWEEP_DIR/<label>/server.log                  each server's output
    SWEEP_DIR/<label>/failed.json                 why a server failed (start or mid-sweep)
    SWEEP_DIR/paired/<group>/<scenario>/<level>/  one level (paired_level.py)
    SWEEP_DIR/paired/<group>/<scenario>/<kind>/   a search scenario: a search per server,
                                                  capacity probes alternating (paired_search.py)

A *cell* is one (group, scenario, level), or (group, scenario, search kind). ``sweep.json``
is replaced atomically after each cell. A server that dies mid-level fails that cell (the
level in flight: its finished rounds stay on disk, its level.json says ``lost``), keeps the
group's finished levels, and leaves the rest pending; ``--resume`` starts the servers again
and measures the failed level afresh (its earlier attempt moved to ``.superseded/``: pairs
from two server lifetimes are not one experiment), then the pending ones. A search cell
that loses a server keeps every search's finished probes; ``--resume`` takes them back.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadgen.errors import SpecloadError
from loadgen.report.paired import PAIRED_DIR
from loadgen.results.files import atomic_write_json, slugify
from server_launch.backends.base import ServerBackend, ServerStartError
from server_launch.paired_level import LevelRun, LevelStatus
from server_launch.paired_search import SearchCell, SearchStatus
from server_launch.pairing import Device, PairingPlan, group_id, resident_run
from server_launch.probe import CoResident, Resident

if TYPE_CHECKING:
    from loadgen.config.scenario import Scenario
    from server_launch.matrix import Matrix, ServerRun
    from server_launch.sweep import Runner

STATE_VERSION = 1
DONE, FAILED, PENDING = "done", "failed", "pending"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def level_scenario(scenario: Scenario) -> Scenario:
    """The scenario a paired level runs: one phase per load level (the pairs are the
    repeats, so the scenario's own ``repeats`` does not apply)."""
    if scenario.repeats == 1:
        return scenario
    return scenario.model_copy(update={"repeats": 1})


def level_slugs(scenario: Scenario) -> list[str]:
    """A scenario's cells: its levels; a search (which picks its levels as it runs) is one
    cell named after its kind ('capacity'), done when every server's search is."""
    if scenario.search is not None:
        return [scenario.search.kind.value]
    return [slugify(p.name) for p in level_scenario(scenario).phases()]


class PairedState:
    """``sweep.json`` of a paired sweep: ``groups[gid].scenarios[name][level]`` = cell."""

    def __init__(self, path: Path, doc: dict[str, Any]) -> None:
        self.path, self.doc = path, doc

    @classmethod
    def create(
        cls,
        path: Path,
        matrix: Matrix,
        plan: PairingPlan,
        backend: str,
        previous: dict[str, Any] | None,
    ) -> PairedState:
        from server_launch.sweep import _dump

        runs = {r.label: r for r in matrix.runs}
        old_groups = (previous or {}).get("groups", {})
        groups: dict[str, Any] = {}
        for cands in plan.groups:
            gid = group_id(cands)
            old = old_groups.get(gid, {}).get("scenarios", {})
            scenarios = {}
            for sc in _group_scenarios(runs, plan.baseline or "", cands):
                cells = old.get(sc.name, {})
                scenarios[sc.name] = {
                    s: dict(cells.get(s) or {"status": PENDING}) for s in level_slugs(sc)
                }
            groups[gid] = {"baseline": plan.baseline, "candidates": cands, "scenarios": scenarios}
        for gid, entry in old_groups.items():
            groups.setdefault(gid, entry)  # e.g. left out by --only: keep what they did
        old_runs = (previous or {}).get("runs", {})
        doc = {
            "version": STATE_VERSION,
            "mode": "paired",
            "name": matrix.name,
            "backend": backend,
            "status": "running",
            "started_at": (previous or {}).get("started_at") or _now(),
            "updated_at": _now(),
            "resumed": previous is not None,
            "pairing": plan.to_json(),
            "matrix": _dump(matrix),
            "active": [group_id(g) for g in plan.groups],  # what this invocation runs
            "runs": {lb: old_runs.get(lb, {"status": PENDING}) for lb in runs},
            "groups": groups,
        }
        return cls(path, doc)

    def save(self) -> None:
        self.doc["updated_at"] = _now()
        atomic_write_json(self.path, self.doc)

    def cells(self, gid: str, scenario: str) -> dict[str, dict[str, Any]]:
        return self.doc["groups"][gid]["scenarios"][scenario]

    def todo(self, gid: str, scenario: str) -> list[str]:
        return [s for s, c in self.cells(gid, scenario).items() if c["status"] != DONE]

    def group_done(self, gid: str) -> bool:
        return all(not self.todo(gid, sc) for sc in self.doc["groups"][gid]["scenarios"])

    def mark(self, gid: str, scenario: str, slug: str, status: str, **extra: Any) -> None:
        self.cells(gid, scenario)[slug] = {"status": status, "at": _now(), **extra}
        self.save()

    def fail_rest(self, gid: str, error: str) -> None:
        for sc in self.doc["groups"][gid]["scenarios"]:
            for slug in self.todo(gid, sc):
                self.cells(gid, sc)[slug] = {"status": FAILED, "at": _now(), "error": error}
        self.save()

    def set_run(self, label: str, status: str, error: str | None = None, **extra: Any) -> None:
        self.doc["runs"].setdefault(label, {}).update(status=status, error=error, **extra)
        self.save()

    def counts(self) -> dict[str, int]:
        out = {DONE: 0, FAILED: 0, PENDING: 0}
        for gid in self.doc["active"]:
            for cells in self.doc["groups"][gid]["scenarios"].values():
                for c in cells.values():
                    out[c["status"]] = out.get(c["status"], 0) + 1
        return out


def _group_scenarios(runs: dict[str, ServerRun], base: str, cands: list[str]) -> list[Scenario]:
    """The baseline's scenarios that some candidate of the group runs, in its order."""
    names = {s.name for c in cands for s in runs[c].scenarios}
    return [s for s in runs[base].scenarios if s.name in names]


class PairedSweep:
    """Runs the groups of ``plan``; see the module docstring."""

    def __init__(
        self,
        matrix: Matrix,
        plan: PairingPlan,
        *,
        backend: ServerBackend,
        state: PairedState,
        sweep_dir: Path,
        runner: Runner | None,
        health_deadline_s: float,
        port: int,
        progress: bool,
        say: Callable[[str], None],
        port_free_wait_s: float,
    ) -> None:
        assert plan.settings is not None and plan.baseline is not None
        self.matrix, self.plan, self.settings = matrix, plan, plan.settings
        self.runs = {r.label: resident_run(r, plan) for r in matrix.runs}
        self.baseline = plan.baseline
        self.backend, self.state, self.dir = backend, state, sweep_dir
        self.runner, self.progress, self.say = runner, progress, say
        self.health_deadline_s, self.port = health_deadline_s, port
        self.port_free_wait_s = port_free_wait_s
        self.failed_runs: list[str] = []
        self.baseline_failed: str | None = None

    def run(self) -> None:
        """Every group; KeyboardInterrupt (Ctrl-C, SIGTERM) passes through, servers stopped."""
        with CoResident(self.backend, self.say) as servers:
            for cands in self.plan.groups:
                gid = group_id(cands)
                if self.state.group_done(gid):
                    self.say(f"[{gid}] all levels done, skipping")
                    continue
                if self.baseline_failed:  # nothing left to compare with
                    self.state.fail_rest(gid, self.baseline_failed)
                    continue
                try:
                    self._group(servers, gid, cands)
                finally:
                    for c in cands:
                        servers.stop(c)
        if not self.baseline_failed:
            done = all(self.state.group_done(group_id(g)) for g in self.plan.groups)
            self.state.set_run(self.baseline, DONE if done else "incomplete")

    def _start(self, servers: CoResident, cands: list[str]) -> list[Resident] | None:
        """The baseline (started again if it is not up) and the group's candidates, healthy;
        None when one failed to start (recorded, the group's cells failed)."""
        base = servers.residents.get(self.baseline)
        if base is not None and not base.alive():
            servers.stop(self.baseline)
            base = None
        labels = ([] if base else [self.baseline]) + cands
        # On a GPU one at a time: vLLM measures the memory its own start-up takes from the
        # device's free memory, and fails ("Error in memory profiling") when another server
        # starting beside it frees memory meanwhile. CPU servers start together.
        one_by_one = self.plan.device is Device.GPU
        try:
            for i, label in enumerate([self.baseline, *cands]):
                if label in labels:
                    self._start_one(servers, label, self.port + i)
                    if one_by_one:
                        servers.wait_healthy(self.health_deadline_s, [label])
            if not one_by_one:
                servers.wait_healthy(self.health_deadline_s, labels)
        except ServerStartError as e:
            failed = getattr(e, "failed_label", labels[-1])
            self._failure(failed, "start", str(e), e.log_tail)
            if failed == self.baseline:
                self.baseline_failed = f"baseline '{failed}' failed to start: {e}"
            self.say(f"[{failed}] server failed: {e} (see {self.dir / failed / 'failed.json'})")
            for label in cands if failed != self.baseline else labels:
                servers.stop(label)  # a healthy baseline stays up for the next group
            return None
        for label in labels:
            self.state.set_run(label, "running")
        return [servers.residents[x] for x in (self.baseline, *cands)]

    def _start_one(self, servers: CoResident, label: str, port: int) -> None:
        run = self.runs[label]
        command = self.backend.command(run, port)
        self.state.set_run(label, "starting", command=command, port=port, started_at=_now())
        servers.start(run, port, self.dir / label / "server.log", self.port_free_wait_s)

    def _group(self, servers: CoResident, gid: str, cands: list[str]) -> None:
        residents = self._start(servers, cands)
        if residents is None:
            self.state.fail_rest(gid, self.baseline_failed or f"a server of {gid} failed to start")
            return
        by_label = {r.label: r for r in residents}
        for sc in _group_scenarios(self.runs, self.baseline, cands):
            here = [by_label[self.baseline]] + [
                by_label[c] for c in cands if any(s.name == sc.name for s in self.runs[c].scenarios)
            ]
            step = self._level if sc.search is None else self._search
            for slug in self.state.todo(gid, sc.name):
                if not step(servers, gid, sc, slug, here):
                    return
        for c in cands:
            self.state.set_run(c, DONE if self.state.group_done(gid) else "incomplete")

    def _level(
        self, servers: CoResident, gid: str, sc: Scenario, slug: str, here: list[Resident]
    ) -> bool:
        """Measure one level; False when a server was lost (the group stops there)."""
        self.say(f"[{gid}] {sc.name} {slug}: measuring against {self.baseline}")
        level = LevelRun(
            here,
            level_scenario(sc),
            slug,
            self.settings,
            self.dir / PAIRED_DIR / gid / sc.name / slug,
            runner=self.runner,
            progress=self.progress,
            say=self.say,
            lost=servers.lost,
        )
        try:
            out = level.run()
        except KeyboardInterrupt:
            self.state.mark(gid, sc.name, slug, PENDING, note="interrupted")
            raise
        if out.status is LevelStatus.DONE:
            self.state.mark(gid, sc.name, slug, DONE, pairs=out.pairs, stop_reason=out.stop_reason)
            return True
        error = out.reason or "server lost"
        self.state.mark(gid, sc.name, slug, FAILED, error=error, pairs=out.pairs, in_flight=True)
        self._lose(servers, out.lost, error)
        return False

    def _search(
        self, servers: CoResident, gid: str, sc: Scenario, slug: str, here: list[Resident]
    ) -> bool:
        """Every server's search of ``sc`` (paired_search.py); False when a server was lost
        (the group stops there, each search's finished probes kept for --resume)."""
        cell = SearchCell(
            here,
            sc,
            self.dir / PAIRED_DIR / gid / sc.name / slug,
            group=gid,
            runner=self.runner,
            progress=self.progress,
            say=self.say,
            lost=servers.lost,
        )
        how = "probes alternating" if cell.alternated else "one server after the other"
        self.say(f"[{gid}] {sc.name}: a {slug} search per server, {how}")
        try:
            out = cell.run()
        except KeyboardInterrupt:
            self.state.mark(gid, sc.name, slug, PENDING, note="interrupted")
            raise
        if out.status is SearchStatus.DONE:
            self.state.mark(gid, sc.name, slug, DONE, probes=out.probes)
            return True
        error = out.reason or out.status.value
        if out.status is SearchStatus.LOST:
            self.state.mark(gid, sc.name, slug, FAILED, error=error, probes=out.probes,
                            in_flight=True)  # fmt: skip
            self._lose(servers, out.lost, error)
            return False
        self.state.mark(gid, sc.name, slug, FAILED, error=error, probes=out.probes)
        self.say(f"[{gid}] {sc.name}: {slug} search failed: {error}")
        return True

    def _lose(self, servers: CoResident, labels: list[str], error: str) -> None:
        """Servers that died mid-cell: recorded failed (failed.json) and stopped."""
        for label in labels:
            r = servers.residents.get(label)
            tail = r.handle.log_tail() if r is not None else ""
            self._failure(label, "run", error, tail)
            self.state.set_run(label, FAILED, error=error)
            self.failed_runs.append(label)
            servers.stop(label)
            self.say(f"[{label}] {error}")

    def _failure(self, label: str, stage: str, error: str, log_tail: str) -> None:
        from server_launch.sweep import _record_failure

        command = self.state.doc["runs"].get(label, {}).get("command") or []
        _record_failure(self.dir / label, label, stage, error, log_tail, command)
        if stage == "start":
            self.state.set_run(label, FAILED, error=error)
            self.failed_runs.append(label)


def check_resume(previous: dict[str, Any] | None, plan: PairingPlan, out: Path) -> None:
    """A sweep is resumed in the mode it was started in."""
    if previous is None:
        return
    was = previous.get("mode", "unpaired")
    now = "paired" if plan.paired else "unpaired"
    if was != now:
        raise SpecloadError(
            f"--resume: the sweep in {out} ran {was}, this matrix runs {now} "
            f"({plan.reason}); resume it with the matrix it was started with"
        )

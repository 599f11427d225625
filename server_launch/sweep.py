"""Run a matrix: for each server configuration, start vLLM, run its scenarios, stop it.

Layout::

    SWEEP_DIR/matrix.yaml                 a copy of the matrix file as given
    SWEEP_DIR/sweep.json                  state: resolved matrix + one entry per cell
    SWEEP_DIR/<label>/server.log          the server's output (appended across restarts)
    SWEEP_DIR/<label>/failed.json         why the server failed (start or mid-run), log tail
    SWEEP_DIR/<label>/<scenario>/         one loadgen RUN_DIR (run.json, summary.json, phases)

A *cell* is one (server label, scenario, phase). ``sweep.json`` is replaced atomically after
every cell, so an interrupted sweep loses at most the cell in flight; ``resume=True`` skips
the cells marked done and runs only the missing phases of a scenario (loadgen's
``only_phases``), merging their summaries with the earlier ones in the scenario's
summary.json. Partial data of a phase that is run again is moved to
``<scenario>/.superseded/`` rather than appended to.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Required, TypedDict, Unpack

from loadgen.errors import ExitCode, SpecloadError, describe_exception
from loadgen.results.files import ResultsDir, atomic_write_json, slugify
from server_launch.backends.base import (
    ServerBackend,
    ServerHandle,
    ServerStartError,
    http_healthy,
    install_signal_handlers,
    wait_port_free,
)
from server_launch.paired_sweep import DONE, FAILED, PENDING, check_resume
from server_launch.pairing import PairingPlan, plan_pairing

if TYPE_CHECKING:
    from loadgen.config.scenario import Scenario
    from loadgen.engine.run import RunResult
    from server_launch.matrix import Matrix, ServerRun
    from server_launch.paired_sweep import PairedState

STATE_VERSION = 1


class RunKwargs(TypedDict, total=False):
    """What the sweep passes to loadgen's ``run_scenario`` for one scenario on one server
    (``only_phases`` and ``tokenizer`` only where they apply)."""

    base_url: Required[str]
    output_dir: Required[Path]
    model: str | None
    label: str
    spec: dict[str, Any] | None
    progress: bool
    health_check: Callable[[], bool]
    only_phases: list[str]
    tokenizer: str
    existing: str  # "resume": the phases to run were moved aside (_supersede)


class Runner(Protocol):
    """Runs one scenario against a running server: loadgen's ``run_scenario``, or a fake."""

    def __call__(self, scenario: Scenario, /, **kwargs: Unpack[RunKwargs]) -> RunResult: ...


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _default_runner(scenario: Scenario, /, **kwargs: Unpack[RunKwargs]) -> RunResult:
    from loadgen.engine.run import run_scenario

    return run_scenario(scenario, **kwargs)


def _dump(obj: Any) -> Any:
    """A matrix object as JSON-able data (pydantic models or dataclasses)."""
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _dump(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [_dump(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _dump(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def phase_slugs(scenario: Scenario) -> list[str]:
    """A scenario's cells: one per phase; a search (which picks its phases as it runs) is
    one cell named after its kind ('capacity'), done when the search finished."""
    if scenario.search is not None:
        return [scenario.search.kind.value]
    return [slugify(p.name) for p in scenario.phases()]


# --- state --------------------------------------------------------------------------------


class SweepState:
    """``sweep.json``: what ran, what is left. ``runs[label].scenarios[name][slug]`` = cell."""

    def __init__(self, path: Path, doc: dict[str, Any]) -> None:
        self.path = path
        self.doc = doc

    @classmethod
    def create(
        cls, path: Path, matrix: Matrix, backend: str, previous: dict[str, Any] | None
    ) -> SweepState:
        """A fresh state for ``matrix``, keeping the cells ``previous`` already finished."""
        old_runs = (previous or {}).get("runs", {})
        runs: dict[str, Any] = {}
        for run in matrix.runs:
            old = old_runs.get(run.label, {})
            scenarios = {}
            for sc in run.scenarios:
                old_cells = old.get("scenarios", {}).get(sc.name, {})
                scenarios[sc.name] = {
                    slug: dict(old_cells.get(slug) or {"status": PENDING})
                    for slug in phase_slugs(sc)
                }
            runs[run.label] = {
                **old,  # command, started_at: how its results were made, if it is skipped
                "status": old.get("status", PENDING),
                "error": old.get("error"),
                "scenarios": scenarios,
            }
        for label, entry in old_runs.items():
            runs.setdefault(label, entry)  # e.g. left out by --only: keep what they did
        doc = {
            "version": STATE_VERSION,
            "name": getattr(matrix, "name", None),
            "backend": backend,
            "status": "running",
            "started_at": (previous or {}).get("started_at") or _now(),
            "updated_at": _now(),
            "resumed": previous is not None,
            "matrix": _dump(matrix),
            "active": [run.label for run in matrix.runs],  # what this invocation runs
            "runs": runs,
        }
        return cls(path, doc)

    def save(self) -> None:
        self.doc["updated_at"] = _now()
        atomic_write_json(self.path, self.doc)

    def cells(self, label: str, scenario: str) -> dict[str, dict[str, Any]]:
        return self.doc["runs"][label]["scenarios"][scenario]

    def todo(self, label: str, scenario: str) -> list[str]:
        return [s for s, c in self.cells(label, scenario).items() if c["status"] != DONE]

    def run_done(self, label: str) -> bool:
        return all(not self.todo(label, sc) for sc in self.doc["runs"][label]["scenarios"])

    def set_run(self, label: str, status: str, error: str | None = None, **extra: Any) -> None:
        entry = self.doc["runs"][label]
        entry.update(status=status, error=error, **extra)
        self.save()

    def mark(self, label: str, scenario: str, slugs: list[str], status: str, **extra: Any) -> None:
        cells = self.cells(label, scenario)
        for slug in slugs:
            cells[slug] = {"status": status, "at": _now(), **extra}
        self.save()

    def counts(self) -> dict[str, int]:
        """Cells by status, over the runs of this invocation's matrix."""
        out = {DONE: 0, FAILED: 0, PENDING: 0}
        for label in self.doc["active"]:
            for cells in self.doc["runs"][label]["scenarios"].values():
                for c in cells.values():
                    out[c["status"]] = out.get(c["status"], 0) + 1
        return out


@dataclasses.dataclass
class SweepResult:
    sweep_dir: Path
    complete: bool  # every cell done
    interrupted: bool
    cells: dict[str, int]  # status -> count
    failed_runs: list[str]  # labels whose server failed to start or died
    report: Path | None = None

    @property
    def exit_code(self) -> ExitCode:
        if self.interrupted:
            return ExitCode.INTERRUPTED
        return ExitCode.OK if self.complete else ExitCode.INCOMPLETE


@dataclasses.dataclass(frozen=True)
class ScenarioOutcome:
    """How one scenario's run on one server went, for the server's loop."""

    interrupted: bool = False  # Ctrl-C / SIGTERM: the sweep stops
    server_lost: bool = False  # the server died or stopped answering: its run fails
    reason: str | None = None  # loadgen's stop reason, or the error that ended the run
    done_summaries: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


# --- the sweep ----------------------------------------------------------------------------


def prepare_sweep_dir(output_dir: Path, resume: bool) -> dict[str, Any] | None:
    """Create the directory; return the previous state when resuming one."""
    state_path = output_dir / "sweep.json"
    if state_path.exists():
        if not resume:
            raise SpecloadError(
                f"--output-dir: {output_dir} already holds a sweep; pass --resume to continue it"
            )
        import json

        try:
            return json.loads(state_path.read_text())
        except (OSError, ValueError) as e:
            raise SpecloadError(f"--resume: cannot read {state_path}: {e}") from None
    output_dir.mkdir(parents=True, exist_ok=True)
    return None


def run_sweep(
    matrix: Matrix,
    *,
    backend: ServerBackend,
    output_dir: Path,
    resume: bool = False,
    runner: Runner | None = None,
    health_deadline_s: float = 1200.0,
    port: int = 8000,
    matrix_path: Path | None = None,
    csv_dir: Path = Path("raw_data"),
    progress: bool = True,
    report: bool = True,
    log: Callable[[str], None] | None = None,
    port_free_wait_s: float = 15.0,
    pairing: PairingPlan | None = None,
) -> SweepResult:
    """Run every server configuration of ``matrix``: paired where ``pairing`` (default:
    ``plan_pairing``'s decision) says so (paired_sweep.py), else one server after the other
    (the module docstring)."""
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    output_dir = Path(output_dir)
    plan = pairing if pairing is not None else plan_pairing(matrix, backend.name)
    previous = prepare_sweep_dir(output_dir, resume)
    check_resume(previous, plan, output_dir)
    say(plan.reason)
    if matrix_path is not None and not (output_dir / "matrix.yaml").exists():
        shutil.copyfile(matrix_path, output_dir / "matrix.yaml")
    _prepare_models(matrix, say)
    if plan.paired:
        return _run_paired(
            matrix,
            plan,
            backend=backend,
            output_dir=output_dir,
            previous=previous,
            runner=runner,
            health_deadline_s=health_deadline_s,
            port=port,
            progress=progress,
            report=report,
            say=say,
            port_free_wait_s=port_free_wait_s,
        )
    runner = runner or _default_runner
    state = SweepState.create(output_dir / "sweep.json", matrix, backend.name, previous)
    state.doc["pairing"] = plan.to_json()
    state.save()
    install_signal_handlers()

    failed_runs: list[str] = []
    interrupted = False
    try:
        for run in matrix.runs:
            if state.run_done(run.label):
                say(f"[{run.label}] all cells done, skipping")
                continue
            ok = _run_server(
                run,
                backend=backend,
                state=state,
                sweep_dir=output_dir,
                runner=runner,
                health_deadline_s=health_deadline_s,
                port=port,
                csv_path=(csv_dir / matrix.output_csv)
                if getattr(matrix, "output_csv", None)
                else None,
                progress=progress,
                say=say,
                port_free_wait_s=port_free_wait_s,
            )
            if not ok:
                failed_runs.append(run.label)
    except KeyboardInterrupt as e:
        interrupted = True
        say(f"interrupted ({e or 'SIGINT'}): server stopped, state saved in {state.path}")
    except SpecloadError as e:  # e.g. no Docker engine, no GPU runtime, port taken
        state.doc["status"] = "failed"
        state.doc["error"] = str(e)
        state.save()
        raise
    return _finish(state, output_dir, interrupted, failed_runs, report, say)


def _finish(
    state: SweepState | PairedState,
    output_dir: Path,
    interrupted: bool,
    failed_runs: list[str],
    report: bool,
    say: Callable[[str], None],
) -> SweepResult:
    """A sweep's ending, sequential or paired: the final status saved, the counts, the
    report (not after an interruption: the user asked to stop)."""
    counts = state.counts()
    complete = counts.get(FAILED, 0) == 0 and counts.get(PENDING, 0) == 0
    status = "complete" if complete else "incomplete"
    state.doc["status"] = "interrupted" if interrupted else status
    state.save()
    result = SweepResult(output_dir, complete, interrupted, counts, failed_runs)
    if report and not interrupted:
        result.report = _write_report(output_dir, say)
    return result


def _prepare_models(matrix: Matrix, say: Callable[[str], None]) -> None:
    if getattr(matrix, "dummy_models", None):
        from server_launch.matrix import prepare_models

        for d in prepare_models(matrix):
            say(f"dummy model ready: {d}")


def _run_paired(
    matrix: Matrix,
    plan: PairingPlan,
    *,
    backend: ServerBackend,
    output_dir: Path,
    previous: dict[str, Any] | None,
    runner: Runner | None,
    health_deadline_s: float,
    port: int,
    progress: bool,
    report: bool,
    say: Callable[[str], None],
    port_free_wait_s: float,
) -> SweepResult:
    """The paired sweep (paired_sweep.py), with the sequential sweep's ending: state,
    counts, exit code, report."""
    from server_launch.paired_sweep import PairedState, PairedSweep

    state = PairedState.create(output_dir / "sweep.json", matrix, plan, backend.name, previous)
    state.save()
    install_signal_handlers()
    sweep = PairedSweep(
        matrix,
        plan,
        backend=backend,
        state=state,
        sweep_dir=output_dir,
        runner=runner,
        health_deadline_s=health_deadline_s,
        port=port,
        progress=progress,
        say=say,
        port_free_wait_s=port_free_wait_s,
    )
    interrupted = False
    try:
        sweep.run()
    except KeyboardInterrupt as e:
        interrupted = True
        say(f"interrupted ({e or 'SIGINT'}): servers stopped, state saved in {state.path}")
    except SpecloadError as e:
        state.doc["status"] = "failed"
        state.doc["error"] = str(e)
        state.save()
        raise
    failed = list(dict.fromkeys(sweep.failed_runs))
    return _finish(state, output_dir, interrupted, failed, report, say)


def _write_report(sweep_dir: Path, say: Callable[[str], None]) -> Path | None:
    try:
        from loadgen.report.render import write_report
    except ImportError:
        return None
    try:
        return write_report([sweep_dir])
    except Exception as e:  # the data is safe on disk; a report can be made later
        say(f"report: not written: {describe_exception(e)}")
        return None


def _run_server(
    run: ServerRun,
    *,
    backend: ServerBackend,
    state: SweepState,
    sweep_dir: Path,
    runner: Runner,
    health_deadline_s: float,
    port: int,
    csv_path: Path | None,
    progress: bool,
    say: Callable[[str], None],
    port_free_wait_s: float = 15.0,
) -> bool:
    """One server configuration. False when the server failed (start or mid-run)."""
    label = run.label
    run_dir = sweep_dir / label
    log_path = run_dir / "server.log"
    command = backend.command(run, port)
    state.set_run(label, "starting", command=command, started_at=_now())
    say(f"[{label}] starting server ({backend.name}) on port {port}")
    handle: ServerHandle | None = None
    wait_port_free(port, port_free_wait_s)
    try:
        try:
            handle = backend.start(run, port, log_path)
            handle.wait_healthy(health_deadline_s)
        except ServerStartError as e:
            _record_failure(run_dir, label, "start", str(e), e.log_tail, command)
            for sc in run.scenarios:
                state.mark(label, sc.name, state.todo(label, sc.name), FAILED, error=str(e))
            state.set_run(label, FAILED, error=str(e))
            say(f"[{label}] server failed: {e} (see {run_dir / 'failed.json'})")
            return False
        say(f"[{label}] server healthy at {handle.base_url}")
        state.set_run(label, "running")
        h = handle

        def health_check() -> bool:
            return h.is_alive() and http_healthy(h.base_url)

        for sc in run.scenarios:
            todo = state.todo(label, sc.name)
            if not todo:
                continue
            outcome = _run_scenario_cells(
                run, sc, todo, h, health_check, state, run_dir / sc.name, runner, progress, say
            )
            if csv_path is not None:
                _append_csv(csv_path, run, sc, outcome.done_summaries)
            if outcome.interrupted:
                raise KeyboardInterrupt("interrupted during a run")
            if outcome.server_lost or not h.is_alive():
                msg = outcome.reason or "server stopped during the run"
                _record_failure(run_dir, label, "run", msg, h.log_tail(), command)
                state.set_run(label, FAILED, error=msg)
                # loadgen's reason already reads "server lost: ..."; don't say it twice
                lost = msg if msg.startswith("server lost") else f"server lost: {msg}"
                say(f"[{label}] {lost}")
                return False
        done = state.run_done(label)
        state.set_run(label, "done" if done else "incomplete")
        return True
    except KeyboardInterrupt:
        state.set_run(label, "interrupted")
        raise
    finally:
        if handle is not None:
            say(f"[{label}] stopping server")
            handle.stop()


def run_kwargs(
    run: ServerRun, scenario: Scenario, handle: ServerHandle, out: Path, progress: bool
) -> RunKwargs:
    """What loadgen's ``run_scenario`` is given to run ``scenario`` against ``run``'s server
    (the caller adds ``health_check`` and ``only_phases``)."""
    kwargs: RunKwargs = {
        "base_url": handle.base_url,
        "output_dir": out,
        "model": getattr(run.server, "served_model_name", None) or None,
        "label": run.label,
        "spec": run.spec.speculative_config(),
        "progress": progress,
    }
    if scenario.prompts.tokenizer is None and (Path(run.server.model) / "tokenizer.json").is_file():
        # The served name may hide the directory; its tokenizer is faster than /tokenize.
        kwargs["tokenizer"] = str(run.server.model)
    return kwargs


def _run_scenario_cells(
    run: ServerRun,
    scenario: Scenario,
    todo: list[str],
    handle: ServerHandle,
    health_check: Callable[[], bool],
    state: SweepState,
    out: Path,
    runner: Runner,
    progress: bool,
    say: Callable[[str], None],
) -> ScenarioOutcome:
    """Run the missing phases of one scenario and record each cell's outcome."""
    label = run.label
    subset = len(todo) < len(phase_slugs(scenario))
    previous = _previous_phases(out) if subset else {}
    _supersede(out, todo)
    kwargs = run_kwargs(run, scenario, handle, out, progress)
    kwargs["health_check"] = health_check
    # A scenario directory is re-run phase by phase (their partial data moved aside above),
    # so it may hold the other phases' results: loadgen must not refuse it.
    kwargs["existing"] = "resume"
    if subset:
        kwargs["only_phases"] = list(todo)
    say(f"[{label}] scenario {scenario.name}: {len(todo)} phase(s)")
    try:
        result = runner(scenario, **kwargs)
    except KeyboardInterrupt:
        state.mark(label, scenario.name, todo, PENDING, note="interrupted")
        raise
    except Exception as e:  # one bad scenario must not end the sweep
        msg = describe_exception(e)
        state.mark(label, scenario.name, todo, FAILED, error=msg)
        say(f"[{label}] scenario {scenario.name} failed: {msg}")
        return ScenarioOutcome(server_lost=not handle.is_alive(), reason=msg)
    finally:
        # asyncio's remove_signal_handler (loadgen's run) resets SIGTERM to SIG_DFL, which
        # would let a `kill` between scenarios leave the server (own session) running.
        install_signal_handlers()
    return _record_result(run, scenario, todo, result, state, out, previous)


def _record_result(
    run: ServerRun,
    scenario: Scenario,
    todo: list[str],
    result: RunResult,
    state: SweepState,
    out: Path,
    previous: dict[str, dict[str, Any]],
) -> ScenarioOutcome:
    """Mark each cell of ``todo`` by loadgen's result; with ``previous`` (a resumed
    scenario), summary.json gets the phases of both runs."""
    label = run.label
    reason = result.stop_reason
    interrupted = result.exit_code == ExitCode.INTERRUPTED
    phases: dict[str, dict[str, Any]] = dict(result.phases or {})
    done_summaries = {}
    if scenario.search is not None:  # its one cell stands for the whole search
        done_summaries = dict(phases) if result.complete else {}
        phases = {todo[0]: {"complete": result.complete}} if phases else {}
    for slug in todo:
        summary = phases.get(slug)
        if summary is not None and summary.get("complete", result.complete):
            state.mark(label, scenario.name, [slug], DONE)
            if scenario.search is None:
                done_summaries[slug] = summary
        elif summary is not None and not interrupted:
            state.mark(label, scenario.name, [slug], FAILED, error=reason or "incomplete")
        else:  # never started, or cut by Ctrl-C: run it next time
            state.mark(label, scenario.name, [slug], PENDING, note=reason)
    if previous:
        merged = {s: (phases.get(s) or previous.get(s)) for s in phase_slugs(scenario)}
        merged = {s: v for s, v in merged.items() if v is not None}
        ResultsDir(out).write_summary(
            complete=not state.todo(label, scenario.name),
            scenario=scenario.name,
            label=label,
            phases=merged,
            stop_reason=reason,
        )
    return ScenarioOutcome(
        interrupted=interrupted,
        server_lost=result.exit_code == ExitCode.SERVER_LOST,
        reason=reason,
        done_summaries=done_summaries,
    )


def _previous_phases(run_dir: Path) -> dict[str, dict[str, Any]]:
    import json

    try:
        doc = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}
    phases = doc.get("phases") if isinstance(doc, dict) else None
    return phases if isinstance(phases, dict) else {}


def _supersede(run_dir: Path, slugs: list[str]) -> None:
    """Move a phase's partial data aside before it runs again (records are appended)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    for slug in slugs:
        d = run_dir / slug
        if d.is_dir():
            dest = run_dir / ".superseded" / f"{slug}-{stamp}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                d.rename(dest)


def _record_failure(
    run_dir: Path, label: str, stage: str, error: str, log_tail: str, command: list[str]
) -> None:
    atomic_write_json(
        run_dir / "failed.json",
        {
            "label": label,
            "stage": stage,  # "start": never became healthy; "run": died during a scenario
            "error": error,
            "at": _now(),
            "command": command,
            "log_tail": log_tail,
        },
    )


def _append_csv(
    path: Path, run: ServerRun, scenario: Scenario, summaries: dict[str, dict[str, Any]]
) -> None:
    """The original experiment's CSV: one row per finished phase, appended."""
    if not summaries:
        return
    from loadgen.report.original_csv import row_from_summary, write_rows

    rows = [row_from_summary(run, {"scenario": scenario.name, **s}) for s in summaries.values()]
    write_rows(path, rows, append=True)

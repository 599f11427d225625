"""Reading finished (or interrupted) run directories back for a report.

A run directory holds ``run.json`` (the resolved scenario, label, spec), ``summary.json``
(written after each phase, or never if the run was killed) and one folder per phase with its
own ``summary.json`` and ``requests.jsonl``. :func:`load_run` takes what is there: the run's
summary first, then per-phase summaries, then a summary recomputed from a phase's records
where nothing else survived, and says in ``Run.notes`` what it had to make do with.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadgen.config.scenario import Phase, Scenario
from loadgen.config.shapes.base import level_from_label
from loadgen.errors import SpecloadError
from loadgen.report.console import as_float
from loadgen.results.files import phase_record_files, phase_records
from loadgen.results.summary import SummaryAccumulator, load_fields

_REPEAT_SUFFIX = re.compile(r"(.+) r([0-9]+)")


@dataclass
class Run:
    """One RUN_DIR: a config label running one scenario, with its per-phase summaries.

    ``phases`` maps phase name -> flat summary, in load order; ``expected_phases`` also
    lists phases the scenario asked for but the run never summarised (interrupted runs).
    """

    path: Path
    label: str
    scenario: str
    spec: dict[str, Any] | None
    phases: dict[str, dict[str, Any]]
    expected_phases: list[str] = field(default_factory=list)
    levels: dict[str, float | None] = field(default_factory=dict)
    shapes: dict[str, str | None] = field(default_factory=dict)
    complete: bool = False
    notes: list[str] = field(default_factory=list)
    repeat_of: dict[str, int] = field(default_factory=dict)
    repeats: int = 1
    # paired sweeps (report/paired.py): "paired", and per level the pairs it was part of
    pairing: str = "unpaired"
    paired: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def spec_method(self) -> str | None:
        if not self.spec:
            return None
        return str(self.spec.get("method") or self.spec.get("type") or "spec")

    def level_of(self, phase: str) -> tuple[str, int]:
        """(load level name, repeat) of a phase: 'concurrency=4 r2' -> ('concurrency=4', 2)."""
        return split_repeat(phase, self.repeat_of.get(phase))


def split_repeat(name: str, repeat: int | None = None) -> tuple[str, int]:
    """Strip the ' rN' suffix scenario.py gives repeated phases (pure).

    With ``repeat`` known (the summary's ``repeat`` key), only that suffix is stripped;
    without it, any trailing ' r<digits>' is taken for one (load labels hold no spaces).
    """
    m = _REPEAT_SUFFIX.fullmatch(name)
    if m and (repeat is None or int(m.group(2)) == repeat):
        return m.group(1), int(m.group(2))
    return name, repeat if repeat is not None else 1


def phase_sort_key(level: float | None, index: int, name: str) -> tuple[Any, ...]:
    """Load order: by numeric level (unknown levels last), then scenario order, then name."""
    return (level is None, level if level is not None else 0.0, index, name)


def find_runs(paths: Iterable[str | Path]) -> list[Run]:
    """Every run under ``paths``: each is a RUN_DIR (has run.json) or a directory above some.

    Raises SpecloadError (one line) for a path that does not exist or holds no run.
    """
    runs: list[Run] = []
    seen: set[Path] = set()
    for raw in paths:
        root = Path(raw)
        if not root.exists():
            raise SpecloadError(f"{raw}: no such directory")
        if not root.is_dir():
            raise SpecloadError(f"{raw}: not a directory")
        paired_root = None
        if (root / "run.json").is_file():
            found = [root / "run.json"]
        else:
            from loadgen.report.paired import PAIRED_DIR, is_paired_sweep, load_paired

            if is_paired_sweep(root):
                paired_root = (root / PAIRED_DIR).resolve()
                runs += load_paired(root)
            # a paired sweep's probes are read through its levels, not as runs of their own
            found = [
                rj
                for rj in sorted(root.rglob("run.json"))
                if paired_root is None or paired_root not in rj.resolve().parents
            ]
        if not found and paired_root is None:
            raise SpecloadError(f"{raw}: no run.json in it or below (not a run or sweep directory)")
        for rj in found:
            run_dir = rj.parent.resolve()
            if run_dir in seen:
                continue
            seen.add(run_dir)
            # In a sweep (SWEEP_DIR/<label>/<scenario>/) the label dir names the config.
            default_label = rj.parent.name
            if rj.parent != root and rj.parent.parent != root:
                default_label = rj.parent.parent.name
            runs.append(load_run(rj.parent, default_label=default_label))
    _disambiguate(runs)
    return runs


def _disambiguate(runs: list[Run]) -> None:
    """Runs sharing a label and scenario (two 'none' runs) get the shortest path tail that
    tells them apart appended: 'none@a/none/conc'."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.label, r.scenario), []).append(r)
    for (label, _), group in groups.items():
        if len(group) < 2:
            continue
        depth = max(len(r.path.parts) for r in group)
        k = next(
            (
                k
                for k in range(1, depth + 1)
                if len({r.path.parts[-k:] for r in group}) == len(group)
            ),
            depth,
        )
        for r in group:
            r.label = f"{label}@{'/'.join(r.path.parts[-k:])}"
            r.notes.append(f"label '{label}' is used by several runs; shown as '{r.label}'")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SpecloadError(f"{path}: malformed JSON: {e.msg} (line {e.lineno})") from None
    except OSError as e:
        raise SpecloadError(f"{path}: cannot read: {e.strerror}") from None


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-")


def load_run(run_dir: str | Path, default_label: str | None = None) -> Run:
    """Read one RUN_DIR, tolerating a missing or partial summary.json (noted in ``notes``)."""
    run_dir = Path(run_dir)
    meta = _read_json(run_dir / "run.json")
    if not isinstance(meta, dict):
        raise SpecloadError(f"{run_dir / 'run.json'}: expected a JSON object")
    notes: list[str] = []
    summary = _run_summary(run_dir, notes)

    scen_doc = meta.get("scenario") if isinstance(meta.get("scenario"), dict) else {}
    scenario = str(scen_doc.get("name") or summary.get("scenario") or run_dir.name)
    label = str(meta.get("label") or summary.get("label") or default_label or run_dir.name)
    spec = meta.get("spec") if isinstance(meta.get("spec"), dict) else None

    scen_obj = _parse_scenario(scen_doc)
    phase_objs = {p.name: p for p in scen_obj.phases()} if scen_obj else {}
    expected = list(phase_objs)
    by_slug = {_slug(n): n for n in expected}

    phases: dict[str, dict[str, Any]] = {}
    raw_phases = summary.get("phases")
    if isinstance(raw_phases, dict):
        for slug, s in raw_phases.items():
            if isinstance(s, dict):
                phases[str(s.get("phase") or slug)] = s
    _add_phase_dirs(run_dir, phases, phase_objs, scen_obj, notes)
    # Map summarised phases onto the scenario's names where only the slug differs.
    phases = {by_slug.get(_slug(n), n): s for n, s in phases.items()}
    levels, shapes = _levels_and_shapes(phase_objs, phases, notes)
    repeat_of = {n: p.repeat for n, p in phase_objs.items()}
    for name, s in phases.items():
        rep = s.get("repeat")
        if isinstance(rep, int) and not isinstance(rep, bool) and rep >= 1:
            repeat_of[name] = rep
    missing = [n for n in expected if n not in phases]
    if missing:
        notes.append("phases without results: " + ", ".join(missing))
    order = {n: i for i, n in enumerate(expected)}
    ordered = sorted(phases, key=lambda n: phase_sort_key(levels.get(n), order.get(n, 10**6), n))
    complete = bool(summary.get("complete", False)) and not missing
    if summary and not summary.get("complete", False):
        why = f": {summary['stop_reason']}" if summary.get("stop_reason") else ""
        notes.append(f"run marked incomplete{why}")
    return Run(
        path=run_dir,
        label=label,
        scenario=scenario,
        spec=spec,
        phases={n: phases[n] for n in ordered},
        expected_phases=expected or ordered,
        levels=levels,
        shapes=shapes,
        complete=complete,
        notes=notes,
        repeat_of=repeat_of,
        repeats=scen_obj.repeats
        if scen_obj
        else max([1, *(split_repeat(n, repeat_of.get(n))[1] for n in phases)]),
    )


def _run_summary(run_dir: Path, notes: list[str]) -> dict[str, Any]:
    """The run's summary.json, or {} (with a note) where it is missing or unreadable."""
    if not (run_dir / "summary.json").is_file():
        notes.append("no summary.json (run interrupted?); used the per-phase summaries")
        return {}
    try:
        loaded = _read_json(run_dir / "summary.json")
    except SpecloadError as e:
        notes.append(str(e))
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _add_phase_dirs(
    run_dir: Path,
    phases: dict[str, dict[str, Any]],
    phase_objs: Mapping[str, Phase],
    scen: Scenario | None,
    notes: list[str],
) -> None:
    """Fill ``phases`` with what the run's summary.json lacks, from the phase folders.

    summary.json is written after each phase, or not at all; a phase's own summary.json
    fills the gap, and a phase killed mid-way has only its records, summarised here afresh.
    """
    by_slug = {_slug(n): n for n in phase_objs}
    known = {_slug(n) for n in phases}
    for sub in sorted(p for p in run_dir.iterdir() if p.is_dir()):
        if _slug(sub.name) in known:
            continue
        sj = sub / "summary.json"
        if sj.is_file():
            try:
                s = _read_json(sj)
            except SpecloadError as e:
                notes.append(str(e))
                continue
            name = str(s.get("phase") or sub.name) if isinstance(s, dict) else sub.name
            if isinstance(s, dict) and _slug(name) not in known:
                phases[name] = s
                known.add(_slug(name))
        elif files := phase_record_files(sub):
            name = by_slug.get(_slug(sub.name), sub.name)
            # A multi-worker phase killed before its merge has only requests.w<K>.jsonl.
            src = (
                "requests.jsonl"
                if len(files) == 1 and files[0].name == "requests.jsonl"
                else (f"{len(files)} per-worker files (never merged)")
            )
            s = _recompute(sub, name, phase_objs.get(name), scen)
            if s is None:
                notes.append(f"phase '{name}': {src} holds no usable record")
            else:
                phases[name] = s
                known.add(_slug(name))
                notes.append(
                    f"phase '{name}': no summary.json; recomputed from {src} "
                    "(duration = first send to last byte; no acceptance data)"
                )


def _levels_and_shapes(
    phase_objs: Mapping[str, Phase], phases: Mapping[str, Mapping[str, Any]], notes: list[str]
) -> tuple[dict[str, float | None], dict[str, str | None]]:
    """Each phase's numeric load level and load shape: the summary's where it has them,
    else the scenario's, else (level only) a number read from the phase name."""
    levels: dict[str, float | None] = {}
    shapes: dict[str, str | None] = {}
    for name, p in phase_objs.items():
        lf = load_fields(p.load)
        levels[name], shapes[name] = as_float(lf["load_level"]), lf["load_shape"]
    for name, s in phases.items():
        lvl = as_float(s.get("load_level"))
        if lvl is not None or levels.get(name) is None:
            levels[name] = lvl if lvl is not None else level_from_label(name)
        if s.get("load_shape") or name not in shapes:
            shapes[name] = s.get("load_shape") or shapes.get(name)
        if s.get("complete") is False:
            why = f" ({s['stop_reason']})" if s.get("stop_reason") else ""
            notes.append(f"phase '{name}' stopped early{why}")
    return levels, shapes


def _parse_scenario(scen_doc: Mapping[str, Any]) -> Scenario | None:
    """The resolved scenario from run.json, or None for an older or hand-edited one."""
    if not scen_doc:
        return None
    try:
        return Scenario.model_validate(dict(scen_doc))
    except Exception:
        return None


def _recompute(
    phase_dir: Path, name: str, phase: Phase | None, scen: Scenario | None
) -> dict[str, Any] | None:
    """A flat summary from a phase's records, for a phase that never wrote summary.json."""
    # one record at a time into compact arrays: a list of the records themselves would
    # take several times the memory
    acc = SummaryAccumulator()
    first, last = math.inf, -math.inf
    try:
        for r in phase_records(phase_dir):
            if r.warmup:
                continue
            acc.add(r)
            first = min(first, r.sent_s)
            last = max(last, r.end_s or r.sent_s, *r.chunk_times)
    except OSError:
        return None
    if not len(acc) or not last > first:
        return None
    return acc.summary(
        duration_s=last - first,
        slo=scen.slo if scen else None,
        phase=name,
        load=phase.load if phase else None,
        extra={"complete": False, "recomputed": True},
        detailed=False,
    )

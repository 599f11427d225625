"""The results directory: what a run leaves on disk, written so nothing is ever lost.

Layout::

    RUN_DIR/run.json                       resolved scenario, CLI, server, host, clock origin
    RUN_DIR/summary.json                   {"complete", "scenario", "label", "phases": {slug: flat}}
    RUN_DIR/summary.csv                    one row per phase
    RUN_DIR/<phase>/requests.jsonl         one record per request, appended as each completes
    RUN_DIR/<phase>/requests.w<K>.jsonl    with --workers: worker K's records, merged into
                                           requests.jsonl (by send time) when the phase ends
    RUN_DIR/<phase>/summary.json           flat summary: every `vllm bench serve` key + ours
    RUN_DIR/<phase>/server_samples.jsonl   /metrics gauges sampled through the phase
    RUN_DIR/<phase>/metrics_before.prom    raw /metrics scrapes around the phase
    RUN_DIR/<phase>/metrics_after.prom

JSON files are replaced atomically (write a temporary file, fsync, rename), so a crash
leaves the previous version or the new one, never half of one. ``requests.jsonl`` is
append-only; a line cut by a crash is skipped on reading. A multi-worker phase whose
merge never ran (the parent was killed) keeps its per-worker files; :func:`phase_records`
reads those instead.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import mmap
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any

from loadgen.errors import SpecloadError
from loadgen.results.records import RequestRecord


def slugify(name: str) -> str:
    """A phase name like ``concurrency=4`` as a directory name."""
    s = re.sub(r"[^A-Za-z0-9._=-]+", "_", name).strip("._")
    return s or "phase"


@contextlib.contextmanager
def unwritable(path: Path) -> Iterator[None]:
    """An OSError while writing results as one line naming the path (disk full,
    directory removed, read-only): :class:`ResultsUnwritable`."""
    try:
        yield
    except OSError as e:
        why = e.strerror or str(e) or type(e).__name__
        raise ResultsUnwritable(f"--output-dir: cannot write {path}: {why}") from None


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with unwritable(path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()  # a half-written temporary never lingers
            raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


class RecordWriter:
    """Appends one JSON line per finished request, each in one unbuffered write: a record
    is on disk (or, when the disk fills up, at most a torn last line) as soon as
    :meth:`write` returns, and nothing stays in a buffer to fail again later."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with unwritable(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            self._f: io.FileIO | None = io.FileIO(path, "a")
            # A rerun into the same directory appends; a torn last line (a killed run) is
            # closed first, so it cannot swallow this run's first record.
            if path.stat().st_size and not _ends_with_newline(path):
                self._write_all(b"\n")
        # where this writer's records begin
        self.start_offset = os.path.getsize(path)
        self.count = 0
        self._lost = False

    def write(self, record: RequestRecord) -> None:
        if self._f is None:
            raise RuntimeError("record writer is closed")
        try:
            self._write_all((record.to_json() + "\n").encode())
        except OSError:
            self._lost = True  # this record (at most a torn line of it) is not on disk
            raise
        self.count += 1

    def _write_all(self, data: bytes) -> None:
        assert self._f is not None
        view = memoryview(data)
        while view:  # a short write (the disk filling up) is retried; then it raises
            n = self._f.write(view)
            view = view[n or 0 :]

    def close(self) -> None:
        """fsync and close; after a failed write (already reported) an fsync error is not
        raised again, so the phase can still be summarised from the records on disk."""
        f, self._f = self._f, None
        if f is None:
            return
        try:
            os.fsync(f.fileno())
        except OSError as e:
            if not self._lost:
                raise ResultsUnwritable(
                    f"--output-dir: cannot write {self.path}: {e.strerror or e}"
                ) from None
        finally:
            f.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_records(path: Path) -> Iterator[RequestRecord]:
    """Read records back, stopping quietly at a last line cut mid-way by a crash."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                return  # a torn final line
            line = line.strip()
            if not line:
                continue
            try:
                yield RequestRecord.from_dict(json.loads(line))
            except (ValueError, TypeError):
                continue


REQUESTS_FILE = "requests.jsonl"
_WORKER_FILE = re.compile(r"requests\.w(\d+)\.jsonl")
_SENT = re.compile(rb'"sent_s":(-?[0-9.eE+-]+)')
_RID = re.compile(rb'"request_id":(-?[0-9]+)')


def worker_records_path(phase_dir: Path, worker: int) -> Path:
    return Path(phase_dir) / f"requests.w{worker}.jsonl"


def worker_record_files(phase_dir: Path) -> list[Path]:
    """A phase's per-worker record files, in worker order."""
    found = []
    for p in Path(phase_dir).glob("requests.w*.jsonl"):
        m = _WORKER_FILE.fullmatch(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def phase_record_files(phase_dir: Path) -> list[Path]:
    """Where a phase's records are: ``requests.jsonl``, or (a multi-worker phase whose
    merge never ran) the per-worker files. The merged file is renamed into place only
    once complete, so when it exists it holds every record."""
    merged = Path(phase_dir) / REQUESTS_FILE
    if merged.is_file():
        return [merged]
    return worker_record_files(phase_dir)


def phase_records(phase_dir: Path) -> Iterator[RequestRecord]:
    for path in phase_record_files(phase_dir):
        yield from read_records(path)


def merge_worker_records(phase_dir: Path, on_line: Callable[[bytes], None] | None = None) -> int:
    """Merge the per-worker files into ``requests.jsonl``, sorted by send time, and remove
    them; returns the number of records. ``on_line`` sees each merged line in order.

    Only (send time, id, file, offset) is kept per record, so memory stays small whatever
    the phase's size; a line cut by a crash, or one without a send time, is left out (as
    :func:`read_records` would skip it). The merged file is written aside and renamed, so
    a crash leaves either the worker files or the complete merge.
    """
    phase_dir = Path(phase_dir)
    sources = worker_record_files(phase_dir)
    keys: list[tuple[float, int, int, int, int]] = []
    maps: list[mmap.mmap | bytes] = []
    files = []
    try:
        for fi, path in enumerate(sources):
            f = open(path, "rb")  # noqa: SIM115 - closed below
            files.append(f)
            size = os.fstat(f.fileno()).st_size
            buf: mmap.mmap | bytes = (
                mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
            )
            maps.append(buf)
            pos = 0
            while pos < size:
                end = buf.find(b"\n", pos)
                if end < 0:
                    break  # a torn final line
                line = buf[pos:end]
                sent, rid = _SENT.search(line), _RID.search(line)
                if sent and rid:
                    with contextlib.suppress(ValueError):
                        keys.append((float(sent.group(1)), int(rid.group(1)), fi, pos, end + 1))
                pos = end + 1
        keys.sort()
        out = phase_dir / REQUESTS_FILE
        tmp = phase_dir / f".{REQUESTS_FILE}.merge{os.getpid()}"
        with open(tmp, "wb") as w:
            for _sent, _rid, fi, start, stop in keys:
                line = maps[fi][start:stop]
                w.write(line)
                if on_line is not None:
                    on_line(line)
            w.flush()
            os.fsync(w.fileno())
        os.replace(tmp, out)
    finally:
        for m in maps:
            if isinstance(m, mmap.mmap):
                m.close()
        for f in files:
            f.close()
    for path in sources:
        path.unlink(missing_ok=True)
    return len(keys)


CSV_FIRST = ("label", "scenario", "phase", "load_shape", "load_level", "complete")


def summary_csv(rows: list[dict[str, Any]]) -> str:
    """Scalar keys only: lists (ttfts, itls...) and dicts stay in the JSON."""
    if not rows:
        return ""
    keys: list[str] = [k for k in CSV_FIRST if any(k in r for r in rows)]
    for r in rows:
        for k, v in r.items():
            if k not in keys and not isinstance(v, list | dict):
                keys.append(k)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k) for k in keys})
    return buf.getvalue()


# --- the directory a run writes into ---------------------------------------------------------


class Existing(StrEnum):
    """What a run does with a results directory that already holds files."""

    REFUSE = "refuse"  # the default: one line, exit 2; records are never mixed
    OVERWRITE = "overwrite"  # --overwrite: the previous run's files are removed first
    # server_launch's sweep: other phases' results stay; the phases about to run must have
    # none (the sweep moves their partial data aside first)
    RESUME = "resume"


class ResultsUnwritable(SpecloadError):
    """The results directory cannot take more (disk full, removed, read-only)."""


# What a run (and a report on it) writes at the top of its directory; a subdirectory is a
# phase's when it holds only PHASE_FILES. --overwrite removes these and nothing else.
RUN_FILES = frozenset(
    ("run.json", "summary.json", "summary.csv", "report.md", "report.html", "report.csv",
     "report.json")
)  # fmt: skip
PHASE_FILES = re.compile(
    r"requests(\.w\d+)?\.jsonl|summary\.json|server_samples\.jsonl|metrics_(before|after)\.prom"
)
_KERNEL_FS = (Path("/proc"), Path("/sys"), Path("/dev"))


def check_output_dir(root: Path, existing: Existing, phases: Iterable[str] = ()) -> None:
    """That ``root`` can take this run's results, before anything is sent: one
    :class:`SpecloadError` line naming ``--output-dir`` otherwise. ``phases``: the slugs
    about to run (with ``RESUME``, they must have no results yet). Nothing is created."""
    root = Path(root)
    resolved = root.resolve()
    for fs in _KERNEL_FS:
        if resolved == fs or fs in resolved.parents:
            raise SpecloadError(
                f"--output-dir: {root} is under {fs}, a kernel filesystem, not a place for results"
            )
    if root.exists() and not root.is_dir():
        raise SpecloadError(f"--output-dir: {root} is a file, not a directory")
    parent = next((p for p in root.parents if p.exists()), Path("."))
    if not root.exists():
        if not parent.is_dir():
            raise SpecloadError(f"--output-dir: cannot create {root}: {parent} is a file")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise SpecloadError(f"--output-dir: cannot create {root}: {parent} is not writable")
        return
    if not os.access(root, os.W_OK | os.X_OK):
        raise SpecloadError(f"--output-dir: {root} is not writable")
    entries = sorted(root.iterdir())
    if not entries:
        return
    if existing is Existing.REFUSE:
        shown = ", ".join(p.name for p in entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise SpecloadError(
            f"--output-dir: {root} is not empty ({shown}); pass --overwrite to replace the "
            "run there, or choose another directory"
        )
    if existing is Existing.OVERWRITE:
        foreign = [p.name for p in entries if not _run_output(p)]
        if foreign:
            raise SpecloadError(
                f"--output-dir: {root} holds {', '.join(foreign[:3])}, which a run did not "
                "write; --overwrite replaces only a run's files (move them, or choose "
                "another directory)"
            )
    if existing is Existing.RESUME:
        for slug in phases:
            d = root / slug
            if d.is_dir() and any(d.iterdir()):
                raise SpecloadError(
                    f"--output-dir: phase {slug} already has results in {d}; move them "
                    "aside to run it again"
                )


def _run_output(p: Path) -> bool:
    """Whether ``p`` (an entry of a results directory) is something a run or its report
    wrote: a run file, a figure, a hidden temporary or superseded entry, a phase folder."""
    if p.name.startswith(".") or p.name in RUN_FILES or p.suffix == ".png":
        return True
    if not p.is_dir() or p.is_symlink():
        return False
    return all(PHASE_FILES.fullmatch(f.name) or f.name.startswith(".") for f in p.iterdir())


class ResultsDir:
    """One run's directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        with unwritable(self.root):
            self.root.mkdir(parents=True, exist_ok=True)

    @classmethod
    def create(
        cls, root: Path, existing: Existing = Existing.REFUSE, phases: Iterable[str] = ()
    ) -> ResultsDir:
        """The directory for a new run, checked again (:func:`check_output_dir`); with
        ``OVERWRITE``, the previous run's files are removed first."""
        root = Path(root)
        phases = list(phases)
        check_output_dir(root, existing, phases)
        if existing is Existing.OVERWRITE and root.is_dir():
            with unwritable(root):
                for p in root.iterdir():
                    if p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p)
                    else:
                        p.unlink()
        return cls(root)

    def phase_dir(self, slug: str) -> Path:
        d = self.root / slug
        with unwritable(d):
            d.mkdir(parents=True, exist_ok=True)
        return d

    def records(self, slug: str) -> RecordWriter:
        return RecordWriter(self.phase_dir(slug) / "requests.jsonl")

    def write_run(self, run: dict[str, Any]) -> None:
        atomic_write_json(self.root / "run.json", run)

    def write_phase_summary(self, slug: str, summary: dict[str, Any]) -> None:
        atomic_write_json(self.phase_dir(slug) / "summary.json", summary)

    def write_summary(
        self,
        *,
        complete: bool,
        scenario: str,
        label: str | None,
        phases: dict[str, dict[str, Any]],
        stop_reason: str | None = None,
    ) -> None:
        atomic_write_json(
            self.root / "summary.json",
            {
                "complete": complete,
                "stop_reason": stop_reason,
                "scenario": scenario,
                "label": label,
                "phases": phases,
            },
        )
        rows = [{"label": label, "scenario": scenario, **s} for s in phases.values()]
        atomic_write_text(self.root / "summary.csv", summary_csv(rows))

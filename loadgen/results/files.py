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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from loadgen.results.records import RequestRecord


def slugify(name: str) -> str:
    """A phase name like ``concurrency=4`` as a directory name."""
    s = re.sub(r"[^A-Za-z0-9._=-]+", "_", name).strip("._")
    return s or "phase"


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
    """Appends one JSON line per finished request and flushes it at once."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._f: IO[str] | None = open(path, "a", encoding="utf-8")  # noqa: SIM115
        # A rerun into the same directory appends; a torn last line (a killed run) is
        # closed first, so it cannot swallow this run's first record.
        if path.stat().st_size and not _ends_with_newline(path):
            self._f.write("\n")
            self._f.flush()
        # where this writer's records begin
        self.start_offset = os.path.getsize(path)
        self.count = 0

    def write(self, record: RequestRecord) -> None:
        if self._f is None:
            raise RuntimeError("record writer is closed")
        self._f.write(record.to_json() + "\n")
        self._f.flush()
        self.count += 1

    def close(self) -> None:
        if self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self._f = None

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


class ResultsDir:
    """One run's directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def phase_dir(self, slug: str) -> Path:
        d = self.root / slug
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

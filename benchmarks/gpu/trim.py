"""Trim a sweep directory from the GPU machine for the repository.

Why: a sweep's raw data (requests.jsonl, /metrics scrapes, full server logs) runs to tens of
MB per configuration; the report needs only the summaries. Removes requests.jsonl and *.prom,
sets the per-request lists in every summary.json (vLLM bench-style ``ttfts``, ``itls``, ...)
to null, and keeps each server log's last 200 lines as server-tail.log. Every other number
stays as measured.

    python benchmarks/gpu/trim.py SWEEP_DIR [RUN_LABEL ...]   # default: every run directory
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# summarize()'s per-request lists, the ones worth trimming
from loadgen.results.stats import DETAILED_KEYS


def _null_lists(obj: dict) -> dict:
    for key in DETAILED_KEYS:
        if isinstance(obj.get(key), list):
            obj[key] = None
    for value in obj.values():
        if isinstance(value, dict):
            _null_lists(value)
    return obj


def trim_run(run_dir: Path) -> None:
    for path in list(run_dir.rglob("requests*.jsonl")) + list(run_dir.rglob("*.prom")):
        path.unlink()
    for path in run_dir.rglob("summary.json"):
        path.write_text(json.dumps(_null_lists(json.loads(path.read_text())), indent=2) + "\n")
    log = run_dir / "server.log"
    if log.exists():
        lines = log.read_text(errors="replace").splitlines()[-200:]
        (run_dir / "server-tail.log").write_text("\n".join(lines) + "\n")
        log.unlink()


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    sweep = Path(argv[0])
    labels = argv[1:] or [p.name for p in sweep.iterdir() if p.is_dir() and p.name != "report"]
    for label in labels:
        trim_run(sweep / label)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

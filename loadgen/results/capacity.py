"""``capacity.json``: what a capacity search found, and the words for it.

Written atomically into the run directory after every probe (so an interrupted search
leaves every finished probe described) by :mod:`loadgen.engine.capacity`; read by the
report (:mod:`loadgen.report.capacity`) and by a resumed search. Layout (``version`` 1)::

    {"version", "kind": "capacity", "scenario", "label", "field": "rate" | "concurrency",
     "unit", "slo": {...}, "slo_text", "search": {...}, "start", "cap", "floor",
     "status": "running" | "done", "stop": SearchStop, "stop_text",
     "capacity": {"kind": CapacityKind, "value", "low", "high", "unit", "text"},
     "probes": [{"index", "phase", "slug", "level", "run", "seed", "requests", "failed",
                 "duration_s", "request_throughput", "request_goodput", "elapsed_s",
                 "percentiles": {"ttft_ms": {"p", "max_ms", "value_ms", "low_ms",
                                              "high_ms", "passed", "clear"}, ...},
                 "error_rate", "verdict": "pass" | "fail", "clear",
                 "pooled": {... the same, over every run of the level so far}}],
     "levels": [{"level", "runs", "verdict", "clear"}], "elapsed_s", "scenario_dump"}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from loadgen.results.files import atomic_write_json

CAPACITY_FILE = "capacity.json"
SATURATION_FILE = "saturation.json"
VERSION = 1


class SearchStop(StrEnum):
    """Why a capacity search stopped."""

    RESOLVED = "resolved"  # the bracket is within the resolution
    AT_CAP = "at_cap"  # the cap met the SLO: capacity at least the cap
    BELOW_FLOOR = "below_floor"  # the lowest level allowed failed it
    MAX_PROBES = "max_probes"
    MAX_SEARCH_S = "max_search_s"
    STOPPED = "stopped"  # the run stopped: Ctrl-C, a lost server, the error budget

    def describe(self) -> str:
        return _STOP_TEXT[self]


_STOP_TEXT = {
    SearchStop.RESOLVED: "the bracket is within the resolution",
    SearchStop.AT_CAP: "the cap (search.max) met the SLO",
    SearchStop.BELOW_FLOOR: "the lowest level allowed failed the SLO",
    SearchStop.MAX_PROBES: "search.max_probes reached",
    SearchStop.MAX_SEARCH_S: "search.max_search_s reached",
    SearchStop.STOPPED: "the run stopped",
}


class CapacityKind(StrEnum):
    """What a search can say about the capacity."""

    ESTIMATE = "estimate"  # a level that met the SLO below one that failed it
    AT_LEAST = "at_least"  # no level failed: at least the highest that passed
    BELOW = "below"  # every level failed: below the lowest probed
    UNKNOWN = "unknown"  # no probe finished


@dataclass(frozen=True)
class Capacity:
    """A search's answer. ``value``: the highest level that met the SLO below the lowest
    that failed it (None when there is none). ``low``-``high``: the interval the verdicts
    allow, widened where a verdict stayed within its noise; None is an open end (for
    ``below``, ``high`` is the lowest probe). ``clear``: the verdicts the answer rests on
    were all clear of their noise."""

    kind: CapacityKind
    value: float | None
    low: float | None
    high: float | None
    unit: str
    clear: bool = True

    def text(self) -> str:
        """'4.2 req/s (interval 3.9-4.4)', 'at least 64 req/s', 'below the lowest probe,
        0.5 req/s'; '(within noise)' where a deciding verdict was not clear."""
        u = f" {self.unit}" if self.unit else ""
        noisy = "" if self.clear else ", within noise"
        if self.kind is CapacityKind.UNKNOWN:
            return "unknown (no probe finished)"
        if self.kind is CapacityKind.BELOW:
            return f"below the lowest probe, {fmt_level(self.high)}{u}" + (
                " (within noise)" if noisy else ""
            )
        if self.kind is CapacityKind.AT_LEAST:
            return f"at least {fmt_level(self.value)}{u}" + (" (within noise)" if noisy else "")
        return f"{fmt_level(self.value)}{u} ({self.interval_text()}{noisy})"

    def interval_text(self) -> str:
        lo = "0" if self.low is None else fmt_level(self.low)
        hi = "open" if self.high is None else fmt_level(self.high)
        return f"interval {lo}-{hi}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "value": self.value,
            "low": self.low,
            "high": self.high,
            "unit": self.unit,
            "clear": self.clear,
            "text": self.text(),
        }

    @classmethod
    def from_dict(cls, d: Any) -> Capacity | None:
        """From capacity.json's ``capacity``; None when it is not one."""
        if not isinstance(d, dict):
            return None
        try:
            kind = CapacityKind(d.get("kind"))
        except ValueError:
            return None
        nums = [d.get(k) for k in ("value", "low", "high")]
        if any(v is not None and (isinstance(v, bool) or not isinstance(v, int | float))
               for v in nums):  # fmt: skip
            return None
        value, low, high = (None if v is None else float(v) for v in nums)
        return cls(kind, value, low, high, str(d.get("unit") or ""), d.get("clear") is not False)


def fmt_level(v: float | None) -> str:
    """A load level as people read it: 4 significant digits, no trailing zeros."""
    return "n/a" if v is None else f"{v:.4g}"


def write_capacity(run_dir: Path, doc: dict[str, Any], name: str = CAPACITY_FILE) -> None:
    atomic_write_json(Path(run_dir) / name, doc)


def read_capacity(run_dir: Path, name: str = CAPACITY_FILE) -> dict[str, Any] | None:
    """A run's capacity.json (or saturation.json), None where it has none or it is unreadable."""
    try:
        doc = json.loads((Path(run_dir) / name).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None

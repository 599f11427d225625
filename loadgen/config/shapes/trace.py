"""``trace``: replay the send times of a recorded trace file."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from loadgen.config.shapes.base import OpenLoad, Schedule, _open, register
from loadgen.errors import SpecloadError


def read_trace(path: str | Path) -> np.ndarray:
    """Offsets from a trace file, as written (unsorted, unshifted).

    Each non-blank line is a number, or a JSON object with ``t`` or ``timestamp``; lines
    starting with ``#`` are comments. Bad lines raise naming the file and line number.
    """
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise SpecloadError(f"load.path: cannot read trace {p}: {e.strerror}") from None
    values: list[float] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            values.append(_offset(line, f"{p}:{lineno}"))
    if not values:
        raise SpecloadError(f"{p}: trace has no offsets")
    return np.asarray(values, dtype=np.float64)


def _offset(line: str, where: str) -> float:
    """One trace line's offset; ``where`` (file:line) names it in errors."""
    if line.startswith("{"):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise SpecloadError(f"{where}: invalid JSON: {e.msg}") from None
        key = "t" if "t" in obj else "timestamp" if "timestamp" in obj else None
        if key is None:
            raise SpecloadError(f"{where}: JSON line needs a 't' or 'timestamp' field")
        v = obj[key]
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise SpecloadError(f"{where}: '{key}' must be a number, got {v!r}")
        value = float(v)
    else:
        try:
            value = float(line)
        except ValueError:
            raise SpecloadError(f"{where}: not a number: {line[:40]!r}") from None
    if not math.isfinite(value):
        raise SpecloadError(f"{where}: offset must be finite, got {line[:40]!r}")
    return value


@register
class TraceLoad(OpenLoad):
    """Replay send offsets (seconds) from a file: one number per line, or JSONL {"t": ...}."""

    shape: Literal["trace"] = "trace"
    path: str
    speedup: float = Field(1.0, gt=0)

    needs_limit = False  # the file's length ends it

    def schedule(
        self, *, num_requests: int | None, duration_s: float | None, rng: np.random.Generator
    ) -> Schedule:
        """The trace sorted, shifted to start at 0, divided by ``speedup``."""
        raw = np.sort(read_trace(self.path))
        offsets = (raw - raw[0]) / self.speedup
        return _open(offsets[:num_requests], self, duration_s)

    @classmethod
    def traffic(cls, d: Mapping[str, Any]) -> dict[str, Any]:
        """A trace has no rate of its own; its level is the replay speedup."""
        return {"request_rate": None, "load_level": d.get("speedup")}

"""Where speculation stops paying off: the crossover of a speedup series over load.

:func:`find_crossover` classifies one series (pure); :func:`crossovers` applies it to each
non-baseline config of the tidy table (``tables.build_tables``), for TPOT and throughput.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from loadgen.report.console import as_float

if TYPE_CHECKING:
    import pandas as pd


class CrossoverKind(StrEnum):
    """How a speedup series behaves over load (see :class:`Crossover`)."""

    CROSSOVER = "crossover"
    WINS_EVERYWHERE = "wins_everywhere"
    NEVER_WINS = "never_wins"
    WINS_ABOVE = "wins_above"
    NO_DATA = "no_data"


@dataclass(frozen=True)
class Crossover:
    """Where a speedup series (in increasing load order) stops paying off.

    - ``crossover``: >= 1.0 at some lower level, then below 1.0 first at ``level``
      (``last_win`` is the level just before).
    - ``wins_everywhere`` / ``never_wins``: >= 1.0 at every level / at none.
    - ``wins_above``: below 1.0 at low load, >= 1.0 from ``level`` on and never drops back.
    - ``no_data``: no level had a value.
    Levels without a value are skipped (``gaps`` counts them).
    """

    kind: CrossoverKind
    level: Any = None
    last_win: Any = None
    gaps: int = 0

    def describe(self, what: str = "speculation") -> str:
        gaps = f" ({self.gaps} level(s) without data)" if self.gaps else ""
        text = {
            CrossoverKind.CROSSOVER: (
                f"{what} stops paying off at {self.level} (last win at {self.last_win})"
            ),
            CrossoverKind.WINS_EVERYWHERE: f"{what} wins at every level",
            CrossoverKind.NEVER_WINS: f"{what} never wins",
            CrossoverKind.WINS_ABOVE: f"{what} loses at low load and wins from {self.level} on",
            CrossoverKind.NO_DATA: f"{what}: no data",
        }[self.kind]
        return text + gaps


def find_crossover(levels: Sequence[Any], speedups: Sequence[float | None]) -> Crossover:
    """Classify a speedup series given in increasing load order (pure; NaN/None = no data)."""
    if len(levels) != len(speedups):
        raise ValueError("levels and speedups differ in length")
    points = [(lv, as_float(s)) for lv, s in zip(levels, speedups, strict=True)]
    valid = [(lv, s) for lv, s in points if s is not None]
    gaps = len(points) - len(valid)
    if not valid:
        return Crossover(CrossoverKind.NO_DATA, gaps=gaps)
    last_win = None
    for lv, s in valid:
        if s >= 1.0:
            last_win = lv
        elif last_win is not None:
            return Crossover(CrossoverKind.CROSSOVER, level=lv, last_win=last_win, gaps=gaps)
    if all(s >= 1.0 for _, s in valid):
        return Crossover(CrossoverKind.WINS_EVERYWHERE, gaps=gaps)
    if last_win is None:
        return Crossover(CrossoverKind.NEVER_WINS, gaps=gaps)
    first_win = next(lv for lv, s in valid if s >= 1.0)
    return Crossover(CrossoverKind.WINS_ABOVE, level=first_win, gaps=gaps)


def crossovers(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Crossover per (scenario, non-baseline config) for TPOT and throughput speedups.

    It reads the aggregated speedups (medians over repeats). ``stable`` is True when every
    level's speedup is stable (``speedup_range``), so no pairing of repeats would move the
    crossover; False with the levels in ``unstable_levels``; None without repeats.
    """
    out: list[dict[str, Any]] = []
    for (scen, label), g in df.groupby(["scenario", "label"], sort=False):
        if g["is_baseline"].any():
            continue
        for metric, what in (("tpot_speedup", "TPOT"), ("throughput_speedup", "throughput")):
            c = find_crossover(list(g["phase"]), list(g[metric]))
            flags = [
                (phase, flag)
                for phase, v, flag in zip(g["phase"], g[metric], g[f"{metric}_stable"], strict=True)
                if as_float(v) is not None
            ]
            unstable = [str(phase) for phase, flag in flags if flag is False]
            known = bool(flags) and all(flag is not None for _, flag in flags)
            stable = False if unstable else (True if known else None)
            text = c.describe(f"{what} speedup")
            if stable is True:
                text += " [stable: every level's repeat range is clear of 1.0]"
            elif stable is False:
                text += " [unstable: repeat range includes 1.0 at " + ", ".join(unstable) + "]"
            out.append(
                {
                    "scenario": scen,
                    "label": label,
                    "metric": metric,
                    "kind": c.kind.value,
                    "level": c.level,
                    "last_win": c.last_win,
                    "stable": stable,
                    "unstable_levels": unstable,
                    "text": text,
                }
            )
    return out

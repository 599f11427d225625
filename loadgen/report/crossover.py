"""Where speculation stops paying off: the crossover of a speedup series over load.

:func:`find_verdict_crossover` classifies a series of verdicts (faster / slower / can't
tell at 95%, report/verdict.py): a paired sweep's crossover is where a significant win gives
way to a significant loss, never a median dipping under 1.00x by noise.
:func:`find_crossover` classifies a series of medians, for unpaired sweeps (one server
after the other), which have no verdicts to go on. :func:`crossovers` applies the one that
fits to each non-baseline config of the tidy table, for TPOT and throughput.
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
    FADES = "fades"  # verdicts: a significant win, then only "can't tell", never a loss
    UNDECIDED = "undecided"  # verdicts: no level decided either way


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
            CrossoverKind.FADES: (
                f"{what}: a significant win up to {self.last_win}, can't tell from "
                f"{self.level} on (no significant loss)"
            ),
            CrossoverKind.UNDECIDED: f"{what}: can't tell at any level",
        }[self.kind]
        return text + gaps


@dataclass(frozen=True)
class VerdictCrossover(Crossover):
    """A crossover found on verdicts; ``uncertain`` lists the levels that could not tell."""

    uncertain: tuple[Any, ...] = ()

    def describe(self, what: str = "speculation") -> str:
        text = super().describe(what)
        if self.kind is CrossoverKind.CROSSOVER:
            text = (
                f"{what} stops paying off at {self.level} (a significant loss; last "
                f"significant win at {self.last_win})"
            )
        elif self.kind is CrossoverKind.NEVER_WINS:
            text = f"{what} never wins significantly"
        elif self.kind is CrossoverKind.WINS_EVERYWHERE and self.uncertain:
            text = f"{what} wins at every level where it can tell"
        if self.uncertain and self.kind is not CrossoverKind.UNDECIDED:
            text += "; can't tell at " + ", ".join(str(u) for u in self.uncertain)
        return text + " [paired, 95%]"


_DECIDED = ("faster", "slower")


def find_verdict_crossover(levels: Sequence[Any], verdicts: Sequence[str | None]) -> Crossover:
    """Classify verdicts given in increasing load order (pure). 'faster' / 'slower' are
    decided; "can't tell" and 'not significant' are not; None / 'n/a' are gaps."""
    if len(levels) != len(verdicts):
        raise ValueError("levels and verdicts differ in length")
    points = [(lv, v) for lv, v in zip(levels, verdicts, strict=True) if v not in (None, "n/a")]
    gaps = len(levels) - len(points)
    uncertain = tuple(lv for lv, v in points if v not in _DECIDED)
    if not points:
        return VerdictCrossover(CrossoverKind.NO_DATA, gaps=gaps)
    if not any(v in _DECIDED for _, v in points):
        return VerdictCrossover(CrossoverKind.UNDECIDED, gaps=gaps, uncertain=uncertain)
    last_win = None
    for lv, v in points:
        if v == "faster":
            last_win = lv
        elif v == "slower" and last_win is not None:
            return VerdictCrossover(
                CrossoverKind.CROSSOVER, level=lv, last_win=last_win, gaps=gaps, uncertain=uncertain
            )
    wins = [i for i, (_, v) in enumerate(points) if v == "faster"]
    if not wins:
        return VerdictCrossover(CrossoverKind.NEVER_WINS, gaps=gaps, uncertain=uncertain)
    if any(v == "slower" for _, v in points):  # every loss before the first win
        first = points[wins[0]][0]
        return VerdictCrossover(
            CrossoverKind.WINS_ABOVE, level=first, gaps=gaps, uncertain=uncertain
        )
    if wins[-1] < len(points) - 1:  # a win, then only undecided levels
        before = tuple(lv for lv, v in points[: wins[-1]] if v not in _DECIDED)
        return VerdictCrossover(
            CrossoverKind.FADES,
            level=points[wins[-1] + 1][0],
            last_win=points[wins[-1]][0],
            gaps=gaps,
            uncertain=before,
        )
    return VerdictCrossover(CrossoverKind.WINS_EVERYWHERE, gaps=gaps, uncertain=uncertain)


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
        paired = "pairing" in g.columns and bool((g["pairing"] == "paired").all())
        for metric, what in (("tpot_speedup", "TPOT"), ("throughput_speedup", "throughput")):
            if paired:
                out.append(_verdict_crossover(str(scen), str(label), g, metric, what))
                continue
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
            elif _single_runs(g, metric):
                text += " [unpaired, one run per level: not significant]"
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
                    "basis": "medians",
                }
            )
    return out


def _single_runs(g: pd.DataFrame, metric: str) -> bool:
    """Every level of an unpaired config ran once: its verdicts are 'not significant'."""
    col = f"{metric}_verdict"
    if col not in g.columns:
        return False
    vs = [v for v in g[col] if isinstance(v, str)]
    return bool(vs) and all(v == "not significant" for v in vs)


def _verdict_crossover(
    scen: str, label: str, g: pd.DataFrame, metric: str, what: str
) -> dict[str, Any]:
    """A paired config's crossover, found on its verdicts."""
    verdicts = [v if isinstance(v, str) else None for v in g[f"{metric}_verdict"]]
    c = find_verdict_crossover(list(g["phase"]), verdicts)
    uncertain = [str(u) for u in getattr(c, "uncertain", ())]
    return {
        "scenario": scen,
        "label": label,
        "metric": metric,
        "kind": c.kind.value,
        "level": c.level,
        "last_win": c.last_win,
        "stable": None,
        "unstable_levels": uncertain,
        "text": c.describe(f"{what} speedup"),
        "basis": "verdicts",
    }

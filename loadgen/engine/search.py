"""The capacity search's decisions, apart from any I/O: verdicts in, the next level out.

:class:`CapacitySearch` is a small state machine. It starts at the start level; while every
level met the SLO it doubles (up to the cap), while every level failed it halves (down to
the floor); once a passing level lies below a failing one it bisects between the highest
passing and the lowest failing level until the failing one is within ``resolution`` of the
passing one (relative to it; one step for a concurrency). A probe whose verdict was not
clear (within the noise its own requests measured) is asked for again, up to
``repeat_close`` more runs, before the search moves on; the caller judges the pooled runs.

The bisection reads point verdicts; the interval of the answer (:meth:`capacity`) reads
only the clear ones, so a verdict the probes could not settle widens the interval instead
of pretending to a precision the data does not have.
"""

from __future__ import annotations

from dataclasses import dataclass

from loadgen.results.capacity import Capacity, CapacityKind, SearchStop


@dataclass(frozen=True)
class ProbeRequest:
    """Run the load at ``level``; ``run`` is 1, or 2, 3... for the repeats of a close call."""

    level: float
    run: int


@dataclass
class LevelState:
    """What the probes of one level said, pooled over its runs."""

    level: float
    runs: int = 0
    passed: bool = False
    clear: bool = False


class CapacitySearch:
    """Bracket by doubling or halving, then bisect; see the module docstring."""

    def __init__(
        self,
        *,
        start: float,
        cap: float | None,
        floor: float,
        resolution: float,
        integer: bool,
        max_probes: int,
        repeat_close: int,
    ) -> None:
        self.integer = integer
        self.start = self.level(start)
        self.cap = None if cap is None else self.level(cap)
        self.floor = min(self.level(floor), self.start)
        self.resolution = resolution
        self.max_probes = max_probes
        self.repeat_close = repeat_close
        self.levels: dict[float, LevelState] = {}
        self.probes = 0
        self.stop: SearchStop | None = None
        self._repeat: float | None = None

    def level(self, x: float) -> float:
        """A level as probed: a whole concurrency (at least 1), or a rate to 4 digits."""
        if self.integer:
            return float(max(1, round(x)))
        return float(f"{x:.4g}")

    # --- the loop ------------------------------------------------------------------------

    def next_probe(self) -> ProbeRequest | None:
        """The next probe, or None when the search is over (``stop`` says why)."""
        if self.stop is not None:
            return None
        if self._repeat is not None:
            nxt = ProbeRequest(self._repeat, self.levels[self._repeat].runs + 1)
        else:
            level = self._decide()
            if level is None:
                return None
            nxt = ProbeRequest(level, 1)
        if self.probes >= self.max_probes:
            self.stop = SearchStop.MAX_PROBES
            return None
        return nxt

    def record(self, level: float, passed: bool, clear: bool) -> None:
        """A probe of ``level`` finished; ``passed``/``clear`` judge all its runs so far."""
        st = self.levels.setdefault(level, LevelState(level))
        st.runs += 1
        st.passed, st.clear = passed, clear
        self.probes += 1
        self._repeat = level if not clear and st.runs <= self.repeat_close else None

    def halt(self, why: SearchStop) -> None:
        """Stop from outside (out of time, the run stopped); the first reason wins."""
        if self.stop is None:
            self.stop = why

    # --- decisions -----------------------------------------------------------------------

    def bracket(self) -> tuple[float | None, float | None]:
        """(highest passing level below the lowest failing one, lowest failing level)."""
        fails = [lv for lv, s in self.levels.items() if not s.passed]
        hi = min(fails) if fails else None
        passes = [lv for lv, s in self.levels.items() if s.passed and (hi is None or lv < hi)]
        return (max(passes) if passes else None), hi

    def _decide(self) -> float | None:
        if not self.levels:
            return self.start
        lo, hi = self.bracket()
        if hi is None:  # everything so far met the SLO: up
            assert lo is not None
            if self.cap is not None and lo >= self.cap:
                self.stop = SearchStop.AT_CAP
                return None
            up = self.level(lo * 2)
            return up if self.cap is None else min(up, self.cap)
        if lo is None:  # everything failed: down
            if hi <= self.floor:
                self.stop = SearchStop.BELOW_FLOOR
                return None
            return max(self.level(hi / 2), self.floor)
        if self.resolved(lo, hi):
            self.stop = SearchStop.RESOLVED
            return None
        mid = self.level((lo + hi) / 2)
        if not lo < mid < hi:  # nothing left between them at the levels' precision
            self.stop = SearchStop.RESOLVED
            return None
        return mid

    def resolved(self, lo: float, hi: float) -> bool:
        return hi - lo <= self.resolution * lo or (self.integer and hi - lo <= 1)

    # --- the answer ------------------------------------------------------------------------

    def capacity(self, unit: str) -> Capacity:
        """The answer so far: see :class:`~loadgen.results.capacity.Capacity`."""
        lo, hi = self.bracket()
        if lo is None and hi is None:
            return Capacity(CapacityKind.UNKNOWN, None, None, None, unit)
        clear_pass = [lv for lv, s in self.levels.items() if s.passed and s.clear]
        clear_fail = [lv for lv, s in self.levels.items() if not s.passed and s.clear]
        if lo is None:
            assert hi is not None
            return Capacity(CapacityKind.BELOW, None, None, hi, unit, self._clear(hi))
        top_pass = max(clear_pass, default=0.0)
        high = min((lv for lv in clear_fail if lv > top_pass), default=None)
        if hi is None:
            low = max(clear_pass, default=None)
            return Capacity(CapacityKind.AT_LEAST, lo, low, None, unit, self._clear(lo))
        low = max((lv for lv in clear_pass if lv < hi), default=None)
        clear = self._clear(lo) and self._clear(hi)
        return Capacity(CapacityKind.ESTIMATE, lo, low, high, unit, clear)

    def _clear(self, level: float) -> bool:
        return self.levels[level].clear

"""A server whose speed changes over time (``--drift``), for testing comparisons under drift.

A real server's speed is not constant: on the H200, one warm speculative server's median TPOT
fell 22% over six identical back-to-back runs (issue 11). The mock reproduces that on demand
so a test can check that a paired comparison is not fooled by it while a sequential one is.

``--drift`` is comma-separated terms, each scaling TTFT and ITL of a request admitted ``t``
seconds after the drift origin:

- ``linear:R``: x ``(1 + R * t)`` (R per second; negative speeds the server up; the factor is
  held at 0.05 or more);
- ``step:F@S``: x ``F`` from ``S`` seconds on.

The origin is ``--drift-origin`` (a ``time.time()`` value), else the server's start. Several
mocks given one origin drift as one machine would: that is how a test builds a co-resident
pair whose only true difference is the one it sets.
"""

from __future__ import annotations

from dataclasses import dataclass

from loadgen.errors import SpecloadError

MIN_FACTOR = 0.05


@dataclass(frozen=True, slots=True)
class Drift:
    """Scales a request's TTFT and ITL by its admission time (``factor``)."""

    linear_per_s: float = 0.0
    step_at_s: float | None = None
    step_factor: float = 1.0

    @property
    def active(self) -> bool:
        return self.linear_per_s != 0.0 or (self.step_at_s is not None and self.step_factor != 1)

    def factor(self, t_s: float) -> float:
        """The slowdown ``t_s`` seconds after the origin (1.0 = as configured)."""
        f = 1.0 + self.linear_per_s * t_s
        if self.step_at_s is not None and t_s >= self.step_at_s:
            f *= self.step_factor
        return max(MIN_FACTOR, f)


def parse_drift(text: str) -> Drift:
    """``none`` | ``linear:R`` | ``step:F@S`` | both, comma-separated."""
    flag = "--drift"
    text = str(text).strip()
    if text in ("", "none"):
        return Drift()
    linear, step_at, step_factor = 0.0, None, 1.0
    for term in text.split(","):
        kind, _, arg = term.strip().partition(":")
        try:
            if kind == "linear":
                linear = float(arg)
            elif kind == "step":
                f, _, at = arg.partition("@")
                step_factor, step_at = float(f), float(at)
                if step_factor <= 0 or step_at < 0:
                    raise ValueError
            else:
                raise ValueError
        except ValueError:
            raise SpecloadError(
                f"{flag}: expected none, linear:R or step:F@S (F > 0, S >= 0), got {term!r}"
            ) from None
    return Drift(linear, step_at, step_factor)

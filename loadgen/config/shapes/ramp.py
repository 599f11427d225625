"""``ramp``: Poisson arrivals whose rate rises (or falls) linearly, then holds."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from pydantic import Field

from loadgen.config.shapes.base import OpenLoad, Schedule, _cap, _open, _renewal, _take, register


def ramp_cumulative_rate(t: np.ndarray, start: float, end: float, ramp_s: float) -> np.ndarray:
    """Λ(t) = ∫0^t λ(u) du for λ rising linearly start->end over ramp_s, then flat at end."""
    t = np.asarray(t, dtype=np.float64)
    a = (end - start) / ramp_s
    inside = start * t + 0.5 * a * t * t
    after = start * ramp_s + 0.5 * a * ramp_s * ramp_s + end * (t - ramp_s)
    return np.where(t <= ramp_s, inside, after)


def ramp_inverse(u: np.ndarray, start: float, end: float, ramp_s: float) -> np.ndarray:
    """Λ^{-1}(u): solves a t²/2 + start t = u in the stable form 2u / (s + sqrt(s² + 2au))."""
    u = np.asarray(u, dtype=np.float64)
    a = (end - start) / ramp_s
    lam_r = start * ramp_s + 0.5 * a * ramp_s * ramp_s
    disc = np.maximum(start * start + 2.0 * a * np.minimum(u, lam_r), 0.0)
    inside = 2.0 * u / (start + np.sqrt(disc))
    after = ramp_s + (u - lam_r) / end
    return np.where(u <= lam_r, inside, after)


@register
class RampLoad(OpenLoad):
    """Rate rising linearly from ``start_rate`` to ``end_rate`` over ``ramp_s`` seconds."""

    shape: Literal["ramp"] = "ramp"
    start_rate: float = Field(gt=0)
    end_rate: float = Field(gt=0)
    ramp_s: float = Field(gt=0)

    level_axis = "end rate (req/s)"

    def schedule(
        self, *, num_requests: int | None, duration_s: float | None, rng: np.random.Generator
    ) -> Schedule:
        """Inhomogeneous Poisson with rate start_rate -> end_rate over ramp_s, then end_rate.

        Time rescaling: if 0, E1, E1+E2, ... are points of a unit-rate Poisson process, then
        Λ^{-1} of them are points of a Poisson process with intensity λ(t) (Λ the integral
        of λ). Λ is piecewise quadratic and inverted in closed form, so this is exact with no
        rejected draws (thinning would give the same law at the cost of wasted draws). First
        point at 0.
        """
        _cap(num_requests, "num_requests")
        s, e, r = self.start_rate, self.end_rate, self.ramp_s
        unit = _renewal(lambda n: rng.exponential(1.0, size=n))
        pts = (ramp_inverse(b, s, e, r) for b in unit)
        return _open(_take(pts, num_requests, duration_s), self, duration_s)

    @classmethod
    def traffic(cls, d: Mapping[str, Any]) -> dict[str, Any]:
        """vllm's --ramp-up-* keys; no single request_rate, and the level is the end rate."""
        return {
            "request_rate": "inf",
            "ramp_up_strategy": "linear",
            "ramp_up_start_rps": d.get("start_rate"),
            "ramp_up_end_rps": d.get("end_rate"),
            "load_level": d.get("end_rate"),
        }

"""``poisson``: memoryless arrivals at a mean rate, as ``vllm bench serve --request-rate``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from pydantic import Field

from loadgen.config.shapes.base import OpenLoad, Schedule, _cap, _open, _renewal, _take, register


@register
class PoissonLoad(OpenLoad):
    """Exponential gaps with mean 1/rate: memoryless arrivals, CV 1."""

    shape: Literal["poisson"] = "poisson"
    rate: float = Field(gt=0, description="mean requests per second")

    level_key = "rate"
    rate_field = "rate"

    def schedule(
        self, *, num_requests: int | None, duration_s: float | None, rng: np.random.Generator
    ) -> Schedule:
        _cap(num_requests, "num_requests")
        pts = _renewal(lambda n: rng.exponential(1.0 / self.rate, size=n))
        return _open(_take(pts, num_requests, duration_s), self, duration_s)

    @classmethod
    def traffic(cls, d: Mapping[str, Any]) -> dict[str, Any]:
        return {"burstiness": 1.0}  # vllm's value for Poisson arrivals

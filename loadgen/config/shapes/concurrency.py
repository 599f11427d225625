"""``concurrency``: the closed loop, a fixed number of requests in flight."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from pydantic import Field

from loadgen.config.shapes.base import LoadShape, Schedule, register


@register
class ConcurrencyLoad(LoadShape):
    """Closed loop: no offsets; the runner keeps ``concurrency`` requests in flight, each
    slot sending its next request as soon as its last one finished."""

    shape: Literal["concurrency"] = "concurrency"
    concurrency: int = Field(gt=0, description="requests kept in flight")

    closed = True
    level_key = "concurrency"
    concurrency_field = "concurrency"
    level_axis = "concurrency (requests in flight)"

    def schedule(
        self, *, num_requests: int | None, duration_s: float | None, rng: np.random.Generator
    ) -> Schedule:
        return Schedule(
            offsets=None,
            concurrency=self.concurrency,
            num_requests=num_requests,
            duration_s=duration_s,
        )

    @classmethod
    def traffic(cls, d: Mapping[str, Any]) -> dict[str, Any]:
        """Nothing paces arrivals: request_rate "inf", as vllm with --max-concurrency."""
        c = d.get("concurrency")
        return {"request_rate": "inf", "max_concurrency": c, "load_level": c}

"""``constant``: one request every 1/rate seconds, exactly."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field

from loadgen.config.shapes.base import OpenLoad, Schedule, _fixed_count, _open, register


@register
class ConstantLoad(OpenLoad):
    """Gaps of exactly 1/rate (offset i = i/rate, computed directly so no rounding drift)."""

    shape: Literal["constant"] = "constant"
    rate: float = Field(gt=0)

    level_key = "rate"
    rate_field = "rate"

    def schedule(
        self, *, num_requests: int | None, duration_s: float | None, rng: np.random.Generator
    ) -> Schedule:
        in_window = None if duration_s is None else math.ceil(duration_s * self.rate - 1e-9)
        n = _fixed_count(num_requests, in_window)
        return _open(np.arange(n, dtype=np.float64) / self.rate, self, duration_s)

"""``burst``: waves of requests sent at once, at a fixed interval."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from pydantic import Field

from loadgen.config.shapes.base import OpenLoad, Schedule, _fixed_count, _open, register
from loadgen.errors import SpecloadError


@register
class BurstLoad(OpenLoad):
    """Waves of ``size`` requests sent at once, one wave every ``interval_s``."""

    shape: Literal["burst"] = "burst"
    size: int = Field(gt=0)
    interval_s: float = Field(ge=0)

    level_key = "size"
    level_axis = "burst size"

    def schedule(
        self, *, num_requests: int | None, duration_s: float | None, rng: np.random.Generator
    ) -> Schedule:
        """Waves at 0, interval_s, 2*interval_s, ...; the last may be partial."""
        if self.interval_s == 0 and num_requests is None:
            raise SpecloadError(
                "load.interval_s: 0 needs num_requests (a duration alone never ends)"
            )
        in_window = None
        if duration_s is not None and self.interval_s > 0:
            in_window = math.ceil(duration_s / self.interval_s - 1e-9) * self.size
        n = _fixed_count(num_requests, in_window)
        offsets = (np.arange(n) // self.size).astype(np.float64) * self.interval_s
        return _open(offsets, self, duration_s)

    @classmethod
    def traffic(cls, d: Mapping[str, Any]) -> dict[str, Any]:
        """request_rate is the mean rate of the waves ("inf" when they all go at once)."""
        size, interval = d.get("size"), d.get("interval_s")
        return {"request_rate": size / interval if size and interval else "inf", "load_level": size}

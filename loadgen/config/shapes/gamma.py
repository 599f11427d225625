"""``gamma``: arrivals at a mean rate, burstier or smoother than Poisson."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from pydantic import Field

from loadgen.config.shapes.base import OpenLoad, Schedule, _cap, _open, _renewal, _take, register


@register
class GammaLoad(OpenLoad):
    """Gamma inter-arrivals: burstiness 1.0 is Poisson, below 1 burstier, above 1 smoother."""

    shape: Literal["gamma"] = "gamma"
    rate: float = Field(gt=0)
    burstiness: float = Field(gt=0)

    level_key = "rate"
    rate_field = "rate"

    def schedule(
        self, *, num_requests: int | None, duration_s: float | None, rng: np.random.Generator
    ) -> Schedule:
        """Gamma gaps as ``vllm bench serve``: shape=burstiness, scale=1/(rate*burstiness).

        Mean gap stays 1/rate; CV is 1/sqrt(burstiness), so burstiness < 1 clumps requests.
        """
        _cap(num_requests, "num_requests")
        k = self.burstiness
        scale = 1.0 / (self.rate * k)
        pts = _renewal(lambda n: rng.gamma(shape=k, scale=scale, size=n))
        return _open(_take(pts, num_requests, duration_s), self, duration_s)

    @classmethod
    def traffic(cls, d: Mapping[str, Any]) -> dict[str, Any]:
        return {"burstiness": d.get("burstiness")}

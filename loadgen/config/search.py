"""``search:``: a scenario whose load levels are chosen by measuring, not listed.

Two kinds (docs/capacity.md):

- ``capacity``: the highest load that meets the scenario's SLO. It starts at the load's
  own level (``load.rate``, or ``load.concurrency`` in a closed loop), doubles it until a
  level fails the SLO (or halves it while the start fails), then bisects between the
  highest passing and the lowest failing level until they are within ``resolution`` of
  each other. Each probe is a measured phase with its own warm-up; a probe whose verdict
  its own requests cannot tell apart from the bound is run again (``repeat_close``) and
  judged on all its runs' requests.
- ``saturation``: measure the throughput at one request in flight and at
  ``saturation_concurrency``, then run ``levels`` open-loop rates spread evenly from the
  first to the second, so a latency-vs-load curve is drawn on the server's own scale.

A ``search:`` block replaces ``sweep:`` (the levels are the search's to choose) rather than
being a load shape: each probe still runs the scenario's own shape (poisson, gamma,
constant or concurrency) at one level, and only the level is searched.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SearchKind(StrEnum):
    CAPACITY = "capacity"
    SATURATION = "saturation"


# Fields only one kind reads: setting one for the other kind is a mistake worth a message.
_CAPACITY_ONLY = ("max", "min", "resolution", "max_probes", "repeat_close", "confidence")
_SATURATION_ONLY = ("levels", "saturation_concurrency")


class Search(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    kind: SearchKind = SearchKind.CAPACITY
    max: float | None = Field(
        None, gt=0, description="capacity: the highest level probed (req/s or concurrency)"
    )
    min: float | None = Field(
        None,
        gt=0,
        description="capacity: the lowest level probed when the start fails (default: the "
        "start / 8, concurrency 1)",
    )
    resolution: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="capacity: stop when the lowest failing level is within this fraction "
        "above the highest passing one",
    )
    max_probes: int = Field(
        12, ge=1, le=1000, description="capacity: probes at most (repeats count)"
    )
    max_search_s: float | None = Field(
        None, gt=0, description="no new probe (or saturation level) starts after this"
    )
    repeat_close: int = Field(
        1, ge=0, le=10, description="capacity: extra runs of a probe too close to call"
    )
    confidence: float = Field(
        0.95, ge=0.5, lt=1, description="capacity: level of the probes' noise intervals"
    )
    levels: int = Field(5, ge=1, le=100, description="saturation: rates between low and max")
    saturation_concurrency: int = Field(
        32, ge=1, le=100_000, description="saturation: requests in flight to find the maximum"
    )

    @model_validator(mode="after")
    def _fields_of_its_kind(self) -> Search:
        other = _SATURATION_ONLY if self.kind is SearchKind.CAPACITY else _CAPACITY_ONLY
        for name in other:
            # set to something else than its default (a dump, as run.json's, holds them all)
            if getattr(self, name) != type(self).model_fields[name].default:
                raise ValueError(f"search.{name}: not a field of a {self.kind.value} search")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"search.min: {self.min:g} is above search.max ({self.max:g})")
        return self


def searched_field(load: Any) -> str | None:
    """The load field a search varies: a closed loop's concurrency, an open shape's rate;
    None for a shape with neither (burst, ramp, trace)."""
    cls = type(load)
    return cls.concurrency_field if cls.closed else cls.rate_field

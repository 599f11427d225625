"""What every load shape shares: the Schedule it builds, its base model, the registry.

A load shape is one pydantic class in one module of this package: its fields (validated
when the scenario is read), :meth:`LoadShape.schedule` (its arrival schedule),
:meth:`LoadShape.level_label` (the phase name), :meth:`LoadShape.traffic` (the traffic keys
``vllm bench serve`` writes), and class attributes saying whether it is closed-loop and
which field ``--rate`` and ``--concurrency`` set. ``@register`` adds it to :data:`SHAPES`;
``loadgen.config.shapes`` imports every shape module and builds the discriminated union
``LoadSpec`` from the registry.

Schedules are precomputed before the load starts. Open-loop shapes return *absolute* send
offsets (seconds from phase start), computed as a cumulative sum of gaps, so a runner that
sends at ``start + offset`` never accumulates the drift a ``sleep(gap)`` loop would.
Everything random comes from ``numpy.random.Generator(PCG64(seed))``: one seed, one
schedule. Conventions (the same for every open shape):

- The first request goes at offset 0, as ``vllm bench serve`` sends its first request at once.
  Offset ``i`` is the sum of the first ``i`` gaps, so ``np.diff(offsets)`` is exactly the
  i.i.d. gap sample (n requests, n - 1 gaps) and no dead time opens the phase.
- Gaps are drawn in fixed blocks of ``_BLOCK``, so the gap stream depends only on the seed
  and the shape: a schedule cut by ``num_requests`` is a prefix of the one cut by
  ``duration_s`` and vice versa.
- ``duration_s`` keeps offsets strictly below it; with ``num_requests`` too, whichever limit
  is reached first ends the schedule.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from loadgen.errors import SpecloadError

_BLOCK = 4096
# A schedule larger than this is almost surely a typo (rate 1e6 for an hour) and would
# exhaust memory before the first request went out.
MAX_ARRIVALS = 10_000_000
DEFAULT_LEVEL_AXIS = "request rate (req/s)"


@dataclass(frozen=True)
class Schedule:
    """What the runner drives for one phase.

    Open loop: ``offsets`` are sorted float64 send times in seconds from phase start and
    ``concurrency`` is the optional ``max_concurrency`` cap. Closed loop: ``offsets`` is None,
    ``concurrency`` requests are kept in flight, and ``num_requests`` None means "until
    ``duration_s``".
    """

    offsets: np.ndarray | None
    concurrency: int | None
    num_requests: int | None
    duration_s: float | None

    @property
    def closed(self) -> bool:
        return self.offsets is None


class LoadShape(BaseModel):
    """The base of every load shape. A subclass declares ``shape: Literal["name"] = "name"``
    (the scenario's ``load.shape``, the union's discriminator) and its own fields."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    if TYPE_CHECKING:  # each subclass declares it (after its base's fields, as dumps show)
        shape: str

    closed: ClassVar[bool] = False  # closed loop: a number in flight, no send offsets
    needs_limit: ClassVar[bool] = True  # False: the shape ends by itself (a file's length)
    level_key: ClassVar[str | None] = None  # the field a phase's name shows ('rate=2.0')
    rate_field: ClassVar[str | None] = None  # the field --rate sets; None: no rate
    concurrency_field: ClassVar[str | None] = None  # the field --concurrency sets
    level_axis: ClassVar[str] = DEFAULT_LEVEL_AXIS  # what load_level measures, for a plot

    def schedule(
        self, *, num_requests: int | None, duration_s: float | None, rng: np.random.Generator
    ) -> Schedule:
        """This shape's schedule; ``build_schedule`` has checked the limits and seeded ``rng``."""
        raise NotImplementedError

    def level_label(self) -> str:
        """The name of a phase at this load: ``rate=2.0``, ``concurrency=4``, or the shape."""
        value = getattr(self, self.level_key) if self.level_key else None
        return self.shape if value is None else f"{self.level_key}={value}"

    @classmethod
    def traffic(cls, d: Mapping[str, Any]) -> dict[str, Any]:
        """The keys of :func:`traffic_fields` this shape sets otherwise than a plain rate.

        Takes the dumped spec, not the model: summaries of old or hand-edited runs hold
        specs that no longer validate, and their keys are still worth reading.
        """
        return {}


class OpenLoad(LoadShape):
    """An open-loop shape: requests leave at scheduled times whatever the server does."""

    concurrency_field: ClassVar[str | None] = "max_concurrency"

    max_concurrency: int | None = Field(None, gt=0, description="cap on requests in flight")


SHAPES: dict[str, type[LoadShape]] = {}
S = TypeVar("S", bound=type[LoadShape])


def register(cls: S) -> S:
    """Class decorator: add a load shape to :data:`SHAPES` under its ``shape`` literal."""
    name = cls.model_fields["shape"].default
    if not isinstance(name, str):
        raise TypeError(f"{cls.__name__}: give 'shape' a literal default (its name)")
    if name in SHAPES:
        raise ValueError(f"load shape '{name}' registered twice")
    SHAPES[name] = cls
    return cls


def shape_class(name: Any) -> type[LoadShape] | None:
    """The registered class of a shape name, None for anything else."""
    return SHAPES.get(name) if isinstance(name, str) else None


def build_schedule(
    load: LoadShape, *, num_requests: int | None, duration_s: float | None, seed: int
) -> Schedule:
    """Turn a validated load spec (one of ``loadgen.config.shapes.LoadSpec``) into a Schedule."""
    cls = shape_class(load.shape)
    if cls is None:
        known = ", ".join(sorted(SHAPES))
        raise SpecloadError(f"load.shape: unknown shape '{load.shape}' (known: {known})")
    if num_requests is not None and num_requests <= 0:
        raise SpecloadError(f"num_requests: must be > 0, got {num_requests}")
    if duration_s is not None and not duration_s > 0:
        raise SpecloadError(f"duration_s: must be > 0, got {duration_s}")
    if num_requests is None and duration_s is None and cls.needs_limit:
        raise SpecloadError("num_requests: set num_requests or duration_s")
    rng = np.random.Generator(np.random.PCG64(seed))
    return load.schedule(num_requests=num_requests, duration_s=duration_s, rng=rng)


# --- what a phase's load means, for summaries and reports -------------------------------


def traffic_fields(d: Mapping[str, Any]) -> dict[str, Any]:
    """vllm's traffic keys (request_rate, burstiness, max_concurrency, ramp_up_*) and ours
    (load_shape, load_level) from a dumped load spec.

    The defaults are those of a shape paced by ``rate``; each shape's :meth:`LoadShape.traffic`
    overrides what differs (a closed loop's request_rate is "inf", as vllm's with
    --max-concurrency and the default rate; its load_level is its concurrency, and so on).
    """
    out: dict[str, Any] = {
        "request_rate": d.get("rate"),
        "burstiness": None,
        "max_concurrency": d.get("max_concurrency"),
        "ramp_up_strategy": None,
        "ramp_up_start_rps": None,
        "ramp_up_end_rps": None,
        "load_shape": d.get("shape"),
        "load_level": d.get("rate"),
    }
    cls = shape_class(d.get("shape"))
    if cls is not None:
        out.update(cls.traffic(d))
    return out


def level_from_label(name: str) -> float | None:
    """The load level a phase name shows, for runs whose summary lacks ``load_level``.

    The inverse of :meth:`LoadShape.level_label` and of sweep labels: the first ``key=value``
    number ('rate=2.0' -> 2.0, 'rate=2,burstiness=0.5' -> 2.0), else the first bare number;
    None when the name shows no finite number.
    """
    m = re.search(r"=\s*([-+0-9.eE]+)", name) or re.search(r"([0-9]+(?:\.[0-9]+)?)", name)
    if m is None:
        return None
    try:
        value = float(m.group(1))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def level_axis_name(shape: Any) -> str:
    """What a shape's load_level measures, as a plot's axis title."""
    cls = shape_class(shape)
    return cls.level_axis if cls is not None else DEFAULT_LEVEL_AXIS


# --- helpers the shapes share ------------------------------------------------------------


def _open(offsets: np.ndarray, load: OpenLoad, duration_s: float | None) -> Schedule:
    """An open-loop schedule of ``offsets`` (sorted), cut strictly below ``duration_s``."""
    offsets = np.ascontiguousarray(offsets, dtype=np.float64)
    if duration_s is not None:
        offsets = offsets[offsets < duration_s]
    return Schedule(
        offsets=offsets,
        concurrency=load.max_concurrency,
        num_requests=len(offsets),
        duration_s=duration_s,
    )


def _cap(n: int | None, what: str) -> None:
    if n is not None and n > MAX_ARRIVALS:
        raise SpecloadError(f"{what}: would schedule {n} requests (> {MAX_ARRIVALS}); lower it")


def _take(
    points: Iterator[np.ndarray], num_requests: int | None, duration_s: float | None
) -> np.ndarray:
    """Concatenate sorted blocks of offsets until ``num_requests`` or ``duration_s``."""
    out: list[np.ndarray] = []
    have = 0
    for block in points:
        if duration_s is not None:
            cut = int(np.searchsorted(block, duration_s, side="left"))
            done = cut < len(block)
            block = block[:cut]
        else:
            done = False
        if num_requests is not None and have + len(block) >= num_requests:
            block = block[: num_requests - have]
            done = True
        out.append(block)
        have += len(block)
        if have > MAX_ARRIVALS:
            raise SpecloadError(
                f"duration_s: would schedule more than {MAX_ARRIVALS} requests; lower it"
            )
        if done:
            break
    return np.concatenate(out) if out else np.zeros(0)


def _renewal(gaps: Callable[[int], np.ndarray]) -> Iterator[np.ndarray]:
    """Offsets 0, g1, g1+g2, ... from i.i.d. gaps drawn ``_BLOCK`` at a time."""
    last = 0.0
    while True:
        g = gaps(_BLOCK)
        block = last + np.concatenate(([0.0], np.cumsum(g[:-1])))
        last = float(block[-1]) + float(g[-1])
        yield block


def _fixed_count(num_requests: int | None, in_window: int | None) -> int:
    """The request count of a shape whose offsets need no draws: ``num_requests`` or the
    ``in_window`` that fit in the duration, whichever is smaller (one of them is set)."""
    if in_window is None:
        n = num_requests
    else:
        n = in_window if num_requests is None else min(num_requests, in_window)
    assert n is not None
    _cap(n, "num_requests" if num_requests == n else "duration_s")
    return n

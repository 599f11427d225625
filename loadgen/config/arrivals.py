"""Load shapes -> arrival schedules, precomputed before the load starts.

Each shape in :mod:`loadgen.config.scenario` has a builder registered by name in ``ARRIVALS``.
Open-loop builders return *absolute* send offsets (seconds from phase start), computed as a
cumulative sum of gaps, so a runner that sends at ``start + offset`` never accumulates the
drift a ``sleep(gap)`` loop would. Everything random comes from
``numpy.random.Generator(PCG64(seed))``: one seed, one schedule.

Conventions (the same for every open shape):

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

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loadgen.errors import SpecloadError

_BLOCK = 4096
# A schedule larger than this is almost surely a typo (rate 1e6 for an hour) and would
# exhaust memory before the first request went out.
MAX_ARRIVALS = 10_000_000


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


Builder = Callable[..., Schedule]
ARRIVALS: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Register a builder ``fn(load, *, num_requests, duration_s, rng) -> Schedule``."""

    def deco(fn: Builder) -> Builder:
        if name in ARRIVALS:
            raise ValueError(f"arrival shape '{name}' registered twice")
        ARRIVALS[name] = fn
        return fn

    return deco


def build_schedule(
    load: Any, *, num_requests: int | None, duration_s: float | None, seed: int
) -> Schedule:
    """Turn a validated load spec (``loadgen.config.scenario.LoadSpec``) into a Schedule."""
    try:
        builder = ARRIVALS[load.shape]
    except KeyError:
        known = ", ".join(sorted(ARRIVALS))
        raise SpecloadError(f"load.shape: unknown shape '{load.shape}' (known: {known})") from None
    if num_requests is not None and num_requests <= 0:
        raise SpecloadError(f"num_requests: must be > 0, got {num_requests}")
    if duration_s is not None and not duration_s > 0:
        raise SpecloadError(f"duration_s: must be > 0, got {duration_s}")
    if num_requests is None and duration_s is None and load.shape != "trace":
        raise SpecloadError("num_requests: set num_requests or duration_s")
    rng = np.random.Generator(np.random.PCG64(seed))
    return builder(load, num_requests=num_requests, duration_s=duration_s, rng=rng)


# --- helpers ----------------------------------------------------------------------------


def _open(offsets: np.ndarray, load: Any, duration_s: float | None) -> Schedule:
    offsets = np.ascontiguousarray(offsets, dtype=np.float64)
    return Schedule(
        offsets=offsets,
        concurrency=getattr(load, "max_concurrency", None),
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


# --- open loop --------------------------------------------------------------------------


@register("poisson")
def _poisson(load: Any, *, num_requests, duration_s, rng) -> Schedule:
    """Exponential gaps with mean 1/rate: memoryless arrivals, CV 1."""
    _cap(num_requests, "num_requests")
    pts = _renewal(lambda n: rng.exponential(1.0 / load.rate, size=n))
    return _open(_take(pts, num_requests, duration_s), load, duration_s)


@register("gamma")
def _gamma(load: Any, *, num_requests, duration_s, rng) -> Schedule:
    """Gamma gaps as ``vllm bench serve``: shape=burstiness, scale=1/(rate*burstiness).

    Mean gap stays 1/rate; CV is 1/sqrt(burstiness), so burstiness < 1 clumps requests.
    """
    _cap(num_requests, "num_requests")
    k = load.burstiness
    scale = 1.0 / (load.rate * k)
    pts = _renewal(lambda n: rng.gamma(shape=k, scale=scale, size=n))
    return _open(_take(pts, num_requests, duration_s), load, duration_s)


@register("constant")
def _constant(load: Any, *, num_requests, duration_s, rng) -> Schedule:
    """Gaps of exactly 1/rate (offset i = i/rate, computed directly so no rounding drift)."""
    n = num_requests
    if duration_s is not None:
        in_window = math.ceil(duration_s * load.rate - 1e-9)
        n = in_window if n is None else min(n, in_window)
    assert n is not None
    _cap(n, "num_requests" if num_requests == n else "duration_s")
    offsets = np.arange(n, dtype=np.float64) / load.rate
    if duration_s is not None:
        offsets = offsets[offsets < duration_s]
    return _open(offsets, load, duration_s)


@register("burst")
def _burst(load: Any, *, num_requests, duration_s, rng) -> Schedule:
    """Waves of ``size`` requests at 0, interval_s, 2*interval_s, ...; the last may be partial."""
    if load.interval_s == 0 and num_requests is None:
        raise SpecloadError("load.interval_s: 0 needs num_requests (a duration alone never ends)")
    n = num_requests
    if duration_s is not None and load.interval_s > 0:
        waves = math.ceil(duration_s / load.interval_s - 1e-9)
        n = waves * load.size if n is None else min(n, waves * load.size)
    assert n is not None
    _cap(n, "num_requests" if num_requests == n else "duration_s")
    offsets = (np.arange(n) // load.size).astype(np.float64) * load.interval_s
    if duration_s is not None:
        offsets = offsets[offsets < duration_s]
    return _open(offsets, load, duration_s)


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


@register("ramp")
def _ramp(load: Any, *, num_requests, duration_s, rng) -> Schedule:
    """Inhomogeneous Poisson with rate start_rate -> end_rate over ramp_s, then end_rate.

    Time rescaling: if 0, E1, E1+E2, ... are points of a unit-rate Poisson process, then
    Λ^{-1} of them are points of a Poisson process with intensity λ(t) (Λ the integral of λ).
    Λ is piecewise quadratic and inverted in closed form, so this is exact with no rejected
    draws (thinning would give the same law at the cost of wasted draws). First point at 0.
    """
    _cap(num_requests, "num_requests")
    s, e, r = load.start_rate, load.end_rate, load.ramp_s
    unit = _renewal(lambda n: rng.exponential(1.0, size=n))
    pts = (ramp_inverse(b, s, e, r) for b in unit)
    return _open(_take(pts, num_requests, duration_s), load, duration_s)


def read_trace(path: str | Path) -> np.ndarray:
    """Offsets from a trace file, as written (unsorted, unshifted).

    Each non-blank line is a number, or a JSON object with ``t`` or ``timestamp``; lines
    starting with ``#`` are comments. Bad lines raise naming the file and line number.
    """
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise SpecloadError(f"load.path: cannot read trace {p}: {e.strerror}") from None
    values: list[float] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{p}:{lineno}"
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise SpecloadError(f"{where}: invalid JSON: {e.msg}") from None
            key = "t" if "t" in obj else "timestamp" if "timestamp" in obj else None
            if key is None:
                raise SpecloadError(f"{where}: JSON line needs a 't' or 'timestamp' field")
            v = obj[key]
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise SpecloadError(f"{where}: '{key}' must be a number, got {v!r}")
            value = float(v)
        else:
            try:
                value = float(line)
            except ValueError:
                raise SpecloadError(f"{where}: not a number: {line[:40]!r}") from None
        if not math.isfinite(value):
            raise SpecloadError(f"{where}: offset must be finite, got {line[:40]!r}")
        values.append(value)
    if not values:
        raise SpecloadError(f"{p}: trace has no offsets")
    return np.asarray(values, dtype=np.float64)


@register("trace")
def _trace(load: Any, *, num_requests, duration_s, rng) -> Schedule:
    """Replay a trace: sorted, shifted to start at 0, divided by ``speedup``."""
    raw = np.sort(read_trace(load.path))
    offsets = (raw - raw[0]) / load.speedup
    if duration_s is not None:
        offsets = offsets[offsets < duration_s]
    if num_requests is not None:
        offsets = offsets[:num_requests]
    return _open(offsets, load, duration_s)


# --- closed loop ------------------------------------------------------------------------


@register("concurrency")
def _concurrency(load: Any, *, num_requests, duration_s, rng) -> Schedule:
    """Closed loop: no offsets; the runner keeps ``concurrency`` requests in flight."""
    return Schedule(
        offsets=None,
        concurrency=load.concurrency,
        num_requests=num_requests,
        duration_s=duration_s,
    )

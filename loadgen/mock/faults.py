"""Faults the mock injects on demand, so the client's failure paths can be tested.

Per request at most one fault, the first match winning in the order fail (an HTTP
status), cut, stall, malformed. A rate is a probability ``"0.1"`` or a deterministic
``"every:N"`` (the N-th, 2N-th, ... inference request). The request header
``x-mock-fault`` overrides the rates for that request.

- ``cut`` closes the connection after ``len(chunks) // 2`` chunks (no ``[DONE]``, no
  final HTTP chunk);
- ``stall`` sends that many chunks, then nothing until the client hangs up;
- ``malformed`` inserts one invalid JSON ``data:`` line before the middle chunk and
  otherwise completes;
- ``nousage`` omits all usage; ``empty`` streams 0 tokens;
- a status fault (``500``, ``429``, ``503``, ``400``) answers at once with vLLM's error JSON.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from loadgen.errors import SpecloadError

FAULTS = ("cut", "stall", "malformed", "nousage", "empty", "500", "429", "503", "400")
STATUS_FAULTS = (500, 429, 503, 400)


@dataclass(frozen=True, slots=True)
class FaultRate:
    """A per-request fault rate: a probability, or every N-th request."""

    prob: float = 0.0
    every: int = 0

    def hit(self, n: int, u: float) -> bool:
        if self.every:
            return n % self.every == 0
        return u < self.prob


def parse_rate(text: str | float, flag: str) -> FaultRate:
    """Parse ``"0.1"`` (probability) or ``"every:N"`` (deterministic)."""
    s = str(text).strip()
    if s.startswith("every:"):
        try:
            n = int(s[6:])
        except ValueError:
            n = 0
        if n < 1:
            raise SpecloadError(f"{flag}: every:N needs an integer N >= 1, got {s!r}")
        return FaultRate(every=n)
    try:
        p = float(s)
    except ValueError:
        raise SpecloadError(f"{flag}: expected a probability or every:N, got {s!r}") from None
    if not 0.0 <= p <= 1.0:
        raise SpecloadError(f"{flag}: probability must be in [0, 1], got {s!r}")
    return FaultRate(prob=p)


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """Which fault, if any, each inference request gets.

    ``rates`` are for (fail, cut, stall, malformed), in that order of precedence: the
    probabilities share one uniform draw (so they add up rather than overlap), an
    ``every:N`` rate is checked on the request number.
    """

    rates: tuple[FaultRate, FaultRate, FaultRate, FaultRate]
    fail_status: int = 500
    empty: bool = False
    no_usage: bool = False

    def pick(self, header: str | None, n: int, rng: random.Random) -> str | None:
        """The fault of the ``n``-th request: the header's if it has one (``""`` and
        ``"none"`` mean no fault, and draw nothing from ``rng``), else by the rates."""
        if header is not None:
            return None if header in ("", "none") else header
        u = rng.random()
        lo = 0.0
        names = (str(self.fail_status), "cut", "stall", "malformed")
        for name, rate in zip(names, self.rates, strict=True):
            if rate.every:
                if rate.hit(n, u):
                    return name
            elif lo <= u < lo + rate.prob:
                return name
            else:
                lo += rate.prob
        if self.empty:
            return "empty"
        if self.no_usage:
            return "nousage"
        return None

"""How an answer is cut into chunks, and when each chunk goes out.

Tokens per chunk (``--tokens-per-chunk``): ``"3"`` (every chunk 3 tokens), ``"1,3,2"``
(a per-request cycle) or ``"spec:K:P"``: each chunk carries ``1 + a`` tokens where ``a``
is the number of *leading* successes in ``K`` Bernoulli(P) trials, which is how draft
verification accepts a prefix (mean ``1 + P + P^2 + ... + P^K``). The last chunk is
truncated to ``max_tokens``.

Schedule: chunk ``i`` is due at the absolute time ``admit + ttft + i * itl +
U(-jitter, +jitter)`` (never before chunk ``i-1``), so sleep overshoot never accumulates.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from loadgen.errors import SpecloadError


@dataclass(frozen=True, slots=True)
class ChunkPlan:
    """How many tokens each chunk carries: a fixed cycle, or spec-style prefix acceptance."""

    cycle: tuple[int, ...] = (1,)
    spec_k: int = 0  # >0: "spec:K:P" mode
    spec_p: float = 0.0

    @property
    def max_chunk(self) -> int:
        return self.spec_k + 1 if self.spec_k else max(self.cycle)

    def sizes(self, total: int, rng: random.Random) -> list[int]:
        """Chunk sizes summing to ``total``, the last one truncated."""
        out: list[int] = []
        left = total
        i = 0
        while left > 0:
            if self.spec_k:
                n = 1
                while n <= self.spec_k and rng.random() < self.spec_p:
                    n += 1
            else:
                n = self.cycle[i % len(self.cycle)]
            n = min(n, left)
            out.append(n)
            left -= n
            i += 1
        return out


def parse_tokens_per_chunk(text: str) -> ChunkPlan:
    """Parse ``--tokens-per-chunk``: ``"3"``, ``"1,3,2"`` or ``"spec:K:P"``."""
    flag = "--tokens-per-chunk"
    text = str(text).strip()
    if text.startswith("spec:"):
        parts = text.split(":")
        try:
            k, p = int(parts[1]), float(parts[2])
            if len(parts) != 3:
                raise ValueError
        except (ValueError, IndexError):
            raise SpecloadError(f"{flag}: expected spec:K:P, got {text!r}") from None
        if k < 1 or not 0.0 <= p <= 1.0:
            raise SpecloadError(f"{flag}: spec:K:P needs K >= 1 and 0 <= P <= 1, got {text!r}")
        return ChunkPlan(spec_k=k, spec_p=p)
    try:
        cycle = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise SpecloadError(
            f"{flag}: expected an int, 'k1,k2,...' or spec:K:P, got {text!r}"
        ) from None
    if not cycle or min(cycle) < 1:
        raise SpecloadError(f"{flag}: token counts must be >= 1, got {text!r}")
    return ChunkPlan(cycle=cycle)


def completion_length(
    max_tokens: int, eos_prob: float, stop_early: bool, rng: random.Random
) -> tuple[int, str]:
    """(tokens to generate, finish reason): ``max_tokens`` ("length"), or, when
    ``stop_early`` and ``eos_prob > 0``, a geometric draw that may stop sooner ("stop")."""
    if eos_prob > 0 and stop_early:
        u = 1.0 - rng.random()  # (0, 1]
        geo = 1 + int(math.log(u) / math.log1p(-eos_prob)) if eos_prob < 1 else 1
        return (geo, "stop") if geo < max_tokens else (max_tokens, "length")
    return max_tokens, "length"


def chunk_times(
    t0: float, n: int, ttft_s: float, itl_s: float, jitter_s: float, rng: random.Random
) -> list[float]:
    """Absolute times (on ``t0``'s clock) of ``n`` chunks: no drift, never out of order."""
    out: list[float] = []
    prev = t0
    for i in range(n):
        t = t0 + ttft_s + i * itl_s
        if jitter_s:
            t += rng.uniform(-jitter_s, jitter_s)
        t = max(t, prev)
        out.append(t)
        prev = t
    return out

"""Multi-turn replay: the pure parts of sending a conversation as a user would.

A conversation (a prompt with several user ``turns``) is the unit the load counts; its
turns go out one after another from one slot of the phase: turn k's request carries every
earlier user turn and the model's actual answer to it, in order, and is sent a think time
after the previous answer's last byte arrived (:meth:`loadgen.engine.phase.PhaseRunner`
runs the loop). A failed turn ends its conversation: the next turn would need an answer
that never came.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from loadgen.config.prompts.base import Prompt
from loadgen.config.scenario import MAX_TURNS, MultiTurn

TURN_ID_STRIDE = MAX_TURNS + 1  # turn k of conversation c is request c * stride + k


def turn_request_id(conversation: int, turn: int) -> int:
    """A unique request id per turn, from which the conversation can be read back."""
    return conversation * TURN_ID_STRIDE + turn


@dataclass(frozen=True)
class ConversationPlan:
    """How conversations are replayed (the scenario's ``multi_turn`` and seed)."""

    think_time_s: float
    exponential: bool
    max_turns: int
    seed: int

    @classmethod
    def of(cls, mt: MultiTurn, seed: int) -> ConversationPlan:
        return cls(mt.think_time_s, mt.think_time == "exponential", mt.max_turns, seed)

    def turns(self, prompt: Prompt) -> tuple[str, ...]:
        """The user turns sent (a one-turn prompt is a conversation of one)."""
        return (prompt.turns or (prompt.text,))[: self.max_turns]

    def think_times(self, conversation: int, n: int) -> list[float]:
        """The ``n`` pauses before turns 2..n+1 of a conversation: fixed, or exponential
        with the configured mean from a generator seeded by (seed, conversation), so a
        conversation pauses alike in every run and whichever worker sends it."""
        if not self.exponential or self.think_time_s == 0 or n == 0:
            return [self.think_time_s] * n
        rng = np.random.default_rng([self.seed, conversation])
        return [float(x) for x in rng.exponential(self.think_time_s, size=n)]


def user_message(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant_message(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}

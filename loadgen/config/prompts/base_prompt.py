"""``base_prompt``: the original experiment's single prompt, repeated."""

from __future__ import annotations

from typing import TYPE_CHECKING

from loadgen.config.prompts.base import Prompt, PromptSet, PromptSource, count_tokens, register
from loadgen.config.prompts.tokenizers import Tokenizer

if TYPE_CHECKING:
    from loadgen.config.scenario import PromptSpec


@register
class BasePromptSource(PromptSource):
    """``prompts.base_prompt`` (default "The future of AI is") for every request."""

    name = "base_prompt"

    @classmethod
    def load(cls, spec: PromptSpec, n: int, *, seed: int, tokenizer: Tokenizer | None) -> PromptSet:
        count = count_tokens(tokenizer, [spec.base_prompt])[0]
        p = Prompt(spec.base_prompt, count)
        return PromptSet([p] * n, source=cls.name, distinct=1)

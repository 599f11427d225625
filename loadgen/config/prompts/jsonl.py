"""``jsonl``: a prompt file, one JSON object per line."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from loadgen.config.prompts.base import PromptSet, PromptSource, finish_prompts, register
from loadgen.config.prompts.jsonl_lines import read_jsonl
from loadgen.config.prompts.tokenizers import Tokenizer

if TYPE_CHECKING:
    from loadgen.config.scenario import PromptSpec


@register
class JsonlSource(PromptSource):
    """``prompts.path``: each line ``{"prompt": ...}`` (or ``"text"``) with an optional
    ``output_tokens`` (or ``max_tokens``); ``skip_bad_lines`` drops and counts bad lines."""

    name = "jsonl"
    needs_path = True

    @classmethod
    def load(cls, spec: PromptSpec, n: int, *, seed: int, tokenizer: Tokenizer | None) -> PromptSet:
        assert spec.path is not None
        items, skipped = read_jsonl(Path(spec.path), skip_bad_lines=spec.skip_bad_lines)
        return finish_prompts(items, n, seed, tokenizer, cls.name, skipped)

"""``humaneval``: HumanEval (Chen et al. 2021), 164 Python function stubs to complete:
``HumanEval.jsonl(.gz)`` or the hub's ``openai/openai_humaneval`` (split ``test``); the
prompt is the row's ``prompt``, its id ``task_id``, its category ``humaneval``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loadgen.config.prompts.base import PromptSet, PromptSource, register
from loadgen.config.prompts.suite_rows import (
    SuiteFormat,
    SuiteRow,
    check_suite,
    load_suite,
    optional_str,
    text_field,
)
from loadgen.config.prompts.tokenizers import Tokenizer

if TYPE_CHECKING:
    from loadgen.config.scenario import PromptSpec


def humaneval_row(obj: dict[str, Any]) -> SuiteRow:
    return SuiteRow(
        turns=(text_field(obj, "prompt"),),
        category=optional_str(obj, "category") or "humaneval",
        ident=optional_str(obj, "task_id"),
    )


FORMAT = SuiteFormat(
    source="humaneval",
    files=("HumanEval.jsonl", "HumanEval.jsonl.gz"),
    download="`mkdir -p {dir} && wget -O {dir}/HumanEval.jsonl.gz https://github.com/openai/"
    "human-eval/raw/master/data/HumanEval.jsonl.gz` (or set prompts.dataset: "
    "openai/openai_humaneval, with the 'datasets' extra)",
    to_row=humaneval_row,
    split="test",
)


@register
class HumanEvalSource(PromptSource):
    """``prompts.path`` (``HumanEval.jsonl[.gz]`` or its directory) or ``prompts.dataset``."""

    name = "humaneval"
    needs_data = True

    @classmethod
    def load(cls, spec: PromptSpec, n: int, *, seed: int, tokenizer: Tokenizer | None) -> PromptSet:
        return load_suite(FORMAT, spec, n, seed=seed, tokenizer=tokenizer)

    @classmethod
    def check(cls, spec: PromptSpec) -> None:
        check_suite(FORMAT, spec)

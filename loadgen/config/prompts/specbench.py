"""``specbench``: Spec-Bench (Xia et al. 2024), the suite spec-decode papers report on:
``question.jsonl``, one question per line with ``category`` (mt_bench's eight, translation,
summarization, qa, math_reasoning, rag) and ``turns`` (one or two user turns)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loadgen.config.prompts.base import PromptSet, PromptSource, register
from loadgen.config.prompts.suite_rows import (
    SuiteFormat,
    SuiteRow,
    check_suite,
    load_suite,
    optional_str,
    turns_field,
)
from loadgen.config.prompts.tokenizers import Tokenizer

if TYPE_CHECKING:
    from loadgen.config.scenario import PromptSpec


def specbench_row(obj: dict[str, Any]) -> SuiteRow:
    return SuiteRow(
        turns=turns_field(obj, "turns"),
        category=optional_str(obj, "category"),
        ident=optional_str(obj, "question_id", "id"),
    )


FORMAT = SuiteFormat(
    source="specbench",
    files=("question.jsonl",),
    download="`mkdir -p {dir} && wget -O {path} https://raw.githubusercontent.com/hemingkx/"
    "Spec-Bench/refs/heads/main/data/spec_bench/question.jsonl`",
    to_row=specbench_row,
)


@register
class SpecBenchSource(PromptSource):
    """``prompts.path`` (``question.jsonl`` or its directory) or ``prompts.dataset``;
    ``prompts.categories`` keeps only some categories."""

    name = "specbench"
    needs_data = True

    @classmethod
    def load(cls, spec: PromptSpec, n: int, *, seed: int, tokenizer: Tokenizer | None) -> PromptSet:
        return load_suite(FORMAT, spec, n, seed=seed, tokenizer=tokenizer)

    @classmethod
    def check(cls, spec: PromptSpec) -> None:
        check_suite(FORMAT, spec)

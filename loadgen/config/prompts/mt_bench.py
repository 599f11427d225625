"""``mt_bench``: MT-Bench (Zheng et al. 2023), 80 two-turn questions in eight categories:
FastChat's ``question.jsonl`` (``category``, ``turns``), or the hub copies
(``philschmid/mt-bench``: ``turns``; ``HuggingFaceH4/mt_bench_prompts``: ``prompt``)."""

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


def mt_bench_row(obj: dict[str, Any]) -> SuiteRow:
    return SuiteRow(
        turns=turns_field(obj, "turns", "prompt"),
        category=optional_str(obj, "category"),
        ident=optional_str(obj, "question_id", "prompt_id", "id"),
    )


FORMAT = SuiteFormat(
    source="mt_bench",
    files=("question.jsonl",),
    download="`mkdir -p {dir} && wget -O {path} https://raw.githubusercontent.com/lm-sys/"
    "FastChat/main/fastchat/llm_judge/data/mt_bench/question.jsonl` (or set prompts.dataset: "
    "philschmid/mt-bench, with the 'datasets' extra)",
    to_row=mt_bench_row,
)


@register
class MtBenchSource(PromptSource):
    """``prompts.path`` (``question.jsonl`` or its directory) or ``prompts.dataset``."""

    name = "mt_bench"
    needs_data = True

    @classmethod
    def load(cls, spec: PromptSpec, n: int, *, seed: int, tokenizer: Tokenizer | None) -> PromptSet:
        return load_suite(FORMAT, spec, n, seed=seed, tokenizer=tokenizer)

    @classmethod
    def check(cls, spec: PromptSpec) -> None:
        check_suite(FORMAT, spec)

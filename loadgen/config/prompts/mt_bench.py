"""``mt_bench``: MT-Bench (Zheng et al. 2023), 80 two-turn questions in eight categories:
FastChat's ``question.jsonl`` (``category``, ``turns``), or the hub copies
(``philschmid/mt-bench``: ``turns``; ``HuggingFaceH4/mt_bench_prompts``: ``prompt``)."""

from __future__ import annotations

from typing import Any

from loadgen.config.prompts.base import register
from loadgen.config.prompts.suite_rows import SuiteRow, SuiteSource, optional_str, turns_field


@register
class MtBenchSource(SuiteSource):
    """``prompts.path`` (``question.jsonl`` or its directory) or ``prompts.dataset``."""

    name = "mt_bench"
    files = ("question.jsonl",)
    download = (
        "`mkdir -p {dir} && wget -O {path} https://raw.githubusercontent.com/lm-sys/"
        "FastChat/main/fastchat/llm_judge/data/mt_bench/question.jsonl` (or set prompts.dataset: "
        "philschmid/mt-bench, with the 'datasets' extra)"
    )

    @staticmethod
    def to_row(obj: dict[str, Any]) -> SuiteRow:
        return SuiteRow(
            turns=turns_field(obj, "turns", "prompt"),
            category=optional_str(obj, "category"),
            ident=optional_str(obj, "question_id", "prompt_id", "id"),
        )

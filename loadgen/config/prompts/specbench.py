"""``specbench``: Spec-Bench (Xia et al. 2024), the suite spec-decode papers report on:
``question.jsonl``, one question per line with ``category`` (mt_bench's eight, translation,
summarization, qa, math_reasoning, rag) and ``turns`` (one or two user turns)."""

from __future__ import annotations

from typing import Any

from loadgen.config.prompts.base import register
from loadgen.config.prompts.suite_rows import SuiteRow, SuiteSource, optional_str, turns_field


@register
class SpecBenchSource(SuiteSource):
    """``prompts.path`` (``question.jsonl`` or its directory) or ``prompts.dataset``;
    ``prompts.categories`` keeps only some categories."""

    name = "specbench"
    files = ("question.jsonl",)
    download = (
        "`mkdir -p {dir} && wget -O {path} https://raw.githubusercontent.com/hemingkx/"
        "Spec-Bench/refs/heads/main/data/spec_bench/question.jsonl`"
    )

    @staticmethod
    def to_row(obj: dict[str, Any]) -> SuiteRow:
        return SuiteRow(
            turns=turns_field(obj, "turns"),
            category=optional_str(obj, "category"),
            ident=optional_str(obj, "question_id", "id"),
        )

"""``humaneval``: HumanEval (Chen et al. 2021), 164 Python function stubs to complete:
``HumanEval.jsonl(.gz)`` or the hub's ``openai/openai_humaneval`` (split ``test``); the
prompt is the row's ``prompt``, its id ``task_id``, its category ``humaneval``."""

from __future__ import annotations

from typing import Any

from loadgen.config.prompts.base import register
from loadgen.config.prompts.suite_rows import SuiteRow, SuiteSource, optional_str, text_field


@register
class HumanEvalSource(SuiteSource):
    """``prompts.path`` (``HumanEval.jsonl[.gz]`` or its directory) or ``prompts.dataset``."""

    name = "humaneval"
    files = ("HumanEval.jsonl", "HumanEval.jsonl.gz")
    download = (
        "`mkdir -p {dir} && wget -O {dir}/HumanEval.jsonl.gz https://github.com/openai/"
        "human-eval/raw/master/data/HumanEval.jsonl.gz` (or set prompts.dataset: "
        "openai/openai_humaneval, with the 'datasets' extra)"
    )
    split = "test"

    @staticmethod
    def to_row(obj: dict[str, Any]) -> SuiteRow:
        return SuiteRow(
            turns=(text_field(obj, "prompt"),),
            category=optional_str(obj, "category") or "humaneval",
            ident=optional_str(obj, "task_id"),
        )

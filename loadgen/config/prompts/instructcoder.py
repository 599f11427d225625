"""``instructcoder``: InstructCoder-style code edits (``likaixin/InstructCoder``): each row
an ``instruction`` and the ``input`` code it edits. The prompt is built as ``vllm bench
serve``'s InstructCoder dataset builds it (the code, a blank line, the instruction and "Just
output the code, do not include any explanation."), so acceptance compares with vLLM's
figures; answers copy much of the input, where ngram drafts find matches."""

from __future__ import annotations

from typing import Any

from loadgen.config.prompts.base import register
from loadgen.config.prompts.suite_rows import SuiteRow, SuiteSource, optional_str, text_field

SUFFIX = " Just output the code, do not include any explanation."


@register
class InstructCoderSource(SuiteSource):
    """``prompts.path`` (a JSON Lines file of ``instruction``/``input`` rows) or
    ``prompts.dataset``."""

    name = "instructcoder"
    files = ("instructcoder.jsonl", "train.jsonl")
    download = (
        "prompts.dataset: likaixin/InstructCoder and the 'datasets' extra, or export it "
        "as JSON Lines to {path}"
    )

    @staticmethod
    def to_row(obj: dict[str, Any]) -> SuiteRow:
        instruction = text_field(obj, "instruction")
        code = obj.get("input")
        if code is not None and not isinstance(code, str):
            raise ValueError("'input' must be a string (the code to edit)")
        prompt = (
            f"{code}\n\n{instruction}{SUFFIX}" if code and code.strip() else instruction + SUFFIX
        )
        return SuiteRow(
            turns=(prompt,),
            category=optional_str(obj, "category", "domain") or "code-edit",
            ident=optional_str(obj, "id"),
        )

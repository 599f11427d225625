"""``instructcoder``: InstructCoder-style code edits (``likaixin/InstructCoder``): each row
an ``instruction`` and the ``input`` code it edits. The prompt is built as ``vllm bench
serve``'s InstructCoder dataset builds it (the code, a blank line, the instruction and "Just
output the code, do not include any explanation."), so acceptance compares with vLLM's
figures; answers copy much of the input, where ngram drafts find matches."""

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

SUFFIX = " Just output the code, do not include any explanation."


def instructcoder_row(obj: dict[str, Any]) -> SuiteRow:
    instruction = text_field(obj, "instruction")
    code = obj.get("input")
    if code is not None and not isinstance(code, str):
        raise ValueError("'input' must be a string (the code to edit)")
    prompt = f"{code}\n\n{instruction}{SUFFIX}" if code and code.strip() else instruction + SUFFIX
    return SuiteRow(
        turns=(prompt,),
        category=optional_str(obj, "category", "domain") or "code-edit",
        ident=optional_str(obj, "id"),
    )


FORMAT = SuiteFormat(
    source="instructcoder",
    files=("instructcoder.jsonl", "train.jsonl"),
    download="prompts.dataset: likaixin/InstructCoder and the 'datasets' extra, or export it "
    "as JSON Lines to {path}",
    to_row=instructcoder_row,
)


@register
class InstructCoderSource(PromptSource):
    """``prompts.path`` (a JSON Lines file of ``instruction``/``input`` rows) or
    ``prompts.dataset``."""

    name = "instructcoder"
    needs_data = True

    @classmethod
    def load(cls, spec: PromptSpec, n: int, *, seed: int, tokenizer: Tokenizer | None) -> PromptSet:
        return load_suite(FORMAT, spec, n, seed=seed, tokenizer=tokenizer)

    @classmethod
    def check(cls, spec: PromptSpec) -> None:
        check_suite(FORMAT, spec)

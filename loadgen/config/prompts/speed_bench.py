"""``speed_bench``: NVIDIA's SPEED-Bench, a speculative-decoding benchmark: a directory
of ``<subset>.jsonl`` files (``qualitative``: categories of varied semantic content;
``throughput_1k`` ... ``throughput_32k``: input-length buckets), each row with ``category``
and OpenAI-style ``messages``, as its ``prepare.py`` writes them and ``vllm bench serve
--dataset-name speed_bench`` reads them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loadgen.config.prompts.base import PromptSet, PromptSource, register
from loadgen.config.prompts.suite_rows import (
    SuiteFormat,
    SuiteRow,
    check_suite,
    load_suite,
    optional_str,
    user_turns,
)
from loadgen.config.prompts.tokenizers import Tokenizer

if TYPE_CHECKING:
    from loadgen.config.scenario import PromptSpec


def speed_bench_row(obj: dict[str, Any]) -> SuiteRow:
    if "messages" not in obj:
        raise ValueError("needs 'messages' (a list of role/content messages)")
    return SuiteRow(
        turns=user_turns(obj["messages"]),
        category=optional_str(obj, "category"),
        ident=optional_str(obj, "question_id", "id"),
    )


FORMAT = SuiteFormat(
    source="speed_bench",
    files=("{subset}.jsonl",),
    download="`curl -LsSf https://raw.githubusercontent.com/NVIDIA-NeMo/Skills/refs/heads/main/"
    "nemo_skills/dataset/speed-bench/prepare.py | python3 -` (it writes <subset>.jsonl files; "
    "point prompts.path at their directory, {dir})",
    to_row=speed_bench_row,
    split="test",
    subset="qualitative",
)


@register
class SpeedBenchSource(PromptSource):
    """``prompts.path`` (the prepared directory, or one ``<subset>.jsonl``) with
    ``prompts.subset`` (default ``qualitative``), or ``prompts.dataset``."""

    name = "speed_bench"
    needs_data = True

    @classmethod
    def load(cls, spec: PromptSpec, n: int, *, seed: int, tokenizer: Tokenizer | None) -> PromptSet:
        return load_suite(FORMAT, spec, n, seed=seed, tokenizer=tokenizer)

    @classmethod
    def check(cls, spec: PromptSpec) -> None:
        check_suite(FORMAT, spec)

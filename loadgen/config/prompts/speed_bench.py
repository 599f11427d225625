"""``speed_bench``: NVIDIA's SPEED-Bench, a speculative-decoding benchmark: a directory
of ``<subset>.jsonl`` files (``qualitative``: categories of varied semantic content;
``throughput_1k`` ... ``throughput_32k``: input-length buckets), each row with ``category``
and OpenAI-style ``messages``, as its ``prepare.py`` writes them and ``vllm bench serve
--dataset-name speed_bench`` reads them."""

from __future__ import annotations

from typing import Any

from loadgen.config.prompts.base import register
from loadgen.config.prompts.suite_rows import SuiteRow, SuiteSource, optional_str, user_turns


@register
class SpeedBenchSource(SuiteSource):
    """``prompts.path`` (the prepared directory, or one ``<subset>.jsonl``) with
    ``prompts.subset`` (default ``qualitative``), or ``prompts.dataset``."""

    name = "speed_bench"
    files = ("{subset}.jsonl",)
    download = (
        "`curl -LsSf https://raw.githubusercontent.com/NVIDIA-NeMo/Skills/refs/heads/main/"
        "nemo_skills/dataset/speed-bench/prepare.py | python3 -` (it writes <subset>.jsonl "
        "files; point prompts.path at their directory, {dir})"
    )
    split = "test"
    subset = "qualitative"

    @staticmethod
    def to_row(obj: dict[str, Any]) -> SuiteRow:
        if "messages" not in obj:
            raise ValueError("needs 'messages' (a list of role/content messages)")
        return SuiteRow(
            turns=user_turns(obj["messages"]),
            category=optional_str(obj, "category"),
            ident=optional_str(obj, "question_id", "id"),
        )

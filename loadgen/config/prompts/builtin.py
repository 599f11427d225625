"""``builtin``: prompt sets this project ships, in ``loadgen/data/<set>.jsonl``."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from loadgen.config.prompts.base import PromptSet, PromptSource, finish_prompts, register
from loadgen.config.prompts.jsonl_lines import read_jsonl
from loadgen.config.prompts.tokenizers import Tokenizer
from loadgen.errors import SpecloadError

if TYPE_CHECKING:
    from loadgen.config.scenario import PromptSpec

BUILTIN_SETS = ("general", "copy-heavy")


@register
class BuiltinSource(PromptSource):
    """``prompts.set``: ``general`` (mixed tasks) or ``copy-heavy`` (code edits and quoting
    summaries, on which ngram speculation can find matches)."""

    name = "builtin"
    choices: ClassVar[dict[str, tuple[str, ...]]] = {"set": BUILTIN_SETS}

    @classmethod
    def load(cls, spec: PromptSpec, n: int, *, seed: int, tokenizer: Tokenizer | None) -> PromptSet:
        items, _ = read_jsonl(builtin_path(spec.set), skip_bad_lines=False)
        return finish_prompts(items, n, seed, tokenizer, f"{cls.name}:{spec.set}", 0)


def builtin_path(name: str) -> Path:
    if name not in BUILTIN_SETS:
        raise SpecloadError(f"prompts.set: unknown set '{name}' (known: {', '.join(BUILTIN_SETS)})")
    return Path(str(resources.files("loadgen") / "data" / f"{name}.jsonl"))

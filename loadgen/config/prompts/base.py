"""What every prompt source shares: Prompt, PromptSet, the registry, ``load_prompts``.

A prompt source is one class in one module of this package, registered by name
(``prompts.source`` in a scenario). Prompts are built before the load starts (so all sync).

Token counts: ``Prompt.input_tokens`` is what a completions request costs the server,
special tokens included (``len(encode(text)) + num_special_tokens_to_add``): for ``random``
it therefore equals ``prompts.input_tokens``, which is what the server's usage reports.

Order: every file or built-in source is drawn in a seeded random permutation; when fewer
prompts than requests exist the source is cycled, each pass a fresh permutation from the
same generator, so one seed gives one sequence.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, TypeVar

import numpy as np

from loadgen.config.prompts.tokenizers import Tokenizer, encode_batch, num_special_tokens_to_add
from loadgen.errors import SpecloadError

if TYPE_CHECKING:
    from loadgen.config.scenario import PromptSpec


@dataclass(frozen=True)
class Prompt:
    text: str  # the prompt (for chat it becomes one user message); a conversation's 1st turn
    input_tokens: int | None  # counted by the tokenizer when known (specials included)
    output_tokens: int | None = None  # per-prompt output length override, else scenario's
    category: str | None = None  # the suite's category (SpecBench "coding", MT-Bench "math")
    row: str | None = None  # where it came from: "question.jsonl:17", "dataset[test]:3"
    # A conversation's user turns in order (turns[0] == text) when it has more than one:
    # a multi-turn replay sends them one after another with the model's answers between.
    turns: tuple[str, ...] = ()


@dataclass(frozen=True)
class PromptSet:
    """The prompts for one phase, one per request, plus what was dropped on the way."""

    prompts: list[Prompt]
    source: str
    skipped: int = 0  # bad lines / unusable entries dropped
    mismatched: int = 0  # random prompts whose count could not be made exact (vllm warns too)
    distinct: int = 0  # distinct prompts before cycling

    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self) -> Iterator[Prompt]:
        return iter(self.prompts)

    def __getitem__(self, i: int) -> Prompt:
        return self.prompts[i]


class PromptSource:
    """A way to make prompts. Subclasses set ``name`` (the scenario's ``prompts.source``),
    ``needs_path`` when ``prompts.path`` is required (``needs_data`` when ``prompts.path`` or
    ``prompts.dataset`` is), and implement :meth:`load`."""

    name: ClassVar[str]
    needs_path: ClassVar[bool] = False
    needs_data: ClassVar[bool] = False
    # Fields of PromptSpec this source reads whose value is one of a fixed set.
    choices: ClassVar[dict[str, tuple[str, ...]]] = {}

    @classmethod
    def load(cls, spec: PromptSpec, n: int, *, seed: int, tokenizer: Tokenizer | None) -> PromptSet:
        """``n`` prompts (n > 0), one per request, cycled when the source has fewer."""
        raise NotImplementedError

    @classmethod
    def check(cls, spec: PromptSpec) -> None:
        """Fail early (before any server is asked or started) when the data is absent."""


SOURCES: dict[str, type[PromptSource]] = {}
P = TypeVar("P", bound=type[PromptSource])


def register(cls: P) -> P:
    """Class decorator: add a prompt source to :data:`SOURCES` under its ``name``."""
    if cls.name in SOURCES:
        raise ValueError(f"prompt source '{cls.name}' registered twice")
    SOURCES[cls.name] = cls
    return cls


def field_choices(field: str) -> tuple[str, ...]:
    """The values some registered source accepts for ``PromptSpec.<field>``."""
    return tuple(v for src in SOURCES.values() for v in src.choices.get(field, ()))


def load_prompts(spec: PromptSpec, n: int, *, seed: int, tokenizer: Tokenizer | None) -> PromptSet:
    """``n`` prompts from ``spec`` (cycled when the source has fewer), one per request."""
    if n <= 0:
        raise SpecloadError(f"num_requests: need at least one prompt, got {n}")
    source = SOURCES.get(spec.source)
    if source is None:
        raise SpecloadError(f"prompts.source: unknown source '{spec.source}'")
    return source.load(spec, n, seed=seed, tokenizer=tokenizer)


def check_prompts(spec: PromptSpec) -> None:
    """The source's early check that its data is there (a SpecloadError saying how to get
    it): run before the server is probed, so a missing suite costs no server start."""
    source = SOURCES.get(spec.source)
    if source is not None:
        source.check(spec)


# --- helpers the sources share -----------------------------------------------------------


def count_tokens(tok: Tokenizer | None, texts: Sequence[str]) -> list[int | None]:
    """Each text's cost as a completions prompt (special tokens included); None unknown."""
    if tok is None:
        return [None] * len(texts)
    extra = num_special_tokens_to_add(tok)
    return [len(ids) + extra for ids in encode_batch(tok, texts)]


def cycle_order(n_items: int, n: int, rng: np.random.Generator) -> list[int]:
    """``n`` indices into ``n_items``: seeded permutations, one after another."""
    out: list[int] = []
    while len(out) < n:
        out.extend(int(i) for i in rng.permutation(n_items))
    return out[:n]


def seeded_draw(
    text: Callable[[int], str], n_items: int, n: int, seed: int, tok: Tokenizer | None
) -> tuple[list[int], dict[int, int | None]]:
    """``n`` indices into ``n_items`` in seeded cycled order (:func:`cycle_order`), and the
    token count of each index drawn, in index order: only the drawn ``text(i)`` are
    tokenized, so a large file costs no tokenizing of rows never sent."""
    order = cycle_order(n_items, n, np.random.default_rng(seed))
    used = sorted(set(order))
    return order, dict(zip(used, count_tokens(tok, [text(i) for i in used]), strict=True))


def finish_prompts(
    items: list[tuple[str, int | None]],
    n: int,
    seed: int,
    tok: Tokenizer | None,
    source: str,
    skipped: int,
) -> PromptSet:
    """``n`` prompts from (text, output_tokens) items in seeded cycled order; only the
    items drawn are tokenized."""
    if not items:
        raise SpecloadError(f"prompts.path: {source}: no usable prompts")
    order, counts = seeded_draw(lambda i: items[i][0], len(items), n, seed, tok)
    made = {i: Prompt(items[i][0], c, items[i][1]) for i, c in counts.items()}
    return PromptSet([made[i] for i in order], source=source, skipped=skipped, distinct=len(made))

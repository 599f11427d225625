"""``random``: random token ids, exactly ``prompts.input_tokens`` long, as vllm's random dataset.

(The module is not called ``random.py``: that would shadow the standard library's.)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from loadgen.config.prompts.base import Prompt, PromptSet, PromptSource, register
from loadgen.config.prompts.tokenizers import (
    Tokenizer,
    decode_batch,
    encode_batch,
    num_special_tokens_to_add,
)
from loadgen.errors import SpecloadError

if TYPE_CHECKING:
    from loadgen.config.scenario import PromptSpec

_FIXUP_RETRIES = 10  # as vllm's gen_prompt_decode_to_target_len


@register
class RandomSource(PromptSource):
    """Random token ids in the served tokenizer (a directory or the server's endpoints):
    ``input_tokens`` long, +- ``range_ratio``, after a shared prefix of ``prefix_tokens``;
    ``sampling`` picks vllm's consecutive ids or independent ones."""

    name = "random"

    @classmethod
    def load(cls, spec: PromptSpec, n: int, *, seed: int, tokenizer: Tokenizer | None) -> PromptSet:
        if tokenizer is None:
            raise SpecloadError(
                "prompts.tokenizer: source 'random' needs a tokenizer (a directory or the server)"
            )
        return random_prompts(
            tokenizer,
            n,
            spec.input_tokens,
            seed=seed,
            prefix_len=spec.prefix_tokens,
            range_ratio=spec.range_ratio,
            sampling=spec.sampling,
        )


def random_prompts(
    tok: Tokenizer,
    n: int,
    input_tokens: int,
    *,
    seed: int,
    prefix_len: int = 0,
    range_ratio: float = 0.0,
    sampling: str = "vllm",
) -> PromptSet:
    """Random-token prompts exactly ``input_tokens`` long, as ``vllm bench serve --random``.

    Mirrors vllm's RandomDataset: the special tokens the server adds are subtracted from the
    target; lengths are uniform in [floor(L(1-r)), ceil(L(1+r))]; a shared prefix of
    ``prefix_len`` uniformly drawn non-special ids is fixed up first; each prompt continues
    with consecutive non-special ids from a random offset, ``allowed[(offset + i + k) % A]``;
    then decode -> re-encode, topping up with random ids when short and truncating when long,
    up to 10 times (N ids can decode to text that re-encodes to != N ids). Unlike vllm the
    top-up ids exclude special ids. Note vllm's consecutive ids make prompts cyclic shifts of
    the vocabulary: two prompts whose offsets collide are identical (about n²/2V pairs).
    ``sampling="uniform"`` draws every id independently instead. All prompts advance in
    lock-step, so a server tokenizer costs two concurrent batches of round trips per pass.
    """
    if not 0.0 <= range_ratio < 1.0:
        raise SpecloadError(f"prompts.range_ratio: must be in [0, 1), got {range_ratio}")
    rng = np.random.default_rng(seed)
    n_special = num_special_tokens_to_add(tok)
    real_len = max(0, input_tokens - n_special)
    low = math.floor(real_len * (1 - range_ratio))
    high = math.ceil(real_len * (1 + range_ratio))
    if prefix_len + low < 1:
        raise SpecloadError(
            f"prompts.input_tokens: {input_tokens} leaves no room for random tokens after "
            f"{n_special} special token(s) the server adds"
        )
    special = tok.special_ids
    allowed = np.array([i for i in range(tok.vocab_size) if i not in special], dtype=np.int64)
    if len(allowed) == 0:
        raise SpecloadError("prompts.tokenizer: vocabulary has no non-special tokens")
    lens = rng.integers(low, high + 1, size=n)
    offsets = rng.integers(0, tok.vocab_size, size=n)

    prefix: list[int] = []
    mismatched = 0
    if prefix_len > 0:
        start = allowed[rng.integers(0, len(allowed), size=prefix_len)].tolist()
        _, fixed, bad = _fixup(tok, [start], [prefix_len], allowed, rng)
        prefix, mismatched = fixed[0], bad
    if sampling == "vllm":
        seqs = [
            prefix
            + allowed[(int(offsets[i]) + i + np.arange(int(lens[i]))) % len(allowed)].tolist()
            for i in range(n)
        ]
    elif sampling == "uniform":
        seqs = [
            prefix + allowed[rng.integers(0, len(allowed), size=int(lens[i]))].tolist()
            for i in range(n)
        ]
    else:
        raise SpecloadError(f"prompts.sampling: unknown '{sampling}' (known: vllm, uniform)")
    targets = [prefix_len + int(x) for x in lens]
    texts, final, bad = _fixup(tok, seqs, targets, allowed, rng)
    prompts = [Prompt(t, len(ids) + n_special) for t, ids in zip(texts, final, strict=True)]
    return PromptSet(prompts, source=RandomSource.name, mismatched=mismatched + bad, distinct=n)


def _fixup(
    tok: Tokenizer,
    seqs: list[list[int]],
    targets: list[int],
    allowed: np.ndarray,
    rng: np.random.Generator,
) -> tuple[list[str], list[list[int]], int]:
    """vllm's gen_prompt_decode_to_target_len, for many sequences at once."""
    texts = [""] * len(seqs)
    pending = list(range(len(seqs)))
    for attempt in range(_FIXUP_RETRIES + 1):
        decoded = decode_batch(tok, [seqs[i] for i in pending])
        encoded = encode_batch(tok, decoded)
        still: list[int] = []
        for i, text, ids in zip(pending, decoded, encoded, strict=True):
            texts[i], seqs[i] = text, list(ids)
            want = targets[i]
            if len(ids) == want or attempt == _FIXUP_RETRIES:
                continue
            if len(ids) < want:
                seqs[i].extend(
                    allowed[rng.integers(0, len(allowed), size=want - len(ids))].tolist()
                )
            else:
                seqs[i] = seqs[i][:want]
            still.append(i)
        pending = still
        if not pending:
            break
    bad = sum(1 for s, t in zip(seqs, targets, strict=True) if len(s) != t)
    return texts, seqs, bad

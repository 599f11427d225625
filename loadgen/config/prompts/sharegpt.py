"""``sharegpt``: conversations from a ShareGPT JSON file, filtered as ``vllm bench serve``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from loadgen.config.prompts.base import Prompt, PromptSet, PromptSource, cycle_order, register
from loadgen.config.prompts.tokenizers import Tokenizer, encode_batch, num_special_tokens_to_add
from loadgen.errors import SpecloadError

if TYPE_CHECKING:
    from loadgen.config.scenario import PromptSpec

# vllm's ShareGPT filter (benchmarks/datasets.py is_valid_sequence), kept so our sharegpt
# prompts are the ones ``vllm bench serve`` would pick.
SHAREGPT_MIN_LEN = 4
SHAREGPT_MAX_PROMPT = 1024
SHAREGPT_MAX_TOTAL = 2048


@register
class SharegptSource(PromptSource):
    """``prompts.path``: a ShareGPT JSON list; each conversation's first human turn is a
    prompt, and the reply's token count its output length. Its human turns, in order, are
    the conversation a multi-turn replay sends."""

    name = "sharegpt"
    needs_path = True

    @classmethod
    def load(cls, spec: PromptSpec, n: int, *, seed: int, tokenizer: Tokenizer | None) -> PromptSet:
        assert spec.path is not None
        return sharegpt_prompts(Path(spec.path), n, seed=seed, tokenizer=tokenizer)


def sharegpt_prompts(
    path: Path, n: int, *, seed: int, tokenizer: Tokenizer | None, batch: int = 256
) -> PromptSet:
    """First human turn as prompt; the reply's token count as output_tokens (as vllm).

    Entries are visited in a seeded order and, with a tokenizer, filtered as vllm does
    (prompt and reply >= 4 tokens, prompt <= 1024, both <= 2048). Only entries visited are
    tokenized, so a 90k-conversation file costs about ``n`` round trips, not 90k.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise SpecloadError(f"prompts.path: cannot read {path}: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SpecloadError(f"prompts.path: {path}: not a ShareGPT JSON file: {e}") from None
    if not isinstance(data, list):
        raise SpecloadError(f"prompts.path: {path}: ShareGPT file must be a JSON list")
    pairs: list[tuple[str, str | None]] = []
    convs: list[tuple[tuple[str, ...], str]] = []  # (human turns, row label), as pairs
    skipped = 0
    for k, entry in enumerate(data, start=1):
        pair = _sharegpt_pair(entry)
        if pair is None:
            skipped += 1
        else:
            pairs.append(pair)
            convs.append((human_turns(entry), _row_label(path, k, entry)))
    if not pairs:
        raise SpecloadError(f"prompts.path: {path}: no conversation with a human turn")
    rng = np.random.default_rng(seed)
    visit = [int(i) for i in rng.permutation(len(pairs))]
    if tokenizer is None:
        chosen = [_prompt(pairs[i][0], None, None, convs[i]) for i in visit[:n]]
        return _cycle_prompts(chosen, n, rng, SharegptSource.name, skipped)
    extra = num_special_tokens_to_add(tokenizer)
    chosen = []
    for start in range(0, len(visit), batch):
        idx = visit[start : start + batch]
        prompts = encode_batch(tokenizer, [pairs[i][0] for i in idx])
        replies = encode_batch(tokenizer, [pairs[i][1] or "" for i in idx])
        for i, p_ids, r_ids in zip(idx, prompts, replies, strict=True):
            p_len, r_len = len(p_ids) + extra, len(r_ids)
            if (
                p_len < SHAREGPT_MIN_LEN
                or r_len < SHAREGPT_MIN_LEN
                or p_len > SHAREGPT_MAX_PROMPT
                or p_len + r_len > SHAREGPT_MAX_TOTAL
            ):
                skipped += 1
                continue
            chosen.append(_prompt(pairs[i][0], p_len, r_len, convs[i]))
        if len(chosen) >= n:
            break
    if not chosen:
        raise SpecloadError(f"prompts.path: {path}: no conversation passed vllm's length filter")
    return _cycle_prompts(chosen[:n], n, rng, SharegptSource.name, skipped)


def _sharegpt_pair(entry: Any) -> tuple[str, str | None] | None:
    conv = entry.get("conversations") if isinstance(entry, dict) else None
    if not isinstance(conv, list):
        return None
    for k, turn in enumerate(conv):
        if not isinstance(turn, dict) or turn.get("from") not in ("human", "user"):
            continue
        text = turn.get("value")
        if not isinstance(text, str) or not text.strip():
            return None
        nxt = conv[k + 1] if k + 1 < len(conv) else None
        reply = None
        if isinstance(nxt, dict) and nxt.get("from") in ("gpt", "assistant", "chatgpt"):
            value = nxt.get("value")
            reply = value if isinstance(value, str) else None
        return text, reply
    return None


def _prompt(
    text: str, p_len: int | None, r_len: int | None, conv: tuple[tuple[str, ...], str]
) -> Prompt:
    turns, label = conv
    return Prompt(text, p_len, r_len, row=label, turns=turns if len(turns) > 1 else ())


def human_turns(entry: dict[str, Any]) -> tuple[str, ...]:
    """A conversation's human turns in order, from the first; it stops at the first turn
    that is not a non-empty string (what follows would answer a turn never sent)."""
    out: list[str] = []
    for turn in entry["conversations"]:
        if not isinstance(turn, dict) or turn.get("from") not in ("human", "user"):
            continue
        text = turn.get("value")
        if not isinstance(text, str) or not text.strip():
            break
        out.append(text)
    return tuple(out)


def _row_label(path: Path, k: int, entry: dict[str, Any]) -> str:
    ident = entry.get("id")
    label = f"{path.name}:{k}"
    return f"{label} ({ident})" if isinstance(ident, (str, int)) else label


def _cycle_prompts(
    chosen: list[Prompt], n: int, rng: np.random.Generator, source: str, skipped: int
) -> PromptSet:
    out = list(chosen)
    if len(out) < n:
        out.extend(chosen[i] for i in cycle_order(len(chosen), n - len(out), rng))
    return PromptSet(out, source=source, skipped=skipped, distinct=len(chosen))

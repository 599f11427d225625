"""The mock's tokenizer: one token per whitespace word.

Cheap and deterministic, and invertible for the mock's own output: output token ``i`` is
the word ``w<i>``, which tokenizes back to ``i``, so a client can check what it counted.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from typing import Any

_UNKNOWN_WORD_BASE = 1_000_000  # unknown words hash into [1e6, 2e6): never clash with small wN
_WORD_RE = re.compile(r"w(0|[1-9][0-9]{0,8})")


def word_to_token(word: str) -> int:
    """``wN`` -> N; any other word -> a stable hash in [1e6, 2e6)."""
    m = _WORD_RE.fullmatch(word)
    if m:
        return int(m.group(1))
    return _UNKNOWN_WORD_BASE + zlib.crc32(word.encode()) % _UNKNOWN_WORD_BASE


def tokenize(text: str) -> list[int]:
    """Whitespace words, one token each: cheap, deterministic, invertible for ``wN``."""
    return [word_to_token(w) for w in text.split()]


def detokenize(tokens: Sequence[int]) -> str:
    return " ".join(f"w{t}" for t in tokens)


def content_text(content: Any) -> str:
    """A chat message's text: the string, or the ``text`` of each part of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def prompt_token_count(body: dict[str, Any], chat: bool) -> int:
    """Prompt tokens = words in the prompt (or in all message contents), or len(token ids)."""
    if chat:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise ValueError("'messages' must be a non-empty list")
        return sum(len(content_text(m.get("content")).split()) for m in msgs if isinstance(m, dict))
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return len(prompt.split())
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        return len(prompt)
    raise ValueError("'prompt' must be a string or a list of token ids (one prompt)")


def output_text(start: int, n: int) -> str:
    """Text of output tokens ``start .. start+n-1``: `` w<i>`` each, so it tokenizes back."""
    return "".join([f" w{i}" for i in range(start, start + n)])

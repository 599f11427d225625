"""``jsonl``: a prompt file, one JSON object per line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadgen.config.prompts.base import PromptSet, PromptSource, finish_prompts, register
from loadgen.config.prompts.tokenizers import Tokenizer
from loadgen.errors import SpecloadError

if TYPE_CHECKING:
    from loadgen.config.scenario import PromptSpec


@register
class JsonlSource(PromptSource):
    """``prompts.path``: each line ``{"prompt": ...}`` (or ``"text"``) with an optional
    ``output_tokens`` (or ``max_tokens``); ``skip_bad_lines`` drops and counts bad lines."""

    name = "jsonl"
    needs_path = True

    @classmethod
    def load(cls, spec: PromptSpec, n: int, *, seed: int, tokenizer: Tokenizer | None) -> PromptSet:
        assert spec.path is not None
        items, skipped = read_jsonl(Path(spec.path), skip_bad_lines=spec.skip_bad_lines)
        return finish_prompts(items, n, seed, tokenizer, cls.name, skipped)


def _positive_int(obj: dict[str, Any], *keys: str) -> int | None:
    for k in keys:
        if k in obj and obj[k] is not None:
            v = obj[k]
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"'{k}' must be a positive integer, got {v!r}")
            return v
    return None


def read_jsonl(path: Path, *, skip_bad_lines: bool) -> tuple[list[tuple[str, int | None]], int]:
    """(text, output_tokens) per line and how many bad lines were skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise SpecloadError(f"prompts.path: cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise SpecloadError(f"prompts.path: {path}: not UTF-8 text") from None
    items: list[tuple[str, int | None]] = []
    skipped = 0
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
            if not isinstance(obj, dict):
                raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
            text = obj.get("prompt", obj.get("text"))
            if not isinstance(text, str) or not text.strip():
                raise ValueError("needs a non-empty string 'prompt' or 'text'")
            items.append((text, _positive_int(obj, "output_tokens", "max_tokens")))
        except (json.JSONDecodeError, ValueError) as e:
            if skip_bad_lines:
                skipped += 1
                continue
            msg = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
            raise SpecloadError(
                f"{path}:{lineno}: {msg} (set prompts.skip_bad_lines to skip such lines)"
            ) from None
    return items, skipped

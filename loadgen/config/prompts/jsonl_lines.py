"""JSON Lines prompt files: the reader that the ``jsonl`` and ``builtin`` sources share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loadgen.errors import SpecloadError


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

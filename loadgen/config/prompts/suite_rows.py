"""Prompt suites (SpecBench, MT-Bench, HumanEval, ...): the base their sources share.

Each suite source (one module each) subclasses :class:`SuiteSource` and only says what
differs: its name, the file it looks for, where the suite is got, and how one row of its
format becomes a :class:`SuiteRow` (its user turns, category and id). The base reads the
rows, from a local file or directory (``prompts.path``) or through the Hugging
Face ``datasets`` library (``prompts.dataset``: a hub name or a local dataset directory; an
optional extra, imported only then), filters categories, and draws the prompts in the seeded
order every file source uses.

Bad rows: the first one is an error naming the file and row (``question.jsonl:7: ...``),
or, with ``prompts.skip_bad_lines``, it is skipped and counted (run.json's
``skipped_bad_lines``). Either way nothing is sent before all rows were read.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from loadgen.config.prompts.base import Prompt, PromptSet, PromptSource, seeded_draw
from loadgen.config.prompts.tokenizers import Tokenizer
from loadgen.errors import SpecloadError, one_line

if TYPE_CHECKING:
    from loadgen.config.scenario import PromptSpec


@dataclass(frozen=True)
class SuiteRow:
    """One row of a suite: a conversation's user turns, in order."""

    turns: tuple[str, ...]
    category: str | None = None
    ident: str | None = None  # the row's own id (question_id, task_id), when it has one


# --- row helpers the formats share -------------------------------------------------------


def text_field(obj: dict[str, Any], *keys: str) -> str:
    """The first of ``keys`` holding a non-empty string; ValueError naming them otherwise."""
    for k in keys:
        v = obj.get(k)
        if isinstance(v, str) and v.strip():
            return v
    names = " or ".join(f"'{k}'" for k in keys)
    raise ValueError(f"needs a non-empty string {names}")


def turns_field(obj: dict[str, Any], *keys: str) -> tuple[str, ...]:
    """A non-empty list of non-empty strings under the first of ``keys`` present."""
    for k in keys:
        if k in obj:
            v = obj[k]
            if isinstance(v, str):
                v = [v]
            if not isinstance(v, list) or not v:
                raise ValueError(f"'{k}' must be a non-empty list of strings")
            for i, t in enumerate(v):
                if not isinstance(t, str) or not t.strip():
                    raise ValueError(f"'{k}'[{i}] must be a non-empty string")
            return tuple(v)
    raise ValueError(f"needs {' or '.join(repr(k) for k in keys)} (a list of user turns)")


def optional_str(obj: dict[str, Any], *keys: str) -> str | None:
    """The first of ``keys`` present and not null, as a string (ids may be numbers)."""
    for k in keys:
        v = obj.get(k)
        if v is not None and not isinstance(v, (dict, list)):
            return str(v)
    return None


def user_turns(messages: Any, key: str = "messages") -> tuple[str, ...]:
    """The user turns of an OpenAI-style message list (``role``/``content``)."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"'{key}' must be a non-empty list of messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"'{key}'[{i}] must be an object with 'role' and 'content'")
        if m.get("role") in ("user", "human"):
            c = m.get("content")
            if not isinstance(c, str) or not c.strip():
                raise ValueError(f"'{key}'[{i}]: a user message needs non-empty 'content'")
            out.append(c)
    if not out:
        raise ValueError(f"'{key}' has no user message")
    return tuple(out)


# --- reading -------------------------------------------------------------------------------


class SuiteSource(PromptSource):
    """A prompt suite. A subclass sets ``name``, ``files`` and ``download`` (and ``split``
    or ``subset`` where its defaults differ) and implements :meth:`to_row`; reading,
    filtering and drawing are done here, the same for every suite."""

    needs_data = True
    # File names looked for in a directory ("{subset}" filled in).
    files: ClassVar[tuple[str, ...]]
    # How to get the suite, what the missing-data error tells the user: "{path}" is the
    # file expected and "{dir}" its directory.
    download: ClassVar[str]
    # The datasets split when prompts.split is not given, and the datasets config / file
    # subset when prompts.subset is not.
    split: ClassVar[str] = "train"
    subset: ClassVar[str | None] = None

    @staticmethod
    def to_row(obj: dict[str, Any]) -> SuiteRow:
        """One row of the suite's format (a JSON object); ValueError saying what is wrong."""
        raise NotImplementedError

    @classmethod
    def load(cls, spec: PromptSpec, n: int, *, seed: int, tokenizer: Tokenizer | None) -> PromptSet:
        """``n`` prompts from the suite ``spec`` points at (see the module docstring)."""
        if spec.dataset is not None:
            split = spec.split or cls.split
            rows: Iterator[tuple[str, str, Any]] = dataset_rows(
                spec.dataset, split, spec.subset or cls.subset, cls
            )
        else:
            if spec.path is None:
                raise SpecloadError(f"prompts.path: source '{cls.name}' needs a path or a dataset")
            rows = file_rows(suite_file(Path(spec.path), cls, spec.subset or cls.subset))
        items: list[tuple[SuiteRow, str]] = []
        skipped = 0
        for where, label, obj in rows:
            try:
                if isinstance(obj, _NotJson):
                    raise ValueError(obj.msg)
                if not isinstance(obj, dict):
                    raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
                items.append((cls.to_row(obj), label))
            except ValueError as e:
                if spec.skip_bad_lines:
                    skipped += 1
                    continue
                raise SpecloadError(
                    f"{where}: {e} (set prompts.skip_bad_lines to skip such rows)"
                ) from None
        if spec.categories:
            seen = sorted({r.category or "" for r, _ in items})
            items = [(r, w) for r, w in items if r.category in spec.categories]
            if not items:
                raise SpecloadError(
                    f"prompts.categories: no row of {cls.name} in {', '.join(spec.categories)} "
                    f"(its categories: {', '.join(seen) or 'none'})"
                )
        if not items:
            raise SpecloadError(f"prompts.path: {cls.name}: no usable rows")
        # Seeded cycled order; only the rows drawn are tokenized.
        order, counts = seeded_draw(lambda i: items[i][0].turns[0], len(items), n, seed, tokenizer)
        made = {i: _prompt(*items[i], count) for i, count in counts.items()}
        return PromptSet(
            [made[i] for i in order], source=cls.name, skipped=skipped, distinct=len(made)
        )

    @classmethod
    def check(cls, spec: PromptSpec) -> None:
        """A local suite's file is there (the datasets path is checked when it loads)."""
        if spec.path is not None and spec.dataset is None:
            suite_file(Path(spec.path), cls, spec.subset or cls.subset)


def _prompt(row: SuiteRow, label: str, input_tokens: int | None) -> Prompt:
    """A drawn row as the prompt it sends: its first turn, the others for a multi-turn replay."""
    return Prompt(
        row.turns[0],
        input_tokens,
        None,
        category=row.category,
        row=f"{label} ({row.ident})" if row.ident else label,
        turns=row.turns if len(row.turns) > 1 else (),
    )


def suite_file(path: Path, suite: type[SuiteSource], subset: str | None) -> Path:
    """``path`` itself, or the suite's file inside the directory ``path``; a missing one is
    an error that says how to get it."""
    names = [f.format(subset=subset or "") for f in suite.files]
    if path.is_dir():
        for name in names:
            if (path / name).is_file():
                return path / name
        how = suite.download.format(path=path / names[0], dir=path)
        raise SpecloadError(
            f"prompts.path: no {' or '.join(names)} in {path}: download it with {how}"
        )
    if not path.exists():
        how = suite.download.format(path=path, dir=path.parent)
        raise SpecloadError(
            f"prompts.path: {path} not found: download it with {how} (expected file {names[0]})"
        )
    return path


def file_rows(path: Path) -> Iterator[tuple[str, str, Any]]:
    """(where for errors, label for records, parsed row) of a JSON Lines file (``.gz`` too),
    or of a JSON file holding a list of rows. A line that is not JSON comes as a
    :class:`_NotJson`, which the caller reports or skips like any bad row."""
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
        text = raw.decode("utf-8")
    except OSError as e:
        raise SpecloadError(f"prompts.path: cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise SpecloadError(f"prompts.path: {path}: not UTF-8 text") from None
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecloadError(f"prompts.path: {path}: not a JSON list: {e}") from None
        for i, obj in enumerate(data, start=1):
            yield f"{path}: row {i}", f"{path.name}:{i}", obj
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj: Any = json.loads(line)
        except json.JSONDecodeError as e:
            obj = _NotJson(e.msg)
        yield f"{path}:{lineno}", f"{path.name}:{lineno}", obj


@dataclass(frozen=True)
class _NotJson:
    """A line that was not JSON: the caller reports (or skips) it like any bad row."""

    msg: str


def dataset_rows(
    name: str, split: str, subset: str | None, suite: type[SuiteSource]
) -> Iterator[tuple[str, str, Any]]:
    """Rows through the Hugging Face ``datasets`` library: a hub name (honours
    ``HF_DATASETS_OFFLINE=1`` and the local cache), a directory written by
    ``save_to_disk``, or a directory of data files ``load_dataset`` can read."""
    try:
        import datasets  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError:
        raise SpecloadError(
            "prompts.dataset: needs the Hugging Face 'datasets' package "
            "(pip install 'specload[datasets]'), or give prompts.path a local file"
        ) from None
    p = Path(name)
    try:
        if p.is_dir() and any((p / f).is_file() for f in ("dataset_dict.json", "state.json")):
            ds: Any = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split]
        else:
            ds = datasets.load_dataset(name, subset, split=split)
    except Exception as e:  # the library's many failures (offline, no such split, ...)
        how = suite.download.format(path=f"<dir>/{suite.files[0]}", dir="<dir>")
        raise SpecloadError(
            f"prompts.dataset: cannot load '{name}' split '{split}': "
            f"{type(e).__name__}: {one_line(e, 200)} (or download it with {how})"
        ) from None
    label = p.name if p.is_dir() else name
    for i, obj in enumerate(ds, start=1):
        yield f"{name} [{split}] row {i}", f"{label}[{split}]:{i}", obj

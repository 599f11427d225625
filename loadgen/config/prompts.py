"""Prompt sources -> a list of prompts, built before the load starts (so all sync).

Token counts: ``Prompt.input_tokens`` is what a completions request costs the server,
special tokens included (``len(encode(text)) + num_special_tokens_to_add``): for ``random``
it therefore equals ``prompts.input_tokens``, which is what the server's usage reports.

Order: every file or built-in source is drawn in a seeded random permutation; when fewer
prompts than requests exist the source is cycled, each pass a fresh permutation from the
same generator, so one seed gives one sequence.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from loadgen.errors import SpecloadError

if TYPE_CHECKING:
    import httpx

    from loadgen.config.scenario import PromptSpec

BUILTIN_SETS = ("general", "copy-heavy")
# vllm's ShareGPT filter (benchmarks/datasets.py is_valid_sequence), kept so our sharegpt
# prompts are the ones ``vllm bench serve`` would pick.
SHAREGPT_MIN_LEN = 4
SHAREGPT_MAX_PROMPT = 1024
SHAREGPT_MAX_TOTAL = 2048
_FIXUP_RETRIES = 10  # as vllm's gen_prompt_decode_to_target_len


@dataclass(frozen=True)
class Prompt:
    text: str  # the prompt (for chat it becomes one user message)
    input_tokens: int | None  # counted by the tokenizer when known (specials included)
    output_tokens: int | None = None  # per-prompt output length override, else scenario's


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


# --- tokenizers ---------------------------------------------------------------------------


@runtime_checkable
class Tokenizer(Protocol):
    """What prompt building needs. ``encode`` never adds special tokens."""

    vocab_size: int
    special_ids: set[int]

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def encode_batch(tok: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Batch encode when the tokenizer can (a server: concurrent round trips)."""
    fn = getattr(tok, "encode_batch", None)
    return fn(texts) if fn else [tok.encode(t) for t in texts]


def decode_batch(tok: Tokenizer, seqs: Sequence[Sequence[int]]) -> list[str]:
    fn = getattr(tok, "decode_batch", None)
    return fn(seqs) if fn else [tok.decode(s) for s in seqs]


def num_special_tokens_to_add(tok: Tokenizer) -> int:
    """Tokens the server adds to a completions prompt (e.g. BOS); 0 when unknown."""
    fn = getattr(tok, "num_special_tokens_to_add", None)
    return int(fn()) if fn else 0


class LocalTokenizer:
    """A tokenizer directory's ``tokenizer.json``, via the ``tokenizers`` package.

    ``vocab_size`` is the model vocabulary without added tokens (as HF's ``vocab_size``);
    ``special_ids`` are the added tokens marked special plus the named special tokens of
    ``tokenizer_config.json`` / ``special_tokens_map.json``. Decoding keeps special tokens,
    as the server's /detokenize does.
    """

    def __init__(self, directory: str | Path) -> None:
        d = Path(directory)
        path = d / "tokenizer.json" if d.is_dir() else d
        if not path.is_file():
            raise SpecloadError(f"prompts.tokenizer: no tokenizer.json in {directory}")
        try:
            from tokenizers import Tokenizer as HFTokenizer
        except ImportError:  # pragma: no cover - installed with vllm
            raise SpecloadError(
                "prompts.tokenizer: the 'tokenizers' package is not installed"
            ) from None
        try:
            self._tok = HFTokenizer.from_file(str(path))
        except Exception as e:
            raise SpecloadError(f"prompts.tokenizer: cannot load {path}: {e}") from None
        self.vocab_size: int = self._tok.get_vocab_size(with_added_tokens=False)
        self.special_ids: set[int] = self._read_special_ids(path)
        self._n_special: int | None = None

    def _read_special_ids(self, path: Path) -> set[int]:
        ids: set[int] = set()
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            doc = {}
        for tok in doc.get("added_tokens", []) or []:
            if tok.get("special") and isinstance(tok.get("id"), int):
                ids.add(tok["id"])
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            try:
                cfg = json.loads((path.parent / name).read_text())
            except (OSError, json.JSONDecodeError):
                continue
            for key, val in cfg.items():
                if not key.endswith("_token") and key != "additional_special_tokens":
                    continue
                for v in val if isinstance(val, list) else [val]:
                    content = v.get("content") if isinstance(v, dict) else v
                    if (
                        isinstance(content, str)
                        and (i := self._tok.token_to_id(content)) is not None
                    ):
                        ids.add(i)
        return ids

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def decode_batch(self, seqs: Sequence[Sequence[int]]) -> list[str]:
        return self._tok.decode_batch([list(s) for s in seqs], skip_special_tokens=False)

    def num_special_tokens_to_add(self) -> int:
        if self._n_special is None:
            with_sp = len(self._tok.encode("a", add_special_tokens=True).ids)
            self._n_special = max(0, with_sp - len(self.encode("a")))
        return self._n_special


# Token strings that look special: <s>, </s>, <|im_end|>, [CLS]... Excluding a regular
# token by mistake costs nothing (it is just never sampled).
_SPECIAL_LOOKING = (
    "<s>", "</s>", "<unk>", "<pad>", "<mask>", "<bos>", "<eos>", "<|endoftext|>",
    "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>",
    "<|start_header_id|>", "<|end_header_id|>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|pad|>", "<start_of_turn>", "<end_of_turn>",
    "[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]", "[INST]", "[/INST]",
)  # fmt: skip
_SPECIAL_RE = re.compile(r"^(<\|[^|<>\s]+\|>|\[[A-Z_/]+\]|</?[a-z_]+>)$")


class ServerTokenizer:
    """The served model's tokenizer over vLLM's /tokenize and /detokenize.

    vLLM has no endpoint that gives the vocabulary, so unless given, ``vocab_size`` is found
    by bisection on /detokenize: decoding a window of ids from ``m`` yields text only while
    ``m`` is at or below the last id the tokenizer knows. ``special_ids`` come from
    /tokenizer_info when the server enables it (all added tokens, conservatively), else from
    tokenizing well-known special strings. Batches run as concurrent round trips.
    """

    def __init__(
        self,
        base_url: str,
        model: str | None,
        client: httpx.Client,
        *,
        vocab_size: int | None = None,
        special_ids: set[int] | None = None,
        max_workers: int = 16,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        if self.base_url.endswith("/v1"):
            self.base_url = self.base_url[: -len("/v1")]
        self.model = model
        self._client = client
        self._vocab_size = vocab_size
        self._special_ids = special_ids
        self._n_special: int | None = None
        self._max_workers = max_workers

    # -- raw calls
    def _post(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        if self.model is not None:
            body = {"model": self.model, **body}
        url = f"{self.base_url}/{endpoint}"
        try:
            r = self._client.post(url, json=body)
        except httpx.HTTPError as e:
            raise SpecloadError(f"--base-url: {url}: {type(e).__name__}: {e}") from None
        if r.status_code in (404, 405):
            raise SpecloadError(
                f"--base-url: server has no /{endpoint} endpoint (HTTP {r.status_code}); "
                "set prompts.tokenizer to a local tokenizer directory"
            )
        if r.status_code != 200:
            raise SpecloadError(f"--base-url: /{endpoint}: HTTP {r.status_code}: {r.text[:200]}")
        return r.json()

    def _tokenize(self, text: str, add_special_tokens: bool = False) -> list[int]:
        out = self._post("tokenize", {"prompt": text, "add_special_tokens": add_special_tokens})
        return list(out["tokens"])

    def encode(self, text: str) -> list[int]:
        return self._tokenize(text)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._post("detokenize", {"tokens": [int(i) for i in ids]})["prompt"])

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._map(self.encode, texts)

    def decode_batch(self, seqs: Sequence[Sequence[int]]) -> list[str]:
        return self._map(self.decode, seqs)

    def _map(self, fn: Any, items: Sequence[Any]) -> list[Any]:
        if len(items) <= 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(max_workers=min(self._max_workers, len(items))) as ex:
            return list(ex.map(fn, items))

    def num_special_tokens_to_add(self) -> int:
        if self._n_special is None:
            with_sp = len(self._tokenize("a", add_special_tokens=True))
            self._n_special = max(0, with_sp - len(self._tokenize("a")))
        return self._n_special

    # -- discovered properties
    @property
    def vocab_size(self) -> int:
        if self._vocab_size is None:
            self._vocab_size = self._find_vocab_size()
        return self._vocab_size

    @property
    def special_ids(self) -> set[int]:
        if self._special_ids is None:
            self._special_ids = self._find_special_ids()
        return self._special_ids

    def _decodes(self, start: int, window: int = 4096) -> bool:
        """Does anything in ids [start, start + window) decode to text?

        HF tokenizers skip unknown ids silently; a server that rejects them instead fails the
        whole window, so on an error retry ``start`` alone to keep the predicate monotone.
        """
        import httpx

        url = f"{self.base_url}/detokenize"
        for ids in (list(range(start, start + window)), [start]):
            body: dict[str, Any] = {"tokens": ids}
            if self.model is not None:
                body["model"] = self.model
            try:
                r = self._client.post(url, json=body)
            except httpx.HTTPError as e:
                raise SpecloadError(f"--base-url: {url}: {type(e).__name__}: {e}") from None
            if r.status_code in (404, 405):
                raise SpecloadError(
                    f"--base-url: server has no /detokenize endpoint (HTTP {r.status_code})"
                )
            if r.status_code == 200:
                return bool(r.json().get("prompt"))
        return False

    def _find_vocab_size(self) -> int:
        if not self._decodes(0):
            raise SpecloadError("--base-url: /detokenize returned nothing for ids 0..4095")
        lo, hi = 0, 1 << 10  # invariant: _decodes(lo) is True, find hi with False
        while self._decodes(hi):
            lo, hi = hi, hi * 2
            if hi > 1 << 26:
                raise SpecloadError("--base-url: cannot find the vocabulary size via /detokenize")
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self._decodes(mid) else (lo, mid)
        return lo + 1

    def _find_special_ids(self) -> set[int]:
        ids: set[int] = set()
        strings: set[str] = set(_SPECIAL_LOOKING)
        try:
            r = self._client.get(f"{self.base_url}/tokenizer_info")
            info = r.json() if r.status_code == 200 else {}
        except Exception:
            info = {}
        for key, val in info.get("added_tokens_decoder", {}).items():
            if str(key).isdigit():
                ids.add(int(key))
            if isinstance(val, str):
                strings.add(val)
        for key, val in info.items():
            if key.endswith("_token") and isinstance(val, str):
                strings.add(val)
        for s, toks in zip(sorted(strings), self.encode_batch(sorted(strings)), strict=True):
            if len(toks) == 1 and (_SPECIAL_RE.match(s) or s in info.values()):
                ids.add(toks[0])
        return ids


# --- sources ------------------------------------------------------------------------------


def load_prompts(spec: PromptSpec, n: int, *, seed: int, tokenizer: Tokenizer | None) -> PromptSet:
    """``n`` prompts from ``spec`` (cycled when the source has fewer), one per request."""
    if n <= 0:
        raise SpecloadError(f"num_requests: need at least one prompt, got {n}")
    src = spec.source
    if src == "random":
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
    if src == "base_prompt":
        count = _count(tokenizer, [spec.base_prompt])[0]
        p = Prompt(spec.base_prompt, count)
        return PromptSet([p] * n, source=src, distinct=1)
    if src == "jsonl":
        assert spec.path is not None
        items, skipped = read_jsonl(Path(spec.path), skip_bad_lines=spec.skip_bad_lines)
        return _finish(items, n, seed, tokenizer, src, skipped)
    if src == "builtin":
        items, _ = read_jsonl(builtin_path(spec.set), skip_bad_lines=False)
        return _finish(items, n, seed, tokenizer, f"builtin:{spec.set}", 0)
    if src == "sharegpt":
        assert spec.path is not None
        return sharegpt_prompts(Path(spec.path), n, seed=seed, tokenizer=tokenizer)
    raise SpecloadError(f"prompts.source: unknown source '{src}'")


def _count(tok: Tokenizer | None, texts: Sequence[str]) -> list[int | None]:
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


def _finish(
    items: list[tuple[str, int | None]],
    n: int,
    seed: int,
    tok: Tokenizer | None,
    source: str,
    skipped: int,
) -> PromptSet:
    if not items:
        raise SpecloadError(f"prompts.path: {source}: no usable prompts")
    order = cycle_order(len(items), n, np.random.default_rng(seed))
    used = sorted(set(order))
    counts = dict(zip(used, _count(tok, [items[i][0] for i in used]), strict=True))
    made = {i: Prompt(items[i][0], counts[i], items[i][1]) for i in used}
    return PromptSet([made[i] for i in order], source=source, skipped=skipped, distinct=len(used))


def builtin_path(name: str) -> Path:
    if name not in BUILTIN_SETS:
        raise SpecloadError(f"prompts.set: unknown set '{name}' (known: {', '.join(BUILTIN_SETS)})")
    return Path(str(resources.files("loadgen") / "data" / f"{name}.jsonl"))


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
    skipped = 0
    for entry in data:
        pair = _sharegpt_pair(entry)
        if pair is None:
            skipped += 1
        else:
            pairs.append(pair)
    if not pairs:
        raise SpecloadError(f"prompts.path: {path}: no conversation with a human turn")
    rng = np.random.default_rng(seed)
    visit = [int(i) for i in rng.permutation(len(pairs))]
    if tokenizer is None:
        items = [(pairs[i][0], None) for i in visit]
        chosen = [Prompt(t, None, None) for t, _ in items[:n]]
        return _cycle_prompts(chosen, n, rng, "sharegpt", skipped)
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
            chosen.append(Prompt(pairs[i][0], p_len, r_len))
        if len(chosen) >= n:
            break
    if not chosen:
        raise SpecloadError(f"prompts.path: {path}: no conversation passed vllm's length filter")
    return _cycle_prompts(chosen[:n], n, rng, "sharegpt", skipped)


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


def _cycle_prompts(
    chosen: list[Prompt], n: int, rng: np.random.Generator, source: str, skipped: int
) -> PromptSet:
    out = list(chosen)
    if len(out) < n:
        out.extend(chosen[i] for i in cycle_order(len(chosen), n - len(out), rng))
    return PromptSet(out, source=source, skipped=skipped, distinct=len(chosen))


# --- random -------------------------------------------------------------------------------


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
    return PromptSet(prompts, source="random", mismatched=mismatched + bad, distinct=n)


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

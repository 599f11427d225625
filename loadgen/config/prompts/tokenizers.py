"""Tokenizers prompt building uses: a local ``tokenizer.json`` or the server's endpoints.

Both count and build prompts exactly as the server will see them: ``encode`` never adds
special tokens, and ``num_special_tokens_to_add`` says how many the server adds.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from loadgen.errors import SpecloadError

if TYPE_CHECKING:
    import httpx


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


def daemon_map(fn: Any, items: Sequence[Any], workers: int) -> list[Any]:
    """``[fn(x) for x in items]`` on ``workers`` daemon threads, in order; the first
    exception is raised. Not a ThreadPoolExecutor: the interpreter joins its threads at
    exit, so Ctrl-C during a slow /tokenize would wait for every round trip to finish."""
    out: list[Any] = [None] * len(items)
    errors: list[BaseException] = []
    todo = iter(range(len(items)))
    lock = threading.Lock()

    def work() -> None:
        while not errors:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            try:
                out[i] = fn(items[i])
            except BaseException as e:  # re-raised in the caller
                errors.append(e)

    threads = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


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
        self.path = str(path)  # the run counts output text with it too (RequestSettings)
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

    def token_ends(self, text: str) -> list[int]:
        """Where each of ``text``'s tokens ends (a character offset): how a stream's text
        is split into per-chunk token counts when the server counts only the total."""
        return [end for _, end in self._tok.encode(text, add_special_tokens=False).offsets]

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
    def _send(self, endpoint: str, body: dict[str, Any]) -> httpx.Response:
        """POST to one of the server's tokenizer endpoints; a transport error or a server
        without the endpoint is the user's to fix (another --base-url, a local tokenizer)."""
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
        return r

    def _post(self, endpoint: str, body: dict[str, Any], key: str, kind: type) -> Any:
        """POST and return the answer's ``key``, checked to be a ``kind``: anything else
        (an HTML page, another server's shape) is one line naming the endpoint."""
        r = self._send(endpoint, body)
        if r.status_code != 200:
            raise SpecloadError(f"--base-url: /{endpoint}: HTTP {r.status_code}: {r.text[:200]}")
        try:
            value = r.json()[key]
        except (ValueError, KeyError, TypeError, IndexError):
            value = None
        if not isinstance(value, kind) or (kind is list and not all(type(i) is int for i in value)):
            ctype = r.headers.get("content-type", "?")
            raise SpecloadError(
                f"--base-url: /{endpoint} did not answer as vLLM does (content-type {ctype}, "
                f"no {key!r} {kind.__name__}); set prompts.tokenizer to a local tokenizer "
                "directory"
            )
        return value

    def _tokenize(self, text: str, add_special_tokens: bool = False) -> list[int]:
        body = {"prompt": text, "add_special_tokens": add_special_tokens}
        return list(self._post("tokenize", body, "tokens", list))

    def encode(self, text: str) -> list[int]:
        return self._tokenize(text)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._post("detokenize", {"tokens": [int(i) for i in ids]}, "prompt", str))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._map(self.encode, texts)

    def decode_batch(self, seqs: Sequence[Sequence[int]]) -> list[str]:
        return self._map(self.decode, seqs)

    def _map(self, fn: Any, items: Sequence[Any]) -> list[Any]:
        if len(items) <= 1:
            return [fn(x) for x in items]
        return daemon_map(fn, items, min(self._max_workers, len(items)))

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
        for ids in (list(range(start, start + window)), [start]):
            r = self._send("detokenize", {"tokens": ids})
            if r.status_code == 200:
                try:
                    return bool(r.json().get("prompt"))
                except (ValueError, AttributeError):  # not vLLM's answer: nothing decoded
                    return False
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

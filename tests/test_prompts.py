"""Prompt sources: exact random lengths, file parsing, built-in sets, server tokenizer."""

from __future__ import annotations

import itertools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

from loadgen.config.prompts.base import SOURCES, Prompt, PromptSource, load_prompts, register
from loadgen.config.prompts.random_tokens import random_prompts
from loadgen.config.prompts.tokenizers import LocalTokenizer, ServerTokenizer
from loadgen.config.scenario import PromptSpec
from loadgen.errors import SpecloadError

_WORD_TEXT = (
    "the of and to in is was for on that with as by at from his an were are which this be or "
    "had not but first one their its new after who they have her she two been other when there "
    "all during into school time may years more most only over city some world would where "
    "later up such used many can state about national out known university united then made "
    "garden river lamp coffee table window stone cloud engine paper market winter summer light "
    "green quiet river bridge north south east west small large early late open closed"
)
WORDS = _WORD_TEXT.split()


def _vocab() -> dict[str, int]:
    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    return vocab


@pytest.fixture
def tok_dir(tmp_path: Path) -> Path:
    """A WordLevel tokenizer whose server adds a BOS, like Llama's."""
    tok = Tokenizer(models.WordLevel(_vocab(), unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["[UNK]", "<s>", "</s>"])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    d = tmp_path / "tok"
    d.mkdir()
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    return d


@pytest.fixture
def bpe_dir(tmp_path: Path) -> Path:
    """A BPE tokenizer whose decode does not round-trip (pieces fuse into new merges)."""
    vocab = {"<s>": 0, "a": 1, "b": 2, "c": 3, "ab": 4, "bc": 5, "ca": 6, "abc": 7, "cab": 8}
    merges = [("a", "b"), ("b", "c"), ("c", "a"), ("ab", "c"), ("c", "ab")]
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(["<s>"])
    d = tmp_path / "bpe"
    d.mkdir()
    tok.save(str(d / "tokenizer.json"))
    return d


def test_local_tokenizer_reads_vocab_and_specials(tok_dir):
    t = LocalTokenizer(tok_dir)
    assert t.vocab_size == len(_vocab())
    assert t.special_ids == {0, 1, 2}
    assert t.num_special_tokens_to_add() == 1
    assert t.encode("the river") == [3, _vocab()["river"]]
    assert t.decode(t.encode("the quiet river")) == "the quiet river"


def test_local_tokenizer_missing_dir(tmp_path):
    with pytest.raises(SpecloadError, match=r"prompts\.tokenizer"):
        LocalTokenizer(tmp_path / "nope")


@pytest.mark.parametrize("input_tokens", [2, 7, 64, 300])
def test_random_prompts_exact_length(tok_dir, input_tokens):
    t = LocalTokenizer(tok_dir)
    ps = load_prompts(
        PromptSpec(source="random", input_tokens=input_tokens), 20, seed=1, tokenizer=t
    )
    assert len(ps) == 20 and ps.mismatched == 0
    for p in ps:
        ids = t.encode(p.text)
        assert len(ids) + 1 == input_tokens == p.input_tokens  # + the BOS the server adds
        assert not set(ids) & t.special_ids


def test_random_sampling_modes(tok_dir):
    t = LocalTokenizer(tok_dir)
    allowed = [i for i in range(t.vocab_size) if i not in t.special_ids]
    # vllm's scheme: consecutive non-special ids from a random offset (wrapping)
    for p in random_prompts(t, 10, 30, seed=1):
        pos = [allowed.index(i) for i in t.encode(p.text)]
        assert all((b - a) % len(allowed) == 1 for a, b in itertools.pairwise(pos))
    uni = random_prompts(t, 20, 30, seed=1, sampling="uniform")
    assert len({p.text for p in uni}) == 20 and uni.mismatched == 0
    assert all(p.input_tokens == 30 for p in uni)
    steps = [
        (allowed.index(b) - allowed.index(a)) % len(allowed)
        for p in uni
        for a, b in itertools.pairwise(t.encode(p.text))
    ]
    assert sum(s == 1 for s in steps) < len(steps) / 4
    with pytest.raises(SpecloadError, match=r"prompts\.sampling"):
        random_prompts(t, 1, 30, seed=1, sampling="zipf")


def test_random_prompts_fixup_is_honest(bpe_dir):
    t = LocalTokenizer(bpe_dir)
    assert t.num_special_tokens_to_add() == 0
    ps = random_prompts(t, 40, 50, seed=3)
    exact = 0
    for p in ps:
        assert p.input_tokens == len(t.encode(p.text))  # the count reported is the real one
        exact += p.input_tokens == 50
    assert exact == 40 - ps.mismatched
    assert exact >= 36  # the decode/re-encode loop actually converges on most prompts


def test_random_prompts_deterministic(tok_dir):
    t = LocalTokenizer(tok_dir)
    a = random_prompts(t, 10, 32, seed=5)
    b = random_prompts(t, 10, 32, seed=5)
    c = random_prompts(t, 10, 32, seed=6)
    assert [p.text for p in a] == [p.text for p in b]
    assert [p.text for p in a] != [p.text for p in c]


def test_random_prefix_and_range(tok_dir):
    t = LocalTokenizer(tok_dir)
    ps = random_prompts(t, 30, 41, seed=2, prefix_len=8, range_ratio=0.5)
    first_words = {" ".join(p.text.split()[:8]) for p in ps}
    assert len(first_words) == 1  # one shared prefix
    lens = [p.input_tokens for p in ps]
    # real length 40: uniform in [20, 60] plus the prefix and the BOS
    assert all(8 + 20 + 1 <= n <= 8 + 60 + 1 for n in lens)
    assert len(set(lens)) > 5


def test_random_needs_tokenizer_and_room(tok_dir):
    with pytest.raises(SpecloadError, match=r"prompts\.tokenizer"):
        load_prompts(PromptSpec(source="random"), 3, seed=0, tokenizer=None)
    with pytest.raises(SpecloadError, match=r"prompts\.input_tokens"):
        load_prompts(
            PromptSpec(source="random", input_tokens=1),
            3,
            seed=0,
            tokenizer=LocalTokenizer(tok_dir),
        )


def test_base_prompt(tok_dir):
    spec = PromptSpec(source="base_prompt", base_prompt="the new city")
    ps = load_prompts(spec, 5, seed=0, tokenizer=LocalTokenizer(tok_dir))
    assert [p.text for p in ps] == ["the new city"] * 5
    assert all(p.input_tokens == 4 for p in ps)
    assert load_prompts(spec, 2, seed=0, tokenizer=None)[0] == Prompt("the new city", None)


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jsonl_good_and_cycled(tmp_path, tok_dir):
    p = _write(
        tmp_path / "p.jsonl",
        [
            '{"prompt": "the garden"}',
            "",
            '{"text": "the river", "output_tokens": 12}',
            '{"prompt": "a lamp", "max_tokens": 7}',
        ],
    )
    spec = PromptSpec(source="jsonl", path=str(p))
    ps = load_prompts(spec, 7, seed=4, tokenizer=LocalTokenizer(tok_dir))
    assert len(ps) == 7 and ps.skipped == 0 and ps.distinct == 3
    by_text = {q.text: q for q in ps}
    assert by_text["the river"].output_tokens == 12 and by_text["a lamp"].output_tokens == 7
    assert by_text["the garden"].output_tokens is None
    assert by_text["the garden"].input_tokens == 3
    # cycling: each full pass of 3 uses every prompt once
    texts = [q.text for q in ps]
    assert sorted(texts[:3]) == sorted(texts[3:6]) == sorted(by_text)
    again = load_prompts(spec, 7, seed=4, tokenizer=None)
    assert [q.text for q in again] == texts
    other = load_prompts(spec, 7, seed=5, tokenizer=None)
    assert [q.text for q in other] != texts


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("{not json", "Expecting"),
        ('["a list"]', "JSON object"),
        ('{"output_tokens": 3}', "'prompt' or 'text'"),
        ('{"prompt": "x", "output_tokens": -1}', "positive integer"),
        ('{"prompt": ""}', "non-empty"),
    ],
)
def test_jsonl_bad_line(tmp_path, bad, why):
    p = _write(tmp_path / "bad.jsonl", ['{"prompt": "ok"}', bad, '{"prompt": "fine"}'])
    with pytest.raises(SpecloadError, match=rf"bad\.jsonl:2: .*{why}"):
        load_prompts(PromptSpec(source="jsonl", path=str(p)), 2, seed=0, tokenizer=None)
    ps = load_prompts(
        PromptSpec(source="jsonl", path=str(p), skip_bad_lines=True), 4, seed=0, tokenizer=None
    )
    assert ps.skipped == 1 and {q.text for q in ps} == {"ok", "fine"}


def test_jsonl_missing_or_empty(tmp_path):
    with pytest.raises(SpecloadError, match=r"prompts\.path"):
        load_prompts(
            PromptSpec(source="jsonl", path=str(tmp_path / "x")), 1, seed=0, tokenizer=None
        )
    p = _write(tmp_path / "all_bad.jsonl", ["{", "{"])
    spec = PromptSpec(source="jsonl", path=str(p), skip_bad_lines=True)
    with pytest.raises(SpecloadError, match="no usable prompts"):
        load_prompts(spec, 1, seed=0, tokenizer=None)


def _sharegpt(tmp_path: Path) -> Path:
    data = [
        {
            "id": "a",
            "conversations": [
                {"from": "human", "value": "the river was quiet in winter"},
                {"from": "gpt", "value": "the river is known for its stone bridge"},
            ],
        },
        {"id": "b", "conversations": [{"from": "gpt", "value": "no human turn here"}]},
        {"id": "c", "conversations": [{"from": "human", "value": "the city"}]},  # too short
        {"id": "d"},
        {
            "id": "e",
            "conversations": [
                {"from": "system", "value": "be brief"},
                {"from": "human", "value": "where is the market in the old city"},
                {"from": "gpt", "value": "north of the river"},
                {"from": "human", "value": "and the school"},
            ],
        },
    ]
    p = tmp_path / "sg.json"
    p.write_text(json.dumps(data))
    return p


def test_sharegpt_with_tokenizer(tmp_path, tok_dir):
    t = LocalTokenizer(tok_dir)
    spec = PromptSpec(source="sharegpt", path=str(_sharegpt(tmp_path)))
    ps = load_prompts(spec, 4, seed=0, tokenizer=t)
    by_text = {p.text: p for p in ps}
    assert set(by_text) == {"the river was quiet in winter", "where is the market in the old city"}
    assert by_text["the river was quiet in winter"].output_tokens == 8
    assert by_text["the river was quiet in winter"].input_tokens == 7
    assert by_text["where is the market in the old city"].output_tokens == 4
    assert ps.skipped == 3  # no human turn, no conversations, too short for vllm's filter
    assert len(ps) == 4


def test_sharegpt_without_tokenizer_and_errors(tmp_path):
    spec = PromptSpec(source="sharegpt", path=str(_sharegpt(tmp_path)))
    ps = load_prompts(spec, 3, seed=0, tokenizer=None)
    assert {p.text for p in ps} == {
        "the river was quiet in winter",
        "the city",
        "where is the market in the old city",
    }
    assert all(p.input_tokens is None and p.output_tokens is None for p in ps)
    bad = tmp_path / "bad.json"
    bad.write_text('{"conversations": []}')
    with pytest.raises(SpecloadError, match="JSON list"):
        load_prompts(PromptSpec(source="sharegpt", path=str(bad)), 1, seed=0, tokenizer=None)


@pytest.mark.parametrize("name", ["general", "copy-heavy"])
def test_builtin_sets(name, tok_dir):
    spec = PromptSpec(source="builtin", set=name)
    ps = load_prompts(spec, 100, seed=0, tokenizer=None)
    assert ps.distinct >= 30 and len(ps) == 100
    texts = {p.text for p in ps}
    assert len(texts) >= 30
    for t in texts:
        assert 100 <= len(t.split()) <= 600
    # token counts arrive when a tokenizer is given
    counted = load_prompts(spec, 3, seed=0, tokenizer=LocalTokenizer(tok_dir))
    assert all(p.input_tokens and p.input_tokens > 100 for p in counted)


def test_copy_heavy_prompts_carry_text_to_copy():
    ps = load_prompts(PromptSpec(source="builtin", set="copy-heavy"), 33, seed=0, tokenizer=None)
    with_code = sum("```" in p.text for p in ps.prompts[: ps.distinct])
    assert with_code >= 15


def test_sources_are_registered_and_say_whether_they_need_a_path():
    suites = {"specbench", "mt_bench", "humaneval", "instructcoder", "speed_bench"}
    assert set(SOURCES) == {"random", "base_prompt", "jsonl", "sharegpt", "builtin", *suites}
    assert {n for n, s in SOURCES.items() if s.needs_path} == {"jsonl", "sharegpt"}
    assert {n for n, s in SOURCES.items() if s.needs_data} == suites
    for name in ("jsonl", "sharegpt"):
        with pytest.raises(ValidationError, match=f"prompts.path is required for source '{name}'"):
            PromptSpec(source=name)
    with pytest.raises(
        ValidationError,
        match="Input should be 'base_prompt', 'builtin', 'humaneval', 'instructcoder', 'jsonl', "
        "'mt_bench', 'random', 'sharegpt', 'specbench' or 'speed_bench'",
    ):
        PromptSpec(source="zipf")

    class Again(PromptSource):
        name = "jsonl"

    with pytest.raises(ValueError, match="prompt source 'jsonl' registered twice"):
        register(Again)
    assert SOURCES["jsonl"] is not Again


# --- server tokenizer against a tiny in-test vLLM-like HTTP server -----------------------


class _Handler(BaseHTTPRequestHandler):
    tok: Tokenizer
    strict = False  # reject out-of-vocabulary ids instead of skipping them as HF does

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/tokenize":
            ids = self.tok.encode(body["prompt"], add_special_tokens=body["add_special_tokens"]).ids
            out = {"tokens": ids, "count": len(ids), "max_model_len": 2048}
        elif self.path == "/detokenize":
            if self.strict and max(body["tokens"]) >= self.tok.get_vocab_size():
                self.send_error(400, "Token id is out of vocabulary")
                return
            out = {"prompt": self.tok.decode(body["tokens"], skip_special_tokens=False)}
        else:
            self.send_error(404)
            return
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.send_error(404)


@pytest.fixture(params=[False, True], ids=["hf-skips-oov", "strict-oov"])
def server(request, tok_dir):
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    handler = type("H", (_Handler,), {"tok": tok, "strict": request.param})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler, bind_and_activate=False)
    srv.request_queue_size = 64  # the default backlog of 5 resets concurrent batch calls
    srv.server_bind()
    srv.server_activate()
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_server_tokenizer_matches_local(server, tok_dir):
    local = LocalTokenizer(tok_dir)
    with httpx.Client(timeout=10) as client:
        st = ServerTokenizer(server + "/v1", "m", client)
        assert st.vocab_size == local.vocab_size  # found by bisection on /detokenize
        assert st.special_ids == local.special_ids
        assert st.num_special_tokens_to_add() == 1
        assert st.encode_batch(["the city", "a lamp"]) == local.encode_batch(["the city", "a lamp"])
        a = random_prompts(st, 12, 40, seed=9)
    b = random_prompts(local, 12, 40, seed=9)
    assert [p.text for p in a] == [p.text for p in b]
    assert all(p.input_tokens == 40 for p in a)


def test_server_without_endpoints(server):
    with httpx.Client(timeout=10) as client:
        st = ServerTokenizer(server + "/nope", "m", client)
        with pytest.raises(SpecloadError, match="no /tokenize endpoint"):
            st.encode("the")
        with pytest.raises(SpecloadError, match="no /detokenize endpoint"):
            _ = st.vocab_size

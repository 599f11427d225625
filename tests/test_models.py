"""Dummy model directories: configs transformers can parse, tokenizers that round-trip."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from loadgen.errors import SpecloadError
from server_launch.dummy_models import ALIASES, MODELS, canonical_name, main, make_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model("tiny-llama", tmp_path_factory.mktemp("m") / "tiny")


def test_files_written(tiny: Path) -> None:
    names = {p.name for p in tiny.iterdir()}
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    assert {"special_tokens_map.json", "generation_config.json"} <= names
    cfg = json.loads((tiny / "config.json").read_text())
    assert cfg["vocab_size"] == 4096 and cfg["num_hidden_layers"] == 2
    assert 64 <= cfg["hidden_size"] <= 128


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=3, max_value=4095), min_size=1, max_size=64))
def test_tokenizers_round_trip(tiny: Path, ids: list[int]) -> None:
    tok = Tokenizer.from_file(str(tiny / "tokenizer.json"))
    text = tok.decode(ids)
    assert text == " ".join(f"w{i}" for i in ids)
    assert tok.encode(text, add_special_tokens=False).ids == ids


def test_autotokenizer_loads_and_round_trips(tiny: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny))
    assert len(tok) == 4096
    assert (tok.bos_token_id, tok.eos_token_id) == (0, 1)
    ids = tok.encode("w5 w17 w4000", add_special_tokens=False)
    assert ids == [5, 17, 4000]
    assert tok.decode(ids) == "w5 w17 w4000"
    assert tok.decode([0, 5, 1], skip_special_tokens=True) == "w5"
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "w7 w8"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "w7 w8"


@pytest.mark.parametrize("name", list(MODELS))
def test_every_config_parses(name: str, tmp_path: Path) -> None:
    from transformers import AutoConfig

    d = make_model(name, tmp_path / name)
    cfg = AutoConfig.from_pretrained(str(d))
    want = MODELS[name].config
    assert cfg.vocab_size == want["vocab_size"]
    assert cfg.architectures == want["architectures"]
    assert cfg.num_hidden_layers == want["num_hidden_layers"]
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    assert tok.get_vocab_size() == want["vocab_size"]
    # special token ids agree with the config's
    specials = MODELS[name].specials
    assert specials[MODELS[name].eos] == want["eos_token_id"]


def test_opt_specials_match_config(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(make_model("facebook/opt-125m", tmp_path / "o")))
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (2, 2, 1)
    assert tok.encode("w50271", add_special_tokens=False) == [50271]


def test_eagle3_head_shape() -> None:
    cfg = MODELS["eagle3-llama-3.1-8b"].config
    target = MODELS["llama-3.1-8b"].config
    assert cfg["architectures"] == ["LlamaForCausalLMEagle3"]
    assert cfg["num_hidden_layers"] == 1
    assert cfg["hidden_size"] == target["hidden_size"] == cfg["target_hidden_size"]
    assert cfg["vocab_size"] == target["vocab_size"]
    assert cfg["draft_vocab_size"] < cfg["vocab_size"]


def test_draft_vocab_sizes() -> None:
    v = MODELS["tiny-llama"].config["vocab_size"]
    assert MODELS["tiny-llama-draft"].config["vocab_size"] == v
    assert MODELS["tiny-llama-badvocab"].config["vocab_size"] != v


def test_aliases() -> None:
    assert canonical_name("facebook/opt-125m") == "opt-125m"
    assert canonical_name("meta-llama/Llama-3.1-8B-Instruct") == "llama-3.1-8b"
    assert canonical_name("opt-1.3b") == "opt-1.3b"
    assert canonical_name("gpt2") is None
    assert set(ALIASES.values()) <= set(MODELS)


def test_idempotent_and_refuses_foreign_dirs(tmp_path: Path) -> None:
    d = make_model("tiny-llama-draft", tmp_path / "d")
    mtime = (d / "tokenizer.json").stat().st_mtime_ns
    assert make_model("tiny-llama-draft", d) == d
    assert (d / "tokenizer.json").stat().st_mtime_ns == mtime  # not rewritten
    make_model("tiny-llama", d)  # another dummy: rewritten in place
    assert json.loads((d / "config.json").read_text())["num_hidden_layers"] == 2
    foreign = tmp_path / "real"
    foreign.mkdir()
    (foreign / "model.safetensors").write_text("x")
    with pytest.raises(SpecloadError, match="refusing"):
        make_model("tiny-llama", foreign)
    with pytest.raises(SpecloadError, match="model 'nope': unknown dummy model"):
        make_model("nope", tmp_path / "n")


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "tiny-llama" in out and "facebook/opt-125m" in out
    assert main(["tiny-llama", str(tmp_path / "t")]) == 0
    assert (tmp_path / "t" / "config.json").is_file()
    assert main(["bogus", str(tmp_path / "b")]) == 2
    assert "unknown dummy model" in capsys.readouterr().err

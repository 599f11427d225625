"""Dummy-weight model directories: a config.json and a tokenizer, no weights.

vLLM's ``--load-format dummy`` builds a model from its config alone and fills the weights
with random values, so a benchmark of serving speed needs neither downloads nor disk
space. What it needs is the right *shapes* (they set the FLOPs and the bytes moved per
step) and a tokenizer. The tokenizer here is a word-level one where the word ``wN`` is
token N, so any token id sequence is a text that re-encodes to exactly those ids.

    python -m server_launch.dummy_models NAME DIR     # write one (idempotent)
    python -m server_launch.dummy_models --list       # names and aliases

Only the ``tokenizers`` package is used to build the tokenizer (no transformers import),
so this runs anywhere; the files are the ones ``AutoTokenizer`` and vLLM read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadgen.errors import ArgParser, SpecloadError, run_cli

MARKER = ".specload-dummy"  # present in every directory this module wrote

# Chat template: message contents joined by spaces. The words are ``wN`` tokens, so a chat
# request's prompt tokens are exactly its contents' tokens (no role markup to count).
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['content'] }}"
    "{% if not loop.last %} {% endif %}{% endfor %}"
)


@dataclass(frozen=True)
class ModelSpec:
    """A model shape: HF config fields plus the special tokens' ids in the tokenizer."""

    config: dict[str, Any]
    specials: dict[str, int]  # token text -> id; every other id N is the word "wN"
    bos: str
    eos: str
    unk: str
    pad: str | None = None
    description: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)


_LLAMA_SPECIALS = {"<s>": 0, "</s>": 1, "<unk>": 2}
_LLAMA_BASE: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "bos_token_id": 0,
    "eos_token_id": 1,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "attention_bias": False,
    "mlp_bias": False,
}
# Llama-3.1 shapes, as the GPU reference runs used them (results/gpu-sweep-h100/).
_LLAMA3 = {
    **_LLAMA_BASE,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "torch_dtype": "bfloat16",
    "rope_theta": 500000.0,
}
_LLAMA31_8B = {
    **_LLAMA3,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "tie_word_embeddings": False,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
}
_LLAMA32_1B = {
    **_LLAMA3,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "tie_word_embeddings": True,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
}
# EAGLE-3 head for Llama-3.1-8B, shaped like yuhuili/EAGLE3-LLaMA3.1-Instruct-8B: one
# decoder layer at the target's width, a 32k draft vocabulary mapped into the target's
# through the ``d2t`` buffer. vLLM (llama_eagle3.py) reads ``draft_vocab_size`` (lm_head
# rows), ``target_hidden_size`` (fc input = 3 x target hidden), ``num_hidden_layers``.
# Under --load-format dummy, integer parameters are left as created (zeros), so d2t maps
# draft id i to target id i: valid ids, and synthetic acceptance makes the values moot.
_EAGLE3_8B = {
    **_LLAMA31_8B,
    "architectures": ["LlamaForCausalLMEagle3"],
    "num_hidden_layers": 1,
    "draft_vocab_size": 32000,
    "target_hidden_size": 4096,
    "tie_word_embeddings": False,
}
_TINY = {
    **_LLAMA_BASE,
    "vocab_size": 4096,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 2048,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "float32",
}
# A 2-layer target cannot supply EAGLE-3's default three auxiliary hidden states (layers
# 2, L/2, L-3), so the tiny head names two: vLLM sizes the head's fc layer from this list
# and the target's runner reads it to know which layers to export.
_TINY_EAGLE3 = {
    **_TINY,
    "architectures": ["LlamaForCausalLMEagle3"],
    "num_hidden_layers": 1,
    "draft_vocab_size": 1024,
    "target_hidden_size": _TINY["hidden_size"],
    "tie_word_embeddings": False,
    "eagle_config": {"eagle_aux_hidden_state_layer_ids": [0, 1]},
}
_OPT_SPECIALS = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
_OPT_BASE: dict[str, Any] = {
    "architectures": ["OPTForCausalLM"],
    "model_type": "opt",
    "vocab_size": 50272,
    "max_position_embeddings": 2048,
    "activation_function": "relu",
    "bos_token_id": 2,
    "eos_token_id": 2,
    "pad_token_id": 1,
    "enable_bias": True,
    "layer_norm_elementwise_affine": True,
    "torch_dtype": "float16",
}


def _opt(hidden: int, layers: int, heads: int, proj: int, pre_ln: bool) -> dict[str, Any]:
    return {
        **_OPT_BASE,
        "hidden_size": hidden,
        "ffn_dim": 4 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "word_embed_proj_dim": proj,
        "do_layer_norm_before": pre_ln,
    }


def _llama(cfg: dict[str, Any], desc: str, aliases: tuple[str, ...] = ()) -> ModelSpec:
    return ModelSpec(cfg, _LLAMA_SPECIALS, "<s>", "</s>", "<unk>", None, desc, aliases)


def _opt_spec(cfg: dict[str, Any], desc: str, alias: str) -> ModelSpec:
    return ModelSpec(cfg, _OPT_SPECIALS, "</s>", "</s>", "<unk>", "<pad>", desc, (alias,))


MODELS: dict[str, ModelSpec] = {
    "tiny-llama": _llama(_TINY, "2-layer Llama, hidden 128, vocab 4096 (CPU target)"),
    "tiny-llama-draft": _llama(
        {**_TINY, "num_hidden_layers": 1}, "1-layer tiny Llama, same vocab (CPU draft)"
    ),
    "tiny-llama-badvocab": _llama(
        {**_TINY, "num_hidden_layers": 1, "vocab_size": 2048},
        "1-layer tiny Llama with vocab 2048: a draft vLLM must refuse",
    ),
    "tiny-llama-eagle3": _llama(
        _TINY_EAGLE3, "EAGLE-3 one-layer head for tiny-llama (draft vocab 1024; CPU tests)"
    ),
    "opt-125m": _opt_spec(_opt(768, 12, 12, 768, True), "OPT-125m shapes", "facebook/opt-125m"),
    "opt-350m": _opt_spec(_opt(1024, 24, 16, 512, False), "OPT-350m shapes", "facebook/opt-350m"),
    "opt-1.3b": _opt_spec(_opt(2048, 24, 32, 2048, True), "OPT-1.3b shapes", "facebook/opt-1.3b"),
    "llama-3.1-8b": _llama(
        _LLAMA31_8B,
        "Llama-3.1-8B shapes",
        ("meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-8B-Instruct"),
    ),
    "llama-3.2-1b": _llama(
        _LLAMA32_1B,
        "Llama-3.2-1B shapes",
        ("meta-llama/Llama-3.2-1B", "meta-llama/Llama-3.2-1B-Instruct"),
    ),
    "eagle3-llama-3.1-8b": _llama(
        _EAGLE3_8B,
        "EAGLE-3 one-layer head for Llama-3.1-8B (draft vocab 32000)",
        ("yuhuili/EAGLE3-LLaMA3.1-Instruct-8B",),
    ),
}
ALIASES: dict[str, str] = {a: name for name, spec in MODELS.items() for a in spec.aliases}


def canonical_name(name: str) -> str | None:
    """A known model name (or alias) -> its canonical name; None if unknown."""
    if name in MODELS:
        return name
    return ALIASES.get(name)


def _tokenizer_json(spec: ModelSpec) -> str:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab_size = int(spec.config["vocab_size"])
    taken = set(spec.specials.values())
    vocab = dict(spec.specials)
    vocab.update({f"w{i}": i for i in range(vocab_size) if i not in taken})
    tok = Tokenizer(models.WordLevel(vocab, unk_token=spec.unk))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # WordPiece's decoder joins tokens with single spaces ("##" never occurs here);
    # cleanup off so decode(encode(text)) is exact.
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    ordered = sorted(spec.specials, key=spec.specials.__getitem__)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ordered])
    return tok.to_str(pretty=False)


def _files(spec: ModelSpec) -> dict[str, str]:
    """File name -> contents, everything a dummy model directory holds."""
    # transformers_version: without it, transformers 5 warns that any large-vocab local
    # tokenizer may carry the broken Mistral regex.
    cfg = {"transformers_version": "4.46.0", **spec.config}
    specials = {"bos_token": spec.bos, "eos_token": spec.eos, "unk_token": spec.unk}
    if spec.pad:
        specials["pad_token"] = spec.pad
    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "model_max_length": int(cfg.get("max_position_embeddings", 2048)),
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    gen_cfg = {
        "bos_token_id": cfg.get("bos_token_id"),
        "eos_token_id": cfg.get("eos_token_id"),
        "do_sample": False,
    }
    if "pad_token_id" in cfg:
        gen_cfg["pad_token_id"] = cfg["pad_token_id"]

    def dump(obj: Any) -> str:
        return json.dumps(obj, indent=1, sort_keys=True) + "\n"

    return {
        "config.json": dump(cfg),
        "generation_config.json": dump(gen_cfg),
        "tokenizer_config.json": dump(tok_cfg),
        "special_tokens_map.json": dump(specials),
        "tokenizer.json": _tokenizer_json(spec),
    }


def make_model(name: str, directory: str | Path) -> Path:
    """Write the dummy model ``name`` (or an alias) into ``directory``; return it.

    Idempotent: when the directory already holds this model (same files), nothing is
    written. A directory holding anything else that this module did not write is refused,
    so a mistyped path never overwrites a real checkpoint.
    """
    canon = canonical_name(name)
    if canon is None:
        raise SpecloadError(f"model '{name}': unknown dummy model (known: {', '.join(MODELS)})")
    spec = MODELS[canon]
    d = Path(directory)
    files = _files(spec)
    marker = d / MARKER
    if d.exists() and any(d.iterdir()) and not marker.exists():
        raise SpecloadError(f"{d}: not empty and not a dummy model directory; refusing to write")
    if marker.exists() and all(
        (d / f).is_file() and (d / f).read_text() == text for f, text in files.items()
    ):
        return d
    d.mkdir(parents=True, exist_ok=True)
    for fname, text in files.items():
        tmp = d / f".{fname}.tmp"
        tmp.write_text(text)
        tmp.replace(d / fname)
    marker.write_text(canon + "\n")
    return d


def main(argv: list[str] | None = None) -> int:
    return run_cli("server_launch.dummy_models", _main, argv)


def _main(argv: list[str]) -> int:
    p = ArgParser(
        prog="python -m server_launch.dummy_models",
        description="Write a dummy-weight model directory (config + tokenizer, no weights) "
        "for vLLM --load-format dummy.",
    )
    p.add_argument("name", nargs="?", help="model name or alias (see --list)")
    p.add_argument("dir", nargs="?", help="directory to write")
    p.add_argument("--list", action="store_true", help="list names and aliases")
    args = p.parse_args(argv)
    if args.list:
        for n, s in MODELS.items():
            alias = f" (aliases: {', '.join(s.aliases)})" if s.aliases else ""
            print(f"{n:22s} {s.description}{alias}")
        return 0
    if not args.name or not args.dir:
        p.error("give NAME and DIR, or --list")
    print(make_model(args.name, args.dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

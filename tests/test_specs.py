"""SpecConfig: validation, labels, and the --speculative-config JSON vLLM receives."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, get_args

import pytest

from loadgen.errors import SpecloadError
from server_launch.specs import Method, SpecConfig, expand_specs


def _literal_values(tp: Any) -> list[Any]:
    """Flatten nested Literal[...] aliases into their values."""
    out: list[Any] = []
    for a in get_args(tp):
        out += _literal_values(a) if get_args(a) else [a]
    return out


def test_none_has_no_args_and_label_none() -> None:
    s = SpecConfig(method="none")
    assert s.vllm_args() == []
    assert s.speculative_config() is None
    assert s.label == "none"


def test_ngram_json_and_label() -> None:
    s = SpecConfig(
        method="ngram", num_speculative_tokens=3, prompt_lookup_min=1, prompt_lookup_max=4
    )
    flag, payload = s.vllm_args()
    assert flag == "--speculative-config"
    assert json.loads(payload) == {
        "method": "ngram",
        "num_speculative_tokens": 3,
        "prompt_lookup_min": 1,
        "prompt_lookup_max": 4,
    }
    assert s.label == "ngram-k3"


def test_draft_label_uses_basename_and_synth_suffix() -> None:
    s = SpecConfig(
        method="draft_model",
        model="facebook/opt-125m",
        num_speculative_tokens=2,
        synthetic_acceptance_rates=[0.7, 0.5],
    )
    assert s.label == "draft_model-opt-125m-k2-synth"
    cfg = s.speculative_config()
    assert cfg is not None
    assert cfg["rejection_sample_method"] == "synthetic"  # implied by the rates
    assert cfg["synthetic_acceptance_rates"] == [0.7, 0.5]
    assert (
        SpecConfig(
            method="eagle3",
            model="/x/head/",
            num_speculative_tokens=3,
            synthetic_acceptance_length=2.5,
        ).label
        == "eagle3-k3-synth"
    )


def test_extra_passes_through_but_may_not_shadow() -> None:
    s = SpecConfig(
        method="ngram", num_speculative_tokens=2, extra={"disable_padded_drafter_batch": True}
    )
    assert s.speculative_config()["disable_padded_drafter_batch"] is True  # type: ignore[index]
    with pytest.raises(ValueError, match="method"):
        SpecConfig(method="ngram", num_speculative_tokens=2, extra={"method": "eagle"})


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"method": "ngram"}, "num_speculative_tokens is required"),
        ({"method": "draft_model", "num_speculative_tokens": 3}, "model is required"),
        ({"method": "eagle3", "num_speculative_tokens": 3}, "model is required"),
        ({"method": "ngram", "num_speculative_tokens": 0}, "greater than or equal to 1"),
        ({"method": "none", "num_speculative_tokens": 3}, "takes no other options"),
        ({"method": "ngram", "num_speculative_tokens": 3, "model": "x"}, "takes no model"),
        (
            {
                "method": "ngram",
                "num_speculative_tokens": 3,
                "prompt_lookup_min": 5,
                "prompt_lookup_max": 2,
            },
            "must be <=",
        ),
        (
            {
                "method": "draft_model",
                "model": "m",
                "num_speculative_tokens": 2,
                "synthetic_acceptance_rates": [0.5, 1.5],
            },
            "in \\[0, 1\\]",
        ),
        (
            {
                "method": "draft_model",
                "model": "m",
                "num_speculative_tokens": 2,
                "synthetic_acceptance_rates": [-0.1, -0.2],
            },
            "in \\[0, 1\\]",
        ),
        (
            {
                "method": "draft_model",
                "model": "m",
                "num_speculative_tokens": 2,
                "synthetic_acceptance_rates": [0.3, 0.5],
            },
            "non-increasing",
        ),
        (
            {
                "method": "draft_model",
                "model": "m",
                "num_speculative_tokens": 3,
                "synthetic_acceptance_rates": [0.5, 0.3],
            },
            "need 3 values",
        ),
        (
            {
                "method": "draft_model",
                "model": "m",
                "num_speculative_tokens": 3,
                "rejection_sample_method": "synthetic",
            },
            "exactly one of",
        ),
        (
            {
                "method": "draft_model",
                "model": "m",
                "num_speculative_tokens": 3,
                "synthetic_acceptance_length": 4.5,
            },
            "in \\[1, 4\\]",
        ),
        (
            {
                "method": "draft_model",
                "model": "m",
                "num_speculative_tokens": 3,
                "rejection_sample_method": "standard",
                "synthetic_acceptance_length": 2.0,
            },
            "needs rejection_sample_method",
        ),
        ({"method": "ngram", "num_speculative_tokens": 3, "label": "a/b"}, "label"),
        ({"method": "ngram", "num_speculative_tokens": 3, "typo": 1}, "Extra inputs"),
    ],
)
def test_invalid(fields: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        SpecConfig.model_validate(fields)


def test_expand_cartesian_and_rate_prefix() -> None:
    specs = expand_specs(
        {
            "method": "draft_model",
            "model": ["a/d1", "d2"],
            "num_speculative_tokens": [1, 3, 5],
            "synthetic_acceptance_rates": [0.73, 0.52, 0.35, 0.23, 0.15],
        }
    )
    assert [s.label for s in specs] == [
        f"draft_model-{m}-k{k}-synth" for m in ("d1", "d2") for k in (1, 3, 5)
    ]
    assert specs[1].synthetic_acceptance_rates == [0.73, 0.52, 0.35]
    assert specs[0].synthetic_acceptance_rates == [0.73]


def test_expand_list_of_rate_lists_is_an_axis() -> None:
    specs = expand_specs(
        {
            "method": "draft_model",
            "model": "d",
            "num_speculative_tokens": 1,
            "synthetic_acceptance_rates": [[0.9], [0.5]],
            "label": None,
        }
    )
    assert [s.synthetic_acceptance_rates for s in specs] == [[0.9], [0.5]]


def test_expand_errors_are_one_line_with_source() -> None:
    with pytest.raises(SpecloadError) as e:
        expand_specs(
            {"method": "draft_model", "num_speculative_tokens": [1, 2]}, "m.yaml: specs[1]"
        )
    msg = str(e.value)
    assert msg.startswith("m.yaml: specs[1]") and "model is required" in msg and "\n" not in msg
    with pytest.raises(SpecloadError, match="one label for 2"):
        expand_specs({"method": "ngram", "num_speculative_tokens": [1, 2], "label": "x"})
    with pytest.raises(SpecloadError, match="empty list"):
        expand_specs({"method": "ngram", "num_speculative_tokens": []})


def test_json_keys_are_vllm_speculative_config_fields() -> None:
    """Every key we emit is a field of the installed vLLM's SpeculativeConfig, and vLLM's
    own validator accepts our synthetic rates (run where it needs no model)."""
    from vllm.config.speculative import SpeculativeConfig, SpeculativeMethod

    fields = {f.name for f in dataclasses.fields(SpeculativeConfig)}
    specs = [
        SpecConfig(
            method="ngram", num_speculative_tokens=3, prompt_lookup_min=1, prompt_lookup_max=4
        ),
        SpecConfig(
            method="draft_model",
            model="m",
            num_speculative_tokens=3,
            synthetic_acceptance_rates=[0.73, 0.52, 0.35],
            draft_tensor_parallel_size=1,
        ),
        SpecConfig(
            method="eagle3", model="m", num_speculative_tokens=2, synthetic_acceptance_length=2.0
        ),
    ]
    for s in specs:
        cfg = s.speculative_config()
        assert cfg is not None
        assert set(cfg) <= fields, set(cfg) - fields
    vllm_methods = set(_literal_values(SpeculativeMethod))
    ours = set(get_args(Method)) - {"none"}
    assert ours <= vllm_methods, ours - vllm_methods
    rates = SpeculativeConfig._resolve_synthetic_acceptance_rates(3, [0.73, 0.52, 0.35], None)
    assert rates == [0.73, 0.52, 0.35]

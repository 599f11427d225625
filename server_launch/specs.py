"""Speculative-decoding configurations as data, turned into vLLM's ``--speculative-config``.

vLLM 0.8.3 removed the per-option flags the original experiment used
(``--speculative-model``, ``--ngram-prompt-lookup-max/min``, ``--num-speculative-tokens``);
everything now goes through one JSON object, ``--speculative-config``. Its keys are the
fields of ``vllm.config.speculative.SpeculativeConfig``. The keys used here (``method``,
``model``, ``num_speculative_tokens``, ``prompt_lookup_min/max``,
``draft_tensor_parallel_size``, ``rejection_sample_method``, ``synthetic_acceptance_rates``,
``synthetic_acceptance_length``) are the same in vLLM 0.26.0 (GPU) and 0.32.0 (CPU); 0.32
adds options this module does not use (e.g. ``enable_adaptive_verification``), reachable
through ``extra``.

Validation mirrors vLLM's own, so a bad matrix fails here, in a second, rather than after a
server start: k >= 1, method-specific fields, and synthetic acceptance rates that are in
[0, 1], non-increasing, one per draft position (vLLM's rules).
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import PurePath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from loadgen.errors import SpecloadError, describe_validation_error

Method = Literal["none", "ngram", "draft_model", "eagle", "eagle3", "mtp", "suffix"]
NEEDS_MODEL = ("draft_model", "eagle", "eagle3")
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")
# The keys SpecConfig itself writes; ``extra`` may not override them (ambiguous otherwise).
_OWN_KEYS = frozenset(
    {
        "method",
        "model",
        "num_speculative_tokens",
        "prompt_lookup_min",
        "prompt_lookup_max",
        "rejection_sample_method",
        "synthetic_acceptance_rates",
        "synthetic_acceptance_length",
        "draft_tensor_parallel_size",
    }
)


class SpecConfig(BaseModel):
    """One speculative-decoding configuration of the server (or ``none``: no speculation).

    Synthetic rejection sampling (``rejection_sample_method: synthetic``, vLLM GPU only)
    accepts draft tokens at given per-position rates whatever the draft proposes, so a
    dummy-weight draft can stand in for a trained one. Giving ``synthetic_acceptance_rates``
    or ``synthetic_acceptance_length`` implies it. Rates longer than k are cut to the first
    k: position i's rate does not depend on how many positions follow, so one list serves a
    sweep over k.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Method
    model: str | None = None
    num_speculative_tokens: int | None = Field(None, ge=1)
    prompt_lookup_min: int | None = Field(None, ge=1)
    prompt_lookup_max: int | None = Field(None, ge=1)
    rejection_sample_method: Literal["standard", "synthetic"] | None = None
    synthetic_acceptance_rates: list[float] | None = None
    synthetic_acceptance_length: float | None = None
    draft_tensor_parallel_size: int | None = Field(None, ge=1)
    extra: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None  # always set after validation (derived when not given)

    @model_validator(mode="before")
    @classmethod
    def _imply_synthetic(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        synth_given = (
            data.get("synthetic_acceptance_rates") is not None
            or data.get("synthetic_acceptance_length") is not None
        )
        if synth_given and data.get("rejection_sample_method") is None:
            data["rejection_sample_method"] = "synthetic"
        rates, k = data.get("synthetic_acceptance_rates"), data.get("num_speculative_tokens")
        if isinstance(rates, list) and isinstance(k, int) and k >= 1 and len(rates) > k:
            data["synthetic_acceptance_rates"] = rates[:k]
        return data

    @model_validator(mode="after")
    def _check(self) -> SpecConfig:
        m, k = self.method, self.num_speculative_tokens
        if m == "none":
            given = [
                f
                for f in type(self).model_fields
                if f not in ("method", "label", "extra") and getattr(self, f) is not None
            ]
            if given or self.extra:
                raise ValueError(f"method 'none' takes no other options (got {given or 'extra'})")
            self._check_label()
            return self
        if k is None:
            raise ValueError(f"num_speculative_tokens is required for method '{m}'")
        if m in NEEDS_MODEL and not self.model:
            raise ValueError(f"model is required for method '{m}'")
        if m in ("ngram", "suffix") and self.model:
            raise ValueError(f"model: method '{m}' takes no model")
        if m != "ngram" and (self.prompt_lookup_min or self.prompt_lookup_max):
            raise ValueError("prompt_lookup_min/max are only for method 'ngram'")
        lo, hi = self.prompt_lookup_min, self.prompt_lookup_max
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"prompt_lookup_min={lo} must be <= prompt_lookup_max={hi}")
        self._check_synthetic(k)
        clash = sorted(_OWN_KEYS & set(self.extra))
        if clash:
            raise ValueError(f"extra: {clash[0]} is a field of its own, set it directly")
        self._check_label()
        return self

    def _check_synthetic(self, k: int) -> None:
        rates, length = self.synthetic_acceptance_rates, self.synthetic_acceptance_length
        if self.rejection_sample_method != "synthetic":
            if rates is not None or length is not None:
                raise ValueError("synthetic acceptance needs rejection_sample_method 'synthetic'")
            return
        if (rates is None) == (length is None):
            raise ValueError(
                "synthetic: give exactly one of synthetic_acceptance_rates, "
                "synthetic_acceptance_length"
            )
        if rates is not None:
            if len(rates) != k:
                raise ValueError(f"synthetic_acceptance_rates: need {k} values (one per draft)")
            if not all(0.0 <= r <= 1.0 for r in rates):
                raise ValueError(f"synthetic_acceptance_rates: values must be in [0, 1]: {rates}")
            if any(b > a for a, b in itertools.pairwise(rates)):
                raise ValueError(f"synthetic_acceptance_rates: must be non-increasing: {rates}")
        elif length is not None and not 1.0 <= length <= k + 1:
            raise ValueError(f"synthetic_acceptance_length must be in [1, {k + 1}], got {length}")

    def _check_label(self) -> None:
        if self.label is None:
            self.__dict__["label"] = self._derived_label()  # frozen model: set once, here
        elif not LABEL_RE.match(self.label):
            raise ValueError(f"label '{self.label}': use letters, digits and . _ + = - only")

    def _derived_label(self) -> str:
        """``none``, ``ngram-k3``, ``draft_model-opt-125m-k3``, ``eagle3-k3-synth``."""
        if self.method == "none":
            return "none"
        parts = [self.method]
        if self.method == "draft_model" and self.model:
            parts.append(_basename(self.model))
        parts.append(f"k{self.num_speculative_tokens}")
        if self.rejection_sample_method == "synthetic":
            parts.append("synth")
        return "-".join(parts)

    def speculative_config(self) -> dict[str, Any] | None:
        """The ``--speculative-config`` JSON object, or None without speculation."""
        if self.method == "none":
            return None
        out: dict[str, Any] = {"method": self.method}
        for key in (
            "model",
            "num_speculative_tokens",
            "prompt_lookup_min",
            "prompt_lookup_max",
            "draft_tensor_parallel_size",
            "rejection_sample_method",
            "synthetic_acceptance_rates",
            "synthetic_acceptance_length",
        ):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        out.update(self.extra)
        return out

    def vllm_args(self) -> list[str]:
        cfg = self.speculative_config()
        return [] if cfg is None else ["--speculative-config", json.dumps(cfg)]


def _basename(model: str) -> str:
    """``facebook/opt-125m`` -> ``opt-125m``; ``/tmp/m/draft/`` -> ``draft``; made path-safe."""
    base = PurePath(model.rstrip("/")).name or model
    return re.sub(r"[^A-Za-z0-9._+=-]", "_", base)


def expand_specs(raw: dict[str, Any], source: str = "specs") -> list[SpecConfig]:
    """One spec entry whose fields may be lists -> the cartesian product of SpecConfigs.

    ``synthetic_acceptance_rates`` and ``extra`` are list/dict-valued by nature, so they are
    never expanded (a list of lists for rates would be; write several entries instead).
    An explicit ``label`` only makes sense when nothing expands.
    """
    if not isinstance(raw, dict):
        raise SpecloadError(f"{source}: a spec entry must be a mapping, got {type(raw).__name__}")
    fixed: dict[str, Any] = {}
    axes: dict[str, list[Any]] = {}
    for key, value in raw.items():
        if key in ("synthetic_acceptance_rates", "extra"):
            if key == "synthetic_acceptance_rates" and _is_list_of_lists(value):
                axes[key] = list(value)
            else:
                fixed[key] = value
        elif isinstance(value, list):
            if not value:
                raise SpecloadError(f"{source}: field '{key}': empty list")
            axes[key] = value
        else:
            fixed[key] = value
    combos = [dict(zip(axes, vals, strict=True)) for vals in itertools.product(*axes.values())]
    if len(combos) > 1 and fixed.get("label"):
        raise SpecloadError(f"{source}: field 'label': one label for {len(combos)} expanded specs")
    out = []
    for combo in combos:
        try:
            out.append(SpecConfig.model_validate({**fixed, **combo}))
        except ValidationError as e:
            raise SpecloadError(_describe(source, e)) from None
    return out


def _describe(source: str, err: ValidationError) -> str:
    """Like describe_validation_error, but a whole-spec check (no field location) reads
    ``source: <message>``: the message itself names the field."""
    first = err.errors()[0]
    if first.get("loc"):
        return describe_validation_error(source, err)
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"{source}: {msg}"


def _is_list_of_lists(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, list) for v in value)

"""Scenarios: a validated description of the load to replay, loaded from YAML.

A scenario names one load shape (``load``), how many requests or how long, the prompt
source, output length and sampling, and the SLOs that define goodput. ``sweep`` turns one
scenario into several phases: each value of a load parameter becomes a phase, run in
order, with its own warmup and its own summary.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from loadgen.config.prompts.base import SOURCES, field_choices
from loadgen.config.shapes import LoadSpec
from loadgen.config.shapes.base import SHAPES
from loadgen.errors import SpecloadError, describe_validation_error

SOURCE_NAMES = tuple(sorted(SOURCES))


def _builtin_dir() -> Path:
    """Where the built-in scenarios are: in an installed wheel, the package data
    ``loadgen/builtin_scenarios`` (pyproject.toml maps it onto ``scenarios/``, so the top-level
    folder stays the one copy); in a source checkout (editable install, PYTHONPATH, the
    Docker image's /app) the checkout's ``scenarios/`` itself, which users read and edit."""
    installed = Path(str(resources.files("loadgen") / "builtin_scenarios"))
    return installed if installed.is_dir() else Path(__file__).resolve().parents[2] / "scenarios"


SCENARIO_DIR = _builtin_dir()
MAX_WORKERS = 1024  # --workers: more is a typo that would start a process storm


class _Strict(BaseModel):
    # No inf or nan anywhere: no field means "unbounded" by an infinite value.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# --- prompts, SLOs -------------------------------------------------------------------


class PromptSpec(_Strict):
    """Where prompts come from: ``source`` names a registered source (one module each in
    :mod:`loadgen.config.prompts`, whose docstrings say what each does and which of the
    fields below it reads). The default, ``random``, is random token ids exactly
    ``input_tokens`` long in the served tokenizer."""

    source: Literal[SOURCE_NAMES] = "random"  # type: ignore[valid-type]
    input_tokens: int = Field(256, gt=0)
    base_prompt: str = "The future of AI is"
    path: str | None = None
    set: str = Field("general", description="builtin: which packaged prompt set")
    skip_bad_lines: bool = False
    tokenizer: str | None = Field(
        None, description="tokenizer directory; default: the server's /tokenize endpoint"
    )
    prefix_tokens: int = Field(0, ge=0, description="random: a shared prefix of this many tokens")
    range_ratio: float = Field(0.0, ge=0, lt=1, description="random: input length +- this ratio")
    sampling: Literal["vllm", "uniform"] = Field(
        "vllm", description="random: ids as vllm bench serve draws them, or independent"
    )

    @field_validator("set")
    @classmethod
    def _known_set(cls, value: str) -> str:
        known = field_choices("set")
        if value not in known:
            expected = " or ".join(repr(k) for k in known)
            raise PydanticCustomError("literal_error", f"Input should be {expected}")
        return value

    @model_validator(mode="after")
    def _needs_path(self) -> PromptSpec:
        if SOURCES[self.source].needs_path and not self.path:
            raise ValueError(f"prompts.path is required for source '{self.source}'")
        return self


class SLO(_Strict):
    """Goodput counts the requests that meet every SLO given here (milliseconds)."""

    ttft_ms: float | None = Field(None, gt=0)
    tpot_ms: float | None = Field(None, gt=0)
    itl_ms: float | None = Field(None, gt=0)
    e2e_ms: float | None = Field(None, gt=0)


# --- scenario and phases -----------------------------------------------------------------


class Phase(_Strict):
    """One load level: what the runner drives and the metrics summarise."""

    name: str
    load: LoadSpec
    num_requests: int | None = Field(None, gt=0)
    duration_s: float | None = Field(None, gt=0)
    warmup_requests: int = Field(0, ge=0)
    repeat: int = Field(1, ge=1, description="which repeat of this load level (1-based)")


class Scenario(_Strict):
    name: str
    description: str = ""
    endpoint: Literal["completions", "chat"] = "completions"
    model: str | None = None
    load: LoadSpec
    sweep: dict[str, list[Any]] | None = Field(
        None, description="load parameter -> values; one phase per combination"
    )
    num_requests: int | None = Field(None, gt=0)
    duration_s: float | None = Field(None, gt=0)
    warmup_requests: int = Field(0, ge=0)
    repeats: int = Field(
        1, ge=1, le=100, description="run each phase this many times, back to back"
    )
    prompts: PromptSpec = PromptSpec()
    output_tokens: int = Field(128, gt=0)
    ignore_eos: bool = True
    temperature: float = Field(0.0, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int = Field(0, ge=0)
    slo: SLO = SLO()
    request_timeout_s: float = Field(600.0, gt=0)
    max_error_rate: float | None = Field(None, ge=0, le=1)
    workers: int = Field(
        1, ge=1, le=MAX_WORKERS, description="processes sharing each phase's schedule (--workers)"
    )
    extra_body: dict[str, Any] = Field(default_factory=dict)
    transport: Literal["raw", "httpx"] = Field(
        "raw",
        description="HTTP client: raw (minimal asyncio HTTP/1.1, the default: ~1/3 of "
        "httpx's CPU per chunk) or httpx",
    )
    server_gauges_s: float = Field(
        0.0,
        ge=0,
        le=3600,
        description="sample the server's /metrics gauges every S seconds during each phase "
        "(default 0: off). Each scrape stalls vLLM's API server for milliseconds, which "
        "shows in every stream's tail ITL (docs/metrics.md)",
    )
    spin_ms: float = Field(
        0.0,
        ge=0,
        le=50,
        description="open loop: yield to the event loop for the last N ms before each "
        "send instead of a timer, whose wake-up is late by up to ~1 ms (costs CPU; for a "
        "client with a core to spare)",
    )

    @model_validator(mode="after")
    def _check(self) -> Scenario:
        if self.num_requests is None and self.duration_s is None:
            raise ValueError("set num_requests or duration_s")
        if self.sweep:
            for key, values in self.sweep.items():
                if key == "shape" or key not in type(self.load).model_fields:
                    raise ValueError(
                        f"sweep.{key}: not a parameter of load shape '{self.load.shape}'"
                    )
                if not isinstance(values, list) or not values:
                    raise ValueError(f"sweep.{key}: give a non-empty list of values")
            self.phases()  # every combination must validate
        return self

    def phases(self) -> list[Phase]:
        """Expand ``sweep`` into phases (cartesian product, in file order); with ``repeats``,
        each level runs that many times back to back (repeats of one level share a warm
        server, and their spread says how stable the figure is)."""
        base = self.load.model_dump()
        if not self.sweep:
            combos: list[dict[str, Any]] = [{}]
        else:
            keys = list(self.sweep)
            combos = [
                dict(zip(keys, vals, strict=True))
                for vals in itertools.product(*(self.sweep[k] for k in keys))
            ]
        out = []
        for combo in combos:
            label = ",".join(f"{k}={v}" for k, v in combo.items()) or self.load.level_label()
            for r in range(1, self.repeats + 1):
                out.append(
                    Phase(
                        name=label if self.repeats == 1 else f"{label} r{r}",
                        load={**base, **combo},
                        num_requests=self.num_requests,
                        duration_s=self.duration_s,
                        warmup_requests=self.warmup_requests,
                        repeat=r,
                    )
                )
        return out


# --- loading -------------------------------------------------------------------------------


def resolve_path(name_or_path: str) -> Path:
    """A scenario is a path to a YAML file or the name of one in ``scenarios/``."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise SpecloadError(f"--scenario: no such file: {name_or_path}")
        return p
    for ext in (".yaml", ".yml"):
        cand = SCENARIO_DIR / f"{name_or_path}{ext}"
        if cand.is_file():
            return cand
    known = ", ".join(sorted(list_scenarios()))
    raise SpecloadError(f"--scenario: unknown scenario '{name_or_path}' (known: {known})")


def list_scenarios() -> list[str]:
    out = []
    for p in SCENARIO_DIR.glob("*.y*ml"):
        try:
            doc = yaml.safe_load(p.read_text())
        except yaml.YAMLError:
            continue
        if isinstance(doc, dict) and "load" in doc:
            out.append(p.stem)
    return out


def parse_scenario(
    doc: Any,
    source: str,
    overrides: dict[str, Any] | None = None,
    *,
    flags: Mapping[str, str] | None = None,
) -> Scenario:
    """Validate a YAML document (plus dotted-key overrides) into a Scenario.

    An invalid value is reported in one line naming ``source`` and the field, or, when the
    value came from an override that ``flags`` names (key -> command-line flag), naming the
    flag as the user typed it.
    """
    if not isinstance(doc, dict):
        raise SpecloadError(f"{source}: expected a mapping at top level, got {type(doc).__name__}")
    doc = dict(doc)
    doc.setdefault("name", Path(source).stem)
    for key, value in (overrides or {}).items():
        _set_dotted(doc, key, value)
    try:
        return Scenario.model_validate(doc)
    except ValidationError as e:
        first = e.errors()[0]
        flag = (flags or {}).get(field_key(first["loc"]))
        if flag is None:
            raise SpecloadError(describe_validation_error(source, e)) from None
        msg = first["msg"].replace("Input should be", "must be", 1)
        value = first.get("input")
        shown = f"{value:g}" if isinstance(value, float) else repr(value)
        raise SpecloadError(f"{flag}: {msg}, got {shown}") from None


def field_key(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as an override key: ``load.rate``, not pydantic's
    ``load.poisson.rate`` (a load error's location carries the shape, the union's tag)."""
    parts = [str(p) for p in loc]
    if len(parts) > 2 and parts[0] == "load" and parts[1] in SHAPES:
        del parts[1]
    return ".".join(parts)


def read_yaml(path: Path) -> Any:
    """One YAML document from ``path``; every way a file can be unreadable becomes one
    SpecloadError line naming it. PyYAML's constructors raise arbitrary exceptions on bad
    tagged scalars (``!!int abc`` ValueError, ``!!int ''`` IndexError, ``!!timestamp x``
    AttributeError) and deep nesting raises RecursionError, hence the broad catch."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecloadError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise SpecloadError(f"{path}: not UTF-8 text") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark else ""
        problem = getattr(e, "problem", None) or getattr(e, "reason", None) or str(e)
        problem = " ".join(str(problem).split())
        raise SpecloadError(f"{path}:{where} malformed YAML: {problem}") from None
    except RecursionError:
        raise SpecloadError(f"{path}: malformed YAML: nested too deeply") from None
    except Exception as e:
        why = " ".join(str(e).split()) if isinstance(e, ValueError) else type(e).__name__
        raise SpecloadError(f"{path}: malformed YAML: bad tagged value ({why})") from None


def load_scenario(name_or_path: str, overrides: dict[str, Any] | None = None) -> Scenario:
    path = resolve_path(name_or_path)
    return parse_scenario(read_yaml(path), str(path), overrides)


def _set_dotted(doc: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    cur = doc
    for p in parts[:-1]:
        nxt = cur.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
        nxt = dict(nxt)
        cur[p] = nxt
        cur = nxt
    cur[parts[-1]] = value

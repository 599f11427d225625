"""Scenarios: a validated description of the load to replay, loaded from YAML.

A scenario names one load shape (``load``), how many requests or how long, the prompt
source, output length and sampling, and the SLOs that define goodput. ``sweep`` turns one
scenario into several phases: each value of a load parameter becomes a phase, run in
order, with its own warmup and its own summary.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from loadgen.config.prompts.base import SOURCES, field_choices
from loadgen.config.search import Search, SearchKind, searched_field
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
    dataset: str | None = Field(
        None,
        description="suites: a Hugging Face dataset name or local dataset directory, read "
        "with the 'datasets' extra (instead of path)",
    )
    split: str | None = Field(
        None, description="suites with dataset: the split (default: the suite's)"
    )
    subset: str | None = Field(
        None, description="suites: the dataset config, or speed_bench's file (qualitative, ...)"
    )
    categories: list[str] | None = Field(
        None, min_length=1, description="suites: keep only rows of these categories"
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
        source = SOURCES[self.source]
        if source.needs_path and not self.path:
            raise ValueError(f"prompts.path is required for source '{self.source}'")
        if source.needs_data and not (self.path or self.dataset):
            raise ValueError(
                f"prompts.path or prompts.dataset is required for source '{self.source}'"
            )
        if self.path and self.dataset:
            raise ValueError("prompts.path and prompts.dataset: give one, not both")
        return self


class SLOMetric(StrEnum):
    """The latencies an SLO can bound: the ``slo:`` field names, in ms."""

    TTFT = "ttft_ms"
    TPOT = "tpot_ms"
    ITL = "itl_ms"
    E2E = "e2e_ms"

    @property
    def title(self) -> str:
        return _METRIC_TITLES[self]


_METRIC_TITLES = {
    SLOMetric.TTFT: "TTFT",
    SLOMetric.TPOT: "TPOT",
    SLOMetric.ITL: "ITL",
    SLOMetric.E2E: "E2E",
}


class SLOBound(_Strict):
    """One latency SLO of ``max`` ms. Written as a bare number (``ttft_ms: 500``) it bounds
    each request, for goodput, as it always has. With a percentile (``ttft_ms: {p: 90,
    max: 500}``) it also judges a load level: the level meets it when the p-th percentile
    over the level's requests is at most ``max`` (what a capacity search looks for)."""

    p: float | None = Field(None, gt=0, lt=100, description="percentile a level is judged at")
    max: float = Field(gt=0, description="the bound, in ms")

    @model_serializer(mode="wrap")
    def _as_written(self, handler: SerializerFunctionWrapHandler) -> Any:
        # The per-request form dumps as the number it was written as, so run.json and the
        # scenario dumps of existing runs keep their shape.
        return self.max if self.p is None else handler(self)

    def describe(self, metric: SLOMetric) -> str:
        """'p90 TTFT <= 500 ms' (or 'TTFT <= 500 ms' per request)."""
        where = f"p{_pct(self.p)} " if self.p is not None else ""
        return f"{where}{metric.title} <= {self.max:g} ms"


def _pct(p: float) -> str:
    return f"{p:g}"


class SLO(_Strict):
    """Service-level objectives, in ms.

    Goodput counts the requests that meet every bound given here (a percentile bound's
    ``max`` bounds each request too, except ITL, whose percentile is over tokens, not
    requests). A load level *meets the SLO* when every percentile bound holds over its
    requests and its error rate is at most ``max_error_rate``: the capacity search's
    verdict (:mod:`loadgen.results.slo`).
    """

    ttft_ms: SLOBound | None = None
    tpot_ms: SLOBound | None = None
    itl_ms: SLOBound | None = Field(
        None,
        description="per request: its longest inter-chunk gap; with p: the p-th percentile of "
        "per-token ITL",
    )
    e2e_ms: SLOBound | None = None
    max_error_rate: float | None = Field(
        None, ge=0, le=1, description="a level fails when more of its requests failed"
    )

    @field_validator("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", mode="before")
    @classmethod
    def _number_or_bound(cls, value: Any) -> Any:
        """A number (or numeric text) is the per-request form, a mapping the full one."""
        if value is None or isinstance(value, dict | SLOBound):
            return value
        if isinstance(value, int | float | str) and not isinstance(value, bool):
            return {"max": value}
        raise PydanticCustomError(
            "slo_bound", "give a bound in ms (a number) or {p: PERCENTILE, max: MS}"
        )

    def bounds(self) -> dict[SLOMetric, SLOBound]:
        """The latency bounds given, in field order."""
        out = {}
        for m in SLOMetric:
            b = getattr(self, m.value)
            if b is not None:
                out[m] = b
        return out

    def percentile_bounds(self) -> dict[SLOMetric, SLOBound]:
        """The bounds that judge a level (those with a percentile)."""
        return {m: b for m, b in self.bounds().items() if b.p is not None}

    def request_limits(self) -> tuple[float | None, float | None, float | None, float | None]:
        """Each request's bounds for goodput, ms: (TTFT, TPOT, longest ITL gap, E2E).

        A plain number keeps its meaning; a percentile bound's ``max`` bounds each request
        too, except ITL's (a percentile over tokens says nothing about one request's stall).
        """
        t, tp, i, e = (getattr(self, m.value) for m in SLOMetric)
        itl = i.max if i is not None and i.p is None else None
        return (
            None if t is None else t.max,
            None if tp is None else tp.max,
            itl,
            None if e is None else e.max,
        )

    def judges_levels(self) -> bool:
        """Whether a load level can be judged: a percentile bound or an error rate is set."""
        return bool(self.percentile_bounds()) or self.max_error_rate is not None

    def describe(self) -> str:
        """'p90 TTFT <= 500 ms, p90 TPOT <= 20 ms, errors <= 1%': what a level must meet."""
        parts = [b.describe(m) for m, b in self.percentile_bounds().items()]
        if self.max_error_rate is not None:
            parts.append(f"errors <= {100 * self.max_error_rate:g}%")
        return ", ".join(parts) or "no level SLO"


MAX_TURNS = 999  # a turn's request id is conversation id * 1000 + turn


class MultiTurn(_Strict):
    """Replay whole conversations as a user would: turn k's request carries the earlier
    turns and the model's actual answers to them, sent a think time after the previous
    answer ended. A conversation is the unit the load counts: ``num_requests`` and
    ``warmup_requests`` count conversations, ``concurrency`` conversations in flight, and
    an open-loop arrival starts one. Needs ``endpoint: chat`` (the history is a message
    list the server's chat template renders). Every turn asks for ``output_tokens``."""

    think_time_s: float = Field(
        0.0, ge=0, le=3600, description="pause between an answer's last byte and the next turn"
    )
    think_time: Literal["fixed", "exponential"] = Field(
        "fixed", description="exactly think_time_s, or exponential with that mean (seeded)"
    )
    max_turns: int = Field(MAX_TURNS, ge=1, le=MAX_TURNS, description="turns kept per conversation")


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
    name: str = Field(description="names the default results directory: a plain name")
    description: str = ""
    endpoint: Literal["completions", "chat"] = "completions"
    model: str | None = None
    load: LoadSpec
    sweep: dict[str, list[Any]] | None = Field(
        None, description="load parameter -> values; one phase per combination"
    )
    search: Search | None = Field(
        None, description="choose the load levels by measuring: capacity or saturation"
    )
    num_requests: int | None = Field(None, gt=0)
    duration_s: float | None = Field(None, gt=0)
    warmup_requests: int = Field(0, ge=0)
    repeats: int = Field(
        1, ge=1, le=100, description="run each phase this many times, back to back"
    )
    prompts: PromptSpec = PromptSpec()
    multi_turn: MultiTurn | None = Field(
        None, description="replay whole conversations (the prompt source's turns)"
    )
    output_tokens: int = Field(128, gt=0)
    ignore_eos: bool = True
    temperature: float = Field(0.0, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int = Field(0, ge=0)
    slo: SLO = SLO()
    request_timeout_s: float = Field(
        600.0, gt=0, description="a request's whole deadline, s (--request-timeout)"
    )
    first_byte_timeout_s: float | None = Field(
        None,
        gt=0,
        description="until the first byte of the response body, s (queueing can be long; "
        "default: the request deadline alone) (--first-byte-timeout)",
    )
    idle_timeout_s: float = Field(
        30.0,
        gt=0,
        description="between two reads once the body has started, s: a stalled stream "
        "gives its slot back (--idle-timeout)",
    )
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

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        """The name becomes a directory name (``results/<name>-<time>``, a sweep's
        ``<label>/<name>``): no path separators, nothing that climbs out or hides."""
        if (
            not value.strip()
            or value.startswith(".")
            or any(c in value for c in "/\\\0")
            or not value.isprintable()
        ):
            raise ValueError(
                "must be a plain name (no '/', '\\', control characters or leading '.'), "
                f"got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _check(self) -> Scenario:
        if self.num_requests is None and self.duration_s is None:
            raise ValueError("set num_requests or duration_s")
        if self.multi_turn is not None and self.endpoint != "chat":
            raise ValueError("multi_turn: needs endpoint: chat (the history is sent as messages)")
        if self.sweep:
            for key, values in self.sweep.items():
                if key == "shape" or key not in type(self.load).model_fields:
                    raise ValueError(
                        f"sweep.{key}: not a parameter of load shape '{self.load.shape}'"
                    )
                if not isinstance(values, list) or not values:
                    raise ValueError(f"sweep.{key}: give a non-empty list of values")
            self.phases()  # every combination must validate
        if self.search is not None:
            self._check_search(self.search)
        return self

    def _check_search(self, search: Search) -> None:
        """What a search needs of the rest of the scenario (config/search.py)."""
        if self.sweep:
            raise ValueError("search: a scenario has sweep or search, not both")
        if self.repeats > 1:
            raise ValueError(
                "repeats: a search runs each level once and repeats only the probes too close "
                "to call (search.repeat_close)"
            )
        field = searched_field(self.load)
        if field is None:
            raise ValueError(
                f"search: load shape '{self.load.shape}' has no rate or concurrency to search"
            )
        if getattr(self.load, "max_concurrency", None) is not None:
            raise ValueError(
                "load.max_concurrency: not with a search (requests over the cap would wait in "
                "the client, outside TTFT, and hide the server's overload)"
            )
        if search.kind is SearchKind.SATURATION:
            if self.load.closed:
                raise ValueError(
                    "search: a saturation sweep runs open-loop rates; give a poisson, gamma "
                    "or constant load"
                )
            return
        if not self.slo.judges_levels():
            raise ValueError(
                "slo: a capacity search needs a bound to judge a level by: a percentile "
                "(ttft_ms: {p: 90, max: 500}) or max_error_rate"
            )
        start = float(getattr(self.load, field))
        if search.max is not None and start > search.max:
            raise ValueError(
                f"load.{field}: the search starts at {start:g}, above search.max ({search.max:g})"
            )
        if search.min is not None and search.min > start:
            raise ValueError(
                f"search.min: {search.min:g} is above the start (load.{field} = {start:g})"
            )
        if self.load.closed:
            for name in ("max", "min"):
                v = getattr(search, name)
                if v is not None and v != int(v):
                    raise ValueError(f"search.{name}: a concurrency; give a whole number")

    @property
    def output_lengths(self) -> Literal["fixed", "natural"]:
        """``fixed``: every request generates exactly its max_tokens (``ignore_eos``);
        ``natural``: the model stops where it stops, max_tokens only caps it. Every summary
        and report says which, since latency per request depends on it."""
        return "fixed" if self.ignore_eos else "natural"

    def phases(self) -> list[Phase]:
        """Expand ``sweep`` into phases (cartesian product, in file order); with ``repeats``,
        each level runs that many times back to back (repeats of one level share a warm
        server, and their spread says how stable the figure is). A search knows no phase in
        advance: none (its probes are chosen as it runs, loadgen/engine/capacity.py)."""
        if self.search is not None:
            return []
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
    if p.is_dir():
        raise SpecloadError(
            f"--scenario: {name_or_path} is a directory; give a scenario file (.yaml) in it"
        )
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
        # A check across fields names its fields in its message ("load.rate: ... search.max"):
        # the flag that set the first of them it names leads the line.
        named = re.match(r"Value error, (([\w.]+): .*)", first["msg"], re.DOTALL)
        if flag is None and named and flags:
            text, key = named.groups()
            hit = key if key in flags else next((k for k in flags if k in text), None)
            if hit is not None:
                shown = text.removeprefix(f"{key}: ") if hit == key else text
                raise SpecloadError(f"{flags[hit]}: {shown}") from None
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
        doc = yaml.safe_load(text)
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
    check_expanded_size(doc, str(path))
    return doc


# What a document may expand to once its aliases are followed (a YAML alias is a shared
# reference; dumping the scenario to run.json, or validating it, copies every one). Far
# beyond any real scenario or matrix, far below what exhausts memory.
MAX_EXPANDED_BYTES = 32 << 20


def check_expanded_size(doc: Any, source: str, limit: int = MAX_EXPANDED_BYTES) -> None:
    """Refuse a document whose aliases expand past ``limit`` (about bytes of JSON): the
    "billion laughs", nine lines that expand to gigabytes. Measured without expanding:
    each distinct object's size is computed once (memoised by identity), so a bomb costs
    time linear in its source. A recursive alias is refused too (it never ends)."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(o: Any) -> int:
        if isinstance(o, str):
            return len(o) + 2
        if not isinstance(o, dict | list):
            return 8
        key = id(o)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise SpecloadError(f"{source}: malformed YAML: a recursive alias (it never ends)")
        active.add(key)
        items = [*o.keys(), *o.values()] if isinstance(o, dict) else o
        total = 2
        for item in items:
            total += size(item) + 1
            if total > limit:
                raise SpecloadError(
                    f"{source}: malformed YAML: its aliases expand to more than "
                    f"{limit >> 20} MiB (an alias bomb?)"
                )
        active.discard(key)
        sizes[key] = total
        return total

    try:
        size(doc)
    except RecursionError:
        raise SpecloadError(f"{source}: malformed YAML: nested too deeply") from None


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

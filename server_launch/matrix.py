"""Matrix files (and the original experiment's config.yaml) -> the server runs of a sweep.

A *run* is one vLLM start: server options + one speculative configuration, and the
scenarios the load generator replays against it. Results go to
``SWEEP_DIR/<run label>/<scenario name>/``, so labels and scenario names are unique and
filesystem-safe.

Native matrix format (every key but ``specs`` and ``scenarios`` optional; unknown keys
are errors)::

    name: cpu-smoke            # default: the file's stem
    description: "..."
    backend: local             # the sweep's backend (local | docker); image: for docker
    image: vllm/vllm-openai:v0.26.0
    model: tiny-llama          # shorthand for server.model
    server:                    # ServerOptions: vLLM flags for every run
      max_model_len: 512
      gpu_memory_utilization: 0.9
      max_num_seqs: 64
      extra_args: ["--enforce-eager"]
      env: {VLLM_CPU_KVCACHE_SPACE: "1"}
    dummy_models: true         # known names (python -m server_launch.dummy_models --list, HF
    model_dir: models          #   aliases too) -> dummy dirs under model_dir (default
                               #   models/), served with --load-format dummy
    specs:                     # SpecConfig entries; list values expand (cartesian)
      - method: none
      - method: draft_model
        model: tiny-llama-draft
        num_speculative_tokens: [1, 3]
      - method: ngram
        num_speculative_tokens: 3
        scenarios: [copy]      # matrix-only key: run this spec on these scenarios only
    scenarios:                 # names in scenarios/, paths, or inline scenario mappings
      - smoke
      - {name: copy, load: {shape: concurrency, concurrency: 1}, num_requests: 8, ...}
    overrides:                 # applied to every scenario; dotted keys or nested
      num_requests: 8          #   mappings (merged key by key, except load and sweep,
      prompts.input_tokens: 32 #   which replace the scenario's whole value)
    paired:                    # baseline and candidates served side by side, phases
      mode: auto               #   interleaved (server_launch/pairing.py, docs/paired.md);
      memory_share: 0.45       #   false: one server after the other

Original format (the seed experiment's README documents it; detected by its keys):
``speculative_models`` x ``num_speculative_tokens_list`` x ``batch_size_list`` runs, each
batch size being both the server's ``max_num_seqs`` and the client's closed-loop
concurrency; per run, one scenario per ``num_requests_list`` value (named ``n<N>``),
prompted with ``base_prompt``. ``null`` -> no speculation; ``'[ngram]'`` -> ngram with
``ngram_prompt_lookup_min/max``; any other entry -> a draft model. The original file
loads as is. Keys the original lacks, all optional, for runs without downloads:
``output_tokens`` (default 128: the original does not say; vLLM's bench default),
``warmup_requests`` (default: the batch size, one full wave before measuring),
``ignore_eos`` (default true: fixed-length outputs), ``max_model_len``, ``load_format``,
``dtype``, ``extra_args``, ``env``, ``dummy_models``, ``model_dir``, ``name``,
``description``, ``backend``, ``image``, and ``synthetic_acceptance_rates`` (GPU only:
every draft-model entry accepts at these per-position rates, so dummy-weight drafts cost
what real ones cost and accept as the rates say; ngram entries are left as they are).

Each format is a pydantic model (``NativeMatrixFile``, ``OriginalMatrixFile``) that rejects
unknown keys and wrong types once, at the edge, in one line naming the file and the field.
A value that ends up in a ServerOptions, SpecConfig or Scenario is typed here and bounded
there, by the model that owns it. ``load_matrix`` turns either format into one ``Matrix``.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from loadgen.config.scenario import Scenario, load_scenario, parse_scenario, read_yaml
from loadgen.errors import SpecloadError, describe_validation_error
from server_launch.backends.base import BackendKind
from server_launch.dummy_models import canonical_name, make_model
from server_launch.pairing import PairedField, PairedSettings
from server_launch.specs import LABEL_RE, SpecConfig, expand_specs

# Any of these keys marks a file as the original experiment's config.yaml.
ORIGINAL_KEYS = frozenset(
    {"num_requests_list", "batch_size_list", "speculative_models", "target_model_name"}
)
DEFAULT_MODEL_DIR = "models"
ORIGINAL_OUTPUT_TOKENS = 128
ORIGINAL_BASE_PROMPT = "The future of AI is"

M = TypeVar("M", bound=BaseModel)


# --- what a sweep runs ---------------------------------------------------------------------


class ServerOptions(BaseModel):
    """vLLM server options shared by every run of a matrix (the model is positional)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    served_model_name: str | None = None
    max_model_len: int | None = Field(None, gt=0)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    max_num_seqs: int | None = Field(None, gt=0)
    tensor_parallel_size: int | None = Field(None, gt=0)
    dtype: str | None = None
    load_format: str | None = None
    seed: int | None = None
    extra_args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)

    def vllm_args(self) -> list[str]:
        """Flags only (``--max-model-len 4096`` ...); the backend places ``model``."""
        flags = {
            "served_model_name": "--served-model-name",
            "max_model_len": "--max-model-len",
            "gpu_memory_utilization": "--gpu-memory-utilization",
            "max_num_seqs": "--max-num-seqs",
            "tensor_parallel_size": "--tensor-parallel-size",
            "dtype": "--dtype",
            "load_format": "--load-format",
            "seed": "--seed",
        }
        out: list[str] = []
        for field, flag in flags.items():
            value = getattr(self, field)
            if value is not None:
                out += [flag, str(value)]
        return out + list(self.extra_args)


class ServerRun(BaseModel):
    """One vLLM start: its options, its speculative config, the scenarios run against it."""

    label: str
    server: ServerOptions
    spec: SpecConfig
    scenarios: list[Scenario]
    batch_size: int | None = None  # original format: the batch size of this run

    def vllm_args(self) -> list[str]:
        return self.server.vllm_args() + self.spec.vllm_args()


class Matrix(BaseModel):
    """A loaded matrix file, either format (sweep.json records it as ``matrix``)."""

    name: str
    description: str = ""
    runs: list[ServerRun]
    source: str
    output_csv: str | None = None  # original format: the sweep writes raw_data/<output_csv>
    backend: BackendKind | None = None
    image: str | None = None
    dummy_models: dict[str, str] = Field(
        default_factory=dict, description="model directory -> dummy model name to generate"
    )
    paired: PairedSettings | None = None  # None: the original format, always sequential


# --- loading -------------------------------------------------------------------------------


def load_matrix(
    path: str | Path, *, dummy_models: bool | None = None, model_dir: str | None = None
) -> Matrix:
    """Read a matrix file (native or original format). ``dummy_models``/``model_dir``
    override the file's (the CLI's way to run the original config offline)."""
    source = Path(path)
    doc = read_yaml(source)
    if not isinstance(doc, dict):
        raise SpecloadError(f"{source}: expected a mapping at top level")
    if dummy_models is not None:
        doc["dummy_models"] = dummy_models
    if model_dir is not None:
        doc["model_dir"] = model_dir
    fmt: type[MatrixFile] = OriginalMatrixFile if ORIGINAL_KEYS & doc.keys() else NativeMatrixFile
    file = _validated(fmt, doc, str(source))
    models = _Models(bool(file.dummy_models), file.model_dir, source)
    runs = file.server_runs(source, models)
    return Matrix(
        name=file.name or source.stem,
        description=file.description or file.DEFAULT_DESCRIPTION,
        runs=runs,
        source=str(source),
        output_csv=file.output_csv,
        backend=file.backend,
        image=file.image,
        dummy_models=models.made,
        paired=file.paired_settings(),
    )


def prepare_models(matrix: Matrix) -> list[Path]:
    """Write the dummy model directories the matrix refers to (idempotent)."""
    return [make_model(name, d) for d, name in matrix.dummy_models.items()]


def _validated(model: type[M], data: Any, source: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise SpecloadError(describe_validation_error(source, e)) from None


def _mapping(value: Any) -> Any:
    """Reject a non-mapping in the project's words (pydantic's would name a model class)."""
    if not isinstance(value, dict):
        raise PydanticCustomError("mapping_type", "expected a mapping")
    return value


def _scenario_ref(value: Any) -> Any:
    if not isinstance(value, str | dict):
        raise PydanticCustomError("scenario_ref", "give a name, a path or a mapping")
    return value


def _speculative_model(value: Any) -> Any:
    if value is not None and not isinstance(value, str):
        raise PydanticCustomError("speculative_model", "expected null, '[ngram]' or a model name")
    return value


def _one_int_or_list(value: Any) -> Any:
    """``8`` means ``[8]`` (a one-value list written as a scalar)."""
    return [value] if isinstance(value, int) and not isinstance(value, bool) else value


def _one_str_or_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


AsMapping = BeforeValidator(_mapping)
ScenarioRef = Annotated[str | dict[Any, Any], BeforeValidator(_scenario_ref)]
SpeculativeModel = Annotated[str | None, BeforeValidator(_speculative_model)]
PositiveInts = Annotated[
    list[Annotated[int, Field(strict=True, gt=0)]],
    BeforeValidator(_one_int_or_list),
    Field(min_length=1),
]


class MatrixFile(BaseModel):
    """The keys both formats share. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")
    DEFAULT_DESCRIPTION: ClassVar[str] = ""

    name: str | None = Field(None, coerce_numbers_to_str=True)  # default: the file's stem
    description: str | None = Field(None, coerce_numbers_to_str=True)
    backend: BackendKind | None = None
    image: str | None = None
    output_csv: str | None = None
    dummy_models: bool | None = None
    model_dir: str | None = None

    @abstractmethod
    def server_runs(self, source: Path, models: _Models) -> list[ServerRun]:
        """The file's runs, in the order the sweep runs them."""

    def paired_settings(self) -> PairedSettings | None:
        """The ``paired:`` section; None where the format has none (always sequential)."""
        return None


class ServerSection(ServerOptions):
    """The native format's ``server:``; its model may be given at top level instead."""

    model: str | None = None  # type: ignore[assignment]


class SpecEntry(BaseModel):
    """One ``specs:`` entry: SpecConfig fields, list values expanded (by expand_specs), and
    ``scenarios``, the names of the matrix's scenarios this entry runs on (default: all)."""

    model_config = ConfigDict(extra="allow")

    scenarios: Annotated[list[str], BeforeValidator(_one_str_or_list)] | None = None

    def spec_fields(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def pick(self, scenarios: list[Scenario], where: str) -> list[Scenario]:
        if self.scenarios is None:
            return scenarios
        names = [s.name for s in scenarios]
        missing = [n for n in self.scenarios if n not in names]
        if missing:
            raise SpecloadError(
                f"{where}: field 'scenarios': no scenario named '{missing[0]}' "
                f"(have: {', '.join(names)})"
            )
        return [s for s in scenarios if s.name in self.scenarios]


class NativeMatrixFile(MatrixFile):
    """The native format (module docstring)."""

    model: str | None = None
    server: Annotated[ServerSection, AsMapping] | None = None
    specs: Annotated[list[Annotated[SpecEntry, AsMapping]], Field(min_length=1)]
    scenarios: Annotated[list[ScenarioRef], Field(min_length=1)]
    overrides: Annotated[dict[str, Any], AsMapping] | None = None
    paired: PairedField = Field(default_factory=PairedSettings)

    def paired_settings(self) -> PairedSettings | None:
        return self.paired

    def server_runs(self, source: Path, models: _Models) -> list[ServerRun]:
        server = models.server(self._server_options(source))
        scenarios = self._scenarios(source)
        runs: list[ServerRun] = []
        for i, entry in enumerate(self.specs):
            where = f"{source}: specs[{i}]"
            chosen = entry.pick(scenarios, where)
            for spec in expand_specs(entry.spec_fields(), where):
                spec = models.spec(spec, f"specs[{i}].model")
                runs.append(
                    ServerRun(label=spec.label or "", server=server, spec=spec, scenarios=chosen)
                )
        _unique([r.label for r in runs], "specs", source, "run label", " (set 'label' on the spec)")
        return runs

    def _server_options(self, source: Path) -> ServerOptions:
        section = self.server or ServerSection()
        if self.model is not None and section.model not in (None, self.model):
            raise SpecloadError(f"{source}: field 'model': conflicts with server.model")
        model = self.model if self.model is not None else section.model
        if model is None:
            raise SpecloadError(f"{source}: field 'model': required (or server.model)")
        return ServerOptions(**{**section.model_dump(), "model": model})

    def _scenarios(self, source: Path) -> list[Scenario]:
        overrides = _flatten_overrides(self.overrides or {})
        scenarios = [_scenario(s, i, overrides, source) for i, s in enumerate(self.scenarios)]
        names = [s.name for s in scenarios]
        _unique(names, "scenarios", source, "scenario name")
        for n in names:
            if not LABEL_RE.match(n):
                raise SpecloadError(
                    f"{source}: field 'scenarios': name '{n}' is not filesystem-safe"
                )
        return scenarios


class OriginalMatrixFile(MatrixFile):
    """The original experiment's config.yaml, as is, plus optional keys of ours (module
    docstring). Values bound for ServerOptions, SpecConfig or Scenario are bounded there."""

    DEFAULT_DESCRIPTION: ClassVar[str] = "original experiment config"

    # the original's keys
    target_model_name: str = Field(min_length=1)
    num_requests_list: PositiveInts
    batch_size_list: PositiveInts
    speculative_models: Annotated[list[SpeculativeModel], Field(min_length=1)] | None = None
    num_speculative_tokens_list: PositiveInts | None = None  # required with any speculation
    gpu_memory_utilization: float | None = None
    ngram_prompt_lookup_max: int | None = None
    ngram_prompt_lookup_min: int | None = None
    base_prompt: str = ORIGINAL_BASE_PROMPT
    # ours
    output_tokens: int = ORIGINAL_OUTPUT_TOKENS  # the original does not say: vLLM bench's
    warmup_requests: int | None = None  # default: the batch size, one full wave
    ignore_eos: bool = True
    max_model_len: int | None = None
    load_format: str | None = None
    dtype: str | None = None
    extra_args: list[str] | None = None
    env: dict[str, str] | None = None
    synthetic_acceptance_rates: list[float] | None = None

    def server_runs(self, source: Path, models: _Models) -> list[ServerRun]:
        specs = self._specs(source)
        base = models.server(self._server_options(source))
        scenarios = {b: self._scenarios(b, source) for b in self.batch_size_list}
        runs: list[ServerRun] = []
        for spec in specs:
            spec = models.spec(spec, "speculative_models")
            for b in self.batch_size_list:
                runs.append(
                    ServerRun(
                        label=f"{spec.label}-bs{b}",
                        server=base.model_copy(update={"max_num_seqs": b}),
                        spec=spec,
                        scenarios=scenarios[b],
                        batch_size=b,
                    )
                )
        _unique([r.label for r in runs], "speculative_models", source, "run label")
        return runs

    def _specs(self, source: Path) -> list[SpecConfig]:
        """``null`` -> none, ``'[ngram]'`` -> ngram, a name -> a draft model; x each k."""
        entries = self.speculative_models or [None]
        ks = self.num_speculative_tokens_list
        if ks is None and any(e is not None for e in entries):
            raise SpecloadError(f"{source}: field 'num_speculative_tokens_list': required")
        specs: list[SpecConfig] = []
        for i, entry in enumerate(entries):
            if entry is None or entry.lower() in ("none", "null"):
                specs.append(SpecConfig(method="none"))
                continue
            if entry.strip() in ("[ngram]", "ngram"):
                raw: dict[str, Any] = {
                    "method": "ngram",
                    "num_speculative_tokens": ks,
                    "prompt_lookup_max": self.ngram_prompt_lookup_max,
                    "prompt_lookup_min": self.ngram_prompt_lookup_min,
                }
            else:
                raw = {
                    "method": "draft_model",
                    "model": entry,
                    "num_speculative_tokens": ks,
                    "synthetic_acceptance_rates": self.synthetic_acceptance_rates,
                }
            given = {k: v for k, v in raw.items() if v is not None}
            specs += expand_specs(given, f"{source}: speculative_models[{i}]")
        return specs

    def _server_options(self, source: Path) -> ServerOptions:
        options = {
            "model": self.target_model_name,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "max_model_len": self.max_model_len,
            "load_format": self.load_format,
            "dtype": self.dtype,
            "extra_args": self.extra_args or [],
            "env": self.env or {},
        }
        return _validated(ServerOptions, options, str(source))

    def _scenarios(self, batch: int, source: Path) -> list[Scenario]:
        """One closed-loop scenario per request count, at ``batch`` concurrency."""
        return [
            _validated(
                Scenario,
                {
                    "name": f"n{n}",
                    "description": f"original config: {n} requests at batch size {batch}",
                    "load": {"shape": "concurrency", "concurrency": batch},
                    "num_requests": n,
                    "warmup_requests": (
                        batch if self.warmup_requests is None else self.warmup_requests
                    ),
                    "prompts": {"source": "base_prompt", "base_prompt": self.base_prompt},
                    "output_tokens": self.output_tokens,
                    "ignore_eos": self.ignore_eos,
                    "temperature": 0.0,
                },
                str(source),
            )
            for n in self.num_requests_list
        ]


class _Models:
    """With ``dummy_models`` on, known model names -> dummy directories under the model
    directory (recorded in ``made`` for prepare_models); off, names pass through."""

    def __init__(self, enabled: bool, model_dir: str | None, source: Path) -> None:
        self.enabled = enabled
        self.root = Path(model_dir or DEFAULT_MODEL_DIR).resolve()
        self.source = source
        self.made: dict[str, str] = {}

    def _resolve(self, name: str, field: str) -> str:
        canon = canonical_name(name)
        if canon is None:
            if Path(name).exists():
                return name
            raise SpecloadError(
                f"{self.source}: field '{field}': '{name}' is not a known dummy model "
                "(python -m server_launch.dummy_models --list) nor an existing path"
            )
        d = str(self.root / canon)
        self.made[d] = canon
        return d

    def server(self, server: ServerOptions) -> ServerOptions:
        """Point the server at a dummy dir, with --load-format dummy and the name it had."""
        if not self.enabled:
            return server
        path = self._resolve(server.model, "server.model")
        if path == server.model:
            return server
        return server.model_copy(
            update={
                "model": path,
                "load_format": server.load_format or "dummy",
                "served_model_name": server.served_model_name or server.model,
            }
        )

    def spec(self, spec: SpecConfig, field: str) -> SpecConfig:
        if not self.enabled or not spec.model:
            return spec
        path = self._resolve(spec.model, field)
        # keep the label derived from the name the user wrote, not from the directory
        return spec.model_copy(update={"model": path, "label": spec.label})


def _scenario(
    entry: str | dict[Any, Any], i: int, overrides: dict[str, Any], source: Path
) -> Scenario:
    if isinstance(entry, str):
        return load_scenario(entry, overrides)
    if "name" not in entry:
        raise SpecloadError(f"{source}: scenarios[{i}]: field 'name': required inline")
    return parse_scenario(dict(entry), f"{source}: scenarios[{i}]", overrides)


_REPLACE_WHOLE = ("load", "sweep")


def _flatten_overrides(raw: dict[Any, Any], prefix: str = "") -> dict[str, Any]:
    """Nested override mappings -> dotted keys (``prompts: {input_tokens: 32}`` merges)."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted not in _REPLACE_WHOLE and value:
            out.update(_flatten_overrides(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _unique(values: list[str], field: str, source: Path, what: str, hint: str = "") -> None:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            raise SpecloadError(f"{source}: field '{field}': duplicate {what} '{v}'{hint}")
        seen.add(v)

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

Original format (``/work/shared/seed/README-original.md``; detected by its keys):
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
``backend``, ``image``, and ``synthetic_acceptance_rates`` (GPU only: every draft-model
entry accepts at these per-position rates, so dummy-weight drafts cost what real ones cost
and accept as the rates say; ngram entries are left as they are).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from loadgen.config.scenario import Scenario, load_scenario, parse_scenario, read_yaml
from loadgen.errors import SpecloadError, describe_validation_error
from server_launch.dummy_models import canonical_name, make_model
from server_launch.specs import LABEL_RE, SpecConfig, expand_specs

ORIGINAL_KEYS = frozenset(
    {"num_requests_list", "batch_size_list", "speculative_models", "target_model_name"}
)
DEFAULT_MODEL_DIR = "models"
ORIGINAL_OUTPUT_TOKENS = 128


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
    name: str
    description: str = ""
    runs: list[ServerRun]
    source: str
    output_csv: str | None = None  # original format: the sweep writes raw_data/<output_csv>
    backend: str | None = None
    image: str | None = None
    dummy_models: dict[str, str] = Field(
        default_factory=dict, description="model directory -> dummy model name to generate"
    )


# --- loading ---------------------------------------------------------------------------


def load_matrix(
    path: str | Path, *, dummy_models: bool | None = None, model_dir: str | None = None
) -> Matrix:
    """Read a matrix file (native or original format). ``dummy_models``/``model_dir``
    override the file's (the CLI's way to run the original config offline)."""
    p = Path(path)
    doc = read_yaml(p)
    if not isinstance(doc, dict):
        raise SpecloadError(f"{p}: expected a mapping at top level")
    for key in ("backend", "image", "output_csv"):  # checked here: Matrix() is built last
        if doc.get(key) is not None and not isinstance(doc[key], str):
            raise SpecloadError(f"{p}: field '{key}': expected a string")
    if dummy_models is not None:
        doc["dummy_models"] = dummy_models
    if model_dir is not None:
        doc["model_dir"] = model_dir
    if ORIGINAL_KEYS & doc.keys():
        return _original(doc, p)
    return _native(doc, p)


def prepare_models(matrix: Matrix) -> list[Path]:
    """Write the dummy model directories the matrix refers to (idempotent)."""
    return [make_model(name, d) for d, name in matrix.dummy_models.items()]


class _Models:
    """Maps model names to dummy directories when ``dummy_models`` is on; records them."""

    def __init__(self, enabled: bool, model_dir: str | None) -> None:
        self.enabled = enabled
        self.root = Path(model_dir or DEFAULT_MODEL_DIR).resolve()
        self.made: dict[str, str] = {}

    def resolve(self, name: str, field: str, source: Path) -> str:
        if not self.enabled:
            return name
        canon = canonical_name(name)
        if canon is None:
            if Path(name).exists():
                return name
            raise SpecloadError(
                f"{source}: field '{field}': '{name}' is not a known dummy model "
                "(python -m server_launch.dummy_models --list) nor an existing path"
            )
        d = str(self.root / canon)
        self.made[d] = canon
        return d


def _check_keys(doc: dict[str, Any], allowed: set[str], source: Path) -> None:
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise SpecloadError(f"{source}: field '{unknown[0]}': unknown field")


def _server(raw: dict[str, Any], source: Path, prefix: str = "server") -> ServerOptions:
    try:
        return ServerOptions.model_validate(raw)
    except ValidationError as e:
        raise SpecloadError(describe_validation_error(f"{source}: {prefix}", e)) from None


def _dummy_server(server: ServerOptions, models: _Models, source: Path) -> ServerOptions:
    """Point the server at a dummy dir, with --load-format dummy and the name it had."""
    if not models.enabled:
        return server
    path = models.resolve(server.model, "server.model", source)
    if path == server.model:
        return server
    return server.model_copy(
        update={
            "model": path,
            "load_format": server.load_format or "dummy",
            "served_model_name": server.served_model_name or server.model,
        }
    )


def _dummy_spec(spec: SpecConfig, models: _Models, source: Path, field: str) -> SpecConfig:
    if not models.enabled or not spec.model:
        return spec
    path = models.resolve(spec.model, field, source)
    # keep the label derived from the name the user wrote, not from the directory
    return spec.model_copy(update={"model": path, "label": spec.label})


NATIVE_KEYS = {
    "name",
    "description",
    "backend",
    "image",
    "model",
    "server",
    "dummy_models",
    "model_dir",
    "specs",
    "scenarios",
    "overrides",
    "output_csv",
}


def _native(doc: dict[str, Any], source: Path) -> Matrix:
    _check_keys(doc, NATIVE_KEYS, source)
    if not isinstance(doc.get("server") or {}, dict):
        raise SpecloadError(f"{source}: field 'server': expected a mapping")
    server_raw = dict(doc.get("server") or {})
    if "model" in doc:
        if "model" in server_raw and server_raw["model"] != doc["model"]:
            raise SpecloadError(f"{source}: field 'model': conflicts with server.model")
        server_raw["model"] = doc["model"]
    if "model" not in server_raw:
        raise SpecloadError(f"{source}: field 'model': required (or server.model)")
    models = _Models(bool(doc.get("dummy_models", False)), doc.get("model_dir"))
    server = _dummy_server(_server(server_raw, source), models, source)

    overrides = _flatten_overrides(doc.get("overrides") or {}, source)
    scen_raw = doc.get("scenarios")
    if not isinstance(scen_raw, list) or not scen_raw:
        raise SpecloadError(f"{source}: field 'scenarios': give a non-empty list")
    scenarios = [_scenario(s, i, overrides, source) for i, s in enumerate(scen_raw)]
    names = [s.name for s in scenarios]
    _unique(names, "scenarios", source, "scenario name")
    for n in names:
        if not LABEL_RE.match(n):
            raise SpecloadError(f"{source}: field 'scenarios': name '{n}' is not filesystem-safe")

    specs_raw = doc.get("specs")
    if not isinstance(specs_raw, list) or not specs_raw:
        raise SpecloadError(f"{source}: field 'specs': give a non-empty list")
    runs: list[ServerRun] = []
    for i, entry in enumerate(specs_raw):
        where = f"{source}: specs[{i}]"
        if not isinstance(entry, dict):
            raise SpecloadError(f"{where}: expected a mapping")
        entry = dict(entry)
        only = entry.pop("scenarios", None)
        chosen = scenarios
        if only is not None:
            if isinstance(only, str):
                only = [only]
            missing = [o for o in only if o not in names]
            if missing:
                raise SpecloadError(
                    f"{where}: field 'scenarios': no scenario named '{missing[0]}' "
                    f"(have: {', '.join(names)})"
                )
            chosen = [s for s in scenarios if s.name in only]
        for spec in expand_specs(entry, where):
            spec = _dummy_spec(spec, models, source, f"specs[{i}].model")
            runs.append(
                ServerRun(label=spec.label or "", server=server, spec=spec, scenarios=chosen)
            )
    _unique([r.label for r in runs], "specs", source, "run label", " (set 'label' on the spec)")
    return Matrix(
        name=str(doc.get("name") or source.stem),
        description=str(doc.get("description") or ""),
        runs=runs,
        source=str(source),
        output_csv=doc.get("output_csv"),
        backend=doc.get("backend"),
        image=doc.get("image"),
        dummy_models=models.made,
    )


def _scenario(entry: Any, i: int, overrides: dict[str, Any], source: Path) -> Scenario:
    if isinstance(entry, str):
        return load_scenario(entry, overrides)
    if isinstance(entry, dict):
        doc = dict(entry)
        if "name" not in doc:
            raise SpecloadError(f"{source}: scenarios[{i}]: field 'name': required inline")
        return parse_scenario(doc, f"{source}: scenarios[{i}]", overrides)
    raise SpecloadError(f"{source}: scenarios[{i}]: give a name, a path or a mapping")


_REPLACE_WHOLE = ("load", "sweep")


def _flatten_overrides(raw: Any, source: Path, prefix: str = "") -> dict[str, Any]:
    """Nested override mappings -> dotted keys (``prompts: {input_tokens: 32}`` merges)."""
    if not isinstance(raw, dict):
        raise SpecloadError(f"{source}: field 'overrides': expected a mapping")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted not in _REPLACE_WHOLE and value:
            out.update(_flatten_overrides(value, source, dotted + "."))
        else:
            out[dotted] = value
    return out


def _unique(values: list[str], field: str, source: Path, what: str, hint: str = "") -> None:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            raise SpecloadError(f"{source}: field '{field}': duplicate {what} '{v}'{hint}")
        seen.add(v)


# --- the original experiment's config.yaml ------------------------------------------------

ORIGINAL_ALLOWED = {
    "num_requests_list",
    "batch_size_list",
    "speculative_models",
    "target_model_name",
    "num_speculative_tokens_list",
    "gpu_memory_utilization",
    "ngram_prompt_lookup_max",
    "ngram_prompt_lookup_min",
    "base_prompt",
    "output_csv",
    # ours, optional
    "name",
    "description",
    "backend",
    "image",
    "output_tokens",
    "warmup_requests",
    "ignore_eos",
    "max_model_len",
    "load_format",
    "dtype",
    "extra_args",
    "env",
    "dummy_models",
    "model_dir",
    "synthetic_acceptance_rates",
}


def _int_list(doc: dict[str, Any], key: str, source: Path, required: bool = True) -> list[int]:
    value = doc.get(key)
    if value is None:
        if required:
            raise SpecloadError(f"{source}: field '{key}': required")
        return []
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise SpecloadError(f"{source}: field '{key}': give a non-empty list of integers")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise SpecloadError(f"{source}: field '{key}': {v!r} is not a positive integer")
    return value


def _original_specs(doc: dict[str, Any], source: Path) -> list[SpecConfig]:
    entries = doc.get("speculative_models", [None])
    if entries is None:
        entries = [None]
    if not isinstance(entries, list) or not entries:
        raise SpecloadError(f"{source}: field 'speculative_models': give a list")
    needs_k = any(e is not None for e in entries)
    ks = _int_list(doc, "num_speculative_tokens_list", source, required=needs_k)
    specs: list[SpecConfig] = []
    for i, entry in enumerate(entries):
        where = f"{source}: speculative_models[{i}]"
        if entry is None or (isinstance(entry, str) and entry.lower() in ("none", "null")):
            specs.append(SpecConfig(method="none"))
            continue
        if not isinstance(entry, str):
            raise SpecloadError(f"{where}: expected null, '[ngram]' or a model name")
        if entry.strip() in ("[ngram]", "ngram"):
            raw: dict[str, Any] = {
                "method": "ngram",
                "num_speculative_tokens": ks,
                "prompt_lookup_max": doc.get("ngram_prompt_lookup_max"),
                "prompt_lookup_min": doc.get("ngram_prompt_lookup_min"),
            }
        else:
            raw = {
                "method": "draft_model",
                "model": entry,
                "num_speculative_tokens": ks,
                "synthetic_acceptance_rates": doc.get("synthetic_acceptance_rates"),
            }
        specs += expand_specs({k: v for k, v in raw.items() if v is not None}, where)
    return specs


def _original(doc: dict[str, Any], source: Path) -> Matrix:
    _check_keys(doc, ORIGINAL_ALLOWED, source)
    if not doc.get("target_model_name"):
        raise SpecloadError(f"{source}: field 'target_model_name': required")
    n_list = _int_list(doc, "num_requests_list", source)
    b_list = _int_list(doc, "batch_size_list", source)
    specs = _original_specs(doc, source)
    models = _Models(bool(doc.get("dummy_models", False)), doc.get("model_dir"))
    base = _server(
        {
            "model": doc["target_model_name"],
            "gpu_memory_utilization": doc.get("gpu_memory_utilization"),
            "max_model_len": doc.get("max_model_len"),
            "load_format": doc.get("load_format"),
            "dtype": doc.get("dtype"),
            "extra_args": doc.get("extra_args") or [],
            "env": doc.get("env") or {},
        },
        source,
        prefix="top level",
    )
    base = _dummy_server(base, models, source)
    base_prompt = doc.get("base_prompt", "The future of AI is")
    runs: list[ServerRun] = []
    for spec in specs:
        spec = _dummy_spec(spec, models, source, "speculative_models")
        for b in b_list:
            scenarios = [_original_scenario(doc, b, n, base_prompt, source) for n in n_list]
            runs.append(
                ServerRun(
                    label=f"{spec.label}-bs{b}",
                    server=base.model_copy(update={"max_num_seqs": b}),
                    spec=spec,
                    scenarios=scenarios,
                    batch_size=b,
                )
            )
    _unique([r.label for r in runs], "speculative_models", source, "run label")
    return Matrix(
        name=str(doc.get("name") or source.stem),
        description=str(doc.get("description") or "original experiment config"),
        runs=runs,
        source=str(source),
        output_csv=doc.get("output_csv"),
        backend=doc.get("backend"),
        image=doc.get("image"),
        dummy_models=models.made,
    )


def _original_scenario(
    doc: dict[str, Any], batch: int, n: int, base_prompt: Any, source: Path
) -> Scenario:
    scenario = {
        "name": f"n{n}",
        "description": f"original config: {n} requests at batch size {batch}",
        "load": {"shape": "concurrency", "concurrency": batch},
        "num_requests": n,
        "warmup_requests": doc.get("warmup_requests", batch),
        "prompts": {"source": "base_prompt", "base_prompt": base_prompt},
        "output_tokens": doc.get("output_tokens", ORIGINAL_OUTPUT_TOKENS),
        "ignore_eos": doc.get("ignore_eos", True),
        "temperature": 0.0,
    }
    try:
        return Scenario.model_validate(scenario)
    except ValidationError as e:
        raise SpecloadError(describe_validation_error(str(source), e)) from None

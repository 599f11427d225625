"""Paired comparisons: the matrix's ``paired:`` settings and the plan that decides, before
anything starts, whether the baseline and the candidates can be served side by side.

Why: a server's speed drifts (issue 11: one warm server's median TPOT fell 22% over six
identical runs), so two configurations measured one after the other differ by whatever the
machine did in between. Served at the same time on the same accelerator, with their phases
alternating A B B A at each load level, both see the same drift and the difference between
them is the configurations' own (docs/paired.md).

The plan (``plan_pairing``):

- *Who*: the baseline is the run labelled ``none``, else the only run without speculation;
  every other run is a candidate. The baseline stays up for the whole sweep; candidates come
  in ``residents - 1`` at a time (default 2 residents: one candidate at a time).
- *Memory, GPU* (and CPU without ``VLLM_CPU_KVCACHE_SPACE``, where vLLM reads
  ``--gpu-memory-utilization`` as a share of RAM): each server gets a share, from
  ``paired.shares[label]``, else ``paired.memory_share``, else ``server.gpu_memory_utilization``,
  else 0.90 / residents. The shares of the servers up at once must sum to at most 0.95 (vLLM
  checks its share against the memory free when it starts, and each process's CUDA context
  needs some of the rest). Shares declared under ``paired:`` that break this are an error
  before anything starts; a server-level share that does (the single-server default, e.g.
  0.9) makes ``auto`` fall back to sequential.
- *Memory, CPU with* ``VLLM_CPU_KVCACHE_SPACE``: residents x (KV space + weights +
  ``cpu_overhead_gib``) must fit in the memory available now.
- ``mode``: ``auto`` (the default) pairs where the plan fits and falls back to today's
  sequential sweep otherwise, saying why; ``on`` makes any misfit an error; ``off`` (or
  ``paired: false``) is the sequential sweep. The original config.yaml format is always
  sequential: it reproduces the original experiment.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from loadgen.errors import SpecloadError

MAX_SHARE_SUM = 0.95  # the co-resident servers' memory shares, summed
DEFAULT_TOTAL_SHARE = 0.90  # split between the residents when nothing is declared
KV_ENV = "VLLM_CPU_KVCACHE_SPACE"
GIB = 1024**3


class PairingMode(StrEnum):
    AUTO = "auto"
    ON = "on"
    OFF = "off"


class Device(StrEnum):
    """Whose memory the residents share: decides how 'both fit' is checked."""

    AUTO = "auto"  # cpu for the local backend with VLLM_CPU_KVCACHE_SPACE set, else gpu
    GPU = "gpu"
    CPU = "cpu"


class PairedMetric(StrEnum):
    """The speedups that get an interval, and may decide when a level has enough pairs."""

    TPOT = "tpot"
    ITL = "itl"
    E2E = "e2e"
    THROUGHPUT = "throughput"
    GOODPUT = "goodput"


def _mode_from_bool(value: Any) -> Any:
    """``paired: true`` / ``paired: false`` are ``{mode: on}`` / ``{mode: off}``."""
    if isinstance(value, bool):
        return {"mode": PairingMode.ON if value else PairingMode.OFF}
    return value


class WarmupSettings(BaseModel):
    """Steady-state warm-up at each level, before its pairs: windows (one phase each) run on
    every resident in turn until the last ``windows`` of each agree within
    ``tolerance_pct`` on median TPOT and on throughput, or a cap is reached."""

    model_config = ConfigDict(extra="forbid")

    windows: int = Field(2, ge=1, description="K consecutive windows that must agree")
    tolerance_pct: float = Field(5.0, gt=0)
    max_windows: int = Field(6, ge=1, description="per server and level")
    max_s: float = Field(300.0, gt=0, description="per level, all servers")
    window_requests: int | None = Field(
        None, gt=0, description="requests per window; default: the phase's num_requests"
    )

    @model_validator(mode="after")
    def _check(self) -> WarmupSettings:
        if self.windows > self.max_windows:
            raise ValueError(f"warmup.windows ({self.windows}) > warmup.max_windows")
        return self


class PairedSettings(BaseModel):
    """The native matrix's ``paired:`` section (module docstring; docs/paired.md)."""

    model_config = ConfigDict(extra="forbid")

    mode: PairingMode = PairingMode.AUTO

    residents: int = Field(2, ge=2, description="servers up at once, the baseline included")
    memory_share: float | None = Field(None, gt=0, le=1)
    shares: dict[str, Annotated[float, Field(gt=0, le=1)]] = Field(default_factory=dict)
    device: Device = Device.AUTO
    cpu_overhead_gib: float = Field(2.0, ge=0, description="CPU: per server, beyond KV+weights")
    ci_target_pct: float = Field(3.0, gt=0, le=100)
    min_repeats: int = Field(4, ge=2, description="pairs before the first look (the pilot)")
    max_repeats: int = Field(16, ge=2, description="pairs at most per level")
    max_level_s: float = Field(1200.0, gt=0, description="measuring time per level, at most")
    stop_on: list[PairedMetric] = Field(
        default_factory=lambda: [PairedMetric.TPOT, PairedMetric.THROUGHPUT], min_length=1
    )
    warmup: WarmupSettings = Field(default_factory=WarmupSettings)

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_bool(cls, value: Any) -> Any:
        """YAML reads a bare ``mode: on`` / ``mode: off`` as a boolean: take it as meant."""
        if isinstance(value, bool):
            return PairingMode.ON if value else PairingMode.OFF
        return value

    @field_validator("min_repeats")
    @classmethod
    def _even(cls, value: int) -> int:
        if value % 2:
            raise ValueError(f"must be even (whole A B | B A blocks), got {value}")
        return value

    @model_validator(mode="after")
    def _check(self) -> PairedSettings:
        if self.max_repeats < self.min_repeats:
            raise ValueError(f"max_repeats ({self.max_repeats}) < min_repeats")
        return self

    def declared_share(self, label: str) -> float | None:
        return self.shares.get(label, self.memory_share)


PairedField = Annotated[PairedSettings, BeforeValidator(_mode_from_bool)]


@dataclass(frozen=True)
class PairingPlan:
    """What the sweep will do: paired (groups of co-resident servers) or sequential."""

    paired: bool
    reason: str  # one line: why paired, or why not
    baseline: str | None = None
    groups: list[list[str]] = field(default_factory=list)  # candidates up with the baseline
    shares: dict[str, float] = field(default_factory=dict)  # label -> gpu_memory_utilization
    device: Device = Device.GPU
    settings: PairedSettings | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": "paired" if self.paired else "unpaired",
            "reason": self.reason,
            "baseline": self.baseline,
            "groups": self.groups,
            "shares": self.shares,
            "device": self.device.value,
            "settings": self.settings.model_dump(mode="json") if self.settings else None,
        }


def restrict(plan: PairingPlan, labels: list[str]) -> PairingPlan:
    """``--only LABEL...`` on a paired plan: the named candidates' groups (the baseline
    always runs, beside each of them)."""
    if not plan.paired:
        return plan
    groups = [[c for c in g if c in labels] for g in plan.groups]
    groups = [g for g in groups if g]
    if not groups:
        raise SpecloadError(
            f"--only: name a candidate; the baseline '{plan.baseline}' runs beside each one"
        )
    return dataclasses.replace(plan, groups=groups)


def group_id(candidates: list[str]) -> str:
    """The directory of a group's results: its candidates' labels (filesystem-safe)."""
    return "+".join(candidates)


def baseline_label(matrix: Any) -> str | None:
    """The run labelled 'none', else the only run without speculation."""
    labels = [r.label for r in matrix.runs]
    if "none" in labels:
        return "none"
    plain = [r.label for r in matrix.runs if r.spec.method == "none"]
    return plain[0] if len(plain) == 1 else None


def plan_pairing(
    matrix: Any,
    backend: str,
    *,
    mem_available_gib: float | None = None,
    env: dict[str, str] | None = None,
) -> PairingPlan:
    """Decide paired vs sequential for ``matrix`` on ``backend`` (module docstring).

    Raises SpecloadError (one line naming the field) where the matrix asks for pairing
    that cannot work: shares declared under ``paired:`` over the limit, or any misfit with
    ``mode: on``."""
    settings: PairedSettings | None = getattr(matrix, "paired", None)
    if settings is None:
        return PairingPlan(False, "original config format: one server per run, in turn")
    if settings.mode is PairingMode.OFF:
        return PairingPlan(False, "paired: off", settings=settings)
    strict = settings.mode is PairingMode.ON

    def unfit(msg: str) -> PairingPlan:
        if strict:
            raise SpecloadError(f"{matrix.source}: field 'paired': {msg}")
        return PairingPlan(False, f"sequential: {msg}", settings=settings)

    base = baseline_label(matrix)
    if base is None:
        return unfit("no baseline to pair with (a run labelled 'none', or one without speculation)")
    runs = {r.label: r for r in matrix.runs}
    candidates = [r.label for r in matrix.runs if r.label != base]
    if not candidates:
        return unfit(f"only the baseline '{base}' to run")
    _check_share_labels(settings, list(runs), matrix.source)
    base_scen = {s.name for s in runs[base].scenarios}
    for c in candidates:
        extra = [s.name for s in runs[c].scenarios if s.name not in base_scen]
        if extra:
            return unfit(f"'{c}' runs scenario '{extra[0]}', which the baseline '{base}' does not")
    per = settings.residents - 1
    groups = [candidates[i : i + per] for i in range(0, len(candidates), per)]
    env = dict(os.environ if env is None else env)
    device = _device(settings, backend, runs[base], env)
    plan = dict(
        baseline=base, groups=groups, device=device, settings=settings, paired=True, shares={}
    )
    kv = _kv_gib(runs[base], env) if device is Device.CPU else None
    if kv is not None:
        need = [_cpu_need_gib(runs[lb], kv, settings) for lb in (base, *candidates)]
        worst = need[0] + sum(sorted(need[1:], reverse=True)[:per])
        avail = _mem_available_gib() if mem_available_gib is None else mem_available_gib
        fits = f"{len(groups[0]) + 1} servers need ~{worst:.1f} GiB ({KV_ENV}={kv:g} each)"
        if avail is not None and worst > avail:
            return unfit(f"{fits}, {avail:.1f} GiB available")
        where = f"{avail:.1f} GiB available" if avail is not None else "available memory unknown"
        return PairingPlan(reason=f"paired: {fits}, {where}", **plan)  # type: ignore[arg-type]
    shares = _shares(settings, matrix, base, candidates)
    worst_group = max(groups, key=lambda g: sum(shares[x] for x in g))
    total = shares[base] + sum(shares[x] for x in worst_group)
    text = " + ".join(f"{shares[x]:g}" for x in (base, *worst_group))
    if total > MAX_SHARE_SUM + 1e-9:
        msg = (
            f"memory shares {text} = {total:.2f} of the {device.value.upper()}'s memory "
            f"> {MAX_SHARE_SUM} for {len(worst_group) + 1} co-resident servers"
        )
        declared = any(settings.declared_share(x) is not None for x in (base, *worst_group))
        if declared:
            raise SpecloadError(
                f"{matrix.source}: field 'paired.memory_share': {msg} "
                "(lower the shares or paired.residents, or set paired: false)"
            )
        return unfit(msg + " (set paired.memory_share to pair)")
    plan["shares"] = shares
    reason = f"paired: gpu_memory_utilization {text} = {total:.2f} <= {MAX_SHARE_SUM}"
    return PairingPlan(reason=reason, **plan)  # type: ignore[arg-type]


def _check_share_labels(settings: PairedSettings, labels: list[str], source: str) -> None:
    for label in settings.shares:
        if label not in labels:
            raise SpecloadError(
                f"{source}: field 'paired.shares': no run labelled '{label}' "
                f"(have: {', '.join(labels)})"
            )


def _device(settings: PairedSettings, backend: str, base_run: Any, env: dict[str, str]) -> Device:
    if settings.device is not Device.AUTO:
        return settings.device
    has_kv = bool(base_run.server.env.get(KV_ENV) or env.get(KV_ENV))
    return Device.CPU if backend == "local" and has_kv else Device.GPU


def _kv_gib(run: Any, env: dict[str, str]) -> float | None:
    raw = run.server.env.get(KV_ENV) or env.get(KV_ENV)
    try:
        return float(raw) if raw else None
    except ValueError:
        raise SpecloadError(f"server.env.{KV_ENV}: not a number of GiB: {raw!r}") from None


def _shares(
    settings: PairedSettings, matrix: Any, base: str, candidates: list[str]
) -> dict[str, float]:
    """label -> gpu_memory_utilization of that server while co-resident."""
    out = {}
    for run in matrix.runs:
        if run.label not in (base, *candidates):
            continue
        share = settings.declared_share(run.label)
        if share is None:
            share = run.server.gpu_memory_utilization
        if share is None:
            share = math.floor(100 * DEFAULT_TOTAL_SHARE / settings.residents) / 100
        out[run.label] = share
    return out


def _cpu_need_gib(run: Any, kv_gib: float, settings: PairedSettings) -> float:
    weights = weights_gib(run.server.model, run.server.load_format)
    if run.spec.model:
        weights += weights_gib(run.spec.model, run.server.load_format)
    return kv_gib + weights + settings.cpu_overhead_gib


def weights_gib(model: str, load_format: str | None) -> float:
    """A model's weights in GiB: its weight files, or for dummy weights an estimate from
    config.json (2 bytes a parameter); 0 where neither is readable (a hub name)."""
    d = Path(model)
    if not d.is_dir():
        return 0.0
    files = [*d.glob("*.safetensors"), *d.glob("*.bin")]
    if files and load_format != "dummy":
        return sum(f.stat().st_size for f in files) / GIB
    try:
        cfg = json.loads((d / "config.json").read_text())
        h, layers = int(cfg["hidden_size"]), int(cfg.get("num_hidden_layers", 1))
        inter, vocab = int(cfg.get("intermediate_size", 4 * h)), int(cfg["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0
    params = 2 * vocab * h + layers * (4 * h * h + 3 * h * inter)
    return 2 * params / GIB


def _mem_available_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / GIB
    except (OSError, ValueError, IndexError):
        return None
    return None


def resident_run(run: Any, plan: PairingPlan) -> Any:
    """``run`` as it is served co-resident: with its memory share (GPU, or CPU without a KV
    space, where vLLM reads the flag as a share of RAM)."""
    share = plan.shares.get(run.label)
    if share is None:
        return run
    server = run.server.model_copy(update={"gpu_memory_utilization": share})
    return run.model_copy(update={"server": server})

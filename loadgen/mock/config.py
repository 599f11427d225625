"""What the mock server can be told: one :class:`MockConfig` field per CLI flag."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from loadgen.errors import SpecloadError
from loadgen.mock.chunks import ChunkPlan, parse_tokens_per_chunk
from loadgen.mock.drift import Drift, parse_drift
from loadgen.mock.faults import STATUS_FAULTS, FaultPlan, parse_rate


@dataclass(slots=True)
class MockConfig:
    """Everything the mock server can be told; each field is one CLI flag (``_`` -> ``-``).

    Checked once, here, so that an in-process ``MockServer(MockConfig(...))`` and the
    command line reject the same values with the same one-line message.
    """

    host: str = "127.0.0.1"
    port: int = 0
    model: str = "mock-model"
    max_model_len: int = 4096
    default_max_tokens: int = 16  # when the request names no max_tokens
    ttft_ms: float = 0.0
    itl_ms: float = 0.0
    token_ms: float = 0.0  # per output token, on top: the queueing mode's service time
    tokens_per_chunk: str = "1"
    num_spec_tokens: int | None = None  # K for the metrics; default: from tokens_per_chunk
    jitter_ms: float = 0.0
    eos_prob: float = 0.0  # per-token stop probability unless the request sets ignore_eos
    seed: int = 0
    max_num_seqs: int = 0  # 0 = unlimited; above it requests wait (num_requests_waiting)
    kv_capacity_tokens: int = 100_000  # kv_cache_usage_perc = live tokens / this
    fail_status: int = 500
    fail_rate: str = "0"
    cut_rate: str = "0"
    stall_rate: str = "0"
    malformed_rate: str = "0"
    no_usage: bool = False
    empty: bool = False
    log: str | None = None
    log_flush_s: float = 0.2
    loop: str = "auto"  # auto (uvloop if importable) | asyncio | uvloop
    reuse_port: bool = False  # SO_REUSEPORT: several mock processes share one port
    drift: str = "none"  # speed over time: linear:R and/or step:F@S (loadgen.mock.drift)
    drift_origin: float | None = None  # time.time() of the drift's t = 0; default: start
    plan: ChunkPlan = field(init=False, repr=False)
    faults: FaultPlan = field(init=False, repr=False)
    spec_k: int = field(init=False, repr=False)
    drift_plan: Drift = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.plan = parse_tokens_per_chunk(self.tokens_per_chunk)
        rates = (
            parse_rate(self.fail_rate, "--fail-rate"),
            parse_rate(self.cut_rate, "--cut-rate"),
            parse_rate(self.stall_rate, "--stall-rate"),
            parse_rate(self.malformed_rate, "--malformed-rate"),
        )
        for name in ("ttft_ms", "itl_ms", "token_ms", "jitter_ms"):
            if getattr(self, name) < 0:
                raise SpecloadError(f"--{name.replace('_', '-')}: must be >= 0")
        for name in ("max_num_seqs", "port"):
            if getattr(self, name) < 0:
                raise SpecloadError(f"--{name.replace('_', '-')}: must be >= 0")
        if self.default_max_tokens < 1:
            raise SpecloadError("--default-max-tokens: must be >= 1")
        if self.kv_capacity_tokens < 1:
            raise SpecloadError("--kv-capacity-tokens: must be >= 1")
        if not 0.0 <= self.eos_prob <= 1.0:
            raise SpecloadError("--eos-prob: must be in [0, 1]")
        if self.fail_status not in STATUS_FAULTS:
            raise SpecloadError(f"--fail-status: must be one of {STATUS_FAULTS}")
        if self.loop not in ("auto", "asyncio", "uvloop"):
            raise SpecloadError("--loop: must be auto, asyncio or uvloop")
        if self.log_flush_s <= 0:
            raise SpecloadError("--log-flush-s: must be > 0")
        self.faults = FaultPlan(rates, self.fail_status, self.empty, self.no_usage)
        self.drift_plan = parse_drift(self.drift)
        self.spec_k = self._spec_k()

    def _spec_k(self) -> int:
        """K of the spec-decode metrics: ``--num-spec-tokens``, at least what a chunk can
        carry beyond its first token."""
        need = self.plan.max_chunk - 1
        if self.num_spec_tokens is None:
            return need
        if self.num_spec_tokens < need:
            raise SpecloadError(
                f"--num-spec-tokens: {self.num_spec_tokens} < {need} "
                "(a chunk can carry more accepted tokens than that)"
            )
        return self.num_spec_tokens

    def to_args(self) -> list[str]:
        """CLI arguments that rebuild this config (for ``start_mock_process``)."""
        out: list[str] = []
        for f in fields(self):
            if not f.init:
                continue
            v = getattr(self, f.name)
            flag = "--" + f.name.replace("_", "-")
            if isinstance(v, bool):
                if v:
                    out.append(flag)
            elif v is not None:
                out += [flag, str(v)]
        return out

"""``/metrics``: the counters and gauges vLLM exposes, in its names and labels.

When chunks may carry more than one token (or ``--num-spec-tokens`` is set), the
spec-decode counters are exposed too, with every streamed chunk counted as one draft of
``K`` tokens that accepted ``n - 1``: ``drafts == chunks``, ``accepted == tokens -
chunks``, ``per_pos[j]`` counts chunks with ``n - 1 > j``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Metric families in the order they are rendered: name (after "vllm:") -> (type, help).
_FAMILIES: dict[str, tuple[str, str]] = {
    "num_requests_running": ("gauge", "Number of requests in model execution batches."),
    "num_requests_waiting": ("gauge", "Number of requests waiting to be processed."),
    "kv_cache_usage_perc": ("gauge", "KV-cache usage. 1 means 100 percent usage."),
    "prompt_tokens_total": ("counter", "Number of prefill tokens processed."),
    "generation_tokens_total": ("counter", "Number of generation tokens processed."),
    "request_success_total": ("counter", "Count of successfully processed requests."),
}
# Only when the server speculates (spec_k > 0); the last one has a row per position.
_SPEC_FAMILIES: dict[str, tuple[str, str]] = {
    "spec_decode_num_drafts_total": ("counter", "Number of spec decoding drafts."),
    "spec_decode_num_draft_tokens_total": ("counter", "Number of draft tokens."),
    "spec_decode_num_accepted_tokens_total": ("counter", "Number of accepted tokens."),
    "spec_decode_num_accepted_tokens_per_pos_total": (
        "counter",
        "Accepted tokens per draft position.",
    ),
}


@dataclass(slots=True)
class MockMetrics:
    """Counters and gauges behind ``/metrics``; updated per streamed chunk."""

    spec_k: int = 0
    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_per_pos: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    generation_tokens: int = 0
    requests_success: int = 0
    waiting: int = 0
    connections: int = 0  # accepted TCP connections (tests check keep-alive with it)

    def __post_init__(self) -> None:
        self.accepted_per_pos = [0] * self.spec_k

    def observe_chunk(self, n: int) -> None:
        self.generation_tokens += n
        if self.spec_k:
            acc = n - 1
            self.num_drafts += 1
            self.num_draft_tokens += self.spec_k
            self.num_accepted_tokens += acc
            pos = self.accepted_per_pos
            for j in range(acc):
                pos[j] += 1


def render_metrics(m: MockMetrics, model: str, running: int, kv_usage: float) -> str:
    """Prometheus text in vLLM's names and labels (``model_name``, ``engine``)."""
    lab = f'model_name="{model}",engine="0"'
    values: dict[str, float] = {
        "num_requests_running": running,
        "num_requests_waiting": m.waiting,
        "kv_cache_usage_perc": kv_usage,
        "prompt_tokens_total": m.prompt_tokens,
        "generation_tokens_total": m.generation_tokens,
        "request_success_total": m.requests_success,
        "spec_decode_num_drafts_total": m.num_drafts,
        "spec_decode_num_draft_tokens_total": m.num_draft_tokens,
        "spec_decode_num_accepted_tokens_total": m.num_accepted_tokens,
    }
    families = {**_FAMILIES, **_SPEC_FAMILIES} if m.spec_k else _FAMILIES
    out: list[str] = []
    for short, (kind, doc) in families.items():
        name = "vllm:" + short
        out.append(f"# HELP {name} {doc}")
        out.append(f"# TYPE {name} {kind}")
        if short in values:
            out.append(f"{name}{{{lab}}} {float(values[short])}")
        else:  # accepted tokens per position
            rows = enumerate(m.accepted_per_pos)
            out.extend(f'{name}{{{lab},position="{j}"}} {float(v)}' for j, v in rows)
    return "\n".join(out) + "\n"

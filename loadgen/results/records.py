"""Per-request records: what the client measured, before any statistics.

All times are seconds on the run's monotonic clock (``time.perf_counter()`` minus the
run's start), so records from one run share one origin and never jump with NTP.
``run.json`` carries the wall-clock epoch of that origin.
"""

from __future__ import annotations

import json
import operator
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any


class ErrorKind(StrEnum):
    """Why a request failed: a record's ``error_kind``, one word each so summaries can count
    failures by cause. Written to JSON as the plain string."""

    CONNECT = "connect"  # connection refused / DNS / TLS: nothing was sent
    # not an event stream: a non-2xx status, a redirect, an HTML page, a body encoded
    # although none was asked for; ``status_code`` says which status, the error the rest
    HTTP = "http"
    TIMEOUT = "timeout"  # per-request timeout or run deadline hit mid-request
    STREAM_CUT = "stream_cut"  # the stream ended before ``data: [DONE]``
    BAD_SSE = "bad_sse"  # a malformed SSE line or invalid JSON in a chunk
    SERVER_ERROR = "server_error"  # an error object inside the stream
    CANCELLED = "cancelled"  # Ctrl-C / SIGTERM / error budget stopped the run mid-request
    EMPTY = "empty"  # 200 and [DONE] but no token was ever produced
    OTHER = "other"


_KINDS = {k.value: k for k in ErrorKind}


@dataclass(slots=True)
class RequestRecord:
    """One request as the client saw it.

    ``chunk_times[i]`` is when the i-th content-bearing chunk's bytes arrived, and
    ``chunk_tokens[i]`` how many output tokens it carried (from the server's cumulative
    ``completion_tokens`` with continuous usage stats, else counted from the text with a
    local tokenizer, else unknown and empty: never 1 per chunk; ``usage_source`` says
    which). Under speculative decoding one chunk carries several tokens, which is why both
    exist.
    """

    request_id: int
    phase: str
    scheduled_s: float  # when the schedule said to send (closed loop: when a slot freed)
    sent_s: float  # when the request's first byte went to the socket (TTFT/E2E start here)
    written_s: float | None = None  # when the request's last byte went to the socket
    prompt_tokens: int | None = None  # from the server's usage, else the prompt source
    expected_output_tokens: int | None = None  # max_tokens asked for (times the body's n)
    first_token_s: float | None = None  # arrival of the first chunk with content
    end_s: float | None = None  # arrival of the last byte (after [DONE])
    chunk_times: list[float] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    output_tokens: int | None = None  # from the server's final usage
    # Where the token counts came from (http/sse.py settle_tokens, docs/metrics.md): "usage"
    # (the server's running count per chunk), "usage_total" (the server's total only),
    # "tokenizer" (counted from the text), "none" (unknown).
    usage_source: str = "usage"
    finish_reason: str | None = None
    status_code: int | None = None
    error: str | None = None  # one line, never a secret
    error_kind: ErrorKind | None = None
    warmup: bool = False
    worker: int = 0
    # What was asked: the prompt suite's category and row, and in a multi-turn replay the
    # conversation (its id) and the turn (1-based) this request was.
    category: str | None = None
    source_row: str | None = None
    conversation: int | None = None
    turn: int | None = None
    # The server's own figures for this request, as the response's ``metrics`` object
    # carried them (vLLM --enable-per-request-metrics: server TTFT, queue time, ...;
    # --per-request-spec-decode-metrics: ``speculative_decoding``, the acceptance).
    server_metrics: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def ttft_s(self) -> float | None:
        if self.first_token_s is None:
            return None
        return self.first_token_s - self.sent_s

    @property
    def e2e_s(self) -> float | None:
        if self.end_s is None:
            return None
        return self.end_s - self.sent_s

    @property
    def send_overhead_s(self) -> float | None:
        """Time to write the request out, from its first byte to its last."""
        if self.written_s is None:
            return None
        return self.written_s - self.sent_s

    @property
    def dispatch_lag_s(self) -> float:
        return self.sent_s - self.scheduled_s

    def to_json(self) -> str:
        """One compact JSON object, fields in declaration order (what ``asdict`` gave, byte
        for byte). Built by hand: ``asdict`` deep-copies every chunk time (milliseconds for
        a long stream, on the event loop), and ``json.dumps`` with options builds a new
        encoder per call."""
        return _ENCODE(dict(zip(_FIELD_NAMES, _FIELD_VALUES(self), strict=True)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RequestRecord:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        kind = known.get("error_kind")
        if isinstance(kind, str):  # a kind this version does not know stays a plain string
            known["error_kind"] = _KINDS.get(kind, kind)
        return cls(**known)


_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(RequestRecord))
_FIELD_VALUES = operator.attrgetter(*_FIELD_NAMES)
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode

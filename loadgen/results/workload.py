"""The workload's side of a phase summary: what the requests asked for and what the server
said about each, beyond the client's latency statistics.

- **Output lengths**: their distribution and the finish reasons. With natural lengths
  (``ignore_eos: false``) they are a result, not a setting: a drafter that makes the model
  stop earlier changes them, and every figure per request depends on them.
- **The server's per-request figures** (vLLM's ``metrics`` object, recorded as
  ``server_metrics``): per-request acceptance (mean acceptance length, draft acceptance
  rate, the histogram of accepted drafts per verify step) as percentiles over requests and
  pooled, and server TTFT and queue time. ``client_minus_server_ttft_ms`` is the client's
  TTFT minus the server's queue time and TTFT (both measured inside the engine, from
  queueing to the first token): the part outside the engine, i.e. the network, the API
  server's HTTP handling, tokenization and chat template, and the client's own stamping.
- **By category** (prompt suites) and **by turn** (multi-turn replay): TTFT, TPOT, output
  length and acceptance per group.

Small pure functions over typed per-request arrays, as :mod:`loadgen.results.summary`:
records are fed one at a time and never kept.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np

from loadgen.results.records import RequestRecord
from loadgen.results.stats import distribution

_NAN = math.nan
OUTPUT_LEN_PERCENTILES = (10.0, 90.0, 99.0)
ACCEPTANCE_PERCENTILES = (10.0, 90.0)


def spec_figures(m: Mapping[str, Any] | None) -> tuple[float, float, float, float] | None:
    """(accepted draft tokens, draft tokens, verify steps, mean acceptance length) from a
    record's ``server_metrics``; None without speculative-decoding figures."""
    sd = m.get("speculative_decoding") if m else None
    if not isinstance(sd, dict):
        return None
    try:
        acc = float(sd["num_accepted_draft_tokens"])
        drafted = float(sd["num_draft_tokens"])
        steps = float(sd["num_spec_steps"])
        al = float(sd["mean_acceptance_length"])
    except (KeyError, TypeError, ValueError):
        return None
    return acc, drafted, steps, al


def server_timing_ms(m: Mapping[str, Any] | None, key: str) -> float:
    """One of the server's timing figures (ms), NaN when absent."""
    v = m.get(key) if m else None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else _NAN


def pooled_acceptance(acc: float, drafted: float, steps: float) -> dict[str, float | None]:
    """Acceptance over many requests as the server's counters define it: length
    1 + accepted / steps (the bonus token included), rate accepted / drafted."""
    return {
        "acceptance_length": 1.0 + acc / steps if steps else None,
        "draft_acceptance_rate": acc / drafted if drafted else None,
    }


class WorkloadColumns:
    """What :meth:`summary` needs beyond the summary's own per-request columns, kept only for
    the requests that have it (a run of random prompts without server figures keeps
    nothing per request): sparse columns, each with the indices of its requests."""

    def __init__(self) -> None:
        self._finish: Counter[str] = Counter()
        self._g_idx = array("q")  # requests with a category or a turn
        self._g_cat = array("i")  # index into _cats, -1 without a category
        self._g_turn = array("i")  # 0 outside a multi-turn replay
        self._cats: dict[str, int] = {}
        self._s_idx = array("q")  # completed requests with server figures
        self._s_ttft = array("d")  # NaN: not among the figures
        self._s_queue = array("d")
        self._acc = array("d")
        self._drafted = array("d")
        self._steps = array("d")
        self._al = array("d")
        self._hist: list[int] = []

    def add(self, r: RequestRecord, i: int) -> None:
        """Measured record ``i`` of the phase (the caller drops warmups)."""
        if r.ok:
            self._finish[r.finish_reason or "unknown"] += 1
        if r.category is not None or r.turn:
            self._g_idx.append(i)
            cat = r.category
            self._g_cat.append(-1 if cat is None else self._cats.setdefault(cat, len(self._cats)))
            self._g_turn.append(r.turn or 0)
        m = r.server_metrics
        if not r.ok or not m:
            return
        self._s_idx.append(i)
        self._s_ttft.append(server_timing_ms(m, "time_to_first_token_ms"))
        self._s_queue.append(server_timing_ms(m, "queue_time_ms"))
        spec = spec_figures(m)
        acc, drafted, steps, al = spec if spec is not None else (_NAN,) * 4
        self._acc.append(acc)
        self._drafted.append(drafted)
        self._steps.append(steps)
        self._al.append(al)
        hist = m["speculative_decoding"].get("acceptance_histogram") if spec else None
        if isinstance(hist, list) and all(isinstance(h, int) for h in hist):
            if len(hist) > len(self._hist):
                self._hist.extend([0] * (len(hist) - len(self._hist)))
            for j, h in enumerate(hist):
                self._hist[j] += h

    def summary(
        self,
        ok: np.ndarray,
        out: np.ndarray,
        prompt: np.ndarray,
        ttft: np.ndarray,
        tpot: np.ndarray,
    ) -> dict[str, Any]:
        """The summary keys (see the module docstring); None where nothing was measured.
        The arrays are the summary's per-request columns (times in s, NaN unknown)."""
        n = ok.size
        full = _Full(n, self)
        s: dict[str, Any] = output_length_keys(out[ok])
        s["finish_reasons"] = dict(sorted(self._finish.items()))
        s.update(self._server_keys(ttft))
        cat, turn = (
            full.column(self._g_idx, self._g_cat, -1),
            full.column(self._g_idx, self._g_turn, 0),
        )
        cols = (ok, out, prompt, ttft, tpot, full)
        s["by_category"] = {c: _group(cat == i, *cols) for c, i in self._cats.items()}
        s["by_turn"] = {
            str(int(t)): _group(turn == t, *cols) for t in sorted(set(turn.tolist()) - {0})
        }
        return s

    def _server_keys(self, ttft_s: np.ndarray) -> dict[str, Any]:
        s_ttft, s_queue = np.array(self._s_ttft), np.array(self._s_queue)
        client_ms = ttft_s[np.array(self._s_idx, dtype=np.int64)] * 1000.0
        s: dict[str, Any] = {"num_server_metrics": int(np.sum(~np.isnan(s_ttft)))}
        s.update(_stat_keys("server_ttft_ms", s_ttft))
        s.update(_stat_keys("server_queue_ms", s_queue))
        s.update(_stat_keys("client_minus_server_ttft_ms", client_ms - (s_queue + s_ttft)))
        al = np.array(self._al)
        have = ~np.isnan(al)
        s["num_request_acceptance"] = int(have.sum())
        acc, drafted, steps = (
            float(np.nansum(np.array(a))) for a in (self._acc, self._drafted, self._steps)
        )
        s["request_accepted_tokens"] = int(acc) if have.any() else None
        s["request_draft_tokens"] = int(drafted) if have.any() else None
        pooled = pooled_acceptance(acc, drafted, steps)
        s["request_acceptance_length"] = pooled["acceptance_length"]
        s["request_draft_acceptance_rate"] = pooled["draft_acceptance_rate"]
        d = distribution(al[have], ACCEPTANCE_PERCENTILES) if have.any() else None
        for stat in ("mean", "median", "p10", "p90"):
            s[f"{stat}_request_acceptance_length"] = d[stat] if d else None
        s["request_acceptance_histogram"] = list(self._hist) if self._hist else None
        return s


class _Full:
    """Sparse columns spread over all ``n`` requests (a fill value elsewhere)."""

    def __init__(self, n: int, w: WorkloadColumns) -> None:
        self.n = n
        idx = np.array(w._s_idx, dtype=np.int64)
        self.acc, self.drafted, self.steps = (
            self.column(idx, a, _NAN) for a in (w._acc, w._drafted, w._steps)
        )

    def column(self, idx: Any, values: array, fill: float) -> np.ndarray:
        out = np.full(self.n, fill, dtype=float)
        if len(values):
            out[np.asarray(idx, dtype=np.int64)] = np.asarray(values, dtype=float)
        return out


def _group(
    sel: np.ndarray,
    ok: np.ndarray,
    out: np.ndarray,
    prompt: np.ndarray,
    ttft: np.ndarray,
    tpot: np.ndarray,
    full: _Full,
) -> dict[str, Any]:
    """One category's or one turn's figures (completed requests; times in, ms out)."""
    done = sel & ok
    t = ttft[done]
    t = t[~np.isnan(t)]
    tp = tpot[done]
    tp = tp[~np.isnan(tp)]
    pr = prompt[done]
    acc, drafted, steps = full.acc[done], full.drafted[done], full.steps[done]
    have = ~np.isnan(acc)
    g: dict[str, Any] = {
        "count": int(sel.sum()),
        "completed": int(done.sum()),
        "mean_ttft_ms": float(np.mean(t)) * 1e3 if t.size else None,
        "median_ttft_ms": float(np.median(t)) * 1e3 if t.size else None,
        "p99_ttft_ms": float(np.percentile(t, 99)) * 1e3 if t.size else None,
        "mean_tpot_ms": float(np.mean(tp)) * 1e3 if tp.size else None,
        "median_tpot_ms": float(np.median(tp)) * 1e3 if tp.size else None,
        "mean_output_len": float(np.mean(out[done])) if done.any() else None,
        "mean_prompt_tokens": float(np.mean(pr)) if pr.size else None,
    }
    if have.any():
        g.update(pooled_acceptance(*(float(a[have].sum()) for a in (acc, drafted, steps))))
    else:
        g.update({"acceptance_length": None, "draft_acceptance_rate": None})
    return g


_LEN_STATS = ("mean", "median", *(f"p{int(p)}" for p in OUTPUT_LEN_PERCENTILES), "min", "max")


def output_length_keys(out: np.ndarray) -> dict[str, float | None]:
    """The completed requests' output lengths (tokens): mean, median, p10/p90/p99, min, max."""
    if out.size == 0:
        return {f"{k}_output_len": None for k in _LEN_STATS}
    d = distribution(out, OUTPUT_LEN_PERCENTILES)
    return {f"{k}_output_len": d[k] for k in _LEN_STATS}


def _stat_keys(name: str, values: np.ndarray) -> dict[str, float | None]:
    """mean/median/p99 of the known (non-NaN) values, None without any."""
    v = values[~np.isnan(values)]
    if v.size == 0:
        return {f"mean_{name}": None, f"median_{name}": None, f"p99_{name}": None}
    d = distribution(v, (99.0,))
    return {f"mean_{name}": d["mean"], f"median_{name}": d["median"], f"p99_{name}": d["p99"]}

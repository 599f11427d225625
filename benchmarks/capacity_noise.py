"""How noisy a capacity probe is, and how much of that noise the probe sees in itself.

Why: the capacity search repeats a probe whose verdict is within the noise its own requests
measured (a moving-block bootstrap interval of the percentile, loadgen/results/slo.py).
Against a queue, the true run-to-run noise of a tail percentile is larger than any
resampling of one run can show: waits come in busy periods, and one run holds few. This
simulates the queue the mock's queueing mode is (N FIFO slots, a fixed service time,
Poisson arrivals) and measures, per offered load:

- the true run-to-run standard deviation of p90 TTFT over many probes (seeds);
- what one probe estimates it to be: its bootstrap interval's half-width / 1.96, resampling
  single requests, and in blocks as loadgen does (median over the probes);
- and the spread of the capacity itself: the rate where each seed's p90 crosses the bound,
  for probes of 120, 200 and 400 requests (its coefficient of variation).

No server and no network: the numbers depend on the queue, not the machine.

    .venv/bin/python benchmarks/capacity_noise.py            # ~1 min
"""

from __future__ import annotations

import argparse
import datetime as _dt
import heapq
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import machine, write_results  # noqa: E402
from loadgen.config.scenario import SLO  # noqa: E402
from loadgen.config.shapes.base import build_schedule  # noqa: E402
from loadgen.config.shapes.poisson import PoissonLoad  # noqa: E402
from loadgen.results import slo as slo_maths  # noqa: E402


def waits(arrivals: np.ndarray, service_s: float, slots: int) -> np.ndarray:
    free = [0.0] * slots
    out = np.empty(len(arrivals))
    for i, a in enumerate(arrivals):
        start = max(a, heapq.heappop(free))
        out[i] = start - a
        heapq.heappush(free, start + service_s)
    return out


def ttfts(rate: float, n: int, seed: int, a: argparse.Namespace) -> np.ndarray:
    sched = build_schedule(PoissonLoad(rate=rate), num_requests=n, duration_s=None, seed=seed)
    assert sched.offsets is not None
    return waits(sched.offsets, a.service_ms / 1e3, a.slots) + a.first_ms / 1e3


def interval_sd(values: np.ndarray, block: bool, seed: int) -> float:
    """A probe's own estimate of its p90's standard deviation (ms)."""
    n = values.size
    samples = slo_maths.LevelSamples(
        ok=np.ones(n, dtype=bool), ttft=values, tpot=np.full(n, np.nan), e2e=values,
        itl=np.zeros(0), itl_request=np.zeros(0, dtype=np.int64),
    )  # fmt: skip
    old = slo_maths.block_length
    if not block:
        slo_maths.block_length = lambda n: 1  # type: ignore[assignment]
    try:
        v = slo_maths.judge(SLO.model_validate({"ttft_ms": {"p": 90, "max": 1e9}}), samples,
                            seed=seed)  # fmt: skip
    finally:
        slo_maths.block_length = old
    b = v.bounds[0]
    assert b.low_ms is not None and b.high_ms is not None
    return (b.high_ms - b.low_ms) / (2 * 1.96)


def crossing(n: int, seed: int, bound_s: float, a: argparse.Namespace) -> float:
    lo, hi = 1.0, 2.0 * a.slots / (a.service_ms / 1e3)
    while hi - lo > 1e-3 * hi:
        mid = (lo + hi) / 2
        if np.percentile(ttfts(mid, n, seed, a), 90) <= bound_s:
            lo = mid
        else:
            hi = mid
    return lo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--service-ms", type=float, default=50.0)
    p.add_argument("--first-ms", type=float, default=12.5, help="first token after admission")
    p.add_argument("--bound-ms", type=float, default=65.0, help="the p90 TTFT bound")
    p.add_argument("--requests", type=int, default=200, help="requests per probe")
    p.add_argument("--seeds", type=int, default=200)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    a = p.parse_args()
    t0 = time.monotonic()
    started = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    bound = a.bound_ms / 1e3
    # the long-run crossing: the median over seeds of 2000-request probes
    ref = float(np.median([crossing(2000, s, bound, a) for s in range(20)]))
    rows = []
    for frac in (0.8, 0.9, 0.95, 1.0):
        rate = frac * ref
        p90 = []
        iid, blk = [], []
        for s in range(a.seeds):
            v = ttfts(rate, a.requests, s, a)
            p90.append(np.percentile(v, 90) * 1e3)
            if s < 60:
                iid.append(interval_sd(v, False, s))
                blk.append(interval_sd(v, True, s))
        true = float(np.std(p90))
        rows.append({
            "load": frac, "rate": rate, "p90_mean_ms": float(np.mean(p90)), "true_sd_ms": true,
            "iid_sd_ms": float(np.median(iid)), "block_sd_ms": float(np.median(blk)),
        })  # fmt: skip
    caps = []
    for n in (120, 200, 400):
        xs = [crossing(n, s, bound, a) for s in range(100)]
        caps.append(
            {"requests": n, "mean": float(np.mean(xs)), "cv": float(np.std(xs) / np.mean(xs))}
        )
    res: dict[str, Any] = {
        "machine": machine(),
        "command": "python benchmarks/capacity_noise.py " + " ".join(sys.argv[1:]),
        "started": started,
        "seconds": round(time.monotonic() - t0, 1),
        "queue": {
            "slots": a.slots,
            "service_ms": a.service_ms,
            "first_ms": a.first_ms,
            "bound_ms": a.bound_ms,
            "requests": a.requests,
            "seeds": a.seeds,
        },
        "long_run_crossing": ref,
        "rows": rows,
        "capacity_spread": caps,
    }
    write_results(a.out, "capacity_noise", res, _markdown(res))


def _markdown(res: dict[str, Any]) -> str:
    q = res["queue"]
    out = [
        "# Capacity probes: their noise, and what they see of it",
        "",
        f"- command: `{res['command'].strip()}` ({res['seconds']} s, {res['started']}); a "
        "simulation, no server: the numbers are the queue's, not the machine's",
        f"- queue: {q['slots']} FIFO slots, {q['service_ms']:g} ms service, first token "
        f"{q['first_ms']:g} ms after admission, Poisson arrivals (loadgen's schedules); "
        f"bound p90 TTFT <= {q['bound_ms']:g} ms, crossed in the long run (2,000-request "
        f"probes) at {res['long_run_crossing']:.1f} req/s",
        f"- probes of {q['requests']} requests; true SD over {q['seeds']} seeds, a probe's "
        "own estimate (95% bootstrap interval half-width / 1.96) median over 60",
        "",
        "| load (x crossing) | req/s | mean p90 TTFT ms | true SD ms | one probe's estimate, "
        "single requests | in blocks (loadgen) | blocks / true |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        out.append(
            f"| {r['load']:.2f} | {r['rate']:.1f} | {r['p90_mean_ms']:.1f} | "
            f"{r['true_sd_ms']:.1f} | {r['iid_sd_ms']:.1f} | {r['block_sd_ms']:.1f} | "
            f"{r['block_sd_ms'] / r['true_sd_ms']:.2f} |"
        )
    out += [
        "",
        "The capacity itself (the rate where one probe's p90 crosses the bound), over 100 seeds:",
        "",
        "| requests per probe | mean req/s | coefficient of variation |",
        "|---|---|---|",
    ]
    for c in res["capacity_spread"]:
        out.append(f"| {c['requests']} | {c['mean']:.1f} | {100 * c['cv']:.1f}% |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()

"""Agreement between `vllm bench serve` and `python -m loadgen` on the same warm server.

Reads the tree that benchmarks/gpu/agreement.sh leaves (CONFIG/cLEVEL/bench-rN.json,
bench-rN-{before,after}.prom, loadgen-rN/<phase>/{summary.json,metrics_*.prom}) and prints a
Markdown table: per config and concurrency, each client's median TTFT, median TPOT, output
throughput and acceptance length (mean over repeats, with min-max), the difference of the
means, and vLLM's own server-side histograms over the same windows as a third witness.

    python benchmarks/agreement.py DIR > DIR/agreement.md
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from statistics import mean

from loadgen.results.server_metrics import metric_sum, parse_prometheus, spec_decode_delta

KEYS = (
    ("median_ttft_ms", "TTFT p50 ms"),
    ("median_tpot_ms", "TPOT p50 ms"),
    ("output_throughput", "out tok/s"),
    ("spec_decode_acceptance_length", "AL"),
)


def server_witness(before: Path, after: Path) -> dict[str, float | None]:
    """Mean TTFT and per-request TPOT from vLLM's histograms over one run's window."""
    b, a = parse_prometheus(before.read_text()), parse_prometheus(after.read_text())

    def hist_mean(name: str) -> float | None:
        s0, s1 = metric_sum(b, name + "_sum"), metric_sum(a, name + "_sum")
        c0, c1 = metric_sum(b, name + "_count"), metric_sum(a, name + "_count")
        if None in (s0, s1, c0, c1) or c1 == c0:
            return None
        return (s1 - s0) / (c1 - c0) * 1e3

    spec = spec_decode_delta(b, a)
    return {
        "server_mean_ttft_ms": hist_mean("vllm:time_to_first_token_seconds"),
        "server_mean_tpot_ms": hist_mean("vllm:request_time_per_output_token_seconds"),
        "server_al": spec.acceptance_length if spec else None,
    }


def collect(level_dir: Path) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {"bench": [], "loadgen": []}
    for p in sorted(level_dir.glob("bench-r*.json")):
        d = json.loads(p.read_text())
        r = p.stem.split("-r")[1]
        d.update(
            server_witness(
                level_dir / f"bench-r{r}-before.prom", level_dir / f"bench-r{r}-after.prom"
            )
        )
        runs["bench"].append(d)
    for p in sorted(level_dir.glob("loadgen-r*/*/summary.json")):
        d = json.loads(p.read_text())
        d.update(server_witness(p.parent / "metrics_before.prom", p.parent / "metrics_after.prom"))
        runs["loadgen"].append(d)
    return runs


def _fmt(vals: list[float]) -> str:
    if not vals:
        return "n/a"
    m = mean(vals)
    return f"{m:.2f} ({min(vals):.2f}–{max(vals):.2f})" if len(vals) > 1 else f"{m:.2f}"


def _vals(runs: list[dict], key: str) -> list[float]:
    return [float(r[key]) for r in runs if r.get(key) is not None]


def table(root: Path) -> tuple[str, list[dict]]:
    lines = [
        "| config | c | metric | vllm bench serve | loadgen | diff "
        "| server (bench runs) | server (loadgen runs) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    for cfg in sorted(p.name for p in root.iterdir() if p.is_dir()):
        levels = sorted(root.glob(f"{cfg}/c*"), key=lambda p: int(re.sub(r"\D", "", p.name)))
        for ld in levels:
            runs = collect(ld)
            c = ld.name[1:]
            for key, label in KEYS:
                b, lg = _vals(runs["bench"], key), _vals(runs["loadgen"], key)
                if not b and not lg:
                    continue
                diff = None
                if b and lg:
                    diff = (
                        (mean(lg) - mean(b)) / mean(b) * 100
                        if key != "spec_decode_acceptance_length"
                        else mean(lg) - mean(b)
                    )
                witness = {
                    "median_ttft_ms": "server_mean_ttft_ms",
                    "median_tpot_ms": "server_mean_tpot_ms",
                    "spec_decode_acceptance_length": "server_al",
                }.get(key)
                sb = _fmt(_vals(runs["bench"], witness)) + " (mean)" if witness else ""
                sl = _fmt(_vals(runs["loadgen"], witness)) + " (mean)" if witness else ""
                if key == "spec_decode_acceptance_length":
                    sb, sl = sb.replace(" (mean)", ""), sl.replace(" (mean)", "")
                dtxt = (
                    "n/a"
                    if diff is None
                    else (f"{diff:+.3f}" if key.startswith("spec") else f"{diff:+.1f}%")
                )
                lines.append(
                    f"| {cfg} | {c} | {label} | {_fmt(b)} | {_fmt(lg)} | {dtxt} | {sb} | {sl} |"
                )
                rows.append(
                    {
                        "config": cfg,
                        "c": int(c),
                        "metric": key,
                        "bench": b,
                        "loadgen": lg,
                        "diff": diff,
                    }
                )
    return "\n".join(lines), rows


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python benchmarks/agreement.py AGREEMENT_DIR", file=sys.stderr)
        return 2
    root = Path(argv[0])
    md, rows = table(root)
    print(md)
    (root / "agreement.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

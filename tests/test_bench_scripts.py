"""The pure parts of benchmarks/workers_scaling.py (core split, scaling columns) and
benchmarks/dispatch_timer.py (aggregation over repeats). The benchmarks themselves are run
by hand; their outputs are committed in benchmarks/results/."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any


def _load(name: str) -> Any:
    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


ws = _load("workers_scaling")
dt = _load("dispatch_timer")


def test_cpu_list_reads_the_kernel_format() -> None:
    assert ws._cpu_list("0-3,8\n") == [0, 1, 2, 3, 8]
    assert ws._cpu_list("5") == [5]


def test_smt_order_keeps_siblings_together(monkeypatch) -> None:
    # 4 physical cores with siblings c and c+4 (the usual Linux numbering)
    def read(self: Path) -> str:
        c = int(self.parts[-3].removeprefix("cpu"))
        return f"{c % 4},{c % 4 + 4}"

    monkeypatch.setattr(Path, "read_text", read)
    assert ws.smt_order(list(range(8))) == [0, 4, 1, 5, 2, 6, 3, 7]
    assert ws.smt_order([0, 1, 4]) == [0, 4, 1]  # only usable cores


def test_default_levels_end_at_the_core_count() -> None:
    assert ws.default_levels(8) == [1, 2, 4, 8]
    assert ws.default_levels(12) == [1, 2, 4, 8, 12]
    assert ws.default_levels(1) == [1]


def test_scaling_columns() -> None:
    cpu = "loadgen_cpu_us_per_chunk"
    rows = [{"workers": 1, "chunks_per_s": 100.0, "req_per_s": 10.0, cpu: 20.0},
            {"workers": 4, "chunks_per_s": 360.0, "req_per_s": 35.0, cpu: 25.0}]  # fmt: skip
    ws.add_scaling(rows)
    assert rows[0]["cpu_efficiency_vs_1"] == 1.0 and rows[1]["cpu_efficiency_vs_1"] == 0.8
    assert rows[1]["speedup"] == 3.6 and rows[1]["scaling_vs_linear"] == 0.9
    assert rows[1]["chunks_per_s_per_worker"] == 90.0 and rows[1]["req_speedup"] == 3.5


def test_dispatch_timer_aggregates_median_min_max_per_cell() -> None:
    runs = [
        {"rate": 15.0, "spin_ms": s, "p50_dispatch_lag_ms": v, "p99_dispatch_lag_ms": v,
         "max_dispatch_lag_ms": v, "cpu_per_wall": v}
        for s, v in [(0.0, 3.0), (2.0, 1.0), (0.0, 1.0), (0.0, 2.0)]
    ]  # fmt: skip
    cells = dt.aggregate(runs)
    assert [(c["rate"], c["spin_ms"], c["repeats"]) for c in cells] == [(15.0, 0.0, 3),
                                                                       (15.0, 2.0, 1)]  # fmt: skip
    assert cells[0]["p50_dispatch_lag_ms"] == (2.0, 1.0, 3.0)
    assert cells[1]["cpu_per_wall"] == (1.0, 1.0, 1.0)
    md = dt.markdown(
        {"machine": {"cpu_count": 2, "cpu_model": "x", "platform": "p", "python": "3",
                     "uvloop": "0.23.0", "loadavg_at_start": [0, 0, 0]},
         "command": "c", "elapsed_s": 1, "date": "d",
         "config": {"seconds": 1, "output_tokens": 16, "repeats": 3}, "cells": cells}
    )  # fmt: skip
    assert "| 15 | 0 | 2.00 (1.00–3.00) |" in md and "event loop uvloop 0.23.0" in md

"""benchmarks/workers_scaling.py's pure parts: the core split and the scaling columns (the
benchmark itself is run by hand; its output is committed in benchmarks/results/)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "workers_scaling.py"
_spec = importlib.util.spec_from_file_location("workers_scaling", _PATH)
assert _spec and _spec.loader
ws = importlib.util.module_from_spec(_spec)
sys.modules["workers_scaling"] = ws
_spec.loader.exec_module(ws)


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

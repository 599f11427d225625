"""Graphs from the sweep's results CSV, as the original experiment's analyze_results.py.

python analyze_results.py raw_data/vllm_benchmark_results.csv   # -> visualizations/
"""

from loadgen.report.cli import analyze_main

if __name__ == "__main__":
    raise SystemExit(analyze_main())

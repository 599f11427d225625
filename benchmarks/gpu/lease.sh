#!/usr/bin/env bash
# Runs ON the GPU machine (vLLM 0.26.0 in /tmp/site, ../shared/gpu/README.md) from a copy of the
# repo at /tmp/specload, in the background, so a lease's runs survive between `run` calls:
#   setsid nohup bash benchmarks/gpu/lease.sh STEP... > /tmp/lease.log 2>&1 &
# and benchmarks/gpu/collect.sh packs whatever is done into $OUT at each poll. Steps:
#   paired        scenarios/matrix-gpu-8b-paired.yaml: none, 1B draft k=3 and EAGLE-3 head k=3
#                 co-resident, levels interleaved with intervals, then capacity at the chat SLO
#   perreq        the same at c=1 and 16 with vLLM's per-request timing figures
#   flags         whether this vLLM has the per-request metrics flags (its --help)
#   overhead16    benchmarks/client_overhead.py on 16 cores, short outputs only, each step
#                 bounded (a client that falls behind is stopped and recorded as not held)
#   sweep8b       resume the committed sweep (results/gpu-sweep-h100): runs only its pending
#                 configurations (dummy 1B draft k=1 and k=5)
#   agree-spec    agreement round 2 with the draft model (all levels, 3 repeats, prewarmed, ABBA)
#   agree-nospec  agreement round 2 without speculation at c=16 and 64
#   original      the original config.yaml at GPU scale (scenarios/original-config-gpu.yaml)
#   workers       benchmarks/workers_scaling.py on the host's CPUs (mock on 8 cores, loadgen on
#                 the rest), no GPU used: the 16-core host is the biggest machine lent here
#   overhead      benchmarks/client_overhead.py, loadgen (both transports) and vLLM's client
set -u
cd /tmp/specload
mkdir -p /tmp/bench
export PYTHONPATH=/tmp/site:/tmp/specload HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
V="python3 -m vllm.entrypoints.cli.main serve"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > /tmp/gpu.txt
python3 -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)" \
  > /tmp/versions.txt 2>/dev/null
for step in "$@"; do
  echo "=== $step start $(date -u +%T)"
  case $step in
    paired)
      python3 -m server_launch --matrix scenarios/matrix-gpu-8b-paired.yaml --backend local \
        --vllm-cmd "$V" --output-dir /tmp/paired --resume --no-progress --no-report ;;
    perreq)
      python3 -m server_launch --matrix scenarios/matrix-gpu-8b-paired-perreq.yaml \
        --backend local --vllm-cmd "$V" --output-dir /tmp/perreq --resume --no-progress \
        --no-report ;;
    flags)
      python3 -m vllm.entrypoints.cli.main serve --help=all > /tmp/bench/vllm-help.txt 2>&1
      grep -n -- "per-request" /tmp/bench/vllm-help.txt > /tmp/bench/vllm-per-request-flags.txt
      grep -rn -i "per.request" /tmp/site/vllm/entrypoints /tmp/site/vllm/engine/arg_utils.py \
        > /tmp/bench/vllm-per-request-source.txt 2>&1
      echo "per-request flags: $(wc -l < /tmp/bench/vllm-per-request-flags.txt) help lines," \
        "$(wc -l < /tmp/bench/vllm-per-request-source.txt) source lines" ;;
    overhead16)
      lscpu > /tmp/bench/lscpu.txt
      timeout 1100 python3 benchmarks/client_overhead.py --clients loadgen-raw,vllm --ramp-outputs 16 \
        --ramp-start 4000 --concurrency 64,512 --outputs 16 \
        --out /tmp/bench --name client_overhead-h200host ;;
    sweep8b)
      [ -d /tmp/sweep ] || cp -r results/gpu-sweep-h100 /tmp/sweep
      python3 -m server_launch --matrix scenarios/matrix-gpu-8b.yaml --backend local \
        --vllm-cmd "$V" --output-dir /tmp/sweep --resume --no-progress --no-report ;;
    agree-spec) A=/tmp/agree2 CONFIGS=spec REPS=3 bash benchmarks/gpu/agreement.sh ;;
    agree-nospec) A=/tmp/agree2 CONFIGS=nospec LEVELS="16 64" REPS=3 bash benchmarks/gpu/agreement.sh ;;
    original)
      python3 -m server_launch --matrix scenarios/original-config-gpu.yaml --backend local \
        --vllm-cmd "$V" --output-dir /tmp/orig --resume --no-progress ;;
    workers)
      lscpu > /tmp/bench/lscpu.txt
      python3 benchmarks/workers_scaling.py --mock-procs 8 --out /tmp/bench \
        --name workers_scaling-h100host ;;
    overhead)
      python3 benchmarks/client_overhead.py --clients loadgen-httpx,loadgen-raw,vllm \
        --out /tmp/bench --name client_overhead-h100host ;;
    *) echo "unknown step $step" ;;
  esac
  echo "=== $step done rc=$? $(date -u +%T)"
  pkill -f "vllm.entrypoints.cli.main serve"; sleep 3
done
echo LEASE DONE

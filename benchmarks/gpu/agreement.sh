#!/usr/bin/env bash
# Runs ON the GPU machine (vLLM 0.26.0 in /tmp/site, see ../shared/gpu/README.md), from the repo
# root, in the background: `setsid nohup benchmarks/gpu/agreement.sh > /tmp/agree/driver.log 2>&1 &`.
# For each server config (no speculation; dummy 1B draft k=3 with synthetic acceptance), one
# warm server; per concurrency level, `vllm bench serve` and `python -m loadgen` alternate on
# the same workload (random 256 in / 128 out, ignore_eos, seed 1), REPS times each, each run
# warmed up at its level. /metrics is scraped around every bench run (loadgen saves its own),
# so vLLM's server-side histograms are a third witness. Results: $A/<config>/... (A=/tmp/agree).
# Round 2 (PREWARM=1, the default): before measuring, one throw-away run per level warms every
# batch shape (Triton JIT), and the order alternates per repeat (bench first on odd repeats,
# loadgen first on even), so neither client always meets the colder server. NMUL multiplies
# the requests per run (16, 32, then c*4 at c>4).
set -u
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
V="python3 -m vllm.entrypoints.cli.main"
A=${A:-/tmp/agree}; M=/tmp/models; mkdir -p $A; NMUL=${NMUL:-1}; PREWARM=${PREWARM:-1}
LEVELS="${LEVELS:-1 4 16 64}"; REPS="${REPS:-2}"; PORT=8000; URL=http://127.0.0.1:$PORT
[ -d $M/llama-3.1-8b ] || { python3 -m server_launch.dummy_models llama-3.1-8b $M/llama-3.1-8b && python3 -m server_launch.dummy_models llama-3.2-1b $M/llama-3.2-1b; } || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > $A/gpu.txt
python3 -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)" > $A/versions.txt 2>/dev/null
SPEC='{"method":"draft_model","model":"'$M'/llama-3.2-1b","num_speculative_tokens":3,"rejection_sample_method":"synthetic","synthetic_acceptance_rates":[0.73,0.52,0.35]}'
serve() { # label, extra args...
  label=$1; shift; mkdir -p $A/$label
  $V serve $M/llama-3.1-8b --load-format dummy --port $PORT --max-model-len 4096 --seed 0 "$@" > $A/$label/serve.log 2>&1 &
  echo $! > $A/$label/pid; t0=$(date +%s)
  until curl -sf $URL/health >/dev/null; do sleep 2
    kill -0 $(cat $A/$label/pid) 2>/dev/null || { echo "$label: server died"; tail -20 $A/$label/serve.log; return 1; }
    [ $(( $(date +%s)-t0 )) -gt 400 ] && { echo "$label: not healthy"; return 1; }; done
  echo "$label READY after $(( $(date +%s)-t0 ))s"
}
bench() { # label c n rep
  d=$A/$1/c$2; mkdir -p $d; curl -s $URL/metrics > $d/bench-r$4-before.prom
  $V bench serve --base-url $URL --model $M/llama-3.1-8b --tokenizer $M/llama-3.1-8b --dataset-name random \
    --random-input-len 256 --random-output-len 128 --ignore-eos --num-prompts $3 --max-concurrency $2 \
    --num-warmups $2 --seed 1 --save-result --result-dir $d --result-filename bench-r$4.json > $d/bench-r$4.log 2>&1
  curl -s $URL/metrics > $d/bench-r$4-after.prom
  grep -E "Median TTFT|Median TPOT|Output token throughput" $d/bench-r$4.log | tr -s ' ' | sed "s/^/$1 c=$2 r$4 bench: /"
}
loadgen() { # label c n rep
  d=$A/$1/c$2; python3 -m loadgen --scenario concurrency --base-url $URL --output-dir $d/loadgen-r$4 \
    --concurrency $2 --num-requests $3 --warmup $2 --input-tokens 256 --output-tokens 128 --seed 1 \
    --label $1 --no-progress > $d/loadgen-r$4.log 2>&1 || tail -3 $d/loadgen-r$4.log
  python3 -c "import json,sys; s=json.load(open('$d/loadgen-r$4/summary.json'))['phases']; s=next(iter(s.values())); print('$1 c=$2 r$4 loadgen: ttft %.2f tpot %.3f tput %.1f AL %s' % (s['median_ttft_ms'], s['median_tpot_ms'], s['output_throughput'], s['spec_decode_acceptance_length']))"
}
for cfg in ${CONFIGS:-nospec spec}; do
  if [ $cfg = spec ]; then serve spec --speculative-config "$SPEC" || continue; else serve nospec || continue; fi
  if [ "$PREWARM" = 1 ]; then for c in $LEVELS; do
    python3 -m loadgen --scenario concurrency --base-url $URL --output-dir /tmp/prewarm-$cfg-c$c \
      --concurrency $c --num-requests $(( c*2 )) --warmup $c --input-tokens 256 --output-tokens 128 \
      --seed 2 --no-progress > /dev/null 2>&1; echo "$cfg c=$c prewarmed"; done; fi
  for c in $LEVELS; do n=$(( (c==1 ? 16 : (c==4 ? 32 : c*4)) * NMUL ))
    for r in $(seq 1 $REPS); do
      if [ $(( r % 2 )) = 1 ]; then bench $cfg $c $n $r; loadgen $cfg $c $n $r
      else loadgen $cfg $c $n $r; bench $cfg $c $n $r; fi
    done
  done
  kill $(cat $A/$cfg/pid); sleep 8; pkill -f "vllm.entrypoints.cli.main serve" ; sleep 2
done
echo AGREEMENT DONE

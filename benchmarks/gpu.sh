#!/usr/bin/env bash
# The GPU measurements of BENCHMARKS.md in one run (under 10 minutes: the sum of its parts' time limits), from
# a source checkout on an image that has jax, flax, optax, orbax-checkpoint and chex but no package index
# (README: "GPU images without a package index").
#
#   bash benchmarks/gpu.sh [OUT_DIR]      # default: $OUT, else /tmp/md4_gpu_bench
#   SMOKE=1 bash benchmarks/gpu.sh        # the same parts at toy sizes, to check the script on a CPU
#   MDLM=1 bash benchmarks/gpu.sh         # instead: issue 18's converted-MDLM sampling run alone (its own 9 min)
#
# Environment: WHEELS (default .whl): a folder of pure-Python wheels to install first (ml-collections,
# tensorboardX); KJV (default ../shared/data/kjv.txt.gz, else .bench_data/kjv.txt.gz): the KJV text for the
# kjv_tiny benchmarks (skipped without it). Each part has its own time limit; a part that fails or runs out of
# time does not stop the others. OUT_DIR gets two files (the device tool brings back at most 8): results.md (the
# environment, then each part's command, exit status and tables) and logs.tar.gz (each part's stderr).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out="${1:-${OUT:-/tmp/md4_gpu_bench}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
wheels="${WHEELS:-.whl}"
if [ -d "$wheels" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/md4_site \
      "$wheels"/*.whl || exit 1
  export PYTHONPATH="/tmp/md4_site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
kjv="${KJV:-}"
for candidate in ../shared/data/kjv.txt.gz .bench_data/kjv.txt.gz; do
  [ -z "$kjv" ] && [ -f "$candidate" ] && kjv="$(realpath "$candidate")"
done

mfu_size=(--config.train.batch_size=16 --measure_peak --steps=20)
sampling_size=(--size small --dtype bfloat16 --repeats 3)
if [ "${SMOKE:-0}" = 1 ]; then
  mfu_size=(--config.train.batch_size=4 --config.model.size=tiny --config.data.seq_len=128 --peak_tflops=0
            --steps=2 --warmup=1)
  sampling_size=(--size tiny --dtype bfloat16 --length 128 --vocab 1000 --steps 8)
fi

logs=$(mktemp -d)
results="$out/results.md"
part() {  # part NAME SECONDS COMMAND...: stdout -> results.md, stderr -> logs/NAME.log
  local name=$1 seconds=$2
  shift 2
  printf '\n## %s\n\n`%s` (limit %ss, started %s)\n\n' "$name" "$*" "$seconds" "$(date -u +%H:%M:%S)" >> "$results"
  timeout "$seconds" "$@" >> "$results" 2> "$logs/$name.log"
  local rc=$?
  printf '\nexit %s at %s\n' "$rc" "$(date -u +%H:%M:%S)" >> "$results"
  echo "$name: exit $rc"
  tail -n 3 "$logs/$name.log"
}
trap 'tar -czf "$out/logs.tar.gz" -C "$logs" .' EXIT

{
  echo "# GPU benchmarks ($(date -u))"
  echo
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
  python3 -c "import sys, jax, flax, optax, orbax.checkpoint as o, ml_collections; print(sys.version.split()[0], \
'jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__); \
print(jax.devices())" 2>&1
} > "$results"
cat "$results"

# Issue 18: a converted DiT of mdlm-owt's shape (random weights: this image has neither the checkpoint nor GPT-2
# Large, so no MAUVE / Gen PPL) sampled in the exact ReMDM setting, L = 1024, T = 1024 then 2048 while time is left:
# samples/s, denoiser calls, peak memory for MDLM and ReMDM loop. A separate run: the parts below fill 10 minutes.
if [ "${MDLM:-0}" = 1 ]; then
  table1_size=(--random small --num_samples 64 --steps 1024,2048 --dtype bfloat16 --time_limit 480)
  [ "${SMOKE:-0}" = 1 ] && table1_size=(--smoke --num_samples 8 --steps 32,64)
  part remdm_table1 540 python3 benchmarks/remdm_table1.py "${table1_size[@]}"
  echo "done $(date -u)" | tee -a "$results"
  exit 0
fi

# In order of importance; the limits add up to 9.75 minutes.
# Issue 7: MD4-S (12 layers, 12 heads, width 768, V = 50257) at L = 1024, bf16 compute, batch 16 (16k tokens)
# per step, against the card's measured bf16 peak; with and without cuDNN attention, with remat. (XLA's CPU
# buffer assignment gives this step 51 GiB of temporaries, B = 32 101 GiB: B = 16 is the batch that should fit
# an H100 with XLA attention too.) scan_layers: the blocks under one jax.lax.scan (compile time, step cost).
part mfu 210 python3 benchmarks/mfu.py --config=experiments/owt_small.py \
    --variants=base,xla_attention,remat,scan_layers \
    "${mfu_size[@]}"
# Issue 7: the sampler (per step, NFE, share outside the network at V = 50257, memory) with MD4-S, the head only
# where tokens are drawn, then the tiny net of the CPU table.
part head_small 90 python3 benchmarks/sampling.py --compare_head "${sampling_size[@]}"
part sampling_small 90 python3 benchmarks/sampling.py "${sampling_size[@]}"
# Issue 4: kjv_tiny start-up to the first step (cold and warm compilation cache) and the 1500-step run.
if [ -n "$kjv" ] && [ "${SMOKE:-0}" != 1 ]; then
  part startup 50 python3 benchmarks/startup.py --repeats 1 --config.data.path="$kjv"
  part train_kjv 115 python3 benchmarks/train.py --data_path "$kjv" --workdir /tmp/md4_kjv_bench
else
  echo "kjv_tiny start-up and training skipped (no KJV text, or SMOKE=1)" | tee -a "$results"
fi
[ "${SMOKE:-0}" = 1 ] || part sampling_tiny 30 python3 benchmarks/sampling.py --repeats 3
echo "done $(date -u)" | tee -a "$results"

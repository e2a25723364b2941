#!/usr/bin/env bash
# Issue 4's teacher benchmark, refine vs ../shared/peers/hf_peer.py (transformers + PyTorch) in the
# same run on the same card and the same random-init checkpoints (made by the peer's make-model from
# bench/configs/*.json). Run on the GPU machine after scripts/gpu-check.sh built build-gpu:
#   PEER=.carry/hf_peer.py bench/teacher_vs_hf.sh [CONFIG_NAME...]
# (the device run carries the peer script: cp ../shared/peers/hf_peer.py .carry/). Writes one JSON
# file per measurement under $OUT (default bench-out) and prints them.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench-out}
peer=${PEER:-.carry/hf_peer.py}
models=${MODELS_DIR:-/tmp/refinery-bench-models}
bin=${BIN:-build-gpu/bench}
mkdir -p "$out" "$models"
configs=("$@")
[ ${#configs[@]} -eq 0 ] && configs=(deepseek_v3_v2lite_scale llama_7b_shape)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/gpu.txt"
date -u +%Y-%m-%dT%H:%MZ > "$out/date.txt"

run() {  # run NAME CMD...: stdout -> $out/NAME.json, stderr -> $out/NAME.log
  local name=$1; shift
  local start=$(date +%s)
  "$@" > "$out/$name.json" 2> "$out/$name.log"
  local rc=$?
  echo "$name (rc $rc, $(( $(date +%s) - start )) s): $(tail -c 600 "$out/$name.json")"
}

run kernels "$bin/kernels_bench"
for m in "${configs[@]}"; do
  dir=$models/$m
  if [ ! -f "$dir/config.json" ]; then
    run "make_$m" python3 "$peer" make-model --config "bench/configs/$m.json" --out "$dir"
  fi
  run "refine_prefill_$m" "$bin/teacher_bench" "$dir" --mode logits --batch 4 --seq 2048
  run "refine_top64_$m" "$bin/teacher_bench" "$dir" --mode topk --top-k 64 --batch 4 --seq 2048 \
    --out /tmp/refinery-bench-top64.h5
  run "refine_decode_$m" "$bin/teacher_bench" "$dir" --mode decode --prompt 128 --new 128
  run "peer_prefill_$m" python3 "$peer" prefill --model "$dir" --batch 4 --seq 2048
  run "peer_decode_$m" python3 "$peer" decode --model "$dir" --batch 1 --prompt 128 --new 128
done

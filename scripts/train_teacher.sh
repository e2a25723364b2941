#!/usr/bin/env bash
# Trains models/refinery-teacher-moe from random initialization with refine itself (issue 5), on the
# GPU machine. TRAIN_H5 is the token dataset of ../shared/data/corpus/train.jsonl made as
# models/refinery-teacher-moe/TRAINING.md says (refinery-8k tokenizer, --add-special).
#   BIN=build-gpu/refine TRAIN_H5=train.h5 OUT_DIR=/tmp/teacher scripts/train_teacher.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-build-gpu/refine}
"$bin" distill --device cuda \
  --student-config models/refinery-teacher-moe/config.json --tokenizer data/tokenizers/refinery-8k \
  --data "${TRAIN_H5:-train.h5}" --kd-weight 0 --ce-weight 1 \
  --seq-len 512 --batch 64 --steps "${STEPS:-900}" --lr 2e-3 --warmup 50 --min-lr-ratio 0.1 \
  --weight-decay 0.1 --max-grad-norm 1.0 --bias-update-rate 1e-3 --seed 0 \
  --eval-every 300 --eval-windows 64 --save-every 300 --log-every 50 --save-dtype bf16 \
  --out "${OUT_DIR:-/tmp/refinery-teacher}" ${RESUME:+--resume}

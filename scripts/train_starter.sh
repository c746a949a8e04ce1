#!/usr/bin/env bash
# Train the starter model shipped in the package (trainer/starter/): the trainer's default recipe
# on cbsd432 for as long as the curve pays, scored on cbsd68, which it never saw.
#   scripts/train_starter.sh                  # ../shared/data -> runs/starter, EPOCHS epochs in all
#   EPOCHS=150 scripts/train_starter.sh       # the same run, continued to epoch 150
#   PUBLISH=1 scripts/train_starter.sh        # also copy the scored export into trainer/starter/
# Resumable: rerun the same command after an interruption and it continues from $OUT/model (the
# learning rate is constant, so raising EPOCHS continues the same curve). No early stopping: the
# export holds the epoch with the best loss on the tuning slice (a stable 10% of cbsd432 by file
# name hash, never trained on), and the decode fit chooses its settings there too.
# About 55 s an epoch on 2 CPU cores (docs/QUALITY.md "Starter model").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
DATA_ROOT=${DATA_ROOT:-../shared/data}
OUT=${OUT:-runs/starter}
EPOCHS=${EPOCHS:-100}
TRAIN_FLAGS=${TRAIN_FLAGS:-}  # e.g. --jit_compile (measured in docs/QUALITY.md)

if [ ! -e "$OUT/data/train.manifest.json" ]; then
    "$PYTHON" -m trainer.prepare --input_dir="$DATA_ROOT/cbsd432" --output_dir="$OUT/data" --split=train \
        --num_shards=4 --encoding=raw --holdout_fraction=0.1 --holdout_split=tuning
fi
# shellcheck disable=SC2086  # TRAIN_FLAGS is a list of flags
"$PYTHON" -m trainer.task --train_data="$OUT/data/train-*" --eval_data="$OUT/data/tuning-*" \
    --model_dir="$OUT/model" --export_dir="$OUT/export" --epochs="$EPOCHS" --patience=0 --seed=1 \
    --init_from= $TRAIN_FLAGS 2>&1 | tee -a "$OUT/train.log"
"$PYTHON" -m trainer.evaluate --image_dir="$DATA_ROOT/cbsd68" --report_dir="$OUT/report" \
    --saved_model="$OUT/export"
if [ -n "${PUBLISH:-}" ]; then
    "$PYTHON" scripts/publish_starter.py --export="$OUT/export" --report="$OUT/report/metrics.json" \
        --train_log="$OUT/train.log"
fi

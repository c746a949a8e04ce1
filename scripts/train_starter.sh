#!/usr/bin/env bash
# Train the starter model shipped in the package (trainer/starter/): the trainer's default recipe
# on cbsd432 for as long as the curve pays, scored on cbsd68, which it never saw.
#   scripts/train_starter.sh                  # ../shared/data -> runs/starter, EPOCHS epochs in all
#   EPOCHS=150 scripts/train_starter.sh       # the same run, continued to epoch 150
#   PUBLISH=1 scripts/train_starter.sh        # also copy the scored export into trainer/starter/
# EPOCHS at the default learning rate (1e-3, constant, so raising EPOCHS continues the same curve);
# with ANNEAL_EPOCHS > 0, a second phase of that many epochs from the best weights (--init_from) with
# ANNEAL_FLAGS (default 1e-4, constant). Off by default: docs/QUALITY.md has what each second phase
# gave after 100 epochs (10 at 1e-4; 50 cosine-decayed from 1e-3). Resumable: rerun the same
# command after an interruption and each phase continues from its model_dir. No early stopping:
# each export holds its phase's epoch with the best loss on the tuning slice (a stable 10% of
# cbsd432 by file name hash, never trained on), where the decode fit also chooses its settings.
# About 40-50 s an epoch on 2 CPU cores with mixed_bfloat16 (docs/QUALITY.md "The starter model").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
DATA_ROOT=${DATA_ROOT:-../shared/data}
OUT=${OUT:-runs/starter}
EPOCHS=${EPOCHS:-100}
ANNEAL_EPOCHS=${ANNEAL_EPOCHS:-0}
ANNEAL_FLAGS=${ANNEAL_FLAGS:---learning_rate=1e-4}
TRAIN_FLAGS=${TRAIN_FLAGS:---precision=mixed_bfloat16}  # 22% faster an epoch on this CPU (QUALITY.md)

if [ ! -e "$OUT/data/train.manifest.json" ]; then
    "$PYTHON" -m trainer.prepare --input_dir="$DATA_ROOT/cbsd432" --output_dir="$OUT/data" --split=train \
        --num_shards=4 --encoding=raw --holdout_fraction=0.1 --holdout_split=tuning
fi
data=(--train_data="$OUT/data/train-*" --eval_data="$OUT/data/tuning-*" --patience=0 --seed=1)
# shellcheck disable=SC2086  # TRAIN_FLAGS is a list of flags
"$PYTHON" -m trainer.task "${data[@]}" --model_dir="$OUT/model" --export_dir="$OUT/export" \
    --epochs="$EPOCHS" --init_from= $TRAIN_FLAGS 2>&1 | tee -a "$OUT/train.log"
final="$OUT"
if [ "$ANNEAL_EPOCHS" -gt 0 ]; then
    final="$OUT/anneal"
    # shellcheck disable=SC2086
    "$PYTHON" -m trainer.task "${data[@]}" --model_dir="$final/model" --export_dir="$final/export" \
        --epochs="$ANNEAL_EPOCHS" --init_from="$OUT/model" $ANNEAL_FLAGS $TRAIN_FLAGS 2>&1 |
        tee -a "$OUT/train.log"
fi
report="$final/report-$EPOCHS"  # one per curve point: EPOCHS=10, then 30, ... keeps each one's scores
"$PYTHON" -m trainer.evaluate --image_dir="$DATA_ROOT/cbsd68" --report_dir="$report" \
    --saved_model="$final/export"
if [ -n "${PUBLISH:-}" ]; then
    "$PYTHON" scripts/publish_starter.py --export="$final/export" --report="$report/metrics.json" \
        --train_log="$OUT/train.log"
fi

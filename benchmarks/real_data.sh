#!/usr/bin/env bash
# Test accuracy on the real LEGO photos: three seeds with the default (offline ImageNet) weights,
# and one run from random initialisation for contrast, each a `dvc exp run` in this workspace.
# Usage: benchmarks/real_data.sh [path-to-lego-minifigures]   (about 20 min on 2 idle CPU cores)
set -euo pipefail
lego=$(realpath "${1:-${MINIFIG_LEGO_DIR:-../shared/datasets/lego-minifigures}}")
for seed in 0 1 2; do
  dvc exp run -n "real-seed$seed" -S "data.source=$lego" -S "train.seed=$seed"
done
# random init: the backbone must learn at the full rate (the default 0.03 suits pretrained weights)
# (a workspace `dvc exp run` leaves its -S values in params.yaml, so this one runs with seed 2)
dvc exp run -n real-no-pretraining -S "data.source=$lego" -S model.weights=none \
  -S train.backbone_lr_scale=1.0 -S train.lr=0.003
dvc exp show --md --only-changed
python benchmarks/hard_photos.py   # which test photos the experiments miss

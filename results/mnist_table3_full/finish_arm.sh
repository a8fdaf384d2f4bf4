#!/usr/bin/env bash
# Evaluate one trained 200-epoch arm on all 10,000 MNIST test images and keep what the results
# folder holds for good: the eval CSV/JSON, the training log and config, and the weights-only
# model.pt, which replaces the (larger) resumable checkpoint.pt. Run from the repository root:
#   bash results/mnist_table3_full/finish_arm.sh ARM
# Verified error by IBP and CROWN-IBP on the paper's Fig. 3a grid 0:eps:0.01 and PGD (margin loss,
# 50 steps x 3 restarts) on the same grid, by the drawdown evaluation of `gmbound eval` (largest
# certified radius per sample; PGD only where neither certified nor already broken).
set -euo pipefail
arm="$1"
dir="results/mnist_table3_full/$arm"
[ -f "$dir/checkpoint.pt" ] || { echo "finish_arm.sh: no checkpoint in $dir" >&2; exit 2; }
eps="$(python3 -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['train']['eps'])" "$dir/config.yaml")"
python3 -m gmbound eval --checkpoint "$dir/checkpoint.pt" --label "$arm" --out "$dir" --threads 1 --quiet \
  --eps-grid "0:$eps:0.01" --verifiers ibp,crown-ibp \
  --pgd-steps 50 --pgd-restarts 3 --pgd-loss margin
rm -f "$dir/drawdown.png"   # the per-method figures come from summarize.py
python3 -m gmbound.export "$dir/checkpoint.pt" "$dir/model.pt"
# No git here (a worker runs this while a session may be committing): `git add` of the arm's folder
# records the checkpoint's removal.
rm "$dir/checkpoint.pt"

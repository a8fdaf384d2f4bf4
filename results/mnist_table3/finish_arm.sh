#!/usr/bin/env bash
# Evaluate one finished Table 3 arm on all 10,000 MNIST test images and collect what the results
# folder keeps: eval CSV/JSON (as `gmbound eval` writes them), the training log and config, and the
# weights-only model.pt. Run from the repository root:  bash results/mnist_table3/finish_arm.sh ARM [STEP [PGD_STEP]]
# (the run folder is runs/table3/ARM, made by run_queue.sh). STEP is the verification grid's step,
# 0.01 by default (the paper's Fig. 3a grid), PGD_STEP that of the PGD grid, 0.05 by default. The
# seed-0 arms of IBP / CROWN-IBP / GM-CROWN-IBP use the defaults (they draw Fig. 3a / 3b); seeds 1-2
# and the ablations use 0.05 and 0.1, which hold every eps_eval of Table 3 at a fraction of the
# cost (PGD, 50 steps x 3 restarts per radius, is the larger part of an evaluation).
set -euo pipefail
arm="$1"
step="${2:-0.01}"
pgd_step="${3:-0.05}"
run="runs/table3/$arm"
out="results/mnist_table3/$arm"
eps="$(python3 -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['train']['eps'])" "$run/config.yaml")"
mkdir -p "$out"
# verified error on 0:eps:STEP by IBP and CROWN-IBP; PGD with the margin loss, 50 steps, 3 restarts,
# on the coarser grid 0:eps:PGD_STEP. gmbound eval's default radius search (since issue 22): per sample
# the largest certified grid radius by bisection, PGD only where neither certified nor broken (IBP
# numbers as the exhaustive grid's, CROWN-IBP's sound and mostly higher); add --exhaustive for the
# grid every arm before issue 22 was evaluated on.
python3 -m gmbound eval --checkpoint "$run/checkpoint.pt" --label "$arm" --out "$out" --threads 1 --quiet \
  --eps-grid "0:$eps:$step" --verifiers ibp,crown-ibp \
  --pgd-steps 50 --pgd-restarts 3 --pgd-loss margin --pgd-eps-grid "0:$eps:$pgd_step"
rm -f "$out/drawdown.png"   # the per-method figures come from summarize.py
cp "$run/log.csv" "$out/train_log.csv"
cp "$run/config.yaml" "$out/config.yaml"
python3 -m gmbound.export "$run/checkpoint.pt" "$out/model.pt"

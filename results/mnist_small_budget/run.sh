#!/usr/bin/env bash
# CROWN-IBP vs GM-CROWN-IBP on full MNIST with the same small budget (configs/mnist_small_budget.yaml).
# Both trainings run side by side with one thread each (2-core CPU), then both evaluations.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=runs/mnist_small_budget
RES=results/mnist_small_budget
CFG=configs/mnist_small_budget.yaml
mkdir -p "$OUT" "$RES"
start=$(date +%s)
python -m gmbound train --config "$CFG" threads=1 name=gm-crown-ibp out_dir="$OUT/gm-crown-ibp" > "$OUT/train_gm-crown-ibp.log" 2>&1 &
python -m gmbound train --config "$CFG" threads=1 name=crown-ibp train.method=crown-ibp out_dir="$OUT/crown-ibp" > "$OUT/train_crown-ibp.log" 2>&1 &
wait
trained=$(date +%s)
for m in gm-crown-ibp crown-ibp; do
  python -m gmbound eval --checkpoint "$OUT/$m/checkpoint.pt" --label "$m" --threads 1 --quiet \
    --out "$RES" --plot "$OUT/drawdown_$m.png" > "$OUT/eval_$m.log" 2>&1 &
done
wait
evaluated=$(date +%s)
python -m gmbound plot "$RES/eval_gm-crown-ibp.json" "$RES/eval_crown-ibp.json" -o "$RES/drawdown.png" \
  --title "MNIST, DM-small, eps_train 0.3, 8 epochs (2-core CPU)"
python -m gmbound plot "$RES/eval_gm-crown-ibp.json" "$RES/eval_crown-ibp.json" -o "$RES/drawdown_per_verifier.png" \
  --per-verifier --title "MNIST, DM-small, eps_train 0.3: per verifier"
for m in gm-crown-ibp crown-ibp; do cp "$OUT/$m/log.csv" "$RES/train_log_$m.csv"; done
echo "train ${start}->${trained} ($((trained - start))s), eval $((evaluated - trained))s, total $((evaluated - start))s" | tee "$RES/timing.txt"

#!/usr/bin/env bash
# One training worker for the 200-epoch Table 3 arms. It walks arms.txt in order and trains the
# first arm that is neither finished nor taken by another worker, resuming from the committed
# checkpoint (results/mnist_table3_full/ARM/checkpoint.pt) when there is one, then the next, until
# every arm is trained. Start one worker per core, from the repository root:
#   nohup nice -n 10 bash results/mnist_table3_full/run_arms.sh > /dev/null 2>&1 &   (twice)
# An arm's run folder is its results folder, so committing it commits the latest checkpoint (one
# file per arm, overwritten every epoch, written atomically) and the CSV log; a session that stops
# commits them and the next one, on any machine, starts the workers again. Finished arms are
# evaluated by finish_arm.sh, which replaces the checkpoint by the weights-only model.pt.
# A trained arm (epoch 200) is evaluated right away by finish_arm.sh, by the worker that trained it or,
# when a session stopped between training and evaluation, by the next worker to reach it.
# An arm whose training or evaluation exits with an error gets a FAILED file and is skipped until it is
# removed.
# ARMS=file overrides the arm list (tests); EXTRA="key=value ..." adds overrides to every arm; NO_EVAL=1
# leaves trained arms unevaluated.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
arms="${ARMS:-$here/arms.txt}"
locks="runs/table3_full_locks"
mkdir -p "$locks"
log="$here/queue.log"

epochs_done() {  # the epoch of an arm's checkpoint, 0 without one
  python3 - "$1" <<'PY'
import sys, torch
from pathlib import Path
p = Path(sys.argv[1]) / "checkpoint.pt"
print(int(torch.load(p, map_location="cpu", weights_only=False)["epoch"]) if p.is_file() else 0)
PY
}

while true; do
  started=0
  while read -r arm overrides; do
    [[ -z "$arm" || "$arm" == \#* ]] && continue
    out="$here/$arm"
    [ -f "$out/model.pt" ] && continue                      # trained and evaluated
    [ -f "$out/FAILED" ] && continue                        # stopped by an error: see its train.stdout
    exec {fd}> "$locks/$arm.lock"
    if ! flock -n "$fd"; then exec {fd}>&-; continue; fi   # another worker has it
    epochs="$(python3 -c "import yaml,sys; print(yaml.safe_load(open(sys.argv[1]))['train']['epochs'])" configs/mnist_table3_full.yaml)"
    for kv in $overrides ${EXTRA:-}; do [[ "$kv" == train.epochs=* ]] && epochs="${kv#train.epochs=}"; done
    done_epochs="$(epochs_done "$out")"
    trained=0
    if [ "$done_epochs" -ge "$epochs" ]; then
      if [ -n "${NO_EVAL:-}" ]; then exec {fd}>&-; continue; fi   # trained, left unevaluated
      trained=1   # trained in an earlier session, not yet evaluated
    else
      mkdir -p "$out"
      echo "$(date -u +%FT%TZ) start $arm (from epoch $done_epochs) on $(hostname) at $(git rev-parse --short HEAD)" >> "$log"
      # shellcheck disable=SC2086
      if python3 -m gmbound train --config configs/mnist_table3_full.yaml --resume out_dir="results/mnist_table3_full/$arm" \
           $overrides ${EXTRA:-} >> "$out/train.stdout" 2>&1; then
        echo "$(date -u +%FT%TZ) trained $arm" >> "$log"
        trained=1
      else
        status=$?
        echo "$(date -u +%FT%TZ) FAILED $arm (status $status; see $arm/train.stdout)" >> "$log"
        tail -n 3 "$out/train.stdout" > "$out/FAILED"   # not retried until this file is removed
      fi
    fi
    if [ "$trained" = 1 ] && [ -z "${NO_EVAL:-}" ]; then
      echo "$(date -u +%FT%TZ) evaluate $arm" >> "$log"
      if bash "$here/finish_arm.sh" "$arm" >> "$out/eval.stdout" 2>&1; then
        echo "$(date -u +%FT%TZ) evaluated $arm" >> "$log"
      else
        status=$?
        echo "$(date -u +%FT%TZ) FAILED evaluation of $arm (status $status; see $arm/eval.stdout)" >> "$log"
        tail -n 3 "$out/eval.stdout" > "$out/FAILED"
      fi
    fi
    exec {fd}>&-
    started=1
    break   # walk the list again from the top: an arm freed by another worker comes first
  done < <(cat "$arms")
  [ "$started" = 0 ] && break
done

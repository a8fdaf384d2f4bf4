#!/usr/bin/env bash
# One training worker for the Table 3 arms: pops the next line of a job file and trains it,
# resuming from the run's checkpoint when one exists, until the file is empty. Start one worker
# per core, from the repository root, e.g.
#   nohup nice -n 19 bash results/mnist_table3/run_queue.sh runs/table3/jobs.txt &   (twice)
# A job line: ARM key=value ... (overrides of configs/mnist_table3.yaml); the run folder is
# runs/table3/ARM. Finished arms are listed in runs/table3/done.txt.
set -uo pipefail
jobs_file="$1"
root="$(dirname "$jobs_file")"
while true; do
  line="$(flock "$jobs_file.lock" sh -c 'head -n 1 "$0" && sed -i 1d "$0"' "$jobs_file")"
  [ -z "$line" ] && break
  set -- $line
  arm="$1"; shift
  out="$root/$arm"
  resume=()
  [ -f "$out/checkpoint.pt" ] && resume=(--resume)
  echo "$(date -u +%FT%TZ) start $arm $*" >> "$root/queue.log"
  if python3 -m gmbound train --config configs/mnist_table3.yaml "${resume[@]}" out_dir="$out" "$@" \
       > "$out.stdout" 2>&1; then
    echo "$arm" >> "$root/done.txt"
    echo "$(date -u +%FT%TZ) done $arm" >> "$root/queue.log"
  else
    echo "$(date -u +%FT%TZ) FAILED $arm (see $out.stdout)" >> "$root/queue.log"
  fi
done

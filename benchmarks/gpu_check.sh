#!/usr/bin/env bash
# One command for a lent GPU (see benchmarks/gpu_check.py): build, CUDA tests, compute-sanitizer,
# the benchmark grid and the rows for benchmarks/RESULTS.md, with the machine's own python3 and torch.
#   bash benchmarks/gpu_check.sh --out "$OUT"        # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --dry-run           # the same steps on the CPU at tiny sizes
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"

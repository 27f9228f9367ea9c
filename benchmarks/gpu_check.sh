#!/usr/bin/env bash
# One short accelerator check (a few minutes), run from the repository root on a lent GPU
# machine: uses the JAX already installed there (no downloads), puts this checkout on
# PYTHONPATH and runs benchmarks/bench_gpu.py. Output: the table, also in $OUT if set.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PY:-python3}
$PY -c "import jax; print('jax', jax.__version__, jax.devices())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY benchmarks/bench_gpu.py ${OUT:+--out "$OUT/gpu_results.md"} "$@"

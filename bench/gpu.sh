#!/usr/bin/env bash
# The bench suite on a GPU machine, then GPT-style pre-training MFU at a size that fills the
# device; prints a short table last.
#   bench/gpu.sh                      # GPU: --suite gpu, then gpt2-small, batch 16 x 1024, bf16
#   bench/gpu.sh --tiny               # CPU smoke run (CI): tiny suite, tiny pre-training model
#   BENCH_PRETRAIN="--size llama-1b --batch 8 --seq 2048 --remat dots" bench/gpu.sh
#   BENCH_OUT=DIR (default bench/gpu_results); BENCH_SKIP_SUITE=1 runs the pre-training part only.
# The reference side runs on CUDA when the installed torch has it, else on the CPU (say so).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
OUT=${BENCH_OUT:-bench/gpu_results}
mkdir -p "$OUT"
if [ "${1:-}" = "--tiny" ] || [ "${BENCH_TINY:-0}" = 1 ]; then
  SUITE=gpu-tiny
  PRETRAIN=${BENCH_PRETRAIN:---size gpt2-tiny --batch 4 --seq 64 --dtype float32 --repeats 3 --ceiling-size 256}
else
  SUITE=gpu
  PRETRAIN=${BENCH_PRETRAIN:---size gpt2-small --batch 16 --seq 1024 --dtype bfloat16}
fi
"$PY" -c "import jax; print('JAX devices:', jax.devices())"
if [ "${BENCH_SKIP_SUITE:-0}" != 1 ]; then
  "$PY" -m bench.run --suite "$SUITE" --out "$OUT" > "$OUT/suite.log"
  echo "suite: $OUT/RESULTS.md"
fi
# shellcheck disable=SC2086
"$PY" -m bench.pretrain $PRETRAIN --json "$OUT/pretrain.json" > "$OUT/pretrain.log"
echo
if [ -f "$OUT/RESULTS.md" ] && [ "${BENCH_SKIP_SUITE:-0}" != 1 ]; then
  sed -n '/^## Raw training step/,/^## Memory/p' "$OUT/RESULTS.md" | sed '$d'
fi
tail -n 3 "$OUT/pretrain.log"

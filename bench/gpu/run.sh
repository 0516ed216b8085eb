#!/usr/bin/env bash
# GPU bench of issue 15 (item 5): transcripts equal to the CPU's on base, RTFx at batch 1/8/32/64
# for base and a random-weight large-v3-turbo-shaped model, float32, bfloat16 and int8.
#
# On a GPU host with jax (CUDA), flax, transformers, torch and safetensors installed and no network:
#   here, once:  python -m bench.gpu.pack pack ~/.cache/chorus/models/whisper-base .gpu-carry/base.npz
#   there:       OUT=/some/dir bench/gpu/run.sh            (device tool: carry [".gpu-carry"])
# On a CPU, to prove the script:  OUT=/tmp/gpu-smoke CHORUS_GPU_TIMEOUT_S=1800 bench/gpu/run.sh --cpu-smoke --budget-s 1500
# Budget: 8 minutes on an H100/H200; the bench stops starting measurements after --budget-s (420 s).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-bench/results/gpu-$(date -u +%Y-%m-%d)}
PACK=${CHORUS_GPU_PACK:-.gpu-carry/base.npz}
PY=${PYTHON:-python3}
WORK=${CHORUS_GPU_WORK:-/tmp/chorus-gpu-bench}
mkdir -p "$OUT" "$WORK"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then  # carried wheels, if any (none are needed)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" .whl/*.whl
  export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false
{
  echo "== $(date -u +%FT%TZ) $(uname -m) $(nproc) CPUs"; (nvidia-smi -L 2>/dev/null || true)
  "$PY" -c 'import jax, flax, transformers; print("jax", jax.__version__, jax.devices(), "flax", flax.__version__, "transformers", transformers.__version__)'
  "$PY" -m bench.gpu.pack unpack "$PACK" "$WORK/base"
  timeout "${CHORUS_GPU_TIMEOUT_S:-465}" "$PY" -m bench.gpu.gpu_bench run --model-dir "$WORK/base" --work "$WORK" --out "$OUT" "$@"
} 2>&1 | tee "$OUT/log.txt"

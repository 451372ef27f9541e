#!/usr/bin/env bash
# The one command for a GPU machine (see docs/benchmarks.md, "On a GPU"): install the carried
# wheels, then run benchmarks/gpu.py once, its table also written to $OUT/gpu.txt, then
# benchmarks/batching.py on the device (how far batched results are from solo ones), to
# $OUT/batching.txt.
#   run here first:  bash benchmarks/gpu_wheels.sh
#   then there:      bash benchmarks/gpu_device.sh          (carry .whl)
#   a rerun of some parts of gpu.py alone:  BATCHING=0 bash benchmarks/gpu_device.sh --only largest
#   every part, those that explain the goals' rows too:  bash benchmarks/gpu_device.sh --only all
#   with a base tree (BASE=<commit> bash benchmarks/gpu_wheels.sh): the same parts again on
#   it, the table to $OUT/gpu-base.txt, e.g. the goal's ratio before and after a change:
#     BATCHING=0 GPU_BENCH_SECONDS=260 bash benchmarks/gpu_device.sh --only server-ratio
#   the server with --compile against without, once compiled and while compiling new shapes:
#     BATCHING=0 GPU_BENCH_SECONDS=400 bash benchmarks/gpu_device.sh --only server,server-compiled
#     BATCHING=0 GPU_BENCH_SECONDS=185 bash benchmarks/gpu_device.sh --only server-shapes
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH="/tmp/site:$PWD/proto:$PWD/server" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
timeout "${GPU_BENCH_SECONDS:-420}" python3 benchmarks/gpu.py "$@" 2>&1 | tee "$OUT/gpu.txt"
status="${PIPESTATUS[0]}"
if [ -d .whl/base/server ]; then
  echo "== the base tree (.whl/base)"
  PYTHONPATH="/tmp/site:$PWD/.whl/base/proto:$PWD/.whl/base/server" \
    timeout "${GPU_BENCH_SECONDS:-420}" python3 benchmarks/gpu.py "$@" 2>&1 \
    | tee "$OUT/gpu-base.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
if [ "${BATCHING:-1}" != 0 ]; then
  timeout 60 python3 benchmarks/batching.py --device cuda 2>&1 | tee "$OUT/batching.txt"
fi
echo "gpu_device.sh: ${SECONDS} s in all (wheels, gpu.py, batching.py)"
exit "$status"

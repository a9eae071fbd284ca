#!/usr/bin/env bash
# Make .venv-tritonXY (X.Y from VERSION, default 3.6.0: the GPU machines' Triton) beside a CPU torch,
# with this checkout installed into it. Triton 3.6's interpreter fails with numpy >= 2.4, so that
# venv takes numpy < 2.4. Used by .ci/run (the checks under an older supported Triton) and by
# `benchmarks/gpu_run.sh --dry-run` (recording the GPU's cache under 3.6.0).
#   bash benchmarks/triton_venv.sh [VERSION]     e.g. 3.6.0 (default) or 3.8.0
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-3.6.0}
minor=$(echo "$version" | cut -d. -f1,2 | tr -d .)
venv=.venv-triton$minor
numpy=numpy
[ "$minor" = 36 ] && numpy="numpy<2.4"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet torch==2.13.0 "triton==$version" "$numpy" pillow matplotlib tqdm pytest
"$venv/bin/pip" install --quiet --no-deps --no-build-isolation -e .
echo "$venv"

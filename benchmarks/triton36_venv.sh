#!/usr/bin/env bash
# Make .venv-triton36: the GPU machines' Triton (3.6.0) beside a CPU torch, with numpy < 2.4
# (Triton 3.6's interpreter fails with 2.4), and this checkout installed into it. Used by .ci/run
# (the Triton 3.6.0 checks) and by `benchmarks/gpu_run.sh --dry-run` (recording the GPU's cache).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-triton36
.venv-triton36/bin/pip install --quiet torch==2.13.0 triton==3.6.0 "numpy<2.4" pillow matplotlib tqdm pytest
.venv-triton36/bin/pip install --quiet --no-deps --no-build-isolation -e .

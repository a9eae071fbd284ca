#!/usr/bin/env bash
# Wheels of the libraries unet_fast.fuse serves, at the versions CI tests, into DIR (default
# .interop-wheels, git-ignored). The GPU machines reach no registry: `gpu_run.sh --dry-run` makes
# this folder, it is copied to the GPU machine with the checkout, and the run's networks part installs from it with
# --no-index --no-deps (the three are pure Python; torch and numpy are already there).
#   bash benchmarks/interop_wheels.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.interop-wheels}
# monai as setup.py's interop extra pins it, dynamic-network-architectures as .ci/run installs it
# (tests/test_gpu_run.py keeps them equal), einops the version CI's resolver takes today.
PINS=(monai==1.6.1 einops==0.8.2 dynamic-network-architectures==0.4.4)
python3 -m pip wheel --quiet --no-deps --wheel-dir "$dir" "${PINS[@]}"
ls "$dir"

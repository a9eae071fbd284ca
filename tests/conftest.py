"""Test setup: without a GPU, the Triton kernels run under Triton's CPU interpreter.

TRITON_INTERPRET must be set before triton.jit decorates the kernels, so before unet_fast is
imported: this file runs first. The PyTorch path is tested by switching the interpreter off per test (see helpers.py).
"""
import os
import shutil
import subprocess


def _has_gpu() -> bool:
    # Asked without importing torch, which would import nothing of ours but is slow; nvidia-smi
    # answers whether the CUDA tests can run compiled.
    return shutil.which("nvidia-smi") is not None and subprocess.run(
        ["nvidia-smi", "-L"], capture_output=True).returncode == 0


if not _has_gpu():
    os.environ.setdefault("TRITON_INTERPRET", "1")

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


import pytest  # noqa: E402  (after TRITON_INTERPRET is set, on purpose)
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _exact_float32_and_poisoned_outputs(monkeypatch):
    """Every test: results start as NaN (an unwritten element fails), and float32 matmuls/convs
    run in full precision on the GPU, so float32 tolerances mean float32 and not TF32."""
    from unet_fast.kernels import layout

    monkeypatch.setattr(layout, "POISON_OUTPUTS", True)
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    # Fresh random inputs on every run; pytest shows this line when the test fails.
    print(f"torch seed {torch.seed()}")
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved

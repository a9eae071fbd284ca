"""Test setup: without a GPU, the Triton kernels run under Triton's CPU interpreter.

TRITON_INTERPRET must be set before triton.jit decorates the kernels, so before unet_fast is
imported: this file runs first. The PyTorch path is tested by switching the interpreter off per test (see helpers.py).
"""
import os

# Importing torch decorates none of our kernels (Triton reads TRITON_INTERPRET when a kernel is
# decorated), so torch can be asked first. Asked of torch, not of nvidia-smi: a machine with an
# NVIDIA driver and a CPU build of torch cannot run the kernels compiled, and must interpret them.
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _exact_float32_and_poisoned_outputs(monkeypatch):
    """Every test: results start as NaN (an unwritten element fails), and float32 matmuls/convs
    run in full precision on the GPU, so float32 tolerances mean float32 and not TF32."""
    from unet_fast.ops import layout

    monkeypatch.setattr(layout, "POISON_OUTPUTS", True)
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    # Fresh random inputs on every run; pytest shows this line when the test fails.
    print(f"torch seed {torch.seed()}")
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved

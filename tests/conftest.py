"""Test setup: without a GPU, the Triton kernels run under Triton's CPU interpreter.

TRITON_INTERPRET must be set before triton.jit decorates the kernels, so before unet_fast is
imported: this file runs first. The PyTorch path is tested by switching the interpreter off per
test (see helpers.py).
"""
import os

# Importing torch decorates none of our kernels (Triton reads TRITON_INTERPRET when a kernel is
# decorated), so torch can be asked first. Asked of torch, not of nvidia-smi: a machine with an
# NVIDIA driver and a CPU build of torch cannot run the kernels compiled, and must interpret them.
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Under pytest-xdist (the README's test command runs two workers), one torch thread per worker:
# two workers with a thread per core each would stall each other at every OpenMP barrier.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


import pytest  # noqa: E402


def pytest_collection_modifyitems(items):
    """The static compile report (minutes, one file) first: under pytest-xdist one worker starts
    on it at once while the other takes the remaining files, and both end about together."""
    items.sort(key=lambda item: item.path.name != "test_kernel_report.py")


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


# Fixtures the workflow tests share: found by pytest here, so test files name them as arguments
# without importing them.
@pytest.fixture
def ckpt(tmp_path):
    """A small checkpoint with classes bg, fg."""
    from unet_fast.models.unet import UNet
    from unet_fast.workflow import checkpoint

    model = UNet(out_channels=2, base_channels=4)
    path = tmp_path / "model.pt"
    checkpoint.save(path, {"config": checkpoint.model_config(model, ["bg", "fg"]),
                           "model": model.state_dict(), "epoch": 0, "history": []})
    return path


@pytest.fixture
def image(tmp_path):
    """A 20x24 black RGB PNG."""
    import numpy as np
    from PIL import Image

    path = tmp_path / "ok.png"
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(path)
    return path

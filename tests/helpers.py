"""Shared by the tests: device, tolerances per dtype, random inputs, a comparison that explains."""
import os

import pytest
import torch

from unet_fast.reference import TOLERANCES

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# (rtol, atol) per dtype against a float64 reference: defined beside the reference, where the
# benchmarks read it too (atol is scaled by the largest reference magnitude in
# `assert_close_to_reference`).
DTYPES = list(TOLERANCES)

# Which implementation of the op a test runs: the Triton kernels (compiled on a GPU, interpreted
# on the CPU) or the PyTorch path. The PyTorch path is chosen with its documented switch.
PATHS = ["triton", "torch"]


def select_path(monkeypatch, path: str) -> None:
    if path == "torch":
        monkeypatch.setenv("UNET_FAST_DISABLE_TRITON", "1")
    else:
        monkeypatch.delenv("UNET_FAST_DISABLE_TRITON", raising=False)
        require_triton()


def require_triton() -> None:
    """Fail (never skip) a test of the Triton kernels where they can run neither compiled (a CUDA
    device for torch) nor interpreted (TRITON_INTERPRET=1, which conftest.py sets without one):
    a skipped kernel test would let a run pass without testing the kernels at all."""
    from unet_fast.ops import up_concat_op
    from unet_fast import uses_triton
    if uses_triton(torch.empty(0, device=DEVICE)):
        return
    if up_concat_op._triton_common is None:
        pytest.fail("unet_fast.ops.up_concat_op could not import the Triton kernels (Triton missing, or "
                    "an ImportError in kernels/), so every call takes the PyTorch path", pytrace=False)
    pytest.fail("the Triton kernels cannot run here: torch sees no CUDA device and TRITON_INTERPRET="
                f"{os.environ.get('TRITON_INTERPRET')!r} (leave it unset: tests/conftest.py then "
                "turns the interpreter on)", pytrace=False)


def randn(*shape, dtype=torch.float32, memory_format=torch.contiguous_format):
    return torch.randn(*shape, dtype=torch.float64, device=DEVICE).to(dtype).contiguous(
        memory_format=memory_format)


def assert_close_to_reference(actual: torch.Tensor, expected: torch.Tensor, dtype, what: str = "") -> None:
    """allclose against a float64 reference, NaN matching NaN, with a report of where it fails."""
    rtol, atol = TOLERANCES[dtype]
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    scale = max(1.0, e[torch.isfinite(e)].abs().max().item()) if e.numel() and torch.isfinite(e).any() else 1.0
    close = torch.isclose(a, e, rtol=rtol, atol=atol * scale, equal_nan=True)
    if close.all():
        return
    bad = (~close).nonzero()
    lines = [f"{what}: {bad.shape[0]} of {a.numel()} elements differ (dtype {dtype}, rtol {rtol}, "
             f"atol {atol * scale:.2e}); NaN in actual {int(a.isnan().sum())}, in expected {int(e.isnan().sum())}"]
    for idx in bad[:8].tolist():
        lines.append(f"  at {tuple(idx)}: got {a[tuple(idx)].item():.6g}, want {e[tuple(idx)].item():.6g}")
    raise AssertionError("\n".join(lines))


def spy_on_triton_launches(monkeypatch, kernel_module, torch_path_function: str) -> list:
    """Make the PyTorch path's `torch_path_function` fail if called, and wrap every Triton kernel
    of `kernel_module` (plain and autotuned) so each launch appends the kernel's name (without
    `_autotuned`) to the returned list before running it."""
    from unet_fast.ops import torch_path

    def fail(*args, **kwargs):
        raise AssertionError("the PyTorch path ran")

    monkeypatch.setattr(torch_path, torch_path_function, fail)
    launches = []

    class Spy:
        def __init__(self, name, kernel):
            self.name, self.kernel = name, kernel

        def __getitem__(self, grid):
            launches.append(self.name)
            return self.kernel[grid]

    for name in dir(kernel_module):
        if name.endswith("_kernel") or name.endswith("_kernel_autotuned"):
            kernel = getattr(kernel_module, name)
            monkeypatch.setattr(kernel_module, name, Spy(name.replace("_autotuned", ""), kernel))
    return launches

"""Shared by the tests: device, tolerances per dtype, random inputs, a comparison that explains."""
import os

import pytest
import torch

from unet_fast import reference, up_concat
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
    """Make the PyTorch path's `torch_path_function` fail if called, and count every launch of a
    Triton kernel of `kernel_module` (plain and autotuned): the returned list gets the kernel's
    name (without `_autotuned`) as the launcher hands it to the GPU (or to a recorder: the GPU
    run's plan records these tests' launches)."""
    from unet_fast.kernels import up_concat_launch
    from unet_fast.ops import torch_path

    def fail(*args, **kwargs):
        raise AssertionError("the PyTorch path ran")

    monkeypatch.setattr(torch_path, torch_path_function, fail)
    launches = []
    names = {id(getattr(kernel_module, name)): name.replace("_autotuned", "") for name in dir(kernel_module)
             if name.endswith(("_kernel", "_kernel_autotuned"))}
    original = up_concat_launch.launch

    def launch(kernel, grid, *args, **kwargs):
        if id(kernel) in names:
            launches.append(names[id(kernel)])
        return original(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(up_concat_launch, "launch", launch)
    return launches


# (N, Cin, Cout, Cs, H, W): odd channel counts, H or W of 1, odd spatial sizes, more than one
# tile of pixels and of channels.
SHAPES = [
    (2, 17, 33, 3, 5, 7),
    (1, 1, 1, 1, 1, 1),
    (3, 3, 17, 33, 1, 9),
    (1, 33, 3, 17, 6, 1),
    (2, 40, 36, 20, 7, 5),
]


def make_inputs(n, cin, cout, cs, h, w, dtype, memory_format=torch.contiguous_format, bias=True):
    """(x, skip, weight, bias) of a 2x2 stride-2 step, x [n, cin, h, w]."""
    return make_step(n, cin, cout, cs, (h, w), (2, 2), dtype, memory_format, bias)


def make_step(n, cin, cout, cs, spatial, kernel, dtype, memory_format=torch.contiguous_format, bias=True):
    """(x, skip, weight, bias) of any step: x [n, cin, *spatial], weight [cin, cout, *kernel],
    skip [n, cs, *(spatial * kernel)]; x and skip in `memory_format` (channels_last means
    channels_last_3d for volumes)."""
    if memory_format == torch.channels_last and len(spatial) == 3:
        memory_format = torch.channels_last_3d
    x = randn(n, cin, *spatial, dtype=dtype, memory_format=memory_format)
    skip = randn(n, cs, *(s * k for s, k in zip(spatial, kernel)), dtype=dtype, memory_format=memory_format)
    weight = randn(cin, cout, *kernel, dtype=dtype)
    b = randn(cout, dtype=dtype) if bias else None
    return x, skip, weight, b


def reference_out(x, skip, weight, bias, relu, skip_first=False):
    """unet_fast.reference.up_concat in float64 on the same (rounded) inputs."""
    up = [t.double() if t is not None else None for t in (x, skip, weight, bias)]
    return reference.up_concat(*up, relu=relu, skip_first=skip_first)


LAYOUTS = ["contiguous", "channels_last", "strided_view"]


def layout_inputs(layout, dtype):
    n, cin, cout, cs, h, w = 2, 19, 21, 11, 6, 5
    if layout == "strided_view":
        # Every tensor a view with gaps and odd strides: the kernels take all strides as given.
        x = randn(n, cin + 3, h, 2 * w, dtype=dtype)[:, 2:cin + 2, :, ::2]
        skip = randn(n, 2 * h, 2 * w, cs + 1, dtype=dtype).permute(0, 3, 1, 2)[:, 1:]
        weight = randn(cout, cin, 2, 2, dtype=dtype).transpose(0, 1)
        bias = randn(2 * cout, dtype=dtype)[::2]
        return x, skip, weight, bias
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    return make_inputs(n, cin, cout, cs, h, w, dtype, memory_format=fmt)


def grads_against_reference(args, relu, dtype, what="", skip_first=False, grad_format=torch.contiguous_format):
    """Run the op and the float64 reference backward with one random grad_output (laid out in
    `grad_format`: contiguous as torch.randn(out.shape) makes it, channels_last as a loss on a
    channels_last output hands it back); compare all.

    Returns (conv, skip): how many outputs of the convolution channels and of the skip channels
    the ReLU clipped while their grad_output was kept, i.e. where the comparison checks that the
    op's ReLU mask zeroes the gradient as the reference's does."""
    ref_leaves = [t.detach().double().requires_grad_() if t is not None else None for t in args]
    ref_out = reference_out(*ref_leaves, relu, skip_first)
    grad_out = randn(*ref_out.shape, dtype=dtype, memory_format=grad_format)
    clipped = (0, 0)
    if relu:
        # A value within rounding of 0 may land on either side of the ReLU in the op and in the
        # float64 reference; its gradient is ill-defined, so it gets no gradient to compare.
        # Decided from the values BEFORE the ReLU: after it every clipped value reads 0, looks
        # "near the kink" and would lose its gradient, so the mask would never be compared.
        with torch.no_grad():
            pre = reference_out(*ref_leaves, False, skip_first)
        finite = pre[torch.isfinite(pre)].abs()
        scale = max(1.0, finite.max().item()) if finite.numel() else 1.0
        near_kink = pre.abs() < 1e-4 * scale
        grad_out = grad_out.masked_fill(near_kink, 0)
        kept_and_clipped = (pre < 0) & ~near_kink  # NaN is neither: it passes its gradient
        cout, cs = args[2].shape[1], args[1].shape[1]
        up, sk = (slice(cs, None), slice(0, cs)) if skip_first else (slice(0, cout), slice(cout, None))
        clipped = (int(kept_and_clipped[:, up].sum()), int(kept_and_clipped[:, sk].sum()))
    ref_out.backward(grad_out.double())
    leaves = [t.detach().requires_grad_() if t is not None else None for t in args]
    up_concat(*leaves, relu=relu, skip_first=skip_first).backward(grad_out)
    for name, got, ref in zip(("dx", "dskip", "dweight", "dbias"), leaves, ref_leaves):
        if got is None:
            continue
        assert got.grad.dtype == dtype
        assert_close_to_reference(got.grad, ref.grad, dtype, f"{name}{what}")
    return clipped

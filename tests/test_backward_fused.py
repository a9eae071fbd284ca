"""The one-pass backward (kernels/up_concat_backward_fused.py): which steps take it, and its dx,
dweight and dbias against the float64 reference on both of its pixel paths, 2-D and 3-D, every
dtype and layout, with one split (dW stored directly) and several (partials reduced), run to run
identical. Outputs are NaN-poisoned before each launch (conftest.py), so an unwritten element fails."""
import pytest
import torch

from unet_fast import up_concat
from unet_fast.kernels import up_concat_backward as bwd_module
from unet_fast.kernels import up_concat_launch as launcher
from helpers import grads_against_reference, make_step, require_triton, select_path, spy_on_triton_launches

TWO_KERNELS = ["up_concat_backward_input_kernel", "up_concat_backward_weight_kernel"]
ONE_PASS = ["up_concat_backward_fused_kernel", "up_concat_weight_reduce_kernel"]

# (n, cin, cout, cs, spatial, kernel): x (4, 8) with 16-pixel blocks is two whole rows per block
# (the strided path, BLOCK_W 8); (3, 5) and (3, 3, 5) take the per-pixel path; (1, 2, 2) kernels
# are nnU-Net's anisotropic stages; cin 40 is two Cin tiles of 32 with a partial one.
STEPS = [
    (2, 6, 5, 3, (4, 8), (2, 2)),
    (2, 40, 12, 4, (3, 5), (2, 2)),
    (1, 7, 9, 2, (3, 3, 5), (2, 2, 2)),
    (2, 5, 16, 6, (2, 4, 8), (1, 2, 2)),
]


def backward_launches(monkeypatch, relu, step, dtype=torch.float32):
    launches = spy_on_triton_launches(monkeypatch, bwd_module, "backward")
    x, skip, weight, bias = [t.requires_grad_() for t in make_step(*step, dtype)]
    up_concat(x, skip, weight, bias, relu=relu).sum().backward()
    return sorted(launches)


@pytest.mark.parametrize("relu", [False, True])
def test_without_relu_the_backward_is_one_pass(monkeypatch, relu):
    require_triton()
    select_path(monkeypatch, "triton")
    assert backward_launches(monkeypatch, relu, STEPS[0]) == (TWO_KERNELS if relu else ONE_PASS)


def test_more_columns_than_a_tile_takes_the_two_kernel_backward(monkeypatch):
    """(tap, Cout) columns over 512 (8 taps x 80 channels = 640) do not fit one tile."""
    require_triton()
    select_path(monkeypatch, "triton")
    assert backward_launches(monkeypatch, False, (1, 3, 80, 2, (1, 2, 2), (2, 2, 2))) == TWO_KERNELS


@pytest.mark.parametrize("splits", [None, 1, 2])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("step", STEPS, ids=str)
def test_one_pass_backward_matches_reference(monkeypatch, step, bias, splits):
    """splits None: the launcher's choice (three under the interpreter); 1: dW stored by the kernel."""
    select_path(monkeypatch, "triton")
    monkeypatch.setattr(launcher, "WEIGHT_GRAD_SPLITS", splits)
    grads_against_reference(make_step(*step, torch.float32, bias=bias), False, torch.float32,
                            f" (step {step}, bias {bias}, splits {splits})")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=str)
def test_one_pass_backward_dtypes_and_layouts(monkeypatch, dtype, layout):
    select_path(monkeypatch, "triton")
    for step in (STEPS[0], STEPS[2]):
        grad_format = torch.channels_last_3d if layout == torch.channels_last and len(step[4]) == 3 else layout
        grads_against_reference(make_step(*step, dtype, memory_format=layout), False, dtype,
                                f" (step {step}, {layout})", grad_format=grad_format)


def test_one_pass_backward_is_deterministic(monkeypatch):
    """The same inputs give the same bits: partials in fixed order, no atomics."""
    select_path(monkeypatch, "triton")
    x, skip, weight, bias = [t.requires_grad_() for t in make_step(*STEPS[1], torch.float32)]
    out = up_concat(x, skip, weight, bias, relu=False)
    grad = torch.randn_like(out)
    first = torch.autograd.grad(out, (x, weight, bias), grad, retain_graph=True)
    second = torch.autograd.grad(out, (x, weight, bias), grad)
    for a, b in zip(first, second):
        assert torch.equal(a, b)

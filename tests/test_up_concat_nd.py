"""The fused op on the decoder steps U-Nets train with: 2-D and 3-D, kernel = stride per axis
(2x2, 2x2x2, 1x2x2, 2x1x1, 1x1, 4x4), either concatenation order, ReLU or none; forward and
backward against unet_fast.reference in float64, on the Triton kernels and the PyTorch path."""
import pytest
import torch

from unet_fast import up_concat
from unet_fast.ops import layout as op_layout
from helpers import (DEVICE, PATHS, assert_close_to_reference, grads_against_reference, make_step, randn,
                     reference_out, select_path)

# (N, Cin, Cout, Cs, spatial, kernel): odd sizes, a size of 1, more than one tile of pixels.
STEPS = [
    (2, 5, 3, 4, (3, 5), (2, 2)),          # the lesson's step, odd sizes
    (2, 4, 3, 5, (2, 3, 3), (2, 2, 2)),    # nnU-Net / MONAI 3-D
    (1, 6, 5, 3, (3, 5, 7), (1, 2, 2)),    # nnU-Net's anisotropic first stages
    (2, 3, 4, 2, (2, 3, 2), (2, 1, 1)),
    (2, 5, 6, 3, (3, 4), (1, 1)),          # one tap
    (1, 4, 3, 2, (2, 3), (4, 4)),          # sixteen taps
    (1, 3, 2, 3, (1, 1, 1), (2, 2, 2)),
]
STEP_IDS = [f"{len(s[4])}d-k{'x'.join(map(str, s[5]))}" for s in STEPS]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "none"])
@pytest.mark.parametrize("skip_first", [False, True], ids=["up-first", "skip-first"])
@pytest.mark.parametrize("step", STEPS, ids=STEP_IDS)
def test_forward_and_backward_match_reference(monkeypatch, path, step, skip_first, relu):
    select_path(monkeypatch, path)
    monkeypatch.setattr(op_layout, "POISON_OUTPUTS", True)
    args = make_step(*step, torch.float32)
    out = up_concat(*args, relu=relu, skip_first=skip_first)
    assert out.shape == reference_out(*args, relu, skip_first).shape
    assert_close_to_reference(out, reference_out(*args, relu, skip_first), torch.float32, "out")
    grads_against_reference(args, relu, torch.float32, skip_first=skip_first)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("step", [STEPS[1], STEPS[2]], ids=STEP_IDS[1:3])
def test_dtypes_3d(monkeypatch, path, step, dtype):
    select_path(monkeypatch, path)
    monkeypatch.setattr(op_layout, "POISON_OUTPUTS", True)
    args = make_step(*step, dtype)
    assert_close_to_reference(up_concat(*args, skip_first=True), reference_out(*args, True, True), dtype, "out")
    grads_against_reference(args, True, dtype, skip_first=True)


def _strided_3d_view(dtype):
    """A 3-D step whose every tensor is a view with gaps and odd strides."""
    n, cin, cout, cs, (d, h, w) = 2, 5, 3, 4, (2, 3, 2)
    x = randn(n, cin + 2, d, h, 2 * w, dtype=dtype)[:, 1:cin + 1, :, :, ::2]
    skip = randn(n, 2 * d, 2 * h, 2 * w, cs + 1, dtype=dtype).permute(0, 4, 1, 2, 3)[:, 1:]
    weight = randn(cout, cin, 2, 2, 2, dtype=dtype).transpose(0, 1)
    bias = randn(2 * cout, dtype=dtype)[::2]
    return x, skip, weight, bias


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("layout", ["channels_last_3d", "strided_view"])
def test_3d_layouts(monkeypatch, path, layout):
    select_path(monkeypatch, path)
    monkeypatch.setattr(op_layout, "POISON_OUTPUTS", True)
    if layout == "strided_view":
        args = _strided_3d_view(torch.float32)
    else:
        args = make_step(2, 5, 3, 4, (2, 3, 2), (2, 2, 2), torch.float32, memory_format=torch.channels_last)
    for skip_first in (False, True):
        out = up_concat(*args, skip_first=skip_first)
        assert_close_to_reference(out, reference_out(*args, True, skip_first), torch.float32, f"out ({layout})")
        grads_against_reference(args, True, torch.float32, f" ({layout})", skip_first=skip_first)
    if layout == "channels_last_3d":  # the result keeps x's memory format
        assert out.is_contiguous(memory_format=torch.channels_last_3d) and not out.is_contiguous()


@pytest.mark.parametrize("path", PATHS)
def test_channels_last_3d_output_with_a_contiguous_incoming_gradient(monkeypatch, path):
    """autograd hands the backward whatever layout the next layer produced: here a contiguous
    gradient for a channels_last_3d output."""
    select_path(monkeypatch, path)
    args = [t.requires_grad_() for t in make_step(2, 4, 3, 5, (2, 3, 3), (1, 2, 2), torch.float32,
                                                  memory_format=torch.channels_last)]
    out = up_concat(*args, relu=False)
    grad = randn(*out.shape)  # contiguous
    got = torch.autograd.grad(out, args, grad)
    ref_leaves = [t.detach().double().requires_grad_() for t in args]
    want = torch.autograd.grad(reference_out(*ref_leaves, False), ref_leaves, grad.double())
    for name, g, w in zip(("dx", "dskip", "dweight", "dbias"), got, want):
        assert_close_to_reference(g, w, torch.float32, name)


@pytest.mark.parametrize("path", PATHS)
def test_3d_empty_batch_and_no_bias(monkeypatch, path):
    select_path(monkeypatch, path)
    x, skip, weight, _ = make_step(0, 4, 3, 2, (2, 3, 2), (2, 2, 2), torch.float32, bias=False)
    assert up_concat(x, skip, weight).shape == (0, 5, 4, 6, 4)
    args = make_step(2, 4, 3, 2, (2, 3, 2), (1, 2, 2), torch.float32, bias=False)
    assert_close_to_reference(up_concat(*args, relu=False), reference_out(*args, False), torch.float32, "out")
    grads_against_reference(args, False, torch.float32)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("skip_first", [False, True])
def test_gradcheck_float64_3d(monkeypatch, path, skip_first):
    select_path(monkeypatch, path)
    args = [t.requires_grad_() for t in make_step(1, 3, 2, 2, (2, 1, 2), (1, 2, 2), torch.float64)]
    # fast_mode: random projections of the Jacobian (test_up_concat_backward.py's gradcheck says why).
    assert torch.autograd.gradcheck(lambda *a: up_concat(*a, relu=False, skip_first=skip_first), args, fast_mode=True)


@pytest.mark.parametrize("path", PATHS)
def test_backward_is_deterministic(monkeypatch, path):
    """Kernel = stride: no two taps write one element, so the backward needs no atomics and two
    passes give bitwise-equal gradients."""
    select_path(monkeypatch, path)
    args = [t.requires_grad_() for t in make_step(2, 6, 5, 3, (3, 4, 3), (2, 2, 2), torch.float32)]
    out = up_concat(*args)
    grad = torch.randn_like(out)
    first = torch.autograd.grad(out, args, grad, retain_graph=True)
    second = torch.autograd.grad(out, args, grad)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("path", PATHS)
def test_opcheck_3d_skip_first(monkeypatch, path):
    select_path(monkeypatch, path)
    x, skip, weight, bias = [t.requires_grad_() for t in make_step(2, 3, 4, 2, (2, 2, 3), (1, 2, 2), torch.float32)]
    torch.library.opcheck(torch.ops.unet_fast.up_concat.default, (x, skip, weight, bias, False, True))
    out = up_concat(x, skip, weight, bias, relu=True, skip_first=True).detach()
    grad = torch.randn_like(out)
    torch.library.opcheck(torch.ops.unet_fast.up_concat_backward.default, (grad, out, x.detach(), weight.detach(),
                                                                          True, True))


@pytest.mark.parametrize("path", PATHS)
def test_torch_compile_fullgraph_through_a_3d_step(monkeypatch, path):
    select_path(monkeypatch, path)
    torch._dynamo.reset()
    args = [t.requires_grad_() for t in make_step(1, 4, 3, 2, (2, 2, 3), (2, 2, 2), torch.float32)]

    def step(x, skip, weight, bias):
        return up_concat(torch.sigmoid(x), skip, weight, bias, relu=False, skip_first=True) * 2

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got = compiled(*args)
    want = step(*args)
    assert_close_to_reference(got, want.double(), torch.float32, "compiled out")
    grads = torch.autograd.grad(got.sum(), args)
    ref = torch.autograd.grad(want.sum(), args)
    for name, g, r in zip(("dx", "dskip", "dweight", "dbias"), grads, ref):
        assert_close_to_reference(g, r.double(), torch.float32, name)
    assert DEVICE.type in ("cpu", "cuda")

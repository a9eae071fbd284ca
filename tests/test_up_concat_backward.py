"""Gradients of the fused op (x, skip, weight, bias) against reference autograd in float64."""
import pytest
import torch

from unet_fast.ops import torch_path
from unet_fast import up_concat
from unet_fast.ops.up_concat_op import _up_concat_backward
from helpers import (DEVICE, DTYPES, LAYOUTS, PATHS, SHAPES, assert_close_to_reference, grads_against_reference,
                     layout_inputs, make_inputs, reference_out, select_path, spy_on_triton_launches)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_backward_matches_reference(monkeypatch, path, shape, dtype, relu):
    select_path(monkeypatch, path)
    grads_against_reference(make_inputs(*shape, dtype), relu, dtype)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_backward_layouts(monkeypatch, path, layout, dtype):
    select_path(monkeypatch, path)
    conv, skip = grads_against_reference(layout_inputs(layout, dtype), True, dtype, f" ({layout})")
    # Hundreds of clipped outputs in each part carry a gradient: the ReLU mask is compared.
    assert conv > 100 and skip > 100, (conv, skip)


@pytest.mark.parametrize("path", PATHS)
def test_backward_without_bias_and_many_pixels(monkeypatch, path):
    """No bias; enough pixels that the weight gradient is split over several programs."""
    select_path(monkeypatch, path)
    conv, skip = grads_against_reference(make_inputs(3, 6, 5, 4, 9, 11, torch.float32, bias=False),
                                         True, torch.float32)
    assert conv > 100 and skip > 100, (conv, skip)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("skip_first", [False, True])
def test_without_relu_the_skip_gradient_is_a_view_of_grad(monkeypatch, path, skip_first):
    """No ReLU: the skip channels' gradient is grad's own slice (as torch.cat's backward gives it),
    never copied; the backward's kernels compute only the transposed convolution's gradients."""
    select_path(monkeypatch, path)
    x, skip, weight, bias = [t.requires_grad_() for t in make_inputs(2, 5, 3, 4, 2, 3, torch.float32)]
    out = up_concat(x, skip, weight, bias, relu=False, skip_first=skip_first)
    grad = torch.randn_like(out)
    dskip, dx = torch.autograd.grad(out, (skip, x), grad)
    cs, cout = skip.shape[1], weight.shape[1]
    want = grad[:, :cs] if skip_first else grad[:, cout:]
    assert dskip.data_ptr() == want.data_ptr() and dskip.stride() == want.stride()
    assert torch.equal(dskip, want)
    assert torch.isfinite(dx).all()


@pytest.mark.parametrize("path", PATHS)
def test_backward_empty_batch(monkeypatch, path):
    select_path(monkeypatch, path)
    x, skip, weight, bias = [t.requires_grad_() for t in make_inputs(0, 5, 6, 7, 3, 4, torch.float32)]
    up_concat(x, skip, weight, bias).sum().backward()
    assert x.grad.shape == x.shape and skip.grad.shape == skip.shape
    assert torch.equal(weight.grad, torch.zeros_like(weight)) and torch.equal(bias.grad, torch.zeros_like(bias))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("relu", [True, False])
def test_gradcheck_float64(monkeypatch, path, relu):
    select_path(monkeypatch, path)
    args = [t.requires_grad_() for t in make_inputs(1, 2, 2, 1, 2, 2, torch.float64)]
    # fast_mode: the Jacobian against random vectors on both sides (one backward, not one per
    # output element: each is three interpreted launches); a wrong gradient still fails.
    assert torch.autograd.gradcheck(lambda *a: up_concat(*a, relu=relu), args, eps=1e-6, atol=1e-8, fast_mode=True)


@pytest.mark.parametrize("path", PATHS)
def test_relu_mask_gates_gradients(monkeypatch, path):
    """Where the output was clipped to 0, no gradient flows: to x through Cout, nor to skip."""
    select_path(monkeypatch, path)
    x, skip, weight, bias = make_inputs(1, 3, 2, 2, 2, 2, torch.float32)
    skip = (-skip.abs()).requires_grad_()   # every skip value negative: all clipped
    bias = torch.full_like(bias, -1e3).requires_grad_()  # every conv output clipped too
    x.requires_grad_()
    weight.requires_grad_()
    up_concat(x, skip, weight, bias).sum().backward()
    for name, t in (("x", x), ("skip", skip), ("weight", weight), ("bias", bias)):
        assert torch.equal(t.grad, torch.zeros_like(t)), name


@pytest.mark.parametrize("path", PATHS)
def test_nan_output_passes_its_gradient_as_in_reference(monkeypatch, path):
    """A NaN output is not <= 0, so the ReLU backward (threshold_backward) passes its gradient,
    in the convolution channels (NaN in x) and in the skip channels (NaN in skip)."""
    select_path(monkeypatch, path)
    x, skip, weight, bias = make_inputs(1, 3, 4, 2, 3, 3, torch.float32)
    x[0, 1, 2, 0] = float("nan")
    skip[0, 1, 3, 4] = float("nan")
    grads_against_reference((x, skip, weight, bias), True, torch.float32)


@pytest.mark.parametrize("path", PATHS)
def test_backward_op_directly(monkeypatch, path):
    """The registered backward op, on a grad with stride-0 dims (what autograd passes for .sum())."""
    select_path(monkeypatch, path)
    x, skip, weight, bias = make_inputs(2, 3, 4, 5, 2, 3, torch.float32)
    out = up_concat(x, skip, weight, bias)
    grad = torch.ones(1, device=DEVICE).expand_as(out)
    dx, dskip, dweight, dbias = _up_concat_backward(grad, out, x, weight, True, False)
    ref = [t.double().requires_grad_() for t in (x, skip, weight, bias)]
    reference_out(*ref, True).sum().backward()
    for name, got, r in zip(("dx", "dskip", "dweight", "dbias"), (dx, dskip, dweight, dbias), ref):
        assert_close_to_reference(got, r.grad, torch.float32, name)


def test_triton_backward_runs_its_kernels(monkeypatch):
    """With the Triton path selected, the backward launches the weight-gradient kernel, then the
    input-gradient kernel (whose first programs sum the weight gradient's partials and dbias, so
    they must come after it), once each, and never touches the PyTorch path."""
    from unet_fast.kernels import up_concat_backward as bwd_module

    select_path(monkeypatch, "triton")
    launches = spy_on_triton_launches(monkeypatch, bwd_module, "backward")
    grads_against_reference(make_inputs(1, 3, 4, 5, 2, 3, torch.float32), True, torch.float32)
    assert launches == ["up_concat_backward_weight_kernel", "up_concat_backward_input_kernel"]


@pytest.mark.parametrize("bias", [True, False])
def test_before_hopper_the_weight_gradient_is_summed_in_a_launch_of_its_own(monkeypatch, bias):
    """Where backward_input leaves the partials alone (before sm_90: sums_in_backward_input), the
    weight_reduce kernel sums them after it, and the gradients are the reference's all the same."""
    from unet_fast.kernels import up_concat_backward as bwd_module
    from unet_fast.kernels import up_concat_launch

    select_path(monkeypatch, "triton")
    monkeypatch.setattr(up_concat_launch, "sums_in_backward_input", lambda: False)
    launches = spy_on_triton_launches(monkeypatch, bwd_module, "backward")
    grads_against_reference(make_inputs(2, 5, 6, 7, 3, 4, torch.float32, bias=bias), True, torch.float32)
    assert launches == ["up_concat_backward_weight_kernel", "up_concat_backward_input_kernel",
                        "up_concat_weight_reduce_kernel"]


def _drop_relu_mask(monkeypatch, path, part):
    """Plant the bug the backward tests exist to catch: the backward ignores the ReLU mask of
    `part` ("conv": gy, the convolution channels' gradient; "skip"; "both")."""
    if path == "torch":
        real = torch_path._masked_into

        def masked_into(dst, grad, out):
            # The PyTorch path masks gy through a 6-D taps view, dskip as a 4-D tensor.
            drop = part == "both" or (part == "conv") == (grad.dim() == 6)
            real(dst, grad, None if drop else out)
        monkeypatch.setattr(torch_path, "_masked_into", masked_into)
    else:
        from unet_fast.kernels import common
        from unet_fast.kernels import up_concat_backward as bwd_module
        if not common.interpreting():
            # A compiled kernel keeps the callee it was compiled with; only the interpreter
            # looks the mask helpers up at every call.
            pytest.skip("the mask helpers can be swapped only under Triton's interpreter")
        import triton.language as tl

        # backward_input reads the mask bits through these two helpers: every gradient passes.
        monkeypatch.setattr(bwd_module, "load_mask_bits", lambda bits_ptr, pix, mask_p, tap, o0, NB, T, BLOCK_P,
                            BLOCK_O: tl.full((BLOCK_P, BLOCK_O), True, tl.int1))
        monkeypatch.setattr(bwd_module, "load_skip_bits", lambda skip_bits_ptr, rows, mask_p, c0, NBS, BLOCK_P,
                            BLOCK_C: tl.full((BLOCK_P, BLOCK_C), True, tl.int1))


# (path, which mask is dropped, the gradient that must report it first)
DROPPED_MASKS = [("torch", "conv", "dx"), ("torch", "skip", "dskip"), ("triton", "both", "dx")]


@pytest.mark.parametrize("path,part,first_failure", DROPPED_MASKS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_backward_comparison_catches_a_dropped_relu_mask(monkeypatch, path, part, first_failure, layout):
    """The comparison above must fail when the backward forgets the ReLU mask, in every layout
    and path (it once decided which outputs to ignore after the ReLU, so every clipped output
    lost its gradient and a backward without the mask passed)."""
    select_path(monkeypatch, path)
    _drop_relu_mask(monkeypatch, path, part)
    with pytest.raises(AssertionError, match=rf"^{first_failure} \({layout}\): \d+ of"):
        grads_against_reference(layout_inputs(layout, torch.float32), True, torch.float32, f" ({layout})")

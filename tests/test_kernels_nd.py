"""The N-d up_concat kernels, called through their launchers, against torch's own
conv_transpose2d/3d + cat + relu computed in float64 (unet_fast.reference.up_concat).

Runs under Triton's interpreter here (conftest.py sets TRITON_INTERPRET=1 and NaN-poisons every
result buffer), compiled on a GPU. Shapes are small: the interpreter runs program after program.
"""
import pytest
import torch

from unet_fast.kernels import up_concat_launch as launcher
from unet_fast.kernels.up_concat_launch import (launch_backward, launch_forward, needs_int64_offsets,
                                                recording_launches)
from unet_fast.reference import up_concat as reference
from helpers import assert_close_to_reference, require_triton

CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


@pytest.fixture(autouse=True)
def _kernels_can_run():
    require_triton()


def make(shape, dtype, layout, scale=1.0):
    """A random tensor of `shape` in `layout`: contiguous, channels_last (channels_last_3d for
    5-D), or view (every other element along the last dim of a larger tensor)."""
    if layout == "view":
        big = torch.randn(*shape[:-1], 2 * shape[-1], dtype=torch.float64) * scale
        return big.to(dtype)[..., ::2]
    t = (torch.randn(*shape, dtype=torch.float64) * scale).to(dtype)
    return t.contiguous(memory_format=CHANNELS_LAST[len(shape)]) if layout == "channels_last" else t


def make_step(n, cin, cout, cs, spatial, k, dtype, layout, bias=True, weight_layout="contiguous"):
    x = make((n, cin, *spatial), dtype, layout)
    skip = make((n, cs, *(s * kk for s, kk in zip(spatial, k))), dtype, layout)
    if weight_layout == "transposed":  # stride-1 along Cin: the launcher repacks it
        weight = make((cout, cin, *k), dtype, "contiguous", 0.5).transpose(0, 1)
    else:
        weight = make((cin, cout, *k), dtype, weight_layout, 0.5)
    b = make((cout,), dtype, "contiguous") if bias else None
    return x, skip, weight, b


def check_step(args, dtype, relu, skip_first, grad_layout="like_out", what=""):
    """Forward and backward through the launchers against the float64 reference."""
    x, skip, weight, bias = args
    out = launch_forward(x, skip, weight, bias, relu=relu, skip_first=skip_first)
    leaves = [t.double().requires_grad_() if t is not None else None for t in args]
    want = reference(*leaves, relu=relu, skip_first=skip_first)
    assert_close_to_reference(out, want, dtype, f"out{what}")
    assert out.shape == want.shape
    with torch.no_grad():
        pre = reference(*leaves, relu=False, skip_first=skip_first)
    # No gradient where the output sits within rounding of the ReLU's kink (the mask is ill-defined).
    grad = torch.randn(want.shape, dtype=torch.float64).masked_fill(pre.abs() < 1e-3 * pre.abs().max(), 0)
    grad = grad.to(dtype)
    if grad_layout == "like_out":
        grad = torch.empty_like(out).copy_(grad)
    want.backward(grad.double())
    got = launch_backward(grad, out if relu else None, x, weight, skip_first=skip_first, has_bias=bias is not None)
    for name, g, leaf in zip(("dx", "dskip", "dweight", "dbias"), got, leaves):
        if leaf is None:
            assert g.shape == (weight.shape[1],) and not g.any(), "dbias without a bias must be zeros"
            continue
        assert g.dtype == dtype
        assert_close_to_reference(g, leaf.grad, dtype, f"{name}{what}")
    return out, got


# (spatial, kernel, layout, relu, skip_first, dtype, bias, weight layout)
CASES = [
    ((3, 5), (2, 2), "contiguous", True, False, torch.float32, True, "contiguous"),
    ((3, 5), (2, 2), "channels_last", False, True, torch.float32, True, "channels_last"),
    ((3, 5), (2, 2), "view", True, True, torch.float64, False, "transposed"),
    ((2, 3), (4, 4), "channels_last", True, False, torch.float64, True, "contiguous"),
    ((3, 5), (1, 1), "contiguous", False, False, torch.float64, True, "channels_last"),
    ((2, 3, 3), (2, 2, 2), "channels_last", True, False, torch.float32, True, "contiguous"),
    ((2, 3, 3), (2, 2, 2), "contiguous", False, True, torch.float16, True, "channels_last"),
    ((3, 5, 7), (2, 2, 2), "channels_last", False, False, torch.float64, True, "contiguous"),
    ((3, 2, 3), (1, 2, 2), "view", True, False, torch.float32, False, "contiguous"),
    ((3, 2, 3), (1, 2, 2), "channels_last", True, True, torch.float16, True, "contiguous"),
    ((2, 3, 2), (2, 1, 1), "contiguous", True, False, torch.float64, True, "transposed"),
    ((2, 3, 2), (2, 1, 1), "channels_last", False, True, torch.float32, True, "contiguous"),
]


@pytest.mark.parametrize("spatial,k,layout,relu,skip_first,dtype,bias,weight_layout", CASES,
                         ids=[f"{len(c[0])}d-k{''.join(map(str, c[1]))}-{c[2]}-{'relu' if c[3] else 'none'}-"
                              f"{'skipfirst' if c[4] else 'upfirst'}-{str(c[5])[6:]}-{'bias' if c[6] else 'nobias'}-"
                              f"w{c[7]}" for c in CASES])
def test_forward_and_backward_match_the_reference(spatial, k, layout, relu, skip_first, dtype, bias, weight_layout):
    args = make_step(2, 5, 3, 4, spatial, k, dtype, layout, bias, weight_layout)
    out, (dx, dskip, _, _) = check_step(args, dtype, relu, skip_first)
    fmt = CHANNELS_LAST[len(spatial) + 2] if layout == "channels_last" else torch.contiguous_format
    for t in (out, dx, dskip):
        assert t.is_contiguous(memory_format=fmt), "results keep x's memory format"


def test_bfloat16_loosely():
    """bf16 under the interpreter is upcast in the kernel; on a GPU it is native."""
    check_step(make_step(1, 4, 3, 2, (2, 3, 2), (2, 2, 2), torch.bfloat16, "channels_last"),
               torch.bfloat16, True, False)


def test_contiguous_grad_for_a_channels_last_out():
    """autograd often hands a contiguous gradient to a channels_last result."""
    args = make_step(2, 5, 3, 4, (3, 5), (2, 2), torch.float32, "channels_last")
    check_step(args, torch.float32, True, False, grad_layout="contiguous")
    args = make_step(1, 5, 3, 4, (2, 3, 2), (2, 2, 2), torch.float32, "channels_last")
    check_step(args, torch.float32, False, True, grad_layout="contiguous")


@pytest.mark.parametrize("spatial,k", [((3, 5), (2, 2)), ((2, 2, 3), (2, 2, 2))])
def test_empty_batch_launches_nothing(spatial, k):
    x, skip, weight, bias = make_step(0, 5, 3, 4, spatial, k, torch.float32, "contiguous")
    calls = []
    with recording_launches(lambda *a: calls.append(a)):
        out = launch_forward(x, skip, weight, bias, relu=True, skip_first=False)
        dx, dskip, dw, db = launch_backward(torch.zeros_like(out), out, x, weight, skip_first=False, has_bias=True)
    assert calls == []
    assert out.shape == (0, 7, *(s * kk for s, kk in zip(spatial, k)))
    assert dx.shape == x.shape and dskip.shape == skip.shape
    assert not dw.any() and not db.any() and dw.shape == weight.shape


def test_nan_output_passes_its_gradient():
    """threshold_backward's mask is out <= 0: a NaN output is not <= 0, so its gradient passes."""
    x, skip, weight, bias = make_step(1, 4, 3, 2, (2, 3), (2, 2), torch.float64, "channels_last")
    x[0, 1, 1, 1] = float("nan")
    skip[0, 0, 2, 3] = float("nan")
    out = launch_forward(x, skip, weight, bias, relu=True, skip_first=False)
    assert out.isnan().any()
    grad = torch.randn(out.shape, dtype=torch.float64)
    _, dskip, _, _ = launch_backward(grad, out, x, weight, skip_first=False, has_bias=True)
    assert dskip[0, 0, 2, 3] == grad[0, 3, 2, 3]
    want = grad[:, 3:].masked_fill(out[:, 3:] <= 0, 0)
    assert torch.equal(dskip, want)


def test_two_backward_passes_are_bitwise_equal(monkeypatch):
    monkeypatch.setattr(launcher, "WEIGHT_GRAD_SPLITS", 3)
    x, skip, weight, bias = make_step(2, 6, 5, 3, (3, 4, 3), (1, 2, 2), torch.float32, "channels_last")
    out = launch_forward(x, skip, weight, bias, relu=True, skip_first=True)
    grad = torch.randn(out.shape)
    first = launch_backward(grad, out, x, weight, skip_first=True, has_bias=True)
    second = launch_backward(grad, out, x, weight, skip_first=True, has_bias=True)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("splits", [1, 2])
def test_fp16_weight_gradient_sums_partials_in_fp32(monkeypatch, splits):
    """Each split's sum overflows float16 (+-128000 > 65504) while the total (2) does not: the
    partials must be float32 (splits=2), or the one split's float32 accumulator is cast once (1)."""
    monkeypatch.setattr(launcher, "WEIGHT_GRAD_SPLITS", splits)
    x = torch.ones(1, 1, 1, 64, dtype=torch.float16)
    weight = torch.ones(1, 1, 1, 1, dtype=torch.float16)
    grad = torch.zeros(1, 2, 1, 64, dtype=torch.float16)
    grad[0, 0, 0, :32] = 4000
    grad[0, 0, 0, 32:] = -4000
    grad[0, 0, 0, 63] = -3998  # float16 spacing here is 2
    total = grad[0, 0].double().sum().item()
    assert total == 2 and 32 * 4000 > 65504
    _, _, dw, db = launch_backward(grad, None, x, weight, skip_first=False, has_bias=True)
    assert dw.item() == pytest.approx(total, rel=1e-3) and db.item() == pytest.approx(total, rel=1e-3)


def test_int64_offsets_are_decided_from_out_alone():
    """An out whose images are 2**30 elements apart (3 images: offsets past 2**31) with small
    dense x and skip takes the int64 variant; the same launch with a dense out does not. Nothing
    runs: the launch is recorded, and out lives on the meta device."""
    x, skip, weight, bias = make_step(3, 3, 2, 2, (2, 2), (2, 2), torch.float16, "contiguous")
    dense = torch.empty(3, 4, 4, 4, dtype=torch.float16)
    far = torch.empty_strided((3, 4, 4, 4), (2**30, 16, 4, 1), dtype=torch.float16, device="meta")
    assert needs_int64_offsets(far) and not needs_int64_offsets(x, skip, weight, dense)
    seen = []
    with recording_launches(lambda kernel, grid, args, kwargs: seen.append(kwargs.get("IDX64"))):
        launch_forward(x, skip, weight, bias, relu=True, skip_first=False, out=dense)
        launch_forward(x, skip, weight, bias, relu=True, skip_first=False, out=far)
        launch_backward(far, far, x, weight, skip_first=False, has_bias=True)
    seen = [s for s in seen if s is not None]  # the dW reduction sees only the small partials
    assert seen[0] is False and seen[1] is True and len(seen) == 4 and all(seen[2:])


def test_weight_changed_through_data_is_seen():
    """The repacked weight is made per call: a change through .data (which keeps the version
    counter, as gradcheck's perturbations do) reaches the next launch."""
    args = make_step(1, 4, 3, 2, (2, 3), (2, 2), torch.float64, "contiguous")
    x, skip, weight, bias = args
    first = launch_forward(x, skip, weight, bias, relu=False, skip_first=False)
    weight.data.mul_(-2)
    second = launch_forward(x, skip, weight, bias, relu=False, skip_first=False)
    assert not torch.equal(first, second)
    check_step(args, torch.float64, True, False)


@pytest.mark.parametrize("layout,dtype,spatial,k", [("channels_last", torch.float32, (2, 3, 2), (2, 2, 2)),
                                                    ("contiguous", torch.float64, (3, 2), (2, 2))])
def test_relu_mask_bits_across_several_bytes_and_channel_blocks(monkeypatch, layout, dtype, spatial, k):
    """backward_input hands the ReLU mask to backward_weight as bits (8 channels a byte): Cout = 20
    spans three bytes and two channel blocks of 16, and the weight gradient must see every bit."""
    monkeypatch.setattr(launcher, "WEIGHT_GRAD_SPLITS", 2)
    check_step(make_step(1, 6, 20, 3, spatial, k, dtype, layout), dtype, True, False)

"""The ReLU mask bits: the forward kernel writes them (training with ReLU), the backward reads them.

The expected bits are built here element by element from the reference's output, with the
layout kernels/mask_bits.py states, so a wrong bit, byte or offset anywhere fails.
"""
import math

import pytest
import torch

from unet_fast import reference, up_concat
from unet_fast.kernels.up_concat_launch import launch_backward, launch_forward
from unet_fast.ops import relu_mask
from unet_fast.ops import up_concat_op
from helpers import assert_close_to_reference, grads_against_reference, make_step, require_triton


def expected_bits(ref_out: torch.Tensor, x, weight, skip_first: bool) -> torch.Tensor:
    """The layout of kernels/mask_bits.py, one element at a time: bit (o % 8) of byte
    [pix, tap, o // 8] for the upsampled channels, then bit (c % 8) of byte [img * P + p, c // 8]
    for the skip channels; 1 where the reference's output is > 0 or NaN."""
    n, cout = x.shape[0], weight.shape[1]
    cs = ref_out.shape[1] - cout
    k = (1,) * (5 - weight.dim()) + tuple(weight.shape[2:])
    s = (1,) * (5 - x.dim()) + tuple(x.shape[2:])
    out5 = ref_out if ref_out.dim() == 5 else ref_out.unsqueeze(2)
    passes = ((out5 > 0) | torch.isnan(out5)).tolist()
    taps, nb, nbs = math.prod(k), -(-cout // 8), -(-cs // 8)
    conv_c0, skip_c0 = (cs, 0) if skip_first else (0, cout)
    dhw = math.prod(s)
    bits = [0] * (n * dhw * taps * nb + n * dhw * taps * nbs)
    for img in range(n):
        for d in range(s[0]):
            for h in range(s[1]):
                for w in range(s[2]):
                    pix = img * dhw + (d * s[1] + h) * s[2] + w
                    for td in range(k[0]):
                        for th in range(k[1]):
                            for tw in range(k[2]):
                                tap = (td * k[1] + th) * k[2] + tw
                                for o in range(cout):
                                    if passes[img][conv_c0 + o][d * k[0] + td][h * k[1] + th][w * k[2] + tw]:
                                        bits[(pix * taps + tap) * nb + o // 8] |= 1 << (o % 8)
    base = n * dhw * taps * nb
    up = [s[i] * k[i] for i in range(3)]
    for img in range(n):
        for p in range(math.prod(up)):
            d, rem = divmod(p, up[1] * up[2])
            h, w = divmod(rem, up[2])
            for c in range(cs):
                if passes[img][skip_c0 + c][d][h][w]:
                    bits[base + (img * math.prod(up) + p) * nbs + c // 8] |= 1 << (c % 8)
    return torch.tensor(bits, dtype=torch.uint8)


def with_nans(x, skip):
    """NaN in one input pixel (every upsampled channel of its taps is NaN) and in one skip value,
    and -inf in another skip value (ReLU gives 0: no gradient)."""
    x = x.clone()
    skip = skip.clone()
    x[0, :, 0, 1] = float("nan")
    skip[-1, 0, 1, 2] = float("nan")
    skip[0, -1, 0, 0] = float("-inf")
    return x, skip


# (cout, cs, spatial, kernel): odd Cout and Cs (a partial last byte), Cout past one byte, a 3-D
# step with its own taps.
SHAPES = [(11, 5, (3, 4), (2, 2)), (21, 9, (2, 3), (2, 2)), (6, 3, (2, 2, 3), (1, 2, 2))]


@pytest.mark.parametrize("cout,cs,spatial,kernel", SHAPES)
@pytest.mark.parametrize("skip_first", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_forward_writes_the_exact_mask_bits(cout, cs, spatial, kernel, skip_first, dtype):
    require_triton()
    x, skip, weight, bias = make_step(2, 7, cout, cs, spatial, kernel, dtype, memory_format=torch.channels_last)
    x, skip = with_nans(x, skip)
    bits = relu_mask.new_mask_buffer(x, weight, cs)
    bits.fill_(0xA5)  # poisoned: a byte the kernel does not write fails
    out = launch_forward(x, skip, weight, bias, relu=True, skip_first=skip_first, bits=bits)
    # The mask is the stored output's: compare with the bits of the op's own output first (exact),
    # then that output with the reference.
    want = expected_bits(out, x, weight, skip_first)
    assert torch.isnan(out).any(), "the test must exercise NaN outputs"
    assert torch.equal(bits, want), f"{int((bits != want).sum())} of {bits.numel()} mask bytes differ"
    ref = reference.up_concat(x.double(), skip.double(), weight.double(), bias.double(), relu=True,
                              skip_first=skip_first)
    assert_close_to_reference(out, ref, dtype, "out")


def test_pack_and_unpack_agree_with_the_layout():
    x, skip, weight, bias = make_step(2, 3, 13, 10, (3, 2), (2, 2), torch.float32)
    x, skip = with_nans(x, skip)
    out = reference.up_concat(x, skip, weight, bias, relu=True, skip_first=True)
    bits = relu_mask.pack_relu_mask(out, weight, skip_first=True)
    assert torch.equal(bits, expected_bits(out, x, weight, skip_first=True))
    mask = relu_mask.unpack_relu_mask(bits, x, weight, out.shape, skip_first=True)
    assert torch.equal(mask, (out > 0) | torch.isnan(out))


@pytest.mark.parametrize("cout,cs,spatial,kernel", SHAPES)
def test_backward_from_bits_matches_the_reference_with_nan_outputs(cout, cs, spatial, kernel):
    """The backward given the bits the forward wrote: dx, dskip, dW, db against the float64
    reference's autograd (threshold_backward: a NaN output passes its gradient)."""
    require_triton()
    x, skip, weight, bias = make_step(2, 5, cout, cs, spatial, kernel, torch.float32)
    x, skip = with_nans(x, skip)
    bits = relu_mask.new_mask_buffer(x, weight, cs)
    out = launch_forward(x, skip, weight, bias, relu=True, skip_first=False, bits=bits)
    grad = torch.randn_like(out)
    got = launch_backward(grad, None, x, weight, skip_first=False, has_bias=True, bits=bits)
    leaves = [t.detach().double().requires_grad_() for t in (x, skip, weight, bias)]
    reference.up_concat(*leaves, relu=True).backward(grad.double())
    for name, g, leaf in zip(("dx", "dskip", "dweight", "dbias"), got, leaves):
        want = leaf.grad
        assert torch.equal(torch.isnan(g), torch.isnan(want)), f"{name}: NaN where the reference has none or v.v."
        assert_close_to_reference(torch.nan_to_num(g), torch.nan_to_num(want), torch.float32, name)
    # The same gradients when the backward is handed the output instead (it packs the bits).
    from_out = launch_backward(grad, out, x, weight, skip_first=False, has_bias=True)
    for name, a, b in zip(("dx", "dskip", "dweight", "dbias"), got, from_out):
        assert torch.equal(a.nan_to_num(), b.nan_to_num()), name


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=str)
@pytest.mark.parametrize("skip_first", [False, True])
def test_training_step_through_the_masked_op_matches_the_reference(layout, skip_first):
    require_triton()
    args = make_step(2, 6, 11, 5, (3, 4), (2, 2), torch.float32, memory_format=layout)
    grads_against_reference(args, True, torch.float32, skip_first=skip_first)


def _forward_launches(monkeypatch) -> list:
    """The bits= argument of every launch_forward call the op makes."""
    calls = []
    original = up_concat_op._triton_forward

    def spy(*args, **kwargs):
        calls.append(kwargs.get("bits"))
        return original(*args, **kwargs)
    monkeypatch.setattr(up_concat_op, "_triton_forward", spy)
    return calls


def test_only_training_with_relu_writes_bits(monkeypatch):
    require_triton()
    calls = _forward_launches(monkeypatch)
    x, skip, weight, bias = make_step(1, 4, 9, 3, (2, 3), (2, 2), torch.float32)
    weight.requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = up_concat(x, skip, weight, bias, relu=True)
    assert calls[-1] is not None and "up_concat_masked" in type(out.grad_fn).__name__
    # autograd keeps the bits (and x, weight), never the 16-bit output
    assert [t.dtype for t in saved].count(torch.uint8) == 1 and not any(t.shape == out.shape for t in saved)
    with torch.no_grad():
        up_concat(x, skip, weight, bias, relu=True)
    assert calls[-1] is None
    up_concat(x, skip, weight, bias, relu=False)
    assert calls[-1] is None
    up_concat(x, skip, weight.detach(), bias, relu=True)  # nothing requires a gradient
    assert calls[-1] is None
    assert len(calls) == 4


def test_masked_backward_refuses_a_wrong_mask():
    x, skip, weight, bias = make_step(1, 4, 9, 3, (2, 3), (2, 2), torch.float32)
    out = reference.up_concat(x, skip, weight, bias, relu=True)
    bits = relu_mask.pack_relu_mask(out, weight, skip_first=False)
    with pytest.raises(ValueError, match="bits must be the forward's ReLU mask"):
        torch.ops.unet_fast.up_concat_masked_backward(torch.randn_like(out), bits[1:], x, weight, True, False)
    with pytest.raises(ValueError, match="bits must be the forward's ReLU mask"):
        torch.ops.unet_fast.up_concat_masked_backward(torch.randn_like(out), bits.int(), x, weight, True, False)

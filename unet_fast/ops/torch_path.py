"""up_concat in plain PyTorch, fast: the path for CPU tensors when Triton's interpreter is off,
and for any device where Triton is unavailable. 2-D and 3-D alike.

Unlike the reference it never builds the transposed-convolution output or the concatenation as
tensors of their own. With kernel = stride the taps never overlap, so the convolution is one
matmul X[M, Cin] @ W[Cin, T*Cout] (M input pixels, T = prod(kernel) taps) whose result is
scattered (with bias and ReLU fused into that copy) straight into the preallocated output, and
skip is copied into its slice. The backward works on the same pixel-major views.

Views used throughout, for spatial dims S = (S0, S1[, S2]) and kernel k = (k0, k1[, k2]):
the upsampled channels of out, [N, C, S0*k0, ...], are seen as [N, C, S0, k0, S1, k1, ...]
("interleaved"); the GEMM result is [N, S..., k..., Cout] for channels-last x (rows = pixels)
or [N, Cout, k..., S...] for contiguous x (x read in place, batched over images).
"""
import math

import torch

from unet_fast.ops.layout import channel_slices, is_channels_last, new_buffer, output_memory_format, step_shapes


def _interleaved(t: torch.Tensor, spatial) -> torch.Tensor:
    """[N, C, S0*k0, S1*k1, ...] -> the view [N, C, S0, k0, S1, k1, ...]."""
    for axis in reversed(range(len(spatial))):
        t = t.unflatten(2 + axis, (spatial[axis], t.shape[2 + axis] // spatial[axis]))
    return t


def _gemm_to_interleaved(d: int, channels_last: bool) -> list:
    """The permutation taking the GEMM layout of a result (see the module docstring) to the
    interleaved order [N, C, S0, k0, S1, k1, ...]."""
    if channels_last:  # [N, S0..S(d-1), k0..k(d-1), C]
        return [0, 2 * d + 1] + [i for axis in range(d) for i in (1 + axis, 1 + d + axis)]
    return [0, 1] + [i for axis in range(d) for i in (2 + d + axis, 2 + axis)]  # [N, C, k.., S..]


def _pixel_major(x: torch.Tensor) -> torch.Tensor:
    """[N, C, *S] -> [N*prod(S), C] (a view when x is channels-last)."""
    return x.movedim(1, -1).reshape(-1, x.shape[1])


def _weight_columns_tap_major(weight: torch.Tensor) -> torch.Tensor:
    """[Cin, Cout, *k] -> [Cin, T*Cout], columns ordered (taps, o)."""
    return weight.movedim(1, -1).reshape(weight.shape[0], -1)


def _conv_taps(x, weight, bias) -> torch.Tensor:
    """The transposed convolution as one matmul, returned as an interleaved view
    [N, Cout, S0, k0, S1, k1, ...] of its result.

    channels-last x: X[M, Cin] (a view of x) @ W[Cin, T*Cout], columns ordered (taps, o).
    contiguous x: W^T[Cout*T, Cin] @ x_n[Cin, P] batched over images, rows ordered (o, taps), so
    x is read in place and weight in its own order.
    Neither layout lets BLAS write a tap straight into out (a tap's pixels are k apart along
    every axis), hence one buffer."""
    n, cin, *spatial = x.shape
    cout, kernel = weight.shape[1], tuple(weight.shape[2:])
    taps, d = math.prod(kernel), len(spatial)
    channels_last = is_channels_last(output_memory_format(x))
    if channels_last:
        pixels, w_mat = _pixel_major(x), _weight_columns_tap_major(weight)
        y = pixels @ w_mat if bias is None else torch.addmm(bias.repeat(taps), pixels, w_mat)
        y = y.view(n, *spatial, *kernel, cout)
    else:
        images = x.reshape(n, cin, math.prod(spatial))
        w_t = weight.reshape(cin, cout * taps).t()
        if bias is None:
            y = torch.matmul(w_t, images)
        else:
            y = torch.baddbmm(bias.repeat_interleave(taps)[None, :, None], w_t.expand(n, -1, -1), images)
        y = y.view(n, cout, *kernel, *spatial)
    return y.permute(_gemm_to_interleaved(d, channels_last))


def _copy(dst: torch.Tensor, src: torch.Tensor, relu: bool) -> None:
    if relu:
        torch.clamp_min(src, 0, out=dst)  # clamp_min lets NaN through, as torch.relu does
    else:
        dst.copy_(src)


def forward(x, skip, weight, bias, relu: bool, skip_first: bool) -> torch.Tensor:
    """The fused step's result, written once into a new [N, Cout + Cs, *(S * k)] buffer."""
    cout, cs = weight.shape[1], skip.shape[1]
    _, out_shape = step_shapes(x, weight, cs)
    out = new_buffer(out_shape, x, memory_format=output_memory_format(x))
    if out.numel() == 0:
        return out
    up, sk = channel_slices(cout, cs, skip_first)
    _copy(_interleaved(out[:, up], x.shape[2:]), _conv_taps(x, weight, bias), relu)
    _copy(out[:, sk], skip, relu)
    return out


def _masked_into(dst: torch.Tensor, grad: torch.Tensor, out) -> None:
    """dst = grad where the forward ReLU let the value through (out None: no ReLU, all of grad),
    in one pass over any strides.

    threshold_backward is autograd's own ReLU backward: 0 where out <= 0, else grad, so a NaN
    output passes its gradient exactly as in the reference. Its out= form writes straight into a
    permuted view, so no temporary is built."""
    if out is not None:
        torch.ops.aten.threshold_backward.grad_input(grad, out, 0, grad_input=dst)
    else:
        dst.copy_(grad)


def backward(grad, out, x, weight, has_bias: bool, skip_first: bool):
    """(dx, dskip, dweight, dbias); `out` is the forward's result when it applied a ReLU (the
    mask is out <= 0), None when it did not.

    gy, the masked gradient of the upsampled channels, is unshuffled once into the GEMM layout
    that suits x's memory format (as in `_conv_taps`), so that dx is one matmul written straight
    into its buffer and dweight one matmul (summed over images for contiguous x):
      channels-last: gy [M, (taps, o)],     dx[M, Cin] = gy @ W^T,   dW = X^T @ gy
      contiguous:    gy [N, (o, taps), P],  dx_n = W @ gy_n,         dW = sum_n x_n @ gy_n^T
    """
    relu = out is not None
    n, cin, *spatial = x.shape
    cout, kernel = weight.shape[1], tuple(weight.shape[2:])
    cs, d, taps, pixels = grad.shape[1] - cout, len(spatial), math.prod(kernel), math.prod(spatial)
    up, sk = channel_slices(cout, cs, skip_first)
    fmt = output_memory_format(x)
    channels_last = is_channels_last(fmt)
    dskip = new_buffer((n, cs, *grad.shape[2:]), x, memory_format=fmt)
    _masked_into(dskip, grad[:, sk], out[:, sk] if relu else None)
    grad_taps = _interleaved(grad[:, up], spatial)
    out_taps = _interleaved(out[:, up], spatial) if relu else None
    dx = new_buffer(x.shape, x, memory_format=fmt)
    if channels_last:
        gy = new_buffer((n, *spatial, *kernel, cout), x)
        _masked_into(gy.permute(_gemm_to_interleaved(d, True)), grad_taps, out_taps)
        gy = gy.view(n * pixels, taps * cout)
        w_mat = _weight_columns_tap_major(weight)                # [Cin, (taps, o)]
        torch.mm(gy, w_mat.t(), out=dx.movedim(1, -1).view(n * pixels, cin))
        dweight = (_pixel_major(x).t() @ gy).view(cin, *kernel, cout).movedim(-1, 1).contiguous()
        dbias = gy.sum(0).view(taps, cout).sum(0) if has_bias else weight.new_zeros(cout)
    else:
        gy = new_buffer((n, cout, *kernel, *spatial), x)
        _masked_into(gy.permute(_gemm_to_interleaved(d, False)), grad_taps, out_taps)
        gy = gy.view(n, cout * taps, pixels)
        w_mat = weight.reshape(cin, cout * taps)                 # [Cin, (o, taps)]: weight's own order
        torch.bmm(w_mat.expand(n, -1, -1), gy, out=dx.view(n, cin, pixels))
        dweight = torch.bmm(x.reshape(n, cin, pixels), gy.transpose(1, 2)).sum(0).view_as(weight)
        dbias = gy.view(n, cout, taps * pixels).sum((0, 2)) if has_bias else weight.new_zeros(cout)
    return dx, dskip, dweight, dbias

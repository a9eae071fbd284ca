"""up_concat in plain PyTorch, fast: the path for CPU tensors when Triton's interpreter is off,
and for any device where Triton is unavailable.

Unlike the reference it never builds the transposed-convolution output or the concatenation as
tensors of their own: the convolution is one matmul X[M, Cin] @ W[Cin, 4*Cout], scattered (with
bias and ReLU fused into the copy) straight into the preallocated output, and skip is copied into
its slice. The backward works on the same pixel-major views.
"""
import torch

from unet_fast.ops.layout import new_buffer, output_memory_format


def _weight_matrix(weight: torch.Tensor) -> torch.Tensor:
    """[Cin, Cout, 2, 2] -> [Cin, 4*Cout] with columns ordered (a, b, o)."""
    cin, cout = weight.shape[:2]
    return weight.permute(0, 2, 3, 1).reshape(cin, 4 * cout)


def _taps_view(t: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Channels [lo, hi) of an [N, C, 2H, 2W] tensor seen as [N, H, a, W, b, C'] (a view)."""
    h, w = t.shape[2] // 2, t.shape[3] // 2
    return t.permute(0, 2, 3, 1)[..., lo:hi].unflatten(1, (h, 2)).unflatten(3, (w, 2))


def _pixel_major(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N*H*W, C] (a view when x is channels_last)."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def _conv_taps(x, weight, bias) -> torch.Tensor:
    """The transposed convolution as one matmul, returned as a [N, Cout, H, a, W, b] view.

    channels_last x: X[M, Cin] (a view of x) @ W[Cin, 4*Cout], columns ordered (a, b, o).
    NCHW x: W^T[4*Cout, Cin] @ x_n[Cin, H*W] batched over images, rows ordered (o, a, b), so
    x is read in place and each channel's [a, b, H, W] block is contiguous.
    Neither layout lets BLAS write a tap straight into out (NCHW taps have columns 2 apart;
    channels_last taps have image rows 4*W*C apart but pixels 2*C apart), hence one buffer."""
    n, cin, h, w = x.shape
    cout = weight.shape[1]
    if output_memory_format(x) == torch.channels_last:
        pixels = _pixel_major(x)
        w_mat = _weight_matrix(weight)
        y = pixels @ w_mat if bias is None else torch.addmm(bias.repeat(4), pixels, w_mat)
        return y.view(n, h, w, 2, 2, cout).permute(0, 5, 1, 3, 2, 4)
    images = x.reshape(n, cin, h * w)
    w_t = weight.reshape(cin, 4 * cout).t()
    if bias is None:
        y = torch.matmul(w_t, images)
    else:
        y = torch.baddbmm(bias.repeat_interleave(4)[None, :, None], w_t.expand(n, -1, -1), images)
    return y.view(n, cout, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)


def _copy(dst: torch.Tensor, src: torch.Tensor, relu: bool) -> None:
    if relu:
        torch.clamp_min(src, 0, out=dst)  # clamp_min lets NaN through, as torch.relu does
    else:
        dst.copy_(src)


def up_concat_forward(x, skip, weight, bias, relu: bool) -> torch.Tensor:
    n, cin, h, w = x.shape
    cout, cs = weight.shape[1], skip.shape[1]
    out = new_buffer((n, cout + cs, 2 * h, 2 * w), x, memory_format=output_memory_format(x))
    if out.numel() == 0:
        return out
    taps = out[:, :cout].unflatten(2, (h, 2)).unflatten(4, (w, 2))  # [N, Cout, H, a, W, b]
    _copy(taps, _conv_taps(x, weight, bias), relu)
    _copy(out[:, cout:], skip, relu)
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


def up_concat_backward(grad, out, x, weight, has_bias: bool):
    """(dx, dskip, dweight, dbias); `out` is the forward result when it had a ReLU, else None.

    gy, the masked gradient of the convolution channels, is unshuffled once into the GEMM layout
    that suits x's memory format (as in `_conv_taps`), so that dx is one matmul written straight
    into its buffer and dweight one matmul (summed over images for NCHW) with no further copies:
      channels_last: gy [M, (a, b, o)],     dx[M, Cin] = gy @ W^T,      dW = X^T @ gy
      NCHW:          gy [N, (o, a, b), HW], dx_n = W @ gy_n,            dW = sum_n x_n @ gy_n^T
    """
    relu = out is not None
    n, cin, h, w = x.shape
    cout = weight.shape[1]
    fmt = output_memory_format(x)
    dskip = new_buffer((n, grad.shape[1] - cout, 2 * h, 2 * w), x, memory_format=fmt)
    _masked_into(dskip, grad[:, cout:], out[:, cout:] if relu else None)
    grad_taps = _taps_view(grad, 0, cout)                      # [N, H, a, W, b, Cout]
    out_taps = _taps_view(out, 0, cout) if relu else None
    dx = new_buffer(x.shape, x, memory_format=fmt)
    if fmt == torch.channels_last:
        gy = new_buffer((n, h, w, 2, 2, cout), x)
        _masked_into(gy.permute(0, 1, 3, 2, 4, 5), grad_taps, out_taps)
        gy = gy.view(n * h * w, 4 * cout)
        w_mat = _weight_matrix(weight)                          # [Cin, (a, b, o)]
        torch.mm(gy, w_mat.t(), out=dx.permute(0, 2, 3, 1).view(n * h * w, cin))
        dweight = (_pixel_major(x).t() @ gy).view(cin, 2, 2, cout).permute(0, 3, 1, 2).contiguous()
        dbias = gy.sum(0).view(4, cout).sum(0) if has_bias else weight.new_zeros(cout)
    else:
        gy = new_buffer((n, cout, 2, 2, h, w), x)
        _masked_into(gy.permute(0, 4, 2, 5, 3, 1), grad_taps, out_taps)
        gy = gy.view(n, 4 * cout, h * w)
        w_mat = weight.reshape(cin, 4 * cout)                   # [Cin, (o, a, b)]: weight's own order
        torch.bmm(w_mat.expand(n, -1, -1), gy, out=dx.view(n, cin, h * w))
        dweight = torch.bmm(x.reshape(n, cin, h * w), gy.transpose(1, 2)).sum(0).view_as(weight)
        dbias = gy.view(n, cout, 4 * h * w).sum((0, 2)) if has_bias else weight.new_zeros(cout)
    return dx, dskip, dweight, dbias

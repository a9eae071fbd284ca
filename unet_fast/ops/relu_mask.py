"""The ReLU mask of up_concat's output as bits, on the PyTorch side: its buffer, and packing and
unpacking it with PyTorch ops.

The layout is kernels/mask_bits.py's (the forward kernel writes it, the backward kernels read it):
a flat uint8 buffer, first the upsampled channels as [M input pixels, T taps, cdiv(Cout, 8)]
bytes, then the skip channels as [N * P output pixels, cdiv(Cs, 8)] bytes; bit (c % 8) of a
pixel's byte c // 8 is 1 where the gradient passes (out > 0 or NaN, threshold_backward's).
Packing here serves a backward given the 16-bit output instead of the bits (a direct call of the
unet_fast::up_concat_backward op, the PyTorch path); unpacking serves the PyTorch path and the
GPU run's record mode. No Triton import: the PyTorch path works where Triton is missing.
"""
import math

import torch

from unet_fast.ops import layout


def mask_parts(x: torch.Tensor, weight: torch.Tensor, cs: int) -> tuple:
    """(bytes of the upsampled channels' part, bytes of the skip channels' part) of the mask of a
    step with input x, weight [Cin, Cout, *k] and cs skip channels."""
    n, cout, kernel = x.shape[0], weight.shape[1], tuple(weight.shape[2:])
    taps, pixels = math.prod(kernel), math.prod(x.shape[2:])
    return n * pixels * taps * -(-cout // 8), n * pixels * taps * -(-cs // 8)


def new_mask_buffer(x: torch.Tensor, weight: torch.Tensor, cs: int) -> torch.Tensor:
    """An unwritten mask buffer for the step (filled with 0xA5 when layout.POISON_OUTPUTS is set,
    so a byte the forward forgets to write fails the tests)."""
    bits = torch.empty(sum(mask_parts(x, weight, cs)), dtype=torch.uint8, device=x.device)
    return bits.fill_(0xA5) if layout.POISON_OUTPUTS else bits


def _as_5d(t: torch.Tensor) -> torch.Tensor:
    return t if t.dim() == 5 else t.unsqueeze(2)


def _tap_major(up: torch.Tensor, kernel) -> torch.Tensor:
    """[N, C, D*kd, H*kh, W*kw] -> [N, D, H, W, kd, kh, kw, C]: the bits' order of the upsampled part."""
    n, c, du, hu, wu = up.shape
    kd, kh, kw = kernel
    return up.reshape(n, c, du // kd, kd, hu // kh, kh, wu // kw, kw).permute(0, 2, 4, 6, 3, 5, 7, 1)


def _pack(keep: torch.Tensor) -> torch.Tensor:
    """[..., C] booleans -> [..., cdiv(C, 8)] bytes, channel c in bit c % 8, flattened."""
    c = keep.shape[-1]
    padded = torch.nn.functional.pad(keep.to(torch.uint8), (0, -c % 8))
    weights = 2 ** torch.arange(8, dtype=torch.uint8, device=keep.device)
    return (padded.reshape(*keep.shape[:-1], -1, 8) * weights).sum(-1, dtype=torch.uint8).reshape(-1)


def _unpack(bytes_: torch.Tensor, shape) -> torch.Tensor:
    """Inverse of _pack: bytes for [..., C] -> [..., C] booleans."""
    c = shape[-1]
    shifts = torch.arange(8, dtype=torch.uint8, device=bytes_.device)
    bits = (bytes_.reshape(*shape[:-1], -1, 1) >> shifts) & 1
    return bits.reshape(*shape[:-1], -1)[..., :c] != 0


def _kernel3(weight: torch.Tensor) -> tuple:
    k = tuple(weight.shape[2:])
    return (1,) * (3 - len(k)) + k


def pack_relu_mask(out: torch.Tensor, weight: torch.Tensor, skip_first: bool) -> torch.Tensor:
    """The mask bits of a ReLU output `out` [N, Cout + Cs, *(S*k)] of the step with `weight`."""
    cout = weight.shape[1]
    up, sk = layout.channel_slices(cout, out.shape[1] - cout, skip_first)
    o = _as_5d(out)
    keep = lambda t: (t > 0) | torch.isnan(t)  # noqa: E731
    conv = _pack(keep(_tap_major(o[:, up], _kernel3(weight))))
    skip = o[:, sk]
    skip_bits = _pack(keep(skip.reshape(*skip.shape[:2], -1).transpose(1, 2)))
    return torch.cat([conv, skip_bits])


def unpack_relu_mask(bits: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, out_shape,
                     skip_first: bool) -> torch.Tensor:
    """The mask as booleans [N, Cout + Cs, *(S*k)] (True: the gradient passes), from its bits."""
    n, cout, kd, kh, kw = x.shape[0], weight.shape[1], *_kernel3(weight)
    cs = out_shape[1] - cout
    d, h, w = (1,) * (5 - x.dim()) + tuple(x.shape[2:])
    conv_bytes, skip_bytes = mask_parts(x, weight, cs)
    up, sk = layout.channel_slices(cout, cs, skip_first)
    mask = torch.empty((n, cout + cs, kd * d, kh * h, kw * w), dtype=torch.bool, device=bits.device)
    conv = _unpack(bits[:conv_bytes], (n, d, h, w, kd, kh, kw, cout))
    mask[:, up] = conv.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(n, cout, kd * d, kh * h, kw * w)
    skip = _unpack(bits[conv_bytes:conv_bytes + skip_bytes], (n, kd * d * kh * h * kw * w, cs))
    mask[:, sk] = skip.transpose(1, 2).reshape(n, cs, kd * d, kh * h, kw * w)
    return mask.reshape(out_shape)

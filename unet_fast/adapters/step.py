"""The one decoder step every adapter calls: up_concat when it computes exactly what the library's
own lines would, for this call; None otherwise, and the adapter then runs the library's lines.

Two checks:
- `static_problem(conv)`, once, when `fuse` walks the model: the transposed convolution is one
  whose taps never overlap (kernel == stride, no padding, output_padding, dilation, groups), so
  that it is the op's convolution at all;
- `fused_step(...)`, at every call: shapes (the skip is exactly stride x the input's size), one
  device and dtype the op takes (or autocast's dtype, cast as autocast casts a convolution's
  operands), plain tensors (not a subclass such as MONAI's MetaTensor, whose metadata the library's
  torch.cat carries), no hooks on the modules the library would call, not being traced.
"""
from typing import Iterable, Optional

import torch
from torch import Tensor, nn

from unet_fast.models.input_checks import autocast_enabled
from unet_fast.models.module_hooks import calls_module
from unet_fast.ops import up_concat_op
from unet_fast.ops.validation import SUPPORTED_DTYPES

CONV_TRANSPOSE = (nn.ConvTranspose2d, nn.ConvTranspose3d)


def static_problem(conv) -> Optional[str]:
    """Why `conv` cannot be a fused step's convolution, or None when it can."""
    if not isinstance(conv, CONV_TRANSPOSE):
        return f"upsampling by {type(conv).__name__}, not a ConvTranspose2d/3d"
    if type(conv).forward is not nn.ConvTranspose2d.forward and type(conv).forward is not nn.ConvTranspose3d.forward:
        return f"{type(conv).__name__} overrides ConvTranspose's forward"
    dims = conv.weight.dim() - 2
    if tuple(conv.kernel_size) != tuple(conv.stride):
        return f"kernel {tuple(conv.kernel_size)} != stride {tuple(conv.stride)} (overlapping taps)"
    if any(conv.padding) or any(conv.output_padding) or tuple(conv.dilation) != (1,) * dims or conv.groups != 1:
        return (f"padding {tuple(conv.padding)}, output_padding {tuple(conv.output_padding)}, dilation "
                f"{tuple(conv.dilation)}, groups {conv.groups} (the fused step has none)")
    if conv.padding_mode != "zeros":
        return f"padding_mode {conv.padding_mode!r}"
    return None


def _operands(conv, x: Tensor, skip: Tensor):
    """(x, weight, bias) in the dtype the library's convolution would compute in, or None."""
    weight, bias = conv.weight, conv.bias
    device = x.device.type
    if autocast_enabled(device):
        if device not in ("cpu", "cuda"):
            return None
        # Autocast runs conv_transpose in its dtype, casting every floating operand but float64
        # (float64 next to a cast operand would fail in the library's own code: let it).
        target = torch.get_autocast_dtype(device)
        operands = (x, weight) if bias is None else (x, weight, bias)
        if any(t.dtype == torch.float64 or not t.is_floating_point() for t in operands):
            return None
        x, weight = x.to(target), weight.to(target)
        bias = bias.to(target) if bias is not None else None
    dtypes = {x.dtype, weight.dtype, skip.dtype} | ({bias.dtype} if bias is not None else set())
    # One dtype or the library's torch.cat would promote (its result is not the op's)
    if len(dtypes) != 1 or x.dtype not in SUPPORTED_DTYPES:
        return None
    return x, weight, bias


def fused_step(conv, x, skip, skip_first: bool, relu: bool = False,
               containers: Iterable[nn.Module] = ()) -> Optional[Tensor]:
    """`act(cat([conv(x), skip]))` (`cat([skip, conv(x)])` when skip_first) through the fused op, or
    None when this call must run the library's own code. `containers` are the modules the library
    calls around `conv` (MONAI's UpSample, Convolution): hooks on them also send the call back."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return None
    if type(x) is not torch.Tensor or type(skip) is not torch.Tensor:
        return None
    if calls_module(conv) or any(calls_module(m) for m in containers):
        return None
    if x.dim() not in (4, 5) or skip.dim() != x.dim() or conv.weight.dim() != x.dim():
        return None
    kernel = conv.weight.shape[2:]
    if (skip.shape[0] != x.shape[0] or x.shape[1] != conv.weight.shape[0] or x.numel() == 0 or skip.numel() == 0
            or any(s != i * k for s, i, k in zip(skip.shape[2:], x.shape[2:], kernel))):
        return None
    if not (x.device == skip.device == conv.weight.device):
        return None
    operands = _operands(conv, x, skip)
    if operands is None:
        return None
    x, weight, bias = operands
    return up_concat_op.up_concat(x, skip, weight, bias, relu=relu, skip_first=skip_first)

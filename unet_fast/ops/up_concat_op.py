"""`unet_fast::up_concat`: the fused decoder step as a torch.library op, with its autograd.

Dispatch, per call:
- CUDA tensors run the Triton kernels (kernels/up_concat_forward.py, up_concat_backward.py,
  launched by kernels/up_concat_launch.py).
- CPU tensors run the same Triton kernels under Triton's interpreter when TRITON_INTERPRET=1
  (how CI tests the kernels), otherwise the fast PyTorch path (torch_path.py).
- Anything else, a machine without Triton, or UNET_FAST_DISABLE_TRITON=1 takes the PyTorch path.

Registered with torch.library.custom_op (not triton_op): its fake implementation works under the
interpreter, so opcheck and torch.compile(fullgraph=True) pass on the CPU as on the GPU; Inductor
treats the op as opaque and compiles everything around it.
"""
import os
import warnings
from typing import Optional, Tuple

import torch
from torch import Tensor

from unet_fast.ops import torch_path
from unet_fast.ops.layout import output_memory_format
from unet_fast.ops.validation import check_up_concat_args

try:
    from unet_fast.kernels import common as _triton_common
    from unet_fast.kernels.up_concat_launch import up_concat_backward as _triton_backward
    from unet_fast.kernels.up_concat_launch import up_concat_forward as _triton_forward
except ImportError as e:  # no Triton here, or one too old: the PyTorch path serves every device
    _triton_common = None
    if "Triton >=" in str(e):
        warnings.warn(f"{e}; up_concat runs its PyTorch path", stacklevel=2)


def uses_triton(t: Tensor) -> bool:
    """Whether up_concat on tensors like `t` runs the Triton kernels (compiled or interpreted)."""
    if _triton_common is None or os.environ.get("UNET_FAST_DISABLE_TRITON", "0") not in ("", "0"):
        return False
    if t.device.type == "cuda":
        return True
    if t.device.type != "cpu" or not _triton_common.interpreting():
        return False
    problem = _triton_common.interpreter_problem()
    if problem:  # refuse, rather than fail inside every kernel or quietly run something else
        raise RuntimeError(f"unet_fast: {problem}")
    return True


@torch.library.custom_op("unet_fast::up_concat", mutates_args=())
def _up_concat(x: Tensor, skip: Tensor, weight: Tensor, bias: Optional[Tensor], relu: bool) -> Tensor:
    if uses_triton(x):
        return _triton_forward(x, skip, weight, bias, relu)
    return torch_path.up_concat_forward(x, skip, weight, bias, relu)


@_up_concat.register_fake
def _(x, skip, weight, bias, relu):
    n, _, h, w = x.shape
    return torch.empty((n, weight.shape[1] + skip.shape[1], 2 * h, 2 * w), dtype=x.dtype,
                       device=x.device, memory_format=output_memory_format(x))


@torch.library.custom_op("unet_fast::up_concat_backward", mutates_args=())
def _up_concat_backward(grad: Tensor, out: Optional[Tensor], x: Tensor, weight: Tensor,
                        has_bias: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dx, dskip, dweight, dbias). `out` is the forward's result when it applied a ReLU (the mask
    is out <= 0, as in threshold_backward), None otherwise."""
    if uses_triton(x):
        return _triton_backward(grad, out if out is not None else grad, x, weight,
                                relu=out is not None, has_bias=has_bias)
    return torch_path.up_concat_backward(grad, out, x, weight, has_bias)


@_up_concat_backward.register_fake
def _(grad, out, x, weight, has_bias):
    n, _, h, w = x.shape
    cs = grad.shape[1] - weight.shape[1]
    fmt = output_memory_format(x)
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    dskip = torch.empty((n, cs, 2 * h, 2 * w), dtype=x.dtype, device=x.device, memory_format=fmt)
    return dx, dskip, weight.new_empty(weight.shape), weight.new_empty(weight.shape[1])


def _setup_context(ctx, inputs, output):
    x, _skip, weight, bias, relu = inputs
    # The output is saved only for the ReLU mask; without a ReLU the gradient passes unmasked.
    ctx.save_for_backward(x, weight, output if relu else None)
    ctx.has_bias = bias is not None


def _backward(ctx, grad):
    x, weight, out = ctx.saved_tensors
    dx, dskip, dweight, dbias = torch.ops.unet_fast.up_concat_backward(grad, out, x, weight, ctx.has_bias)
    return dx, dskip, dweight, dbias if ctx.has_bias else None, None


_up_concat.register_autograd(_backward, setup_context=_setup_context)


def up_concat(x: Tensor, skip: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
              relu: bool = True) -> Tensor:
    """relu(cat([conv_transpose2d(x, weight, bias, stride=2), skip], dim=1)) in one fused kernel.

    x [N, Cin, H, W], skip [N, Cs, 2H, 2W], weight [Cin, Cout, 2, 2] (nn.ConvTranspose2d's layout),
    bias [Cout] or None; returns [N, Cout + Cs, 2H, 2W] in x's memory format. relu=False leaves the
    ReLU out. Arguments are checked here, before anything launches.
    """
    check_up_concat_args(x, skip, weight, bias, relu)
    return torch.ops.unet_fast.up_concat(x, skip, weight, bias, relu)

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

from unet_fast.ops import autodiff, torch_path
from unet_fast.ops.layout import channel_slices, output_memory_format, step_shapes
from unet_fast.ops.validation import (check_conv_backward_args, check_up_concat_args, check_up_concat_backward_args,
                                      check_up_concat_types)

try:
    from unet_fast.kernels import common as _triton_common
    from unet_fast.kernels.up_concat_launch import launch_backward as _triton_backward
    from unet_fast.kernels.up_concat_launch import launch_forward as _triton_forward
except ImportError as e:  # no Triton here, or one too old: the PyTorch path serves every device
    _triton_common = None
    if "Triton >=" in str(e):
        warnings.warn(f"{e}; up_concat runs its PyTorch path", stacklevel=2)


_FALSE = ("", "0", "false", "no", "off")
_TRUE = ("1", "true", "yes", "on")


def env_flag(name: str) -> bool:
    """A boolean environment variable as people write them (0/1, true/false, yes/no, on/off, any
    case); anything else is refused rather than read as "on"."""
    value = os.environ.get(name, "").strip().lower()
    if value in _FALSE:
        return False
    if value in _TRUE:
        return True
    raise ValueError(f"{name}={os.environ[name]!r}: expected one of 1, 0, true, false, yes, no, on, off")


def uses_triton(t: Tensor) -> bool:
    """Whether up_concat on tensors like `t` runs the Triton kernels (compiled or interpreted)."""
    if _triton_common is None or env_flag("UNET_FAST_DISABLE_TRITON"):
        return False
    if t.device.type == "cuda":
        return True
    if t.device.type != "cpu" or not _triton_common.interpreting():
        return False
    problem = _triton_common.interpreter_problem()
    if problem:  # refuse, rather than fail inside every kernel or quietly run something else
        raise RuntimeError(f"unet_fast: {problem}")
    return True


def forward_impl(x: Tensor, skip: Tensor, weight: Tensor, bias: Optional[Tensor], relu: bool,
                 skip_first: bool) -> Tensor:
    """The op's forward on real tensors (its CPU and CUDA kernel): the Triton kernels or the
    PyTorch path, as `uses_triton` decides, after the argument checks (a direct
    torch.ops.unet_fast.up_concat call is checked too)."""
    check_up_concat_args(x, skip, weight, bias, relu, skip_first)
    if any(autodiff.has_tangent(t) for t in (x, skip, weight, bias)):
        # Reached only by a direct op call: up_concat runs its composite under forward-mode AD.
        raise RuntimeError("unet_fast::up_concat has no forward-mode derivative: call unet_fast.up_concat, "
                           "which runs the step as differentiable torch ops when an input has a tangent")
    if uses_triton(x):
        return _triton_forward(x, skip, weight, bias, relu=relu, skip_first=skip_first)
    return torch_path.forward(x, skip, weight, bias, relu, skip_first)


_up_concat = torch.library.custom_op("unet_fast::up_concat", forward_impl, mutates_args=())


@_up_concat.register_fake
def _(x, skip, weight, bias, relu, skip_first):
    check_up_concat_args(x, skip, weight, bias, relu, skip_first)
    _, shape = step_shapes(x, weight, skip.shape[1])
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=output_memory_format(x))


def backward_impl(grad: Tensor, out: Optional[Tensor], x: Tensor, weight: Tensor,
                  has_bias: bool, skip_first: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dx, dskip, dweight, dbias), the backward op's kernel as forward_impl is the forward's. `out`
    is the forward's result when it applied a ReLU (the mask is out <= 0, as in
    threshold_backward), None when it did not: the one convention for "no activation" on both
    paths."""
    check_up_concat_backward_args(grad, out, x, weight, has_bias, skip_first)
    if uses_triton(x):
        return _triton_backward(grad, out, x, weight, skip_first=skip_first, has_bias=has_bias)
    return torch_path.backward(grad, out, x, weight, has_bias, skip_first)


_up_concat_backward = torch.library.custom_op("unet_fast::up_concat_backward", backward_impl, mutates_args=())


def empty_gradients(grad: Tensor, x: Tensor, weight: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Empty (dx, dskip, dweight, dbias) of the shapes, dtypes and layouts a backward op returns:
    the fake implementation of every backward op."""
    n, cs = x.shape[0], grad.shape[1] - weight.shape[1]
    fmt = output_memory_format(x)
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    dskip = torch.empty((n, cs, *grad.shape[2:]), dtype=x.dtype, device=x.device, memory_format=fmt)
    return dx, dskip, weight.new_empty(weight.shape), weight.new_empty(weight.shape[1])


@_up_concat_backward.register_fake
def _(grad, out, x, weight, has_bias, skip_first):
    check_up_concat_backward_args(grad, out, x, weight, has_bias, skip_first)
    return empty_gradients(grad, x, weight)


def conv_backward_impl(grad_up: Tensor, x: Tensor, weight: Tensor, has_bias: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """(dx, dweight, dbias) of the transposed convolution alone, from grad_up, the gradient of the
    upsampled channels [N, Cout, *(S * k)] (any strides: a channel slice of grad). The backward of
    a step without a ReLU: its skip channels' gradient is grad's slice itself, which the autograd
    formula returns as a view (as torch.cat's backward does), so no kernel reads or writes it."""
    check_conv_backward_args(grad_up, x, weight, has_bias)
    # The step's backward with no skip channels (Cs = 0): no copy programs, an empty dskip.
    if uses_triton(x):
        dx, _, dweight, dbias = _triton_backward(grad_up, None, x, weight, skip_first=False, has_bias=has_bias)
    else:
        dx, _, dweight, dbias = torch_path.backward(grad_up, None, x, weight, has_bias, False)
    return dx, dweight, dbias


_up_concat_conv_backward = torch.library.custom_op("unet_fast::up_concat_conv_backward", conv_backward_impl,
                                                   mutates_args=())


@_up_concat_conv_backward.register_fake
def _(grad_up, x, weight, has_bias):
    check_conv_backward_args(grad_up, x, weight, has_bias)
    dx, _, dweight, dbias = empty_gradients(grad_up, x, weight)
    return dx, dweight, dbias


def _setup_context(ctx, inputs, output):
    x, _skip, weight, bias, relu, skip_first = inputs
    # The output is saved only for the ReLU mask; without a ReLU the gradient passes unmasked.
    ctx.save_for_backward(x, weight, output if relu else None)
    ctx.has_bias = bias is not None
    ctx.skip_first = skip_first


def _backward(ctx, grad):
    x, weight, out = ctx.saved_tensors
    if torch.is_grad_enabled() and (grad.requires_grad or x.requires_grad or weight.requires_grad):
        # create_graph=True (double backward, a gradient penalty): autograd records this backward,
        # so it runs as differentiable torch ops; the backward op has no derivative of its own.
        dx, dskip, dweight, dbias = autodiff.differentiable_backward(grad, out, x, weight, ctx.has_bias,
                                                                      ctx.skip_first)
    elif out is None:
        # No ReLU: the skip channels' gradient is grad's own slice, returned as a view.
        cout = weight.shape[1]
        up, sk = channel_slices(cout, grad.shape[1] - cout, ctx.skip_first)
        dx, dweight, dbias = torch.ops.unet_fast.up_concat_conv_backward(grad[:, up], x, weight, ctx.has_bias)
        dskip = grad[:, sk]
    else:
        dx, dskip, dweight, dbias = torch.ops.unet_fast.up_concat_backward(grad, out, x, weight, ctx.has_bias,
                                                                           ctx.skip_first)
    return dx, dskip, dweight, dbias if ctx.has_bias else None, None, None


_up_concat.register_autograd(_backward, setup_context=_setup_context)


def up_concat(x: Tensor, skip: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
              relu: bool = True, skip_first: bool = False, stride=None) -> Tensor:
    """A U-Net decoder step in one fused kernel:
    act(cat([conv_transpose(x, weight, bias, stride=kernel size), skip], dim=1)).

    x [N, Cin, *S] with S = (H, W) or (D, H, W); weight [Cin, Cout, *k] in nn.ConvTranspose2d/3d's
    layout, its kernel size k (per axis, each >= 1: 2x2, 2x2x2, 1x2x2 ...) also the stride;
    bias [Cout] or None; skip [N, Cs, *(S * k)]. Returns [N, Cout + Cs, *(S * k)] in x's memory
    format, the upsampled channels first, or the skip's first when skip_first=True (MONAI's
    BasicUNet, Pytorch-UNet). relu=True applies a ReLU to every output channel, relu=False none.
    `stride`, if given (an integer, or one per spatial dim), must equal the kernel size.
    Arguments are checked before anything launches (shapes, dtypes and devices by the op itself).
    Without a ReLU, skip's gradient is a view of the incoming gradient's skip channels, as
    torch.cat's backward gives it: nothing copies it.

    Under forward-mode AD (an input with a tangent) or a torch.func transform (jvp, jacfwd,
    vmap, grad, ...) the step runs as unet_fast.reference.up_concat, plain differentiable torch
    ops, since the fused op has no forward-mode derivative; double backward through the fused op
    works (its backward then runs as differentiable torch ops).
    """
    check_up_concat_types(x, skip, weight, bias, relu, skip_first)
    composite = autodiff.needs_composite(x, skip, weight, bias)
    if composite or stride is not None:  # else the op's own implementation runs the checks, once
        check_up_concat_args(x, skip, weight, bias, relu, skip_first, stride)
    if composite:
        return autodiff.composite_forward(x, skip, weight, bias, relu, skip_first)
    if _masked_op.wants_mask(x, skip, weight, bias, relu):
        # Training with ReLU on the kernels: the forward also writes the ReLU mask as bits, which
        # autograd saves instead of the output (up_concat_masked_op.py).
        return _masked_op.up_concat_masked(x, skip, weight, bias, skip_first)
    return torch.ops.unet_fast.up_concat(x, skip, weight, bias, relu, skip_first)


# Imported last: it builds on this module's dispatch (uses_triton, the launchers).
from unet_fast.ops import up_concat_masked_op as _masked_op  # noqa: E402

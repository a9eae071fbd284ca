"""`unet_fast::up_concat_masked`: the fused step with ReLU that also returns its ReLU mask as bits,
with its autograd, for training.

up_concat() calls it instead of `unet_fast::up_concat` when the Triton kernels run, relu=True and
autograd will need a gradient: the forward kernel writes the mask bits (1 bit per output element,
layout in kernels/mask_bits.py) in its epilogue, and autograd saves them instead of the 16-bit
output, so the backward reads 1/16 of the bytes (and the saved activation is 16x smaller).
`unet_fast::up_concat_masked_backward` is the backward op that reads them.

Both ops work on every path (the PyTorch path packs and unpacks the bits with torch ops,
relu_mask.py), so a direct call, opcheck and torch.compile see one behaviour everywhere.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from unet_fast.ops import autodiff, relu_mask, torch_path
from unet_fast.ops import up_concat_op as plain
from unet_fast.ops.layout import new_buffer, output_memory_format, step_shapes
from unet_fast.ops.validation import check_up_concat_args, check_up_concat_backward_args


def wants_mask(x: Tensor, skip: Tensor, weight: Tensor, bias: Optional[Tensor], relu: bool) -> bool:
    """Whether up_concat takes this op: a ReLU, the Triton kernels, and a gradient autograd will ask for."""
    return (relu and torch.is_grad_enabled()
            and any(t is not None and t.requires_grad for t in (x, skip, weight, bias))
            and _uses_triton(x))


@torch.compiler.assume_constant_result
def _uses_triton_now(device_type: str) -> bool:
    return plain.uses_triton(torch.empty(0, device=device_type))


def _uses_triton(x: Tensor) -> bool:
    # Read through a constant-result function, so torch.compile takes the decision once while
    # tracing instead of tracing the environment reads. A graph compiled before the environment
    # changed stays right: both ops run on either path.
    return _uses_triton_now(x.device.type)


def check_mask(bits: Tensor, x: Tensor, weight: Tensor, cs: int) -> None:
    """bits must be the mask buffer of this step (relu_mask.new_mask_buffer's size, uint8, x's device)."""
    if not isinstance(bits, Tensor):
        raise TypeError(f"bits must be a torch.Tensor (the forward's ReLU mask), got {type(bits).__name__}")
    want = sum(relu_mask.mask_parts(x, weight, cs))
    if bits.dtype != torch.uint8 or bits.dim() != 1 or bits.numel() != want or bits.device != x.device:
        raise ValueError(f"bits must be the forward's ReLU mask: a 1-D uint8 tensor of {want} bytes on {x.device}, "
                         f"got {bits.dtype} of shape {list(bits.shape)} on {bits.device}")


def masked_forward_impl(x: Tensor, skip: Tensor, weight: Tensor, bias: Optional[Tensor],
                        skip_first: bool) -> Tuple[Tensor, Tensor]:
    """(out, bits): up_concat's result with ReLU and its ReLU mask as bits."""
    check_up_concat_args(x, skip, weight, bias, True, skip_first)
    bits = relu_mask.new_mask_buffer(x, weight, skip.shape[1])
    if plain.uses_triton(x):
        return plain._triton_forward(x, skip, weight, bias, relu=True, skip_first=skip_first, bits=bits), bits
    out = torch_path.forward(x, skip, weight, bias, True, skip_first)
    bits.copy_(relu_mask.pack_relu_mask(out, weight, skip_first))
    return out, bits


_masked = torch.library.custom_op("unet_fast::up_concat_masked", masked_forward_impl, mutates_args=())


@_masked.register_fake
def _(x, skip, weight, bias, skip_first):
    _, shape = step_shapes(x, weight, skip.shape[1])
    out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=output_memory_format(x))
    bits = torch.empty(sum(relu_mask.mask_parts(x, weight, skip.shape[1])), dtype=torch.uint8, device=x.device)
    return out, bits


def _mask_as_output(bits: Tensor, grad: Tensor, x: Tensor, weight: Tensor, skip_first: bool) -> Tensor:
    """A stand-in for the forward's output with the same ReLU mask (1 where the gradient passes,
    0 elsewhere), for code that takes the mask as an output (threshold_backward's convention)."""
    mask = relu_mask.unpack_relu_mask(bits, x, weight, grad.shape, skip_first)
    stand_in = new_buffer(grad.shape, grad, memory_format=output_memory_format(x))
    return stand_in.copy_(mask)


def masked_backward_impl(grad: Tensor, bits: Tensor, x: Tensor, weight: Tensor, has_bias: bool,
                         skip_first: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dx, dskip, dweight, dbias) of up_concat with ReLU, the mask read from `bits`."""
    check_up_concat_backward_args(grad, None, x, weight, has_bias, skip_first)
    check_mask(bits, x, weight, grad.shape[1] - weight.shape[1])
    if plain.uses_triton(x):
        return plain._triton_backward(grad, None, x, weight, skip_first=skip_first, has_bias=has_bias, bits=bits)
    return torch_path.backward(grad, _mask_as_output(bits, grad, x, weight, skip_first), x, weight, has_bias,
                               skip_first)


_masked_backward = torch.library.custom_op("unet_fast::up_concat_masked_backward", masked_backward_impl,
                                           mutates_args=())


@_masked_backward.register_fake
def _(grad, bits, x, weight, has_bias, skip_first):
    return plain.empty_gradients(grad, x, weight)


def _setup_context(ctx, inputs, output):
    x, _skip, weight, bias, skip_first = inputs
    _out, bits = output
    ctx.mark_non_differentiable(bits)
    ctx.save_for_backward(x, weight, bits)
    ctx.has_bias = bias is not None
    ctx.skip_first = skip_first


def _backward(ctx, grad, _grad_bits):
    x, weight, bits = ctx.saved_tensors
    if torch.is_grad_enabled() and (grad.requires_grad or x.requires_grad or weight.requires_grad):
        # create_graph=True: the backward runs as differentiable torch ops (autodiff.py), the mask
        # as an output stand-in with the same mask.
        dx, dskip, dweight, dbias = autodiff.differentiable_backward(
            grad, _mask_as_output(bits, grad, x, weight, ctx.skip_first), x, weight, ctx.has_bias, ctx.skip_first)
    else:
        dx, dskip, dweight, dbias = torch.ops.unet_fast.up_concat_masked_backward(grad, bits, x, weight, ctx.has_bias,
                                                                                  ctx.skip_first)
    return dx, dskip, dweight, dbias if ctx.has_bias else None, None


_masked.register_autograd(_backward, setup_context=_setup_context)


def up_concat_masked(x: Tensor, skip: Tensor, weight: Tensor, bias: Optional[Tensor], skip_first: bool) -> Tensor:
    """up_concat's result with ReLU through the masked op (arguments already checked)."""
    out, _bits = torch.ops.unet_fast.up_concat_masked(x, skip, weight, bias, skip_first)
    return out

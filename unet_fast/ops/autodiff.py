"""The derivatives the fused op cannot give, given by plain differentiable torch ops.

The registered op has a first-order backward (its own kernels), but no forward-mode derivative
(torch.library has no jvp registration), no functorch support (its autograd rule is not a
functorch-ready autograd.Function), and a backward that autograd cannot differentiate again. So:
- `needs_composite` tells `up_concat` when to run the step as `unet_fast.reference.up_concat`
  instead (forward-mode AD, torch.func transforms), whose derivatives are PyTorch's own;
- `differentiable_backward` is the op's backward as differentiable torch ops, used when autograd
  records the backward itself (create_graph=True: double backward, gradient penalties).
"""
import torch
import torch.autograd.forward_ad as fwAD

from unet_fast.ops.layout import channel_slices


def has_tangent(t) -> bool:
    """Whether `t` carries a forward-mode tangent (torch.autograd.forward_ad's dual tensors)."""
    return t is not None and fwAD.unpack_dual(t).tangent is not None


def needs_composite(*tensors) -> bool:
    """Whether up_concat on `tensors` must run as differentiable torch ops: a torch.func transform
    (jvp, jacfwd, jacrev, vmap, grad, ...) is active, or an input carries a forward-mode tangent."""
    return torch._C._are_functorch_transforms_active() or any(has_tangent(t) for t in tensors)


def composite_forward(x, skip, weight, bias, relu: bool, skip_first: bool) -> torch.Tensor:
    """The step as differentiable torch ops: the reference itself."""
    from unet_fast import reference  # here, not at the top: reference imports the models package

    return reference.up_concat(x, skip, weight, bias, relu=relu, skip_first=skip_first)


def differentiable_backward(grad, out, x, weight, has_bias: bool, skip_first: bool):
    """(dx, dskip, dweight, dbias or None) of the step, as torch ops autograd can differentiate.
    `out` is the forward's result when it applied a ReLU, else None (as for the backward op).

    The ReLU's mask is threshold_backward(grad, out, 0), autograd's own ReLU backward (constant
    in out, as in the reference's double backward); the transposed convolution's gradients are
    torch.func.vjp of the reference's, so their derivatives are PyTorch's."""
    from unet_fast import reference

    if out is not None:
        grad = torch.ops.aten.threshold_backward(grad, out, 0)
    cout = weight.shape[1]
    up, sk = channel_slices(cout, grad.shape[1] - cout, skip_first)
    primals = (x, weight) + ((weight.new_zeros(cout),) if has_bias else ())
    _, pullback = torch.func.vjp(reference.conv_transpose, *primals)
    grads = pullback(grad[:, up])
    return grads[0], grad[:, sk], grads[1], grads[2] if has_bias else None

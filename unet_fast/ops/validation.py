"""Argument checks that run before any kernel launches, so bad input never half-writes anything.

The op's own implementations (forward and backward, real and fake) call these, so a direct
`torch.ops.unet_fast.up_concat` call is checked as `unet_fast.up_concat` is. Shapes, dtypes and
devices only: no tensor is read.
"""
import operator

import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def require_tensor(name, value):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")


def _shape(t) -> str:
    return str(tuple(t.shape))


def _stride_entry(value):
    """One integer of `stride` (Python int, numpy integer, 0-d integer tensor), or None for
    anything else (bool, float, float tensor, a tensor with dims, a string...)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, torch.Tensor):
        if value.dim() != 0 or value.dtype == torch.bool or value.dtype.is_floating_point or value.dtype.is_complex:
            return None
        return int(value)
    try:
        return operator.index(value)  # int, numpy integers, anything that is an integer index
    except TypeError:
        return None


def stride_tuple(stride, dims: int) -> tuple:
    """`stride` as a tuple of `dims` ints: one integer for every axis, or a tuple/list of `dims`
    integers (each a Python int, numpy integer or 0-d integer tensor). Raises naming `stride`."""
    expected = f"an integer or a tuple/list of {dims} integers"
    if isinstance(stride, (tuple, list)):
        entries = [_stride_entry(v) for v in stride]
        if any(v is None for v in entries):
            raise TypeError(f"stride must be {expected}, got {stride!r}")
        if len(entries) != dims:
            raise ValueError(f"stride must be {expected} (one per spatial dim of a {dims + 2}-D x), "
                             f"got {len(entries)} values: {stride!r}")
        return tuple(entries)
    entry = _stride_entry(stride)
    if entry is None:
        raise TypeError(f"stride must be {expected}, got {stride!r} ({type(stride).__name__})")
    return (entry,) * dims


def _check_x_and_weight(x, weight):
    """(n, spatial, cout, kernel) of a valid x [N, Cin, *S] and weight [Cin, Cout, *k]."""
    if x.dim() not in (4, 5):
        raise ValueError(f"x must be [N, Cin, H, W] (4-D) or [N, Cin, D, H, W] (5-D), got shape {_shape(x)}")
    n, cin, *spatial = x.shape
    if cin < 1 or min(spatial) < 1:
        raise ValueError(f"x must have Cin >= 1 and every spatial size >= 1, got shape {_shape(x)}")
    if weight.dim() != x.dim() or weight.shape[0] != cin or weight.shape[1] < 1 or min(weight.shape[2:]) < 1:
        kernel = ", ".join("k" for _ in spatial)
        raise ValueError(f"weight must have shape [Cin={cin}, Cout, {kernel}] (the nn.ConvTranspose{len(spatial)}d "
                         f"layout) for x of shape {_shape(x)}, got shape {_shape(weight)}")
    return n, spatial, weight.shape[1], tuple(weight.shape[2:])


def _check_devices_and_dtypes(tensors: dict) -> None:
    """One device and one supported floating dtype for every tensor of `tensors` (name -> tensor)."""
    names = ", ".join(tensors)
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        raise ValueError(f"{names} must be on one device, got " + ", ".join(f"{k}={v}" for k, v in devices.items()))
    first, t = next(iter(tensors.items()))
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{first} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    dtypes = {name: t.dtype for name, t in tensors.items()}
    if len(set(dtypes.values())) > 1:
        raise TypeError(f"{names} must share one dtype, got " + ", ".join(f"{k}={v}" for k, v in dtypes.items()))


def _check_bools(**flags) -> None:
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def check_up_concat_types(x, skip, weight, bias, relu, skip_first) -> None:
    """The argument kinds alone: tensors and bools (what the op's schema would otherwise refuse
    with a message that names no argument)."""
    for name, value in (("x", x), ("skip", skip), ("weight", weight)):
        require_tensor(name, value)
    if bias is not None:
        require_tensor("bias", bias)
    _check_bools(relu=relu, skip_first=skip_first)


def check_up_concat_args(x, skip, weight, bias, relu, skip_first, stride=None) -> None:
    """Validate `up_concat`'s arguments; raise TypeError/ValueError naming the argument.

    x [N, Cin, *S] with 2 or 3 spatial dims, weight [Cin, Cout, *k] (nn.ConvTranspose2d/3d's
    layout) whose kernel size k is also the stride, skip [N, Cs, *(S * k)], bias [Cout] or None."""
    check_up_concat_types(x, skip, weight, bias, relu, skip_first)
    n, spatial, cout, kernel = _check_x_and_weight(x, weight)
    if stride is not None and stride_tuple(stride, len(spatial)) != kernel:
        raise ValueError(f"stride must equal the kernel size {list(kernel)} (the fused step is a transposed "
                         f"convolution whose taps never overlap), got {stride!r}")
    want = [s * k for s, k in zip(spatial, kernel)]
    if skip.dim() != x.dim():
        raise ValueError(f"skip must be a {x.dim()}-D tensor [N={n}, Cs, {', '.join(map(str, want))}], "
                         f"got shape {_shape(skip)}")
    if skip.shape[0] != n:
        raise ValueError(f"skip's batch size {skip.shape[0]} does not match x's {n} "
                         f"(x {_shape(x)}, skip {_shape(skip)})")
    if list(skip.shape[2:]) != want or skip.shape[1] < 1:
        raise ValueError(f"skip must have shape [N={n}, Cs>=1, {', '.join(map(str, want))}] (x's spatial size "
                         f"times the kernel size {list(kernel)}) for x of shape {_shape(x)}, got shape {_shape(skip)}")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != cout):
        raise ValueError(f"bias must have shape [Cout={cout}] to match weight {_shape(weight)}, "
                         f"got shape {_shape(bias)}")
    tensors = {"x": x, "skip": skip, "weight": weight}
    if bias is not None:
        tensors["bias"] = bias
    _check_devices_and_dtypes(tensors)


def check_up_concat_backward_args(grad, out, x, weight, has_bias, skip_first) -> None:
    """Validate the backward op's arguments: grad (and out, the forward's result when it applied a
    ReLU, else None) [N, Cout + Cs, *(S * k)] for x [N, Cin, *S] and weight [Cin, Cout, *k]."""
    for name, value in (("grad", grad), ("x", x), ("weight", weight)):
        require_tensor(name, value)
    if out is not None:
        require_tensor("out", out)
    _check_bools(has_bias=has_bias, skip_first=skip_first)
    n, spatial, cout, kernel = _check_x_and_weight(x, weight)
    want = [s * k for s, k in zip(spatial, kernel)]
    if grad.dim() != x.dim() or grad.shape[0] != n or grad.shape[1] <= cout or list(grad.shape[2:]) != want:
        raise ValueError(f"grad must have the forward result's shape [N={n}, Cout+Cs (Cout={cout}, Cs>=1), "
                         f"{', '.join(map(str, want))}] for x {_shape(x)} and weight {_shape(weight)}, "
                         f"got shape {_shape(grad)}")
    if out is not None and out.shape != grad.shape:
        raise ValueError(f"out (the forward's result) must have grad's shape {_shape(grad)}, got shape {_shape(out)}")
    tensors = {"grad": grad, "x": x, "weight": weight}
    if out is not None:
        tensors["out"] = out
    _check_devices_and_dtypes(tensors)


def check_conv_backward_args(grad_up, x, weight, has_bias) -> None:
    """Validate the transposed convolution's backward op: grad_up [N, Cout, *(S * k)], the gradient
    of the upsampled channels alone, for x [N, Cin, *S] and weight [Cin, Cout, *k]."""
    for name, value in (("grad_up", grad_up), ("x", x), ("weight", weight)):
        require_tensor(name, value)
    _check_bools(has_bias=has_bias)
    n, spatial, cout, kernel = _check_x_and_weight(x, weight)
    want = [n, cout, *(s * k for s, k in zip(spatial, kernel))]
    if list(grad_up.shape) != want:
        raise ValueError(f"grad_up must have shape [{', '.join(map(str, want))}] (the upsampled channels of the "
                         f"result) for x {_shape(x)} and weight {_shape(weight)}, got shape {_shape(grad_up)}")
    _check_devices_and_dtypes({"grad_up": grad_up, "x": x, "weight": weight})

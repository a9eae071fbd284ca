"""Argument checks that run before any kernel launches, so bad input never half-writes anything."""
import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def require_tensor(name, value):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")


def _shape(t) -> str:
    return str(tuple(t.shape))


def check_up_concat_args(x, skip, weight, bias, relu, skip_first, stride=None) -> None:
    """Validate `up_concat`'s arguments; raise TypeError/ValueError naming the argument.

    x [N, Cin, *S] with 2 or 3 spatial dims, weight [Cin, Cout, *k] (nn.ConvTranspose2d/3d's
    layout) whose kernel size k is also the stride, skip [N, Cs, *(S * k)], bias [Cout] or None."""
    for name, value in (("x", x), ("skip", skip), ("weight", weight)):
        require_tensor(name, value)
    if bias is not None:
        require_tensor("bias", bias)
    for name, value in (("relu", relu), ("skip_first", skip_first)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {type(value).__name__}")

    if x.dim() not in (4, 5):
        raise ValueError(f"x must be [N, Cin, H, W] (4-D) or [N, Cin, D, H, W] (5-D), got shape {_shape(x)}")
    n, cin, *spatial = x.shape
    if cin < 1 or min(spatial) < 1:
        raise ValueError(f"x must have Cin >= 1 and every spatial size >= 1, got shape {_shape(x)}")
    dims = len(spatial)
    if weight.dim() != x.dim() or weight.shape[0] != cin or weight.shape[1] < 1 or min(weight.shape[2:]) < 1:
        kernel = ", ".join("k" for _ in spatial)
        raise ValueError(f"weight must have shape [Cin={cin}, Cout, {kernel}] (the nn.ConvTranspose{dims}d "
                         f"layout) for x of shape {_shape(x)}, got shape {_shape(weight)}")
    cout, kernel = weight.shape[1], tuple(weight.shape[2:])
    if stride is not None:
        stride_t = (stride,) * dims if isinstance(stride, int) else tuple(stride)
        if stride_t != kernel:
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
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        raise ValueError("x, skip, weight and bias must be on one device, got "
                         + ", ".join(f"{k}={v}" for k, v in devices.items()))
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"x must be float16, bfloat16, float32 or float64, got {x.dtype}")
    dtypes = {name: t.dtype for name, t in tensors.items()}
    if len(set(dtypes.values())) > 1:
        raise TypeError("x, skip, weight and bias must share one dtype, got "
                        + ", ".join(f"{k}={v}" for k, v in dtypes.items()))

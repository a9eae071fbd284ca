"""Argument checks that run before any kernel launches, so bad input never half-writes anything."""
import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def require_tensor(name, value):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")


def check_up_concat_args(x, skip, weight, bias, relu) -> None:
    """Validate `up_concat`'s arguments; raise TypeError/ValueError naming the argument."""
    for name, value in (("x", x), ("skip", skip), ("weight", weight)):
        require_tensor(name, value)
    if bias is not None:
        require_tensor("bias", bias)
    if not isinstance(relu, bool):
        raise TypeError(f"relu must be a bool, got {type(relu).__name__}")

    if x.dim() != 4:
        raise ValueError(f"x must be a 4-D tensor [N, Cin, H, W], got shape {tuple(x.shape)}")
    n, cin, h, w = x.shape
    if cin < 1 or h < 1 or w < 1:
        raise ValueError(f"x must have Cin, H, W >= 1, got shape {tuple(x.shape)}")
    if weight.dim() != 4 or weight.shape[0] != cin or weight.shape[2:] != (2, 2) or weight.shape[1] < 1:
        raise ValueError(f"weight must have shape [Cin={cin}, Cout, 2, 2] (the nn.ConvTranspose2d layout) "
                         f"for x of shape {tuple(x.shape)}, got shape {tuple(weight.shape)}")
    cout = weight.shape[1]
    if skip.dim() != 4:
        raise ValueError(f"skip must be a 4-D tensor [N={n}, Cs, {2 * h}, {2 * w}], got shape {tuple(skip.shape)}")
    if skip.shape[0] != n:
        raise ValueError(f"skip's batch size {skip.shape[0]} does not match x's {n} "
                         f"(x {tuple(x.shape)}, skip {tuple(skip.shape)})")
    if skip.shape[2:] != (2 * h, 2 * w) or skip.shape[1] < 1:
        raise ValueError(f"skip must have shape [N={n}, Cs>=1, {2 * h}, {2 * w}] (twice x's H, W) "
                         f"for x of shape {tuple(x.shape)}, got shape {tuple(skip.shape)}")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != cout):
        raise ValueError(f"bias must have shape [Cout={cout}] to match weight {tuple(weight.shape)}, "
                         f"got shape {tuple(bias.shape)}")

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

"""Checks of a model's input, run before any layer so a wrong image fails with its name."""
import torch

from unet_fast.ops.validation import require_tensor


def check_image_batch(name: str, x, channels: int) -> None:
    """A model input: a floating [N, channels, H, W] tensor."""
    require_tensor(name, x)
    if x.dim() != 4:
        raise ValueError(f"{name} must be a 4-D tensor [N, {channels}, H, W], got shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channels (dim 1) to match the model's "
                         f"in_channels, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"{name} must have H, W >= 1, got shape {tuple(x.shape)}")


def autocast_enabled(device_type: str) -> bool:
    """torch.is_autocast_enabled(device_type), False for a device type autocast does not know
    (meta: a model run for its shapes alone), where torch raises instead."""
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:
        return False


# The input dtypes torch.autocast casts for the convolutions (it never casts float64).
AUTOCAST_INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_input_dtype(name: str, x: torch.Tensor, param_dtype: torch.dtype, model: str,
                      autocast: bool) -> None:
    """A model input must have the parameters' dtype, unless autocast will cast it; checked
    before anything runs, instead of the first convolution's raw dtype error."""
    if x.dtype == param_dtype or (autocast and x.dtype in AUTOCAST_INPUT_DTYPES):
        return
    raise TypeError(f"{name} is {x.dtype} but {model}'s parameters are {param_dtype}; they must "
                    f"match outside torch.autocast (which casts float32 and 16-bit inputs, never "
                    f"float64): pass {name}.to({param_dtype}) or convert the model with .to({x.dtype})")

"""The one decoder step every adapter calls: up_concat when it computes exactly what the library's
own lines would, for this call; None otherwise, and the adapter then runs the library's lines.

Two checks:
- `static_problem(conv)`, once, when `fuse` walks the model: the transposed convolution is one
  whose taps never overlap (kernel == stride, no padding, output_padding, dilation, groups), so
  that it is the op's convolution at all; `structure(conv, wrappers)` records what was checked;
- `fused_step(...)`, at every call: the structure is still the recorded one (surgery after fuse
  sends the call back), no hooks on the modules the library would call (forward or backward),
  plain tensors (not a subclass such as MONAI's MetaTensor, whose metadata the library's
  torch.cat carries), shapes (the skip is exactly stride x the input's size), one device and dtype
  the op takes (or autocast's dtype, cast as autocast casts a convolution's operands).

Each call is counted on its step (calls.py): served fused, or run by the library and why.
"""
from dataclasses import dataclass, field
from typing import Iterable, Optional, Tuple

import torch
from torch import Tensor, nn

from unet_fast.adapters.calls import StepCalls, library_call
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
    if "forward" in conv.__dict__:
        return "the ConvTranspose's forward is replaced on the instance"
    dims = conv.weight.dim() - 2
    if tuple(conv.kernel_size) != tuple(conv.stride):
        return f"kernel {tuple(conv.kernel_size)} != stride {tuple(conv.stride)} (overlapping taps)"
    if any(conv.padding) or any(conv.output_padding) or tuple(conv.dilation) != (1,) * dims or conv.groups != 1:
        return (f"padding {tuple(conv.padding)}, output_padding {tuple(conv.output_padding)}, dilation "
                f"{tuple(conv.dilation)}, groups {conv.groups} (the fused step has none)")
    if conv.padding_mode != "zeros":
        return f"padding_mode {conv.padding_mode!r}"
    return None


def child(container, name: str):
    """container's submodule `name`, or None (whatever container has become since fuse)."""
    modules = getattr(container, "_modules", None)
    return modules.get(name) if isinstance(modules, dict) else None


def structure(conv, wrappers: Iterable = ()) -> tuple:
    """What `static_problem` and the adapter's structure check read, as one tuple: each wrapper's
    class, forward and children's names (MONAI's UpSample / Convolution around the deconvolution),
    the convolution's class, its forward (class and instance) and the attributes that make it the
    op's convolution. Types and functions compare by identity, so comparing two is cheap; no module
    itself is in it, so a replica (DataParallel) or a copy matches its original's record."""
    outer = tuple((type(w), getattr(type(w), "forward", None), tuple(getattr(w, "_modules", None) or ()))
                  for w in wrappers)
    cls = type(conv)
    if not isinstance(conv, CONV_TRANSPOSE):
        return outer, cls
    return (outer, cls, cls.forward, conv.__dict__.get("forward"), conv.stride, conv.kernel_size, conv.padding,
            conv.output_padding, conv.dilation, conv.groups, conv.padding_mode)


@dataclass
class Step:
    """One decoder step of a patched module, set by `fuse`: its path in the model, its path in the
    module, whether `static_problem` passed, the recorded `structure`, and its call counts."""
    path: str
    name: str
    fusable: bool
    structure: tuple
    calls: StepCalls = field(default_factory=StepCalls)


def _operands(conv, x: Tensor, skip: Tensor):
    """(x, weight, bias) in the dtype the library's convolution would compute in, or the reason
    (reason, detail) why the op cannot compute it."""
    weight, bias = conv.weight, conv.bias
    device = x.device.type
    if autocast_enabled(device):
        if device not in ("cpu", "cuda"):
            return "device", f"autocast on {device}"
        # Autocast runs conv_transpose in its dtype, casting every floating operand but float64
        # (float64 next to a cast operand would fail in the library's own code: let it).
        target = torch.get_autocast_dtype(device)
        operands = (x, weight) if bias is None else (x, weight, bias)
        if any(t.dtype == torch.float64 or not t.is_floating_point() for t in operands):
            return "dtype", f"{', '.join(str(t.dtype) for t in operands)} under autocast (not cast by it)"
        x, weight = x.to(target), weight.to(target)
        bias = bias.to(target) if bias is not None else None
    dtypes = {x.dtype, weight.dtype, skip.dtype} | ({bias.dtype} if bias is not None else set())
    # One dtype or the library's torch.cat would promote (its result is not the op's)
    if len(dtypes) != 1 or x.dtype not in SUPPORTED_DTYPES:
        return "dtype", f"input, weight and skip in {', '.join(sorted(str(d) for d in dtypes))}"
    return x, weight, bias


def _why_not(step: Step, conv, wrappers: Tuple, x, skip) -> Optional[Tuple[str, str]]:
    """(reason, detail) when this call must run the library's code, None when the op serves it."""
    if structure(conv, wrappers) != step.structure:
        return "surgery", f"{step.name} or the modules around it changed after unet_fast.fuse"
    if calls_module(conv) or any(calls_module(w) for w in wrappers):
        return "hook", f"hooks on {step.name} or the modules around it (they fire only when it is called)"
    for t in (x, skip):
        if type(t) is not torch.Tensor:
            kind = "MetaTensor input" if type(t).__name__ == "MetaTensor" else "tensor subclass input"
            return kind, f"a {type(t).__name__}, whose metadata only the library's torch.cat carries"
    kernel = conv.weight.shape[2:]
    if (x.dim() not in (4, 5) or skip.dim() != x.dim() or conv.weight.dim() != x.dim()
            or skip.shape[0] != x.shape[0] or x.shape[1] != conv.weight.shape[0] or x.numel() == 0
            or skip.numel() == 0 or any(s != i * k for s, i, k in zip(skip.shape[2:], x.shape[2:], kernel))):
        return "size mismatch", (f"input {tuple(x.shape)} upsampled by {tuple(kernel)} does not meet skip "
                                 f"{tuple(skip.shape)}")
    if not (x.device == skip.device == conv.weight.device):
        return "device", f"input on {x.device}, skip on {skip.device}, weight on {conv.weight.device}"
    return None


def fused_step(module, s: int, conv, x, skip, skip_first: bool, relu: bool = False,
               wrappers: Tuple = ()) -> Optional[Tensor]:
    """`act(cat([conv(x), skip]))` (`cat([skip, conv(x)])` when skip_first) through the fused op for
    step `s` of `module`, or None when this call must run the library's own code. `wrappers` are the
    modules the library calls around `conv` (MONAI's UpSample, Convolution): their structure and
    hooks count too."""
    step = module._unet_fast_steps[s]
    if not step.fusable:
        return None
    why = _why_not(step, conv, wrappers, x, skip)
    operands = _operands(conv, x, skip) if why is None else why
    if isinstance(operands[0], str):
        library_call(step.calls, step.path, *operands)
        return None
    step.calls.count_fused()
    x, weight, bias = operands
    return up_concat_op.up_concat(x, skip, weight, bias, relu=relu, skip_first=skip_first)

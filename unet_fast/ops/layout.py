"""Allocation and layout rules shared by the kernels, the PyTorch path and the fake implementation.

No Triton import here, so the PyTorch path works where Triton is missing.
"""
import torch
from torch._prims_common import suggest_memory_format

# Tests set this to True: every result buffer then starts as NaN, so an element that a kernel
# forgets to write fails the comparison instead of passing on leftover memory.
POISON_OUTPUTS = False

# The channels-last memory format of a tensor with this many dims (images, volumes).
CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def output_memory_format(x: torch.Tensor) -> torch.memory_format:
    """The memory format the result keeps: channels_last (channels_last_3d for volumes) when x is
    channels-last, else contiguous.

    An x that is both (size-1 dims: [N, C, 1, 1], or C == 1) is read by its strides, as PyTorch's
    suggest_memory_format reads it, so the result is laid out as nn.ConvTranspose2d/3d lays out
    its own: channels_last for the strides torch.empty(..., memory_format=channels_last) gives,
    contiguous for torch.randn's."""
    fmt = CHANNELS_LAST.get(x.dim())
    if fmt is None or not x.is_contiguous(memory_format=fmt):
        return torch.contiguous_format
    if not x.is_contiguous() or suggest_memory_format(x) == fmt:
        return fmt
    return torch.contiguous_format


def is_channels_last(fmt: torch.memory_format) -> bool:
    return fmt in (torch.channels_last, torch.channels_last_3d)


def new_buffer(shape, like: torch.Tensor, dtype=None, memory_format=torch.contiguous_format) -> torch.Tensor:
    """torch.empty for a result the op fills completely (NaN-filled when POISON_OUTPUTS is set)."""
    t = torch.empty(shape, dtype=dtype or like.dtype, device=like.device, memory_format=memory_format)
    return t.fill_(float("nan")) if POISON_OUTPUTS else t


def step_shapes(x: torch.Tensor, weight: torch.Tensor, skip_channels: int):
    """(upsampled spatial size, output shape) of a decoder step: each spatial size times the
    kernel's (= the stride's) size along it, and Cout + Cs channels."""
    kernel = tuple(weight.shape[2:])
    spatial = tuple(s * k for s, k in zip(x.shape[2:], kernel))
    return spatial, (x.shape[0], weight.shape[1] + skip_channels, *spatial)


def channel_slices(cout: int, cs: int, skip_first: bool):
    """(slice of the upsampled channels, slice of the skip channels) in the output."""
    if skip_first:
        return slice(cs, cs + cout), slice(0, cs)
    return slice(0, cout), slice(cout, cout + cs)

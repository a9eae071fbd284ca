"""Allocation and layout rules shared by the kernels, the PyTorch path and the fake implementation.

No Triton import here, so the PyTorch path works where Triton is missing.
"""
import torch

# Tests set this to True: every result buffer then starts as NaN, so an element that a kernel
# forgets to write fails the comparison instead of passing on leftover memory.
POISON_OUTPUTS = False


def output_memory_format(x: torch.Tensor) -> torch.memory_format:
    """The memory format the result keeps: channels_last when x is (only) channels_last."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def new_buffer(shape, like: torch.Tensor, dtype=None, memory_format=torch.contiguous_format) -> torch.Tensor:
    """torch.empty for a result the op fills completely (NaN-filled when POISON_OUTPUTS is set)."""
    t = torch.empty(shape, dtype=dtype or like.dtype, device=like.device, memory_format=memory_format)
    return t.fill_(float("nan")) if POISON_OUTPUTS else t

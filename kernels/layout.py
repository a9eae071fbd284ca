"""Layout rule shared by the kernels, the PyTorch path and the fake implementation (no Triton import)."""
import torch


def output_memory_format(x: torch.Tensor) -> torch.memory_format:
    """The memory format the result keeps: channels_last when x is (only) channels_last."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format

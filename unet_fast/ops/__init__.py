"""The fused decoder step as a PyTorch op: argument checks, the torch.library registration with
its autograd, dispatch between the Triton kernels (top-level `kernels/`, installed as
`unet_fast.kernels`) and the PyTorch path, and the buffer and layout rules both share.

- up_concat_op.py  `torch.ops.unet_fast.up_concat`: registration, fake tensors, autograd, dispatch
- torch_path.py    the PyTorch path (CPU without Triton's interpreter, or Triton switched off)
- validation.py    the op's argument checks, run before anything launches
- layout.py        result buffers and their memory format, shared by both paths

The op's reference (the oracle tests and benchmarks compare against) is `unet_fast.reference`.
"""
from unet_fast.ops.up_concat_op import up_concat, uses_triton

__all__ = ["up_concat", "uses_triton"]

"""The fused decoder step as a PyTorch op: argument checks, the torch.library registration with
its autograd, dispatch between the Triton kernels (top-level `kernels/`, installed as
`unet_fast.kernels`) and the PyTorch path, and the buffer and layout rules both share.

- up_concat_op.py  `torch.ops.unet_fast.up_concat`: registration, fake tensors, autograd, dispatch
- up_concat_masked_op.py  `unet_fast::up_concat_masked`: the training forward with ReLU, which
                   also returns the ReLU mask as bits (saved for the backward instead of the output)
- relu_mask.py     the mask bits' buffer, and packing / unpacking them with torch ops
- torch_path.py    the PyTorch path (CPU without Triton's interpreter, or Triton switched off)
- validation.py    the op's argument checks, run before anything launches
- layout.py        result buffers and their memory format, shared by both paths
- autodiff.py      forward-mode AD, torch.func transforms, double backward: differentiable torch ops

The op's reference (the oracle tests and benchmarks compare against) is `unet_fast.reference`.
"""
from unet_fast.ops.up_concat_op import up_concat, uses_triton

__all__ = ["up_concat", "uses_triton"]

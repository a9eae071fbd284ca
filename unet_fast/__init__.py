"""unet_fast: a drop-in U-Net whose decoder steps (transposed conv + skip concat + ReLU) are one
fused Triton kernel each, forward and backward.

    from unet_fast import UNet
    model = UNet(in_channels=3, out_channels=2)
"""
from .model import UNet
from .reference import ReferenceUNet
from .up_concat_op import up_concat, uses_triton
from .checkpoint import load
from .predict import predict

__version__ = "0.1.0"
__all__ = ["UNet", "ReferenceUNet", "up_concat", "uses_triton", "load", "predict", "__version__"]

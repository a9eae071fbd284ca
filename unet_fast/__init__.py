"""unet_fast: a drop-in U-Net whose decoder steps (transposed conv + skip concat + ReLU) are one
fused Triton kernel each, forward and backward.

    from unet_fast import UNet
    model = UNet(in_channels=3, out_channels=2)
"""
from unet_fast.models import UNet
from unet_fast.ops import up_concat, uses_triton
from unet_fast.reference import ReferenceUNet
from unet_fast.workflow.checkpoint import load
from unet_fast.workflow.predict import predict
from unet_fast.adapters import fuse

__version__ = "0.1.0"
__all__ = ["UNet", "ReferenceUNet", "up_concat", "uses_triton", "load", "predict", "fuse", "__version__"]

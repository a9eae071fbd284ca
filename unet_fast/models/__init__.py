"""The U-Net models: `UNet` (decoder steps through the fused op) and the module layout it shares
with `unet_fast.reference.ReferenceUNet`.

- architecture.py  the lesson's modules and forward pass, common to both models
- unet.py          `UNet`, whose decoder steps call `unet_fast.ops.up_concat`
- input_checks.py  the checks a model runs on its input before any layer
"""
from unet_fast.models.unet import UNet

__all__ = ["UNet"]

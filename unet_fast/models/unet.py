"""`UNet`: the lesson's U-Net with each decoder step one fused `up_concat` call."""
import torch
from torch import nn

from unet_fast.models.architecture import UNetLayers
from unet_fast.models.input_checks import autocast_enabled
from unet_fast.models.module_hooks import calls_module
from unet_fast.ops.up_concat_op import up_concat


class UNet(UNetLayers):
    """U-Net(in_channels=3, out_channels=2, base_channels=64, up_relu=True).

    Same modules and state_dict keys as `ReferenceUNet` and the lesson's model. up_relu=True puts
    a ReLU after each skip concatenation (fused for free); up_relu=False is the lesson's model
    exactly. Any H, W: the input is zero-padded to a multiple of 8 and the output cropped back.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing():
            # The tracer does not stop at the fused op: it records the op's internals, buffers
            # sized for the example input (and, on the Triton path, no kernel at all), so the
            # trace would silently give wrong results at other sizes.
            raise RuntimeError(
                "UNet cannot be traced with torch.jit.trace or the TorchScript ONNX exporter "
                "(torch.onnx.export(dynamo=False)): the trace would hold its fused op's buffers "
                "at the example's size. Use torch.compile, or torch.export with dynamic shapes; "
                "for TorchScript or ONNX, load the state_dict into unet_fast.ReferenceUNet and "
                "trace that (`unet-fast export CHECKPOINT --onnx FILE` does this for ONNX).")
        return super().forward(x)

    def up_step(self, upconv: nn.ConvTranspose2d, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if calls_module(upconv):
            # Hooks (feature extraction, hook-based weight_norm or pruning, which recompute the
            # weight in a pre-hook) run only when the module is called: take its own path.
            y = torch.cat([upconv(x), skip], dim=1)
            return torch.relu(y) if self.up_relu else y
        weight, bias = upconv.weight, upconv.bias
        if weight.dtype != x.dtype and autocast_enabled(x.device.type):
            # Under autocast the activations arrive in the autocast dtype; the op wants one dtype.
            weight = weight.to(x.dtype)
            bias = bias.to(x.dtype) if bias is not None else None
        return up_concat(x, skip, weight, bias, relu=self.up_relu)

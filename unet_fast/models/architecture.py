"""The lesson's U-Net layout, shared by `UNet` (fused decoder) and `ReferenceUNet` (plain PyTorch).

Both models own exactly these modules, so a state_dict moves between them (and a plain copy of
the lesson's model) with ``strict=True``. Subclasses differ only in `up_step`, the decoder step
transposed convolution + skip concatenation (+ ReLU).
"""
import torch
import torch.nn.functional as F
from torch import nn

from unet_fast.models.input_checks import autocast_enabled, check_image_batch, check_input_dtype

# Three 2x2 poolings: H and W must be multiples of 2**3 for the skips to line up.
SIZE_MULTIPLE = 8


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
    )


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


class UNetLayers(nn.Module):
    def __init__(self, in_channels: int = 3, out_channels: int = 2, base_channels: int = 64,
                 up_relu: bool = True):
        super().__init__()
        _check_positive_int("in_channels", in_channels)
        _check_positive_int("out_channels", out_channels)
        _check_positive_int("base_channels", base_channels)
        if not isinstance(up_relu, bool):
            raise TypeError(f"up_relu must be a bool, got {type(up_relu).__name__}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.base_channels = base_channels
        self.up_relu = up_relu
        b = base_channels
        self.enc1 = conv_block(in_channels, b)
        self.enc2 = conv_block(b, 2 * b)
        self.enc3 = conv_block(2 * b, 4 * b)
        self.enc4 = conv_block(4 * b, 8 * b)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        # The lesson numbers its up-convolutions from the bottom but its decoder blocks from the
        # top: upconv3 feeds dec1, upconv1 feeds dec3. Kept so the lesson's state_dict loads as is.
        self.upconv3 = nn.ConvTranspose2d(8 * b, 4 * b, kernel_size=2, stride=2)
        self.upconv2 = nn.ConvTranspose2d(4 * b, 2 * b, kernel_size=2, stride=2)
        self.upconv1 = nn.ConvTranspose2d(2 * b, b, kernel_size=2, stride=2)
        self.dec1 = conv_block(8 * b, 4 * b)
        self.dec2 = conv_block(4 * b, 2 * b)
        self.dec3 = conv_block(2 * b, b)
        self.out = nn.Conv2d(b, out_channels, kernel_size=1)

    def config(self) -> dict:
        """The constructor arguments, enough to rebuild this model for a state_dict."""
        return dict(in_channels=self.in_channels, out_channels=self.out_channels,
                    base_channels=self.base_channels, up_relu=self.up_relu)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items())

    def up_step(self, upconv: nn.ConvTranspose2d, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch("x", x, self.in_channels)
        check_input_dtype("x", x, self.enc1[0].weight.dtype, type(self).__name__,
                          autocast=autocast_enabled(x.device.type))
        height, width = x.shape[-2:]
        # Zero padding on the bottom and right to a multiple of 8: the convolutions already see
        # zeros past the border, the pooling grid stays anchored at the top-left corner, and it
        # works for any size down to 1x1 (reflect padding needs the pad to be smaller than the
        # image). Padded and cropped at every size, by 0 at multiples of 8 (a copy of the
        # few-channel input, negligible next to the first convolution), so that a trace recorded
        # at one size (torch.jit.trace of ReferenceUNet, the TorchScript ONNX exporter) holds the
        # pad and the crop computed from the input's size, and stays right at every other size.
        x = F.pad(x, (0, -width % SIZE_MULTIPLE, 0, -height % SIZE_MULTIPLE))
        x1 = self.enc1(x)
        x2 = self.enc2(self.pool(x1))
        x3 = self.enc3(self.pool(x2))
        x4 = self.enc4(self.pool(x3))
        y = self.dec1(self.up_step(self.upconv3, x4, x3))
        y = self.dec2(self.up_step(self.upconv2, y, x2))
        y = self.dec3(self.up_step(self.upconv1, y, x1))
        return self.out(y)[..., :height, :width]

"""The pure-PyTorch reference: the oracle for tests and the baseline for benchmarks.

Nobody writes a second reference; tests and benchmarks import these.
"""
import torch
import torch.nn.functional as F
from torch import nn

from unet_fast.models.architecture import UNetLayers


def conv_transpose(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor = None) -> torch.Tensor:
    """The transposed convolution of a decoder step: stride = kernel size, per axis (2-D or 3-D)."""
    conv = F.conv_transpose2d if x.dim() == 4 else F.conv_transpose3d
    return conv(x, weight, bias, stride=tuple(weight.shape[2:]))


def up_concat(x: torch.Tensor, skip: torch.Tensor, weight: torch.Tensor,
              bias: torch.Tensor = None, relu: bool = True, skip_first: bool = False) -> torch.Tensor:
    """The decoder step, the naive way: the transposed convolution (stride = kernel size), then
    cat([up, skip]) (or cat([skip, up]) when skip_first), then relu when asked."""
    up = conv_transpose(x, weight, bias)
    y = torch.cat([skip, up] if skip_first else [up, skip], dim=1)
    return torch.relu(y) if relu else y


# (rtol, atol) of a result against this reference computed in float64 from the same (rounded)
# inputs, per dtype of the result. Outputs are rounded once to the dtype after float32
# accumulation, so the rounding of the result dominates: about one ulp of the dtype, more for
# sums over many pixels. The one table: the tests compare element by element (atol scaled by the
# largest reference magnitude), the benchmark rows check relative_error <= rtol.
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in float64: how far a result is from this oracle
    (`unet-fast check` and the benchmark rows report it)."""
    if actual.is_meta or expected.is_meta:
        return float("nan")  # tensors without data (a run on the meta device, for its launches)
    actual, expected = actual.detach().double(), expected.detach().double()
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-300)).item()


class ReferenceUNet(UNetLayers):
    """`UNet` with its decoder steps in plain PyTorch: ConvTranspose2d, torch.cat, relu."""

    def up_step(self, upconv: nn.ConvTranspose2d, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        y = torch.cat([upconv(x), skip], dim=1)
        return torch.relu(y) if self.up_relu else y

"""The pure-PyTorch reference: the oracle for tests and the baseline for benchmarks.

Nobody writes a second reference; tests and benchmarks import these.
"""
import torch
import torch.nn.functional as F
from torch import nn

from unet_fast.models.architecture import UNetLayers


def up_concat(x: torch.Tensor, skip: torch.Tensor, weight: torch.Tensor,
              bias: torch.Tensor = None, relu: bool = True) -> torch.Tensor:
    """relu(cat([conv_transpose2d(x, weight, bias, stride=2), skip], dim=1)), the naive way."""
    y = torch.cat([F.conv_transpose2d(x, weight, bias, stride=2), skip], dim=1)
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
    actual, expected = actual.detach().double(), expected.detach().double()
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-300)).item()


class ReferenceUNet(UNetLayers):
    """`UNet` with its decoder steps in plain PyTorch: ConvTranspose2d, torch.cat, relu."""

    def up_step(self, upconv: nn.ConvTranspose2d, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        y = torch.cat([upconv(x), skip], dim=1)
        return torch.relu(y) if self.up_relu else y

"""What the benchmark measures: the decoder steps and the whole U-Net, and their inputs.

The same definitions serve `unet-fast bench` and `pytest benchmarks/`, so the two can never
disagree about what "up3 at batch 8" means.

Case names follow the model's modules: `up3` is `upconv3` (the deepest step, 8b -> 4b channels
at image/8), `up2` is `upconv2`, `up1` is `upconv1`. With base_channels b = 64 and a 512x512
image at batch 8 these are the three steps the benchmarks and the static report use:
    up3  x [8, 512, 64, 64],   skip [8, 256, 128, 128], weight [512, 256, 2, 2]
    up2  x [8, 256, 128, 128], skip [8, 128, 256, 256], weight [256, 128, 2, 2]
    up1  x [8, 128, 256, 256], skip [8, 64, 512, 512],  weight [128, 64, 2, 2]
"""
from dataclasses import dataclass

import torch

from unet_fast import names
from unet_fast.bench import roofline

# The dtypes the benchmark times (names from unet_fast.names); float32 follows PyTorch's default
# TF32 setting there, as a user's model would.
BENCH_DTYPES = ("bf16", "fp16", "fp32")
LAYOUTS = tuple(names.LAYOUTS)
# Liger-Kernel's names: "full" is forward + backward in one timed call.
MODES = ("forward", "backward", "full")
MODE_LABELS = {"forward": "fwd", "backward": "bwd", "full": "fwd+bwd"}


@dataclass(frozen=True)
class StepCase:
    """One decoder step: x [n, cin, h, w], skip [n, cs, 2h, 2w], weight [cin, cout, 2, 2]."""
    name: str
    n: int
    cin: int
    cout: int
    cs: int
    h: int
    w: int
    kind = "step"
    modes = MODES

    @property
    def label(self) -> str:
        return f"{self.name} {self.cin}->{self.cout}+{self.cs} @{self.h}x{self.w}"

    def shapes(self) -> dict:
        n, h, w = self.n, self.h, self.w
        return dict(x=[n, self.cin, h, w], skip=[n, self.cs, 2 * h, 2 * w],
                    weight=[self.cin, self.cout, 2, 2], out=[n, self.cout + self.cs, 2 * h, 2 * w])

    def nbytes(self, mode: str, dtype: torch.dtype) -> int:
        elem = torch.empty((), dtype=dtype).element_size()
        return roofline.step_bytes(mode, self.n, self.cin, self.cout, self.cs, self.h, self.w, elem)


@dataclass(frozen=True)
class ModelCase:
    """The whole U-Net on [batch, in_channels, size, size] images.

    Modes: 'forward' is inference (eval, no_grad); 'full' is one training step (forward,
    cross-entropy loss, backward; no optimizer step, which is the same for both models).
    """
    name: str
    batch: int
    size: int
    base_channels: int = 64
    in_channels: int = 3
    out_channels: int = 2
    kind = "model"
    modes = ("forward", "full")

    @property
    def label(self) -> str:
        return f"{self.name} b{self.base_channels} @{self.size}x{self.size}"

    def shapes(self) -> dict:
        return dict(image=[self.batch, self.in_channels, self.size, self.size],
                    target=[self.batch, self.size, self.size], base_channels=self.base_channels)

    def nbytes(self, mode, dtype):
        return None  # the encoder's convolutions are compute-bound: no single byte floor applies


# x [2, 24, 9, 13], weight [24, 12, 2, 2], skip [2, 12, 18, 26]: small and odd, what
# `unet-fast check` runs, quick on every path.
CHECK_STEP = StepCase("check", 2, 24, 12, 12, 9, 13)
# Odd sizes and channel counts: masks on every side, integers not divisible by 16 (the compiled
# correctness tests and the GPU run's cache).
ODD_STEPS = (StepCase("odd1", 3, 37, 19, 11, 13, 7), StepCase("odd2", 1, 5, 3, 7, 1, 9))


def decoder_cases(batch: int = 8, image_size: int = 512, base_channels: int = 64):
    """The default UNet's three decoder steps for `batch` images of image_size x image_size."""
    if image_size % 8:
        raise ValueError(f"image size must be a multiple of 8, got {image_size}")
    b, s = base_channels, image_size
    return [StepCase("up3", batch, 8 * b, 4 * b, 4 * b, s // 8, s // 8),
            StepCase("up2", batch, 4 * b, 2 * b, 2 * b, s // 4, s // 4),
            StepCase("up1", batch, 2 * b, b, b, s // 2, s // 2)]


def parse_shape(text: str, name: str = "custom") -> StepCase:
    """'N,Cin,Cout,Cs,H,W' -> a StepCase (H, W are x's; skip is 2H x 2W)."""
    try:
        parts = [int(p) for p in text.replace("x", ",").split(",")]
    except ValueError:
        parts = []
    if len(parts) != 6 or min(parts) < 1:
        raise ValueError(f"--shape wants six positive integers N,Cin,Cout,Cs,H,W, got {text!r}")
    return StepCase(name, *parts)


def _randn(shape, dtype, device, gen, scale=1.0):
    # Drawn in float32 from a seeded generator then cast, so every dtype sees the same values.
    return (torch.randn(shape, generator=gen) * scale).to(device=device, dtype=dtype)


def step_weights(case: StepCase, dtype, device, requires_grad: bool, seed: int = 0):
    """(weight, bias) shared by every input set, scaled like nn.ConvTranspose2d's init."""
    gen = torch.Generator().manual_seed(seed)
    bound = (case.cout * 4) ** -0.5
    weight = _randn([case.cin, case.cout, 2, 2], dtype, device, gen, bound)
    bias = _randn([case.cout], dtype, device, gen, bound)
    return weight.requires_grad_(requires_grad), bias.requires_grad_(requires_grad)


def step_inputs(case: StepCase, dtype, layout: str, device, requires_grad: bool, seed: int):
    """(x, skip) for one input set, in `layout`."""
    gen = torch.Generator().manual_seed(1000 + seed)
    fmt = names.memory_format(layout, 4)
    x = _randn([case.n, case.cin, case.h, case.w], dtype, device, gen).contiguous(memory_format=fmt)
    skip = _randn([case.n, case.cs, 2 * case.h, 2 * case.w], dtype, device, gen).contiguous(memory_format=fmt)
    return x.requires_grad_(requires_grad), skip.requires_grad_(requires_grad)


def model_inputs(case: ModelCase, dtype, layout: str, device, seed: int):
    """(image, target) for one input set: an image batch in [0, 1) and class-index masks."""
    gen = torch.Generator().manual_seed(2000 + seed)
    image = torch.rand(case.shapes()["image"], generator=gen).to(device=device, dtype=dtype)
    target = torch.randint(case.out_channels, case.shapes()["target"], generator=gen).to(device)
    return image.contiguous(memory_format=names.memory_format(layout, 4)), target

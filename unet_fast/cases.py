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
import math
from dataclasses import dataclass

import torch

from unet_fast import names
from unet_fast.kernels.byte_model import step_floor

# The dtypes the benchmark times (names from unet_fast.names); float32 follows PyTorch's default
# TF32 setting there, as a user's model would.
BENCH_DTYPES = ("bf16", "fp16", "fp32")
LAYOUTS = tuple(names.LAYOUTS)
# Liger-Kernel's names: "full" is forward + backward in one timed call.
MODES = ("forward", "backward", "full")
MODE_LABELS = {"forward": "fwd", "backward": "bwd", "full": "fwd+bwd"}


@dataclass(frozen=True)
class StepCase:
    """One decoder step: x [n, cin, *spatial] with spatial (H, W) or (D, H, W), weight
    [cin, cout, *kernel] whose kernel size is also its stride, skip [n, cs, *(spatial * kernel)].
    `relu` and `skip_first` are the step's epilogue and concatenation order as its model has them
    (the lesson's UNet: ReLU, upsampled first; nnU-Net: no activation, upsampled first)."""
    name: str
    n: int
    cin: int
    cout: int
    cs: int
    spatial: tuple
    kernel: tuple = (2, 2)
    relu: bool = True
    skip_first: bool = False
    kind = "step"
    modes = MODES

    def __post_init__(self):
        if len(self.kernel) != len(self.spatial):
            object.__setattr__(self, "kernel", (2,) * len(self.spatial))

    @property
    def h(self) -> int:
        return self.spatial[-2]

    @property
    def w(self) -> int:
        return self.spatial[-1]

    @property
    def m(self) -> int:
        """Input pixels: the GEMM's rows."""
        return self.n * math.prod(self.spatial)

    @property
    def taps(self) -> int:
        return math.prod(self.kernel)

    @property
    def mout(self) -> int:
        """Output pixels of the upsampled channels."""
        return self.m * self.taps

    @property
    def up_spatial(self) -> tuple:
        return tuple(s * k for s, k in zip(self.spatial, self.kernel))

    @property
    def label(self) -> str:
        kernel = "" if self.kernel == (2,) * len(self.spatial) else f" k{'x'.join(map(str, self.kernel))}"
        return f"{self.name} {self.cin}->{self.cout}+{self.cs} @{'x'.join(map(str, self.spatial))}{kernel}"

    def shapes(self) -> dict:
        n = self.n
        return dict(x=[n, self.cin, *self.spatial], skip=[n, self.cs, *self.up_spatial],
                    weight=[self.cin, self.cout, *self.kernel], out=[n, self.cout + self.cs, *self.up_spatial])

    def nbytes(self, mode: str, dtype: torch.dtype) -> int:
        """The step's compulsory DRAM bytes in `mode` ('forward', 'backward' or 'full'): the floor
        of kernels/byte_model.py (the ReLU mask as bits; without a ReLU the skip's gradient is a
        view of grad), with the bias the benchmarks' steps carry."""
        elem = torch.empty((), dtype=dtype).element_size()
        directions = ("forward", "backward") if mode == "full" else (mode,)
        return round(sum(step_floor(self, d, elem) for d in directions))


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
CHECK_STEP = StepCase("check", 2, 24, 12, 12, (9, 13))
# Odd sizes and channel counts: masks on every side, integers not divisible by 16 (the compiled
# correctness tests and the GPU run's cache).
ODD_STEPS = (StepCase("odd1", 3, 37, 19, 11, (13, 7)), StepCase("odd2", 1, 5, 3, 7, (1, 9)))


def decoder_cases(batch: int = 8, image_size: int = 512, base_channels: int = 64):
    """The default UNet's three decoder steps for `batch` images of image_size x image_size."""
    if image_size % 8:
        raise ValueError(f"image size must be a multiple of 8, got {image_size}")
    b, s = base_channels, image_size
    return [StepCase("up3", batch, 8 * b, 4 * b, 4 * b, (s // 8, s // 8)),
            StepCase("up2", batch, 4 * b, 2 * b, 2 * b, (s // 4, s // 4)),
            StepCase("up1", batch, 2 * b, b, b, (s // 2, s // 2))]


# nnU-Net's default 3d_fullres network (features 32, 64, 128, 256, 320, 320; strides 1, 2, 2, 2,
# 2, 2) on a 128^3 patch: its five decoder steps, deepest first, no activation after the
# concatenation (a convolution follows), upsampled channels first.
NNUNET_FEATURES = (32, 64, 128, 256, 320, 320)


def nnunet_3d_cases(batch: int = 2, patch: int = 128):
    """nnU-Net's 3d_fullres decoder steps for `batch` patches of patch^3, plus an anisotropic
    (1, 2, 2) step (nnU-Net's first stages on thick-slice scans) at the shallowest level."""
    if patch % 32:
        raise ValueError(f"patch size must be a multiple of 32, got {patch}")
    f = NNUNET_FEATURES
    cases = []
    for level in range(len(f) - 1, 0, -1):  # x at level `level`, skip at level - 1
        size = patch >> level
        cases.append(StepCase(f"3d{level}", batch, f[level], f[level - 1], f[level - 1], (size,) * 3,
                              (2, 2, 2), relu=False))
    cases.append(StepCase("3da", batch, f[1], f[0], f[0], (patch // 8, patch // 2, patch // 2), (1, 2, 2),
                          relu=False))
    return cases


def report_cases():
    """The steps the static report compiles and models: the default UNet's 2-D steps at batch 8
    from 512x512 and nnU-Net's 3-D steps at batch 2 on a 128^3 patch."""
    return decoder_cases(batch=8) + nnunet_3d_cases(batch=2, patch=128)


def parse_shape(text: str, name: str = "custom") -> StepCase:
    """'N,Cin,Cout,Cs,H,W' or 'N,Cin,Cout,Cs,D,H,W' -> a StepCase with stride 2 on every axis
    (the sizes are x's; skip is twice that)."""
    try:
        parts = [int(p) for p in text.replace("x", ",").split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (6, 7) or min(parts) < 1:
        raise ValueError(f"--shape wants six or seven positive integers N,Cin,Cout,Cs,H,W or "
                         f"N,Cin,Cout,Cs,D,H,W, got {text!r}")
    return StepCase(name, *parts[:4], tuple(parts[4:]))


def _randn(shape, dtype, device, gen, scale=1.0):
    # Drawn in float32 from a seeded generator then cast, so every dtype sees the same values.
    return (torch.randn(shape, generator=gen) * scale).to(device=device, dtype=dtype)


def step_weights(case: StepCase, dtype, device, requires_grad: bool, seed: int = 0):
    """(weight, bias) shared by every input set, scaled like nn.ConvTranspose2d/3d's init."""
    gen = torch.Generator().manual_seed(seed)
    bound = (case.cout * math.prod(case.kernel)) ** -0.5
    weight = _randn([case.cin, case.cout, *case.kernel], dtype, device, gen, bound)
    bias = _randn([case.cout], dtype, device, gen, bound)
    return weight.requires_grad_(requires_grad), bias.requires_grad_(requires_grad)


def step_inputs(case: StepCase, dtype, layout: str, device, requires_grad: bool, seed: int):
    """(x, skip) for one input set, in `layout`."""
    gen = torch.Generator().manual_seed(1000 + seed)
    fmt = names.memory_format(layout, 2 + len(case.spatial))
    x = _randn([case.n, case.cin, *case.spatial], dtype, device, gen).contiguous(memory_format=fmt)
    skip = _randn([case.n, case.cs, *case.up_spatial], dtype, device, gen).contiguous(memory_format=fmt)
    return x.requires_grad_(requires_grad), skip.requires_grad_(requires_grad)


def model_inputs(case: ModelCase, dtype, layout: str, device, seed: int):
    """(image, target) for one input set: an image batch in [0, 1) and class-index masks."""
    gen = torch.Generator().manual_seed(2000 + seed)
    image = torch.rand(case.shapes()["image"], generator=gen).to(device=device, dtype=dtype)
    target = torch.randint(case.out_channels, case.shapes()["target"], generator=gen).to(device)
    return image.contiguous(memory_format=names.memory_format(layout, 4)), target

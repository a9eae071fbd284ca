"""The compiled-correctness checks of benchmarks/gpu_run.sh (`pytest -m gpu`).

On a GPU: the default UNet's three decoder steps at batch 2 in every dtype and layout, two odd
shapes, nnU-Net's 3-D steps as the run times them, an empty batch and UNet against
ReferenceUNet, forward and backward against the float64 reference, compiled by Triton for that
GPU (torch.compile of UNet is tests/test_registration.py's gpu-marked test). On the CPU the same
tests run the kernels under Triton's interpreter at small sizes (a few channels, a few pixels),
so a CPU run proves the tests themselves before a rare GPU run spends minutes on them.
"""
import pytest
import torch

from unet_fast import ReferenceUNet, UNet, up_concat
from unet_fast import names
from unet_fast.cases import ODD_STEPS, StepCase, decoder_cases, nnunet_3d_cases
from helpers import DEVICE, assert_close_to_reference, grads_against_reference, make_step, randn, select_path

pytestmark = pytest.mark.gpu
ON_GPU = DEVICE.type == "cuda"
# The steps' channel counts and sizes on a GPU; on the CPU the same three steps at base 4 from a
# 32x32 image (the interpreter runs one program at a time).
STEPS = decoder_cases(batch=2) if ON_GPU else decoder_cases(batch=1, image_size=32, base_channels=4)
DTYPES = {name: names.torch_dtype(name) for name in ("fp32", "bf16", "fp16")}
FORMATS = {layout: names.memory_format(layout) for layout in names.LAYOUTS}


def step_args(case, dtype, fmt):
    return (randn(case.n, case.cin, case.h, case.w, dtype=dtype, memory_format=fmt),
            randn(case.n, case.cs, 2 * case.h, 2 * case.w, dtype=dtype, memory_format=fmt),
            randn(case.cin, case.cout, 2, 2, dtype=dtype) * (4 * case.cout) ** -0.5,
            randn(case.cout, dtype=dtype))


@pytest.mark.parametrize("layout", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", STEPS, ids=lambda c: c.name)
def test_default_steps_forward_and_backward(monkeypatch, case, dtype, layout):
    select_path(monkeypatch, "triton")
    grads_against_reference(step_args(case, DTYPES[dtype], FORMATS[layout]), True, DTYPES[dtype],
                            f" ({case.name} {dtype} {layout})")


@pytest.mark.parametrize("layout", FORMATS)
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("case", ODD_STEPS, ids=lambda c: c.name)
def test_odd_shapes_forward_and_backward(monkeypatch, case, dtype, layout):
    select_path(monkeypatch, "triton")
    grads_against_reference(step_args(case, DTYPES[dtype], FORMATS[layout]), True, DTYPES[dtype])


# nnU-Net's 3-D steps as the GPU run times them (its steps-3d rows and its networks part): bf16,
# channels_last_3d activations, weight and incoming gradient (model.to(memory_format=...) lays the
# weight out so, and a loss on a channels_last_3d output hands its gradient back so), no ReLU,
# with and without bias, the upsampled channels first (nnU-Net) or the skip's (MONAI's BasicUNet).
# On a GPU nnU-Net's channel counts at batch 1 on a 32^3 patch; on the CPU a few channels.
STEPS_3D = (nnunet_3d_cases(batch=1, patch=32) if ON_GPU else
            [StepCase(c.name, 1, 4, 3, 2, tuple(max(1, s // 8) for s in c.spatial), c.kernel, relu=False)
             for c in nnunet_3d_cases(batch=1, patch=32)[-2:]])


@pytest.mark.parametrize("skip_first", [False, True], ids=["up_first", "skip_first"])
@pytest.mark.parametrize("has_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("case", STEPS_3D, ids=lambda c: c.name)
def test_3d_steps_as_the_gpu_run_times_them(monkeypatch, case, has_bias, skip_first):
    select_path(monkeypatch, "triton")
    fmt = torch.channels_last_3d
    x, skip, weight, bias = make_step(case.n, case.cin, case.cout, case.cs, case.spatial, case.kernel,
                                      torch.bfloat16, fmt, bias=has_bias)
    weight = (weight * (case.cout * 8) ** -0.5).contiguous(memory_format=fmt)
    grads_against_reference((x, skip, weight, bias), False, torch.bfloat16, f" ({case.name} bf16 channels_last_3d)",
                            skip_first=skip_first, grad_format=fmt)


def test_empty_batch(monkeypatch):
    select_path(monkeypatch, "triton")
    case = STEPS[0]
    x, skip, weight, bias = [t.requires_grad_() for t in step_args(case, torch.float32, torch.channels_last)]
    x, skip = x[:0].detach().requires_grad_(), skip[:0].detach().requires_grad_()
    out = up_concat(x, skip, weight, bias)
    assert out.shape == (0, case.cout + case.cs, 2 * case.h, 2 * case.w)
    out.sum().backward()
    assert torch.equal(weight.grad, torch.zeros_like(weight)) and x.grad.shape == x.shape


@pytest.mark.parametrize("layout", FORMATS)
def test_unet_matches_reference_unet(monkeypatch, layout):
    """The whole model, H and W not multiples of 8 (padded inside): its float32 logits, then in
    float64 its logits and parameter grads. The grads are compared in float64 because in float32, at
    the GPU's size, eager PyTorch's own weight gradients miss float32's tolerance against the
    float64 reference in about one seed in six (a ReLU or max-pool decision that rounds the other
    way sends a whole gradient value elsewhere; the first convolution's gradient sums 24,800
    pixels): a model-level float32 check would fail on PyTorch's rounding, not on the kernels'
    (each step's float32 gradients are checked against the reference above)."""
    select_path(monkeypatch, "triton")
    base, shape = (16, (2, 3, 100, 124)) if ON_GPU else (4, (1, 3, 20, 28))
    model = UNet(base_channels=base).to(DEVICE, memory_format=FORMATS[layout])
    reference = ReferenceUNet(base_channels=base).to(DEVICE, torch.float64)
    reference.load_state_dict(model.state_dict())
    image = torch.rand(shape, device=DEVICE).contiguous(memory_format=FORMATS[layout])
    expected = reference(image.double())
    assert_close_to_reference(model(image), expected, torch.float32, "UNet logits")
    model.double()
    out = model(image.double())
    assert out.dtype == torch.float64
    assert_close_to_reference(out, expected, torch.float64, "UNet logits in float64")
    grad = torch.randn_like(expected)
    out.backward(grad)
    expected.backward(grad)
    ref_params = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        assert_close_to_reference(p.grad, ref_params[name].grad, torch.float64, f"grad of {name}")


@pytest.mark.parametrize("skip_first", [False, True])
def test_dbias_upcasts_each_tap_before_summing(monkeypatch, skip_first):
    """bf16 gradients 256, 1, -256, 0 on the four taps of every pixel: summed in bf16 the 1 is
    lost (256 + 1 rounds to 256), summed in fp32 each pixel adds exactly 1. Only the compiled
    kernels see bf16 sums: the interpreter upcasts everything."""
    select_path(monkeypatch, "triton")
    n, cin, cout, cs, h, w = 2, 16, 16, 16, 4, 4
    x = randn(n, cin, h, w, dtype=torch.bfloat16).requires_grad_()
    skip = randn(n, cs, 2 * h, 2 * w, dtype=torch.bfloat16).requires_grad_()
    weight = randn(cin, cout, 2, 2, dtype=torch.bfloat16).requires_grad_()
    bias = randn(cout, dtype=torch.bfloat16).requires_grad_()
    out = up_concat(x, skip, weight, bias, relu=False, skip_first=skip_first)
    taps = torch.tensor([[256.0, 1.0], [-256.0, 0.0]], device=DEVICE).repeat(h, w)
    grad = torch.zeros_like(out)
    up = slice(cs, cs + cout) if skip_first else slice(0, cout)
    grad[:, up] = taps.to(torch.bfloat16)
    (dbias,) = torch.autograd.grad(out, (bias,), grad)
    assert torch.equal(dbias.float(), torch.full((cout,), float(n * h * w), device=DEVICE))

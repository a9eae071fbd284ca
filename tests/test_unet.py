"""UNet (fused decoder) against ReferenceUNet and the lesson's model: outputs, gradients, weights."""
import warnings

import pytest
import torch

from unet_fast import ReferenceUNet, UNet
from unet_fast.reference import TOLERANCES, relative_error
from helpers import DEVICE, PATHS, assert_close_to_reference, select_path
from lesson_unet import LessonUNet

BASE = 4  # small widths keep the interpreter fast; the structure is the same at any width


def twin_models(up_relu):
    """A UNet and a float64 ReferenceUNet with the same weights."""
    model = UNet(3, 2, base_channels=BASE, up_relu=up_relu).to(DEVICE)
    ref = ReferenceUNet(3, 2, base_channels=BASE, up_relu=up_relu).to(DEVICE).double()
    ref.load_state_dict(model.state_dict(), strict=True)
    return model, ref


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("up_relu", [True, False])
@pytest.mark.parametrize("size", [(16, 16), (19, 27), (1, 1), (8, 13)], ids=str)
def test_unet_matches_reference_forward_and_backward(monkeypatch, path, up_relu, size):
    select_path(monkeypatch, path)
    model, ref = twin_models(up_relu)
    image = torch.rand(2, 3, *size, device=DEVICE)
    out = model(image)
    expected = ref(image.double())
    assert out.shape == (2, 2, *size)
    assert_close_to_reference(out, expected, torch.float32, "logits")

    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad.double())
    params64 = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        assert_close_to_reference(p.grad, params64[name].grad, torch.float32, f"grad of {name}")


def test_state_dict_moves_between_unet_reference_and_lesson_model():
    lesson = LessonUNet(3, 2).to(DEVICE)
    model = UNet().to(DEVICE)
    ref = ReferenceUNet().to(DEVICE)
    model.load_state_dict(lesson.state_dict(), strict=True)
    ref.load_state_dict(model.state_dict(), strict=True)
    lesson.load_state_dict(ref.state_dict(), strict=True)
    assert list(model.state_dict()) == list(lesson.state_dict())


def test_up_relu_false_reproduces_the_lesson_model(monkeypatch):
    select_path(monkeypatch, "torch")  # full-width model: the interpreter would take minutes
    lesson = LessonUNet(3, 2).to(DEVICE).double()
    model = UNet(up_relu=False).to(DEVICE).double()
    model.load_state_dict(lesson.state_dict(), strict=True)
    image = torch.rand(1, 3, 16, 24, device=DEVICE, dtype=torch.float64)
    assert_close_to_reference(model(image), lesson(image), torch.float64, "logits")


def test_default_model_any_size(monkeypatch):
    select_path(monkeypatch, "torch")
    with torch.no_grad():
        assert UNet().to(DEVICE)(torch.rand(1, 3, 333, 517, device=DEVICE)).shape == (1, 2, 333, 517)


def test_odd_sizes_are_zero_padded_bottom_right_and_cropped(monkeypatch):
    """The documented padding: zeros below and right up to a multiple of 8, output cropped back."""
    select_path(monkeypatch, "torch")
    model, _ = twin_models(True)
    image = torch.rand(1, 3, 13, 22, device=DEVICE)
    padded = torch.nn.functional.pad(image, (0, 2, 0, 3))
    assert torch.equal(model(image), model(padded)[..., :13, :22])


@pytest.mark.parametrize("up_relu", [True, False])
def test_config_and_repr(up_relu):
    model = UNet(in_channels=1, out_channels=5, base_channels=8, up_relu=up_relu)
    assert model.config() == dict(in_channels=1, out_channels=5, base_channels=8, up_relu=up_relu)
    assert "base_channels=8" in repr(model)


@pytest.mark.parametrize("model_class", [UNet, ReferenceUNet])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_input_of_another_dtype_is_a_clear_type_error(monkeypatch, model_class, dtype):
    """Outside autocast, an input whose dtype is not the parameters' is refused before any layer
    runs, with both dtypes named (not the first convolution's raw error)."""
    select_path(monkeypatch, "torch")
    model = model_class(3, 2, base_channels=BASE).to(DEVICE)
    ran = []
    model.enc1.register_forward_pre_hook(lambda *args: ran.append("enc1"))
    with pytest.raises(TypeError, match=rf"x is {dtype}.*{model_class.__name__}'s parameters are torch.float32"):
        model(torch.rand(1, 3, 16, 16, device=DEVICE).to(dtype))
    assert ran == [], "a layer ran before the dtype check"


@pytest.mark.parametrize("model_class", [UNet, ReferenceUNet])
@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16], ids=str)
def test_autocast_still_takes_float32_and_16_bit_inputs(monkeypatch, model_class, amp_dtype):
    """Under autocast the convolutions cast float32 and 16-bit inputs themselves: no TypeError,
    and logits within the autocast dtype's tolerance (relative norm error against the float64
    reference) of ReferenceUNet. float64, which autocast never casts, is still refused."""
    select_path(monkeypatch, "torch")
    model = model_class(3, 2, base_channels=BASE).to(DEVICE)
    ref = ReferenceUNet(3, 2, base_channels=BASE).to(DEVICE).double()
    ref.load_state_dict(model.state_dict())
    image = torch.rand(1, 3, 13, 22, device=DEVICE)
    for x in (image, image.to(amp_dtype)):
        with torch.autocast(DEVICE.type, dtype=amp_dtype):
            out = model(x)
        assert out.dtype == amp_dtype
        err = relative_error(out, ref(x.double()))
        assert err <= TOLERANCES[amp_dtype][0], f"{x.dtype} input under {amp_dtype} autocast: {err:.1e}"
    with torch.autocast(DEVICE.type, dtype=amp_dtype), pytest.raises(TypeError, match="torch.float64"):
        model(image.double())


@pytest.mark.parametrize("model_class", [UNet, ReferenceUNet])
def test_a_model_on_the_meta_device_gives_its_output_s_shape(model_class):
    """The meta device (shapes without data: memory planning, deferred initialization) has no
    autocast, and asking torch whether it is on raises there: the model does not ask it."""
    model = model_class(3, 2, base_channels=BASE).to(device="meta", dtype=torch.bfloat16)
    model.to(memory_format=torch.channels_last)
    out = model(torch.empty(2, 3, 37, 50, device="meta", dtype=torch.bfloat16))
    assert out.is_meta and out.shape == (2, 2, 37, 50) and out.dtype == torch.bfloat16


def _trace(model, example):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about the shape checks: expected
        return torch.jit.trace(model, example)


def test_traced_reference_unet_is_right_at_other_sizes(monkeypatch):
    """torch.jit.trace at 16x16 (no padding needed) then other sizes: the trace must hold the
    pad and the crop computed from the input's size, not the example's constants."""
    select_path(monkeypatch, "torch")
    ref = ReferenceUNet(3, 2, base_channels=BASE).to(DEVICE).double().eval()
    traced = _trace(ref, torch.rand(1, 3, 16, 16, device=DEVICE, dtype=torch.float64))
    for size in [(20, 28), (19, 27), (1, 1), (16, 16)]:
        image = torch.rand(2, 3, *size, device=DEVICE, dtype=torch.float64)
        with torch.no_grad():
            assert_close_to_reference(traced(image), ref(image), torch.float64, f"traced at {size}")


@pytest.mark.parametrize("path", PATHS)
def test_tracing_unet_raises_and_points_to_export(monkeypatch, path):
    """A trace of UNet records its fused op's buffers at the example's size (and on the Triton
    path no kernel at all): tracing must fail loudly, pointing to what works."""
    select_path(monkeypatch, path)
    model = UNet(3, 2, base_channels=BASE).to(DEVICE).eval()
    with pytest.raises(RuntimeError, match="torch.export") as info:
        _trace(model, torch.rand(1, 3, 16, 16, device=DEVICE))
    assert "ReferenceUNet" in str(info.value) and "unet-fast export" in str(info.value)

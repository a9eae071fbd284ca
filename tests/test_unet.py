"""UNet (fused decoder) against ReferenceUNet and the lesson's model: outputs, gradients, weights."""
import pytest
import torch

from unet_fast import ReferenceUNet, UNet
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

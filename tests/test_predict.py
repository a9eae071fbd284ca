"""Prediction: the Python API's input forms, the predict command's PNGs, tiling == one pass."""
import numpy as np
import pytest
import torch
from PIL import Image

import unet_fast
from unet_fast.workflow import checkpoint
from unet_fast.workflow.data import synthetic_sample
from unet_fast.models.unet import UNet
from unet_fast.workflow.predict import CONTEXT, predict_logits, tile_starts
from unet_fast.workflow.train import init_weights
from workflow_fixtures import pytorch_path, run_cli  # noqa: F401


def _model(base=4, classes=3, seed=0):
    torch.manual_seed(seed)
    model = UNet(out_channels=classes, base_channels=base)
    init_weights(model)  # He init: logits with structure, not near-constant
    return model.eval()


@pytest.fixture
def saved_checkpoint(tmp_path):
    model = _model()
    path = tmp_path / "model.pt"
    checkpoint.save(path, {"config": checkpoint.model_config(model, ["bg", "a", "b"]),
                           "model": model.state_dict(), "epoch": 0, "history": []})
    return path


def test_predict_accepts_path_pil_numpy_and_tensor(tmp_path):
    model = _model()
    image, _ = synthetic_sample(1, 45, 61)
    Image.fromarray(image).save(tmp_path / "x.png")
    want = unet_fast.predict(model, tmp_path / "x.png")
    assert want.shape == (45, 61) and want.dtype == np.uint8 and want.max() < 3
    tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    for form in (str(tmp_path / "x.png"), Image.fromarray(image), image, tensor):
        np.testing.assert_array_equal(unet_fast.predict(model, form), want)
    with pytest.raises(TypeError):
        unet_fast.predict(model, image.astype(np.float32))


def test_predict_command_writes_mask_and_overlay_at_input_size(tmp_path, capsys, saved_checkpoint):
    sizes = {"a.png": (40, 56), "b.jpg": (33, 47), "c.png": (40, 56)}
    for name, (h, w) in sizes.items():
        Image.fromarray(synthetic_sample(2, h, w)[0]).save(tmp_path / name)
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "predict", saved_checkpoint, *[tmp_path / n for n in sizes],
                                "--out", out, "--batch-size", "2")
    assert code == 0, err
    model = unet_fast.load(saved_checkpoint)
    for name, (h, w) in sizes.items():
        stem = name.split(".")[0]
        mask = Image.open(out / f"{stem}_mask.png")
        overlay = Image.open(out / f"{stem}_overlay.png")
        assert mask.size == (w, h) and overlay.width >= w and overlay.height > h  # legend strip below
        assert mask.mode == "P" and overlay.mode == "RGB"
        # The PNG holds the class indices themselves, the same as the Python API's answer.
        np.testing.assert_array_equal(np.asarray(mask), unet_fast.predict(model, tmp_path / name))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{n.split('.')[0]}_{kind}.png" for n in sizes for kind in ("mask", "overlay"))


def test_predict_command_tiles_under_autocast(tmp_path, capsys, saved_checkpoint):
    Image.fromarray(synthetic_sample(3, 70, 90)[0]).save(tmp_path / "wide.png")
    code, stdout, err = run_cli(capsys, "predict", saved_checkpoint, tmp_path / "wide.png", "--out",
                                tmp_path / "out", "--tile", "48", "--overlap", "16", "--amp", "bf16",
                                "--device", "cpu")
    assert code == 0, err
    with Image.open(tmp_path / "out" / "wide_mask.png") as mask:
        assert mask.size == (90, 70) and np.asarray(mask).max() < 3
    with Image.open(tmp_path / "out" / "wide_overlay.png") as overlay:
        assert overlay.width >= 90 and overlay.height > 70  # the image, the legend strip below it


def test_tiled_prediction_equals_a_single_pass():
    model = _model(seed=1)
    image = torch.rand(3, 203, 229)
    whole = predict_logits(model, image)
    tile, overlap = 176, 2 * CONTEXT + 8
    assert len(tile_starts(203, tile, tile - 112)) > 1  # the test really tiles both axes
    tiled = predict_logits(model, image, tile=tile, overlap=overlap, batch_size=3)
    torch.testing.assert_close(tiled, whole, rtol=1e-4, atol=1e-4 * whole.abs().max().item())
    assert torch.equal(tiled.argmax(0), whole.argmax(0))
    # The command-line default overlap (128) is exact too; a small overlap is close, not exact.
    np.testing.assert_array_equal(unet_fast.predict(model, image, tile=160),
                                  whole.argmax(0).numpy())
    rough = predict_logits(model, image, tile=96, overlap=32)
    assert (rough.argmax(0) == whole.argmax(0)).float().mean() > 0.8


def test_tile_larger_than_the_image_is_one_pass():
    model = _model()
    image = torch.rand(3, 50, 70)
    torch.testing.assert_close(predict_logits(model, image, tile=128), predict_logits(model, image),
                               rtol=0, atol=0)


def test_load_returns_an_eval_model_with_class_names(saved_checkpoint):
    model = unet_fast.load(saved_checkpoint)
    assert isinstance(model, UNet) and not model.training
    assert model.class_names == ["bg", "a", "b"] and model.config()["base_channels"] == 4

"""How image files are read for train and predict: bit depth and EXIF orientation.

The model sees 8-bit pixels / 255. An image stored with more bits is scaled to that range by its
own range (PIL's convert() would clip every value above 255), and a photo is read the way viewers
show it (EXIF orientation applied), so its mask and overlay come out at its displayed size.
"""
import numpy as np
import pytest
import torch
from PIL import Image

import unet_fast
from unet_fast.workflow import checkpoint
from unet_fast.workflow.data import FolderSegmentation, read_image
from unet_fast.workflow.overlay import overlay as draw_outlines
from unet_fast.errors import InputError
from unet_fast.models.unet import UNet
from unet_fast.workflow.train import init_weights
from workflow_fixtures import pytorch_path, run_cli  # noqa: F401

ORIENTATION = 0x0112  # EXIF tag; value 6: the stored pixels must turn 90 degrees clockwise


def _gray(height=20, width=24, seed=0) -> np.ndarray:
    """uint8 [H, W] spanning 0..255 exactly (so min-max scaling of a float copy is the identity)."""
    values = np.random.default_rng(seed).integers(0, 256, (height, width)).astype(np.uint8)
    values.flat[:2] = 0, 255
    return values


def _high_depth_copies(folder, gray):
    """The same picture as 16-bit PNG/TIFF, 32-bit integer TIFF and float TIFF files."""
    sixteen = gray.astype(np.uint16) * 257  # 0..255 -> 0..65535
    files = {
        "I;16": (Image.fromarray(sixteen), "png"),
        "I;16B": (Image.frombytes("I;16B", gray.shape[::-1], sixteen.astype(">u2").tobytes()), "tif"),
        "I": (Image.fromarray(sixteen.astype(np.int32)), "tif"),
        "F": (Image.fromarray(gray.astype(np.float32) * 0.37 + 5), "tif"),  # any unit: min-max
    }
    paths = {}
    for mode, (image, ext) in files.items():
        path = folder / f"{mode.replace(';', '')}.{ext}"
        image.save(path)
        with Image.open(path) as check:
            assert check.mode == mode, (mode, check.mode)  # the file really holds that mode
        paths[mode] = path
    return paths


def _model(classes=3):
    torch.manual_seed(0)
    model = UNet(out_channels=classes, base_channels=4)
    init_weights(model)
    return model.eval()


def _upright_and_rotated_jpeg(path, height=40, width=24):
    """A JPEG stored landscape (width x height swapped) with EXIF Orientation 6; returns the
    upright picture as decoded and turned by hand (what every viewer shows)."""
    rng = np.random.default_rng(1)
    upright = rng.integers(0, 256, (height, width, 3)).astype(np.uint8)
    upright[: height // 3] = (250, 20, 20)  # a red top band: wrong orientation is visible
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # counter-clockwise
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    stored.save(path, quality=95, exif=exif)
    with Image.open(path) as raw:
        assert raw.size == (height, width)  # stored landscape
        return np.asarray(raw.convert("RGB").transpose(Image.Transpose.ROTATE_270))


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I", "F"])
def test_high_bit_depth_image_reads_as_its_8_bit_original(tmp_path, mode):
    gray = _gray()
    Image.fromarray(gray).save(tmp_path / "eight.png")
    path = _high_depth_copies(tmp_path, gray)[mode]
    want = np.asarray(read_image(tmp_path / "eight.png"))
    np.testing.assert_array_equal(np.asarray(read_image(path)), want)
    np.testing.assert_array_equal(np.asarray(read_image(path, "L")), gray)


def test_16_bit_image_gives_the_prediction_and_training_input_of_its_8_bit_original(tmp_path):
    gray = _gray(40, 56)
    for folder in ("a", "b"):
        (tmp_path / folder / "images").mkdir(parents=True)
        (tmp_path / folder / "masks").mkdir()
        Image.fromarray(np.zeros_like(gray)).save(tmp_path / folder / "masks" / "x.png")
    Image.fromarray(gray).save(tmp_path / "a" / "images" / "x.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "b" / "images" / "x.png")
    eight, sixteen = tmp_path / "a" / "images" / "x.png", tmp_path / "b" / "images" / "x.png"

    model = _model()
    want = unet_fast.predict(model, eight)
    assert len(np.unique(want)) > 1  # a prediction with structure, not one class everywhere
    np.testing.assert_array_equal(unet_fast.predict(model, sixteen), want)
    with Image.open(sixteen) as opened:  # a PIL image in mode I;16, as the Python API takes it
        np.testing.assert_array_equal(unet_fast.predict(model, opened), want)

    a, b = (FolderSegmentation(str(tmp_path / f), num_classes=2, progress=False)[0][0] for f in "ab")
    assert torch.equal(a, b) and a.shape == (3, 40, 56)


def test_high_bit_depth_values_that_have_no_8_bit_meaning_are_errors(tmp_path):
    wide = np.zeros((8, 8), np.int32)
    wide[0, 0] = 70000  # a 32-bit integer image beyond 16 bits
    Image.fromarray(wide).save(tmp_path / "wide.tif")
    with pytest.raises(InputError, match=r"wide\.tif holds values from 0 to 70000.*0\.\.65535"):
        read_image(tmp_path / "wide.tif")
    broken = np.ones((8, 8), np.float32)
    broken[3, 3] = np.nan
    Image.fromarray(broken).save(tmp_path / "nan.tif")
    with pytest.raises(InputError, match=r"nan\.tif holds NaN or infinite values"):
        read_image(tmp_path / "nan.tif")


def test_exif_orientation_is_applied_when_reading(tmp_path):
    upright = _upright_and_rotated_jpeg(tmp_path / "photo.jpg")
    image = read_image(tmp_path / "photo.jpg")
    assert image.size == (24, 40)  # width x height as displayed
    np.testing.assert_array_equal(np.asarray(image), upright)


def test_predict_writes_an_exif_rotated_photo_at_its_displayed_size(tmp_path, capsys):
    upright = _upright_and_rotated_jpeg(tmp_path / "photo.jpg")
    model = _model()
    ckpt = tmp_path / "model.pt"
    checkpoint.save(ckpt, {"config": checkpoint.model_config(model, ["bg", "a", "b"]),
                           "model": model.state_dict(), "epoch": 0, "history": []})
    code, out, err = run_cli(capsys, "predict", ckpt, tmp_path / "photo.jpg", "--out", tmp_path / "out",
                                  "--alpha", "0.5")
    assert code == 0, err
    with Image.open(tmp_path / "out" / "photo_mask.png") as mask, \
            Image.open(tmp_path / "out" / "photo_overlay.png") as overlay:
        assert mask.size == (24, 40)
        np.testing.assert_array_equal(np.asarray(mask), unet_fast.predict(model, upright))
        # The overlay: the upright image's outlines at its displayed size, the legend strip below.
        assert overlay.width >= 24 and overlay.height > 40
        np.testing.assert_array_equal(np.asarray(overlay)[:40, :24],
                                      draw_outlines(upright, np.asarray(mask), 3, alpha=0.5))


def test_training_reads_exif_rotated_images_and_masks_upright(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    # a.jpg is stored rotated and its mask (made in a viewer) upright; b's mask is stored
    # rotated with the same EXIF tag as its photo: both pairs read upright and agree.
    upright = _upright_and_rotated_jpeg(root / "images" / "a.jpg")
    _upright_and_rotated_jpeg(root / "images" / "b.jpg")
    truth = np.zeros((40, 24), np.uint8)
    truth[: 40 // 3] = 1  # the red top band
    Image.fromarray(truth).save(root / "masks" / "a.png")
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    Image.fromarray(truth).transpose(Image.Transpose.ROTATE_90).save(root / "masks" / "b.png", exif=exif)

    dataset = FolderSegmentation(str(root), num_classes=2, progress=False)
    assert dataset.sizes() == [(40, 24), (40, 24)]
    for index in (0, 1):
        image, mask = dataset[index]
        assert image.shape == (3, 40, 24)
        np.testing.assert_array_equal(mask.numpy(), truth)
    np.testing.assert_array_equal(dataset[0][0].permute(1, 2, 0).numpy(), upright)

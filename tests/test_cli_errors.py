"""Bad input to train / predict / export: exit code 2, one line naming the problem, nothing written."""
import re

import numpy as np
import pytest
import torch
from PIL import Image

import unet_fast
from unet_fast.workflow import checkpoint, export
from unet_fast.workflow.atomic_write import atomic_write
from unet_fast.errors import InputError
from unet_fast.models.unet import UNet
from unet_fast.workflow.train import fit
from workflow_fixtures import (assert_cli_error, make_folder_dataset, pytorch_path,  # noqa: F401
                               run_cli, tiny_options, tree)

TINY = ["--epochs", "1", "--base-channels", "4", "--batch-size", "2", "--no-progress"]


def _corrupt_png(path):
    Image.fromarray(np.zeros((30, 40, 3), np.uint8) + 100).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated: the header reads, the pixels do not


# ---- train -------------------------------------------------------------------------------------

def test_train_missing_data_folder(tmp_path, capsys):
    out = tmp_path / "out"
    assert_cli_error(capsys, "train", "--data", tmp_path / "nope", "--out", out, *TINY,
                     contains=["nope", "not found"])
    root = make_folder_dataset(tmp_path / "d", count=2)
    for p in (root / "masks").iterdir():
        p.unlink()
    (root / "masks").rmdir()
    assert_cli_error(capsys, "train", "--data", root, "--out", out, *TINY,
                     contains=["masks folder", "not found"])
    assert not out.exists()


def test_train_corrupt_image_names_the_file(tmp_path, capsys):
    root = make_folder_dataset(tmp_path / "d", count=3)
    _corrupt_png(root / "images" / "img_1.png")
    out = tmp_path / "out"
    assert_cli_error(capsys, "train", "--data", root, "--num-classes", "3", "--out", out, *TINY,
                     contains=["img_1.png"])
    assert not out.exists()


def test_train_corrupt_mask_names_the_file(tmp_path, capsys):
    root = make_folder_dataset(tmp_path / "d", count=3)
    (root / "masks" / "img_2_mask.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    assert_cli_error(capsys, "train", "--data", root, "--num-classes", "3", "--out", out, *TINY,
                     contains=["cannot read mask", "img_2_mask.png"])
    assert not out.exists()


def test_train_mask_values_out_of_range(tmp_path, capsys):
    root = make_folder_dataset(tmp_path / "d", count=3, num_classes=3)
    out = tmp_path / "out"
    # The masks hold 0, 1, 2: with --num-classes 2, class 2 is out of range.
    assert_cli_error(capsys, "train", "--data", root, "--num-classes", "2", "--out", out, *TINY,
                     contains=["img_1_mask.png", "values found: 0, 2", "[0, 2)"])
    assert not out.exists()


def test_train_image_and_mask_sizes_differ(tmp_path, capsys):
    root = make_folder_dataset(tmp_path / "d", count=3)
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(root / "masks" / "img_0_mask.png")
    out = tmp_path / "out"
    assert_cli_error(capsys, "train", "--data", root, "--num-classes", "3", "--out", out, *TINY,
                     contains=["img_0.png is 32x24", "img_0_mask.png is 12x10"])
    assert not out.exists()


def test_train_crop_larger_than_the_images(tmp_path, capsys):
    root = make_folder_dataset(tmp_path / "d", count=3, size=(24, 32))
    out = tmp_path / "out"
    # Found before training starts, so not inside a DataLoader worker (a multi-line traceback).
    assert_cli_error(capsys, "train", "--data", root, "--num-classes", "3", "--crop", "28", "--workers", "1",
                     "--out", out, *TINY, contains=["--crop 28x28 is larger than img_", "(24x32)"])
    assert not out.exists()


def test_train_bad_options(tmp_path, capsys):
    out = tmp_path / "out"
    assert_cli_error(capsys, "train", "--samples", "8", "--device", "tpu9", "--out", out, *TINY,
                     contains=["unknown device 'tpu9'"])
    assert_cli_error(capsys, "train", "--samples", "8", "--class-names", "a,b", "--out", out, *TINY,
                     contains=["--class-names describe a --data folder"])
    assert not out.exists()


@pytest.mark.parametrize("option,value,expected", [
    ("--lr", "inf", "--lr must be a positive finite number, got inf"),
    ("--lr", "nan", "--lr must be a positive finite number, got nan"),
    ("--lr", "0", "--lr must be a positive finite number"),
    ("--weight-decay", "-5", "--weight-decay must be a finite number >= 0, got -5.0"),
    ("--weight-decay", "nan", "--weight-decay must be a finite number >= 0, got nan"),
    ("--device", "meta", "device meta holds no data"),
])
def test_train_numeric_options_and_device_are_checked_before_anything_is_made(tmp_path, capsys, option,
                                                                              value, expected):
    out = tmp_path / "out"
    assert_cli_error(capsys, "train", "--samples", "8", option, value, "--out", out, *TINY,
                     contains=[expected])
    assert not out.exists()


def test_train_refuses_to_replace_an_earlier_run(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("metrics.json", "best.pt"):  # any one of a run's files is enough
        (out / name).write_bytes(b"earlier run")
        assert_cli_error(capsys, "train", "--samples", "8", "--image-size", "16", "--out", out, *TINY,
                         contains=[f"{out / name} already exists", "--resume", "--overwrite"])
    assert tree(out) == {"best.pt": b"earlier run", "metrics.json": b"earlier run"}
    with pytest.raises(InputError, match="best.pt already exists"):  # the Python API too
        fit(tiny_options(out, samples=8, epochs=1))
    assert tree(out) == {"best.pt": b"earlier run", "metrics.json": b"earlier run"}
    code, stdout, err = run_cli(capsys, "train", "--samples", "8", "--image-size", "16", "--out", out,
                                *TINY, "--overwrite")
    assert code == 0, err
    assert checkpoint.read(out / "best.pt")["epoch"] == 1


def test_demo_refuses_to_replace_an_earlier_demo(tmp_path, capsys):
    out = tmp_path / "demo"
    (out / "samples").mkdir(parents=True)
    assert_cli_error(capsys, "demo", "--epochs", "1", "--out", out, "--no-progress",
                     contains=[f"{out / 'samples'} already exists", "--overwrite"])
    assert tree(out) == {}


def test_train_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    assert_cli_error(capsys, "train", "--samples", "8", "--image-size", "16", "--out", blocker / "run",
                     *TINY, contains=["cannot write to output folder", "file.txt"])
    assert_cli_error(capsys, "train", "--samples", "8", "--image-size", "16", "--out", blocker, *TINY,
                     contains=["exists and is not a folder"])
    assert blocker.read_text() == "not a folder"


def test_resume_with_a_checkpoint_for_another_configuration(tmp_path, capsys):
    out = tmp_path / "run"
    fit(tiny_options(out, epochs=1, samples=8))
    before = tree(out)
    assert_cli_error(capsys, "train", "--samples", "8", "--image-size", "32", "--out", out, "--resume",
                     "--epochs", "2", "--base-channels", "8", "--no-progress",
                     contains=["last.pt", "another configuration", "base_channels=4 (not 8)"])
    assert tree(out) == before


def test_resume_without_a_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert_cli_error(capsys, "train", "--samples", "8", "--out", out, "--resume", *TINY,
                     contains=["last.pt not found"])
    assert not out.exists()


# ---- predict -----------------------------------------------------------------------------------

def test_predict_missing_or_bad_checkpoint(tmp_path, capsys, ckpt, image):
    out = tmp_path / "out"
    assert_cli_error(capsys, "predict", tmp_path / "none.pt", image, "--out", out,
                     contains=["none.pt not found"])
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("this is not a checkpoint\nat all\n")
    assert_cli_error(capsys, "predict", garbage, image, "--out", out,
                     contains=["cannot read checkpoint", "garbage.pt"])
    plain = tmp_path / "plain.pt"
    torch.save(UNet(base_channels=4).state_dict(), plain)
    assert_cli_error(capsys, "predict", plain, image, "--out", out,
                     contains=["plain.pt is not a unet_fast checkpoint"])
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert_cli_error(capsys, "predict", empty, image, "--out", out, contains=["empty.pt: the file is empty"])
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(ckpt.read_bytes()[:2000])
    assert_cli_error(capsys, "predict", truncated, image, "--out", out,
                     contains=["truncated.pt: not a PyTorch checkpoint file, or a truncated one"])
    # A pickled object is refused, not run: checkpoints are read with weights_only=True.
    pickled = tmp_path / "pickled.pt"
    torch.save(UNet(base_channels=4), pickled)
    assert_cli_error(capsys, "predict", pickled, image, "--out", out,
                     contains=["pickled.pt", "refused: it holds objects other than tensors",
                               "(unet_fast.models.unet.UNet)", "nothing executed"])
    assert not out.exists()


def test_predict_checkpoint_whose_weights_do_not_fit_its_configuration(tmp_path, capsys, image):
    wrong = tmp_path / "wrong.pt"
    config = checkpoint.model_config(UNet(out_channels=2, base_channels=8), ["bg", "fg"])
    checkpoint.save(wrong, {"config": config, "model": UNet(out_channels=2, base_channels=4).state_dict(),
                            "epoch": 0, "history": []})
    out = tmp_path / "out"
    assert_cli_error(capsys, "predict", wrong, image, "--out", out,
                     contains=["wrong.pt", "do not fit", "base_channels=8"])
    assert not out.exists()


def test_predict_missing_or_corrupt_image_writes_nothing(tmp_path, capsys, ckpt, image):
    out = tmp_path / "out"
    assert_cli_error(capsys, "predict", ckpt, image, tmp_path / "missing.png", "--out", out,
                     contains=["missing.png not found"])
    bad = tmp_path / "bad.png"
    _corrupt_png(bad)
    assert_cli_error(capsys, "predict", ckpt, image, bad, "--out", out, contains=["bad.png"])
    (tmp_path / "noise.jpg").write_bytes(b"\x00\x01garbage" * 10)
    assert_cli_error(capsys, "predict", ckpt, image, tmp_path / "noise.jpg", "--out", out,
                     contains=["cannot read image", "noise.jpg"])
    assert not out.exists()  # the good image was not predicted either: inputs are checked first


def test_predict_unwritable_output_and_bad_tiling(tmp_path, capsys, ckpt, image):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert_cli_error(capsys, "predict", ckpt, image, "--out", blocker / "sub",
                     contains=["cannot write to output folder"])
    out = tmp_path / "out"
    assert_cli_error(capsys, "predict", ckpt, image, "--out", out, "--tile", "64", "--overlap", "60",
                     contains=["--overlap 60"])
    assert_cli_error(capsys, "predict", ckpt, image, "--out", out, "--device", "cuda:x",
                     contains=["unknown device 'cuda:x'"])
    assert not out.exists()


@pytest.mark.parametrize("options,expected", [
    (["--alpha", "1.5"], "--alpha is the opacity inside the overlay's outlines and must be in [0, 1], got 1.5"),
    (["--alpha", "nan"], "--alpha is the opacity inside the overlay's outlines and must be in [0, 1], got nan"),
    (["--tile", "0"], "--tile must be an integer of at least 16 pixels, got 0"),  # not "no tiling"
    (["--tile", "8"], "--tile must be an integer of at least 16 pixels, got 8"),
    (["--overlap", "32"], "--overlap is the overlap between tiles: it needs --tile"),
    (["--tile", "64", "--overlap", "-1"], "--overlap must be an integer >= 0, got -1"),
    (["--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
    (["--device", "meta"], "device meta holds no data"),
])
def test_predict_options_are_checked_before_anything_is_written(tmp_path, capsys, ckpt, image, options,
                                                                 expected):
    out = tmp_path / "out"
    assert_cli_error(capsys, "predict", ckpt, image, "--out", out, *options, contains=[expected])
    assert not out.exists()


@pytest.mark.parametrize("kwargs,expected", [
    ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
    ({"amp": "bf17"}, "amp must be None, 'bf16' or 'fp16', got 'bf17'"),
    ({"tile": 0}, "tile must be an integer of at least 16 pixels, got 0"),
    ({"overlap": 16}, "overlap is the overlap between tiles: it needs tile"),
])
def test_predict_api_checks_its_arguments(kwargs, expected):
    model = UNet(out_channels=2, base_channels=4).eval()
    with pytest.raises(InputError, match=re.escape(expected)):
        unet_fast.predict(model, torch.rand(3, 20, 24), **kwargs)


def test_predict_refuses_to_replace_files_and_ground_truth_masks(tmp_path, capsys, ckpt):
    root = make_folder_dataset(tmp_path / "data", count=2)
    masks = tree(root / "masks")
    images = [root / "images" / "img_0.png", root / "images" / "img_1.png"]
    # --out DATA/masks: the loader's NAME_mask.png are the ground truth, not to be replaced.
    assert_cli_error(capsys, "predict", ckpt, *images, "--out", root / "masks",
                     contains=[f"{root / 'masks' / 'img_0_mask.png'} already exists", "--overwrite"])
    assert tree(root / "masks") == masks
    out = tmp_path / "out"
    out.mkdir()
    (out / "img_1_overlay.png").write_bytes(b"earlier")
    assert_cli_error(capsys, "predict", ckpt, *images, "--out", out,
                     contains=[f"{out / 'img_1_overlay.png'} already exists"])
    assert tree(out) == {"img_1_overlay.png": b"earlier"}  # img_0 was not written either
    code, stdout, err = run_cli(capsys, "predict", ckpt, *images, "--out", out, "--overwrite")
    assert code == 0, err
    assert sorted(tree(out)) == ["img_0_mask.png", "img_0_overlay.png", "img_1_mask.png", "img_1_overlay.png"]
    assert tree(out)["img_1_overlay.png"] != b"earlier"
    # An output that would replace an input image is refused even with --overwrite.
    (out / "img_0_mask.png").replace(out / "img_0.png")
    (out / "img_1_overlay.png").replace(out / "img_0_mask.png")
    assert_cli_error(capsys, "predict", ckpt, out / "img_0.png", out / "img_0_mask.png", "--out", out,
                     "--overwrite", contains=[f"{out / 'img_0_mask.png'} would replace an input image"])


# ---- export ------------------------------------------------------------------------------------

def test_export_errors(tmp_path, capsys, ckpt):
    assert_cli_error(capsys, "export", tmp_path / "none.pt", "--onnx", tmp_path / "m.onnx",
                     contains=["none.pt not found"])
    pytest.importorskip("onnx")
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert_cli_error(capsys, "export", ckpt, "--onnx", blocker / "m.onnx", contains=["file.txt"])
    assert_cli_error(capsys, "export", ckpt, "--onnx", tmp_path, contains=["is a folder"])
    assert not list(tmp_path.glob("*.onnx"))


@pytest.mark.parametrize("opset", ["5", "10", "99"])
def test_export_opset_out_of_range(tmp_path, capfd, ckpt, opset):
    pytest.importorskip("onnx")
    # capfd: the exporter's graph dump is written by C++ straight to the process's stderr.
    assert_cli_error(capfd, "export", ckpt, "--onnx", tmp_path / "m.onnx", "--opset", opset,
                     contains=[f"--opset {opset}", f"between {export.MIN_OPSET} and {export.MAX_OPSET}"])
    assert not list(tmp_path.glob("*.onnx"))


def test_export_failure_is_one_line_without_the_exporters_graph_dump(tmp_path, capfd, ckpt, monkeypatch):
    pytest.importorskip("onnx")
    monkeypatch.setattr(export, "MIN_OPSET", 9, raising=False)  # opset 9 cannot express the padding
    # capfd: the exporter prints the traced graph from C++, straight to the process's stdout.
    code, out, err = run_cli(capfd, "export", ckpt, "--onnx", tmp_path / "m.onnx", "--opset", "9")
    assert (code, out) == (2, ""), out[:500]
    assert len(err.splitlines()) == 1 and "ONNX export of" in err and "opset" in err, err
    assert not list(tmp_path.glob("*.onnx"))


def test_export_that_fails_its_check_keeps_the_previous_file(tmp_path, capsys, ckpt, monkeypatch):
    pytest.importorskip("onnx")
    target = tmp_path / "out" / "m.onnx"
    target.parent.mkdir()
    target.write_bytes(b"previous export")
    monkeypatch.setattr(export, "check_with_onnxruntime", lambda path, model: 0.5)
    assert_cli_error(capsys, "export", ckpt, "--onnx", target, "--overwrite",
                     contains=["differs from PyTorch by 5.0e-01", "m.onnx not written"])
    assert tree(target.parent) == {"m.onnx": b"previous export"}


# ---- atomic writes -----------------------------------------------------------------------------

def test_a_checkpoint_that_fails_to_save_leaves_the_previous_one(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    target.write_bytes(b"previous good checkpoint")

    def save_half_then_fail(obj, path):
        with open(path, "wb") as f:
            f.write(b"PK half a zip")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(InputError, match="cannot write .*last.pt: .*No space left"):
        checkpoint.save(target, {"model": {}})
    assert tree(tmp_path) == {"last.pt": b"previous good checkpoint"}


def test_a_checkpoint_save_that_torch_reports_as_runtime_error_is_a_cli_error(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    target.write_bytes(b"previous good checkpoint")

    def zip_writer_fails(obj, path):  # what torch.save raises when the disk fills up
        with open(path, "wb") as f:
            f.write(b"PK half a zip")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0\n"
                           "PytorchStreamWriter failed writing file data/0: file write failed")
    monkeypatch.setattr(torch, "save", zip_writer_fails)
    with pytest.raises(InputError, match=r"cannot write .*last\.pt: torch.save failed: .*file write failed$"):
        checkpoint.save(target, {"model": {}})
    assert tree(tmp_path) == {"last.pt": b"previous good checkpoint"}


def test_disk_full_during_training_is_one_line_and_keeps_the_earlier_checkpoints(tmp_path, capsys,
                                                                                monkeypatch):
    out = tmp_path / "run"
    real_save, saves = torch.save, []

    def full_from_the_third_save(obj, path):  # epoch 1 writes best.pt and last.pt, then the disk fills
        saves.append(path)
        if len(saves) >= 3:
            with open(path, "wb") as f:
                f.write(b"PK")
            raise RuntimeError("PytorchStreamWriter failed writing file data/3: file write failed")
        real_save(obj, path)
    monkeypatch.setattr(torch, "save", full_from_the_third_save)
    assert_cli_error(capsys, "train", "--samples", "8", "--image-size", "16", "--out", out, "--epochs", "2",
                     "--base-channels", "4", "--batch-size", "2", "--no-progress",
                     contains=["cannot write", ".pt: torch.save failed", "file write failed"])
    for name in ("best.pt", "last.pt"):
        assert checkpoint.read(out / name)["epoch"] == 1, name
    assert sorted(tree(out)) == ["best.pt", "curves.png", "last.pt", "metrics.json"]  # no temporary


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "last.pt"
    target.write_bytes(b"previous good checkpoint")

    def write_half_then_fail(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, write_half_then_fail)
    assert target.read_bytes() == b"previous good checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]

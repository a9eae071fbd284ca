"""Inputs a hostile but fair user tries: huge or lossy images, sizes past the machine's memory,
numbers out of range, and a reader that closes the pipe. Each is one line (or a quiet exit),
found before anything is allocated or written."""
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import unet_fast
from unet_fast.errors import InputError
from unet_fast.models.unet import UNet
from unet_fast.workflow import checkpoint, distributed
from unet_fast.workflow.train import init_weights
from workflow_fixtures import (assert_cli_error, cli_env, make_folder_dataset, pytorch_path,  # noqa: F401
                               run_cli, tree)

TINY = ["--samples", "8", "--image-size", "16", "--base-channels", "4", "--batch-size", "4",
        "--epochs", "1", "--no-progress"]


def _png_declaring(path, width, height):
    """A tiny PNG whose header declares width x height 8-bit gray pixels (no real pixel data):
    what a decompression bomb looks like to a reader that trusts the header."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b""))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    model = UNet(out_channels=2, base_channels=4)
    init_weights(model)
    path = tmp_path / "model.pt"
    checkpoint.save(path, {"config": checkpoint.model_config(model, ["bg", "fg"]),
                           "model": model.state_dict(), "epoch": 0, "history": []})
    return path


# ---- images -------------------------------------------------------------------------------------

def test_a_decompression_bomb_image_is_one_line_naming_file_and_limit(tmp_path, capsys, ckpt):
    bomb = _png_declaring(tmp_path / "bomb.png", 100000, 100000)
    out = tmp_path / "out"
    assert_cli_error(capsys, "predict", ckpt, bomb, "--out", out,
                     contains=["bomb.png is 100000x100000", "decompression bombs",
                               "UNET_FAST_MAX_IMAGE_PIXELS"])
    assert not out.exists()


def test_a_decompression_bomb_mask_is_one_line_and_the_limit_can_be_lowered(tmp_path, capsys,
                                                                           monkeypatch):
    data = make_folder_dataset(tmp_path / "data", count=2, num_classes=2)
    _png_declaring(data / "masks" / "img_1_mask.png", 100000, 100000)
    args = ["train", "--data", data, *TINY, "--out", tmp_path / "run"]
    assert_cli_error(capsys, *args, contains=["mask", "img_1_mask.png is 100000x100000"])
    # The limit is the user's to set: a 24x32 image is past a limit of 500 pixels.
    _png_declaring(data / "masks" / "img_1_mask.png", 32, 24)
    monkeypatch.setenv("UNET_FAST_MAX_IMAGE_PIXELS", "500")
    assert_cli_error(capsys, *args, contains=["img_0.png is 32x24 (768 pixels)", "limit of 500 pixels"])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_a_lossy_mask_is_refused_whatever_its_name(tmp_path, capsys, fmt):
    data = make_folder_dataset(tmp_path / "data", count=2, num_classes=2)
    mask = data / "masks" / "img_0_mask.png"
    with Image.open(mask) as m:
        # 0/1 labels written as JPEG decode to 0, 1, 2...: but these stay in range for 2 classes
        # only by luck; the format, not the values, tells.
        m.convert("L").save(mask, format=fmt, quality=90)
    assert_cli_error(capsys, "train", "--data", data, *TINY, "--out", tmp_path / "run",
                     contains=["img_0_mask.png is stored as " + fmt, "lossy", "PNG"])
    assert not (tmp_path / "run").exists()


def test_an_image_too_large_for_one_pass_is_refused_before_allocating(tmp_path, capsys, ckpt,
                                                                      monkeypatch):
    """The estimate of one pass is compared with the device's memory (here made 64 KiB)."""
    monkeypatch.setattr(distributed, "available_memory", lambda device: 2**16)
    monkeypatch.setattr(unet_fast.workflow.predict, "available_memory", lambda device: 2**16)
    image = tmp_path / "big.png"
    Image.fromarray(np.zeros((96, 128, 3), np.uint8)).save(image)
    out = tmp_path / "out"
    assert_cli_error(capsys, "predict", ckpt, image, "--out", out,
                     contains=["big.png is 128x96", "GiB", "--tile 512"])
    assert not out.exists()
    with pytest.raises(InputError, match="tile=512"):
        unet_fast.predict(unet_fast.load(ckpt), image)
    code, _, err = run_cli(capsys, "predict", ckpt, image, "--out", out, "--tile", "32", "--overlap", "16")
    assert code == 0, err


@pytest.mark.parametrize("option", [["--image-size", "100000"], ["--base-channels", "100000"]],
                         ids=["image-size", "base-channels"])
def test_training_sizes_past_the_machines_memory_are_refused_up_front(tmp_path, capsys, option):
    """Far past any machine: 512 built-in images of 100000x100000, or 10**10 x 170 weights."""
    sizes = {"--image-size": "16", "--base-channels": "4"}
    sizes[option[0]] = option[1]
    args = ["--samples", "8", "--batch-size", "4", "--epochs", "1", "--no-progress"]
    assert_cli_error(capsys, "train", *args, *[x for kv in sizes.items() for x in kv], "--out", tmp_path / "run",
                     contains=["needs at least", "GiB", "more than the"])
    assert not (tmp_path / "run").exists()


# ---- numbers out of range -----------------------------------------------------------------------

@pytest.mark.parametrize("seed", ["-1", str(2**70)])
def test_a_seed_out_of_range_is_refused_up_front(tmp_path, capsys, seed):
    for command in (["train", *TINY], ["demo", "--epochs", "1", "--no-progress"]):
        assert_cli_error(capsys, *command, "--seed", seed, "--out", tmp_path / "run",
                         contains=["--seed must be an integer from 0 to", seed])
        assert not (tmp_path / "run").exists()


def test_demo_refuses_a_negative_sample_count(tmp_path, capsys):
    assert_cli_error(capsys, "demo", "--samples", "-3", "--epochs", "1", "--no-progress",
                     "--out", tmp_path / "demo", contains=["--samples", ">= 0", "-3"])
    assert not (tmp_path / "demo").exists()


# ---- a reader that goes away --------------------------------------------------------------------

def test_predict_into_a_closed_pipe_finishes_quietly_and_keeps_every_image(tmp_path, ckpt):
    images = []
    for k in range(3):
        images.append(tmp_path / f"im{k}.png")
        Image.fromarray(np.full((16, 16, 3), 40 * k, np.uint8)).save(images[-1])
    out = tmp_path / "out"
    # `| head -0`: the reader closes the pipe before predict prints its first line.
    done = subprocess.run(f"{sys.executable} -m unet_fast predict {ckpt} {' '.join(map(str, images))} "
                          f"--out {out} | head -c 0", shell=True, env=cli_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.stderr == "", done.stderr
    assert sorted(tree(out)) == sorted(f"im{k}_{kind}.png" for k in range(3) for kind in ("mask", "overlay"))


def test_a_command_whose_reader_goes_away_exits_without_a_traceback(tmp_path, monkeypatch, capsys):
    """Any command: a BrokenPipeError from stdout ends it quietly with 128 + SIGPIPE."""
    from unet_fast import cli
    from unet_fast.workflow import demo

    def closed(args):
        raise BrokenPipeError(32, "Broken pipe")
    monkeypatch.setattr(demo, "run", closed)
    code = cli.main(["demo", "--out", str(tmp_path / "d")])
    assert code == 141
    assert capsys.readouterr().err == ""

"""Checkpoints from elsewhere: refused with one line naming the problem, or made to work.

Non-finite weights, class names that are not one distinct string per output, a damaged or
foreign last.pt given to --resume, a pickle that carries code, a path that is a pipe or bytes.
"""
import copy
import os
import pickle
import sys
import threading
import types

import numpy as np
import pytest
import torch

import unet_fast
from unet_fast.errors import InputError
from unet_fast.models.unet import UNet
from unet_fast.workflow import checkpoint, export
from unet_fast.workflow.train import fit
from workflow_fixtures import assert_cli_error, pytorch_path, run_cli, tiny_options, tree  # noqa: F401

# 8 built-in 16x16 images, base 4: a run of about a second.
TINY = ["--samples", "8", "--image-size", "16", "--base-channels", "4", "--batch-size", "4",
        "--no-progress"]


def _save(path, class_names=("bg", "fg"), out_channels=2, poison=None):
    model = UNet(out_channels=out_channels, base_channels=4)
    state = model.state_dict()
    if poison:
        name, value = poison
        state[name].view(-1)[0] = value
    config = dict(model.config(), class_names=class_names)
    checkpoint.save(path, {"config": config, "model": state, "epoch": 0, "history": []})
    return path


# ---- non-finite weights -------------------------------------------------------------------------

@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_a_checkpoint_with_a_non_finite_weight_is_refused_naming_it(tmp_path, capsys, image, value):
    ckpt = _save(tmp_path / "bad.pt", poison=("dec2.0.weight", value))
    out = tmp_path / "out"
    assert_cli_error(capsys, "predict", ckpt, image, "--out", out,
                     contains=["bad.pt", "weight dec2.0.weight holds NaN or infinite values"])
    assert not out.exists()
    with pytest.raises(InputError, match="dec2.0.weight"):
        unet_fast.load(ckpt)


def test_the_onnxruntime_comparison_is_nan_aware(monkeypatch):
    """max(0.0, nan) is 0.0: an output of NaNs must not pass as "largest difference 0.0"."""
    class Session:
        def __init__(self, *args, **kwargs):
            pass

        def run(self, names, feeds):
            x = feeds["image"]
            return [np.full((x.shape[0], 2) + x.shape[2:], np.nan, np.float32)]
    fake = types.SimpleNamespace(InferenceSession=Session, __version__="fake")
    monkeypatch.setitem(sys.modules, "onnxruntime", fake)
    model = unet_fast.ReferenceUNet(out_channels=2, base_channels=4).eval()
    err = export.check_with_onnxruntime("unused.onnx", model)
    assert err != err, f"NaN outputs reported as a difference of {err}"


# ---- class names --------------------------------------------------------------------------------

@pytest.mark.parametrize("names, expected", [
    (["bg", "bg"], "'bg' is given twice"),
    ("ab", "must be a list of strings, got str"),
    (2, "must be a list of strings, got int"),
    (None, "must be a list of strings, got NoneType"),
    (["bg", 1], "must be non-empty strings, got 1"),
    (["bg", "a", "b"], "3 class names (bg, a, b) for 2 classes"),
], ids=["duplicate", "string", "int", "none", "not-str", "three-for-two"])
def test_checkpoint_class_names_must_be_one_distinct_string_per_output(tmp_path, capsys, image, names,
                                                                       expected):
    ckpt = _save(tmp_path / "names.pt", class_names=names)
    out = tmp_path / "out"
    assert_cli_error(capsys, "predict", ckpt, image, "--out", out, contains=["names.pt", expected])
    assert not out.exists()


def test_train_refuses_duplicate_class_names(tmp_path, capsys):
    from workflow_fixtures import make_folder_dataset
    data = make_folder_dataset(tmp_path / "data", count=4, num_classes=2)
    assert_cli_error(capsys, "train", "--data", data, "--class-names", "bg,bg", *TINY, "--out",
                     tmp_path / "run", contains=["--class-names", "'bg' is given twice"])
    assert not (tmp_path / "run").exists()


# ---- what a load failure says; paths that are pipes or bytes -----------------------------------

class _RunsCode:
    def __reduce__(self):
        return (os.getcwd, ())


def test_a_pickle_that_carries_code_is_refused_not_called_truncated(tmp_path, capsys, image):
    for name, write in (("zip.pt", lambda p: torch.save({"x": _RunsCode()}, p)),
                        ("raw.pt", lambda p: p.write_bytes(pickle.dumps(_RunsCode())))):
        path = tmp_path / name
        write(path)
        line = assert_cli_error(capsys, "predict", path, image, "--out", tmp_path / "out",
                                contains=[name, "refused: it holds objects other than tensors",
                                          "not loaded, nothing executed"])
        assert "truncated" not in line


def test_a_checkpoint_path_that_is_bytes_or_a_pipe_is_read_as_a_file(tmp_path):
    ckpt = _save(tmp_path / "model.pt")
    assert unet_fast.load(os.fsencode(ckpt)).class_names == ["bg", "fg"]
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    feeder = threading.Thread(target=lambda: fifo.write_bytes(ckpt.read_bytes()))
    feeder.start()
    try:
        assert unet_fast.load(fifo).class_names == ["bg", "fg"]
    finally:
        feeder.join(timeout=10)


# ---- --resume of a damaged or foreign last.pt ---------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "run"
    fit(tiny_options(out, epochs=1, samples=8, image_size=(16, 16), batch_size=4))
    return out


def _break(ckpt, how):
    train = ckpt["train"]
    if how == "no-optimizer":
        del train["optimizer"]
    elif how == "no-epoch":
        del ckpt["epoch"]
    elif how == "no-history":
        del ckpt["history"]
    elif how == "garbage-rng":
        train["rng"]["torch"] = torch.zeros(7, dtype=torch.uint8)
    elif how == "negative-epoch":
        ckpt["epoch"] = -1
    elif how == "string-epoch":
        ckpt["epoch"] = "1"
    elif how == "foreign-optimizer":
        other = torch.nn.Linear(3, 2)
        train["optimizer"] = torch.optim.AdamW(other.parameters()).state_dict()
    elif how == "optimizer-shapes":
        state = train["optimizer"]["state"]
        state[0]["exp_avg"] = torch.zeros(5)
    elif how == "weight-shape":
        ckpt["model"]["out.bias"] = torch.zeros(7)
    elif how == "short-history":  # epoch 1, but no record of it: metrics.json would lose an epoch
        ckpt["history"] = ckpt["history"][:-1]
    return ckpt


@pytest.mark.parametrize("how, field", [
    ("no-optimizer", "train.optimizer is missing"),
    ("no-epoch", "epoch is missing"),
    ("no-history", "history is missing"),
    ("garbage-rng", "train.rng is not a usable random-number state"),
    ("negative-epoch", "epoch must be an integer >= 0, got -1"),
    ("string-epoch", "epoch must be an integer >= 0, got '1'"),
    ("foreign-optimizer", "train.optimizer is for 2 parameters"),
    ("optimizer-shapes", "train.optimizer.state[0].exp_avg is (5,)"),
    ("weight-shape", "model.out.bias has shape (7,)"),
    ("short-history", "history holds 0 epochs, but epoch is 1"),
])
def test_resume_of_a_damaged_or_foreign_last_pt_is_one_line_naming_the_field(tmp_path, capsys, run_dir,
                                                                             how, field):
    out = tmp_path / "run"
    out.mkdir()
    ckpt = _break(copy.deepcopy(torch.load(run_dir / "last.pt", weights_only=True)), how)
    torch.save(ckpt, out / "last.pt")
    before = tree(out)
    assert_cli_error(capsys, "train", *TINY, "--epochs", "2", "--out", out, "--resume",
                     contains=[f"checkpoint {out / 'last.pt'} cannot be resumed", field])
    assert tree(out) == before


def test_adding_fp16_amp_on_resume_works(tmp_path, capsys, run_dir):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes((run_dir / "last.pt").read_bytes())
    code, stdout, err = run_cli(capsys, "train", *TINY, "--epochs", "2", "--out", out, "--resume",
                                "--amp", "fp16")
    assert code == 0, err
    assert checkpoint.read(out / "last.pt")["epoch"] == 2

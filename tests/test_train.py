"""The training loop: loss goes down, files are written, --resume matches an unbroken run."""
import json

import pytest
import torch

from unet_fast import checkpoint, load
from unet_fast import train as train_module
from unet_fast.train import fit
from workflow_fixtures import make_folder_dataset, pytorch_path, run_cli, tiny_options  # noqa: F401


def test_training_lowers_the_loss_and_writes_its_files(tmp_path):
    result = fit(tiny_options(tmp_path / "run", epochs=3))
    losses = [h["train_loss"] for h in result["history"]]
    assert losses[-1] < losses[0], losses
    for name in ("last.pt", "best.pt", "metrics.json", "curves.png"):
        assert (tmp_path / "run" / name).is_file(), name
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")], "temporary files left"
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    last = metrics["epochs"][-1]
    assert set(last["dice"]) == set(last["iou"]) == {"background", "disc", "square", "triangle"}
    assert 0 <= last["mean_dice"] <= 1 and "val_loss" in last and len(metrics["epochs"]) == 3
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ckpt["config"] == {"in_channels": 3, "out_channels": 4, "base_channels": 4, "up_relu": True,
                              "class_names": ["background", "disc", "square", "triangle"]}
    assert "optimizer" in ckpt["train"] and "rng" in ckpt["train"]
    model = load(tmp_path / "run" / "best.pt")
    assert not model.training and model.class_names[1] == "disc" and model.base_channels == 4


class Interrupted(Exception):
    pass


def test_resumed_run_matches_an_unbroken_one(tmp_path, monkeypatch):
    unbroken = fit(tiny_options(tmp_path / "a", epochs=3))

    # The broken run dies right after epoch 2 has been saved (the plot is the epoch's last write).
    real_plot = train_module.plot_curves

    def plot_then_die(history, *args):
        real_plot(history, *args)
        if len(history) == 2:
            raise Interrupted
    monkeypatch.setattr(train_module, "plot_curves", plot_then_die)
    with pytest.raises(Interrupted):
        fit(tiny_options(tmp_path / "b", epochs=3))
    monkeypatch.setattr(train_module, "plot_curves", real_plot)
    torch.manual_seed(12345)  # whatever the process did in between must not matter
    resumed = fit(tiny_options(tmp_path / "b", epochs=3, resume="last"))

    for (name, a), b in zip(unbroken["model"].state_dict().items(), resumed["model"].state_dict().values()):
        assert torch.equal(a, b), name
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(resumed["history"]) == strip(unbroken["history"])
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["train"]["optimizer"]["state"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["train"]["optimizer"]["state"]
    assert all(torch.equal(a[k]["exp_avg_sq"], b[k]["exp_avg_sq"]) for k in a)


def test_amp_bf16_channels_last_runs(tmp_path):
    result = fit(tiny_options(tmp_path / "run", epochs=1, amp="bf16", channels_last=True, samples=8))
    assert torch.isfinite(torch.tensor(result["history"][0]["train_loss"]))


def test_train_command_on_a_folder_with_random_crops(tmp_path, capsys):
    root = make_folder_dataset(tmp_path / "data", count=6, size=(24, 32), num_classes=3)
    code, out, err = run_cli(capsys, "train", "--data", root, "--class-names", "bg,a,b", "--crop", "16",
                             "--epochs", "1", "--batch-size", "2", "--base-channels", "4",
                             "--out", tmp_path / "run", "--no-progress")
    assert code == 0, err
    assert "epoch 1/1" in out and "best validation mean Dice" in out
    ckpt = checkpoint.read(tmp_path / "run" / "last.pt")
    assert ckpt["config"]["class_names"] == ["bg", "a", "b"]


def test_checkpoint_loads_with_weights_only(tmp_path):
    fit(tiny_options(tmp_path / "run", epochs=1, samples=8))
    for name in ("last.pt", "best.pt"):
        torch.load(tmp_path / "run" / name, weights_only=True)  # raises if anything needs pickle code

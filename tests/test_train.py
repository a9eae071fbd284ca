"""The training loop: loss goes down, files are written, --resume matches an unbroken run."""
import json

import pytest
import torch
from PIL import Image

from unet_fast.workflow import checkpoint
from unet_fast import load
from unet_fast.workflow import train as train_module
from unet_fast.workflow.train import fit
from workflow_fixtures import make_folder_dataset, pytorch_path, run_cli, tiny_options, tree  # noqa: F401


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
    assert 0 <= last["mean_iou"] <= last["mean_dice"]  # IoU = D / (2 - D) <= Dice, class by class
    with Image.open(tmp_path / "run" / "curves.png") as plot:
        assert plot.format == "PNG" and plot.width > 300
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


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_and_channels_last_run(tmp_path, amp):
    result = fit(tiny_options(tmp_path / "run", epochs=1, amp=amp, channels_last=True, samples=8))
    assert torch.isfinite(torch.tensor(result["history"][0]["train_loss"]))
    scaler = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["train"]["scaler"]
    assert bool(scaler) == (amp == "fp16")  # fp16 gradients are scaled (and the scale saved for --resume)


def test_train_command_on_a_folder_with_random_crops(tmp_path, capsys):
    root = make_folder_dataset(tmp_path / "data", count=6, size=(24, 32), num_classes=3)
    args = ["train", "--data", root, "--class-names", "bg,a,b", "--crop", "16", "--batch-size", "2",
            "--base-channels", "4", "--no-up-relu", "--out", tmp_path / "run"]
    code, out, err = run_cli(capsys, *args, "--epochs", "1", "--progress")
    assert code == 0, err
    # One log line per epoch, with Dice and IoU per class; tqdm bars on stderr.
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 1 and epoch_lines[0].startswith("epoch 1/1"), out
    assert "dice" in epoch_lines[0] and "bg " in epoch_lines[0] and " iou " in epoch_lines[0]
    assert "best validation mean Dice" in out
    assert "epoch 1/1" in err and "batch/s" in err and "validation" in err, err
    ckpt = checkpoint.read(tmp_path / "run" / "last.pt")
    assert ckpt["config"]["class_names"] == ["bg", "a", "b"] and ckpt["config"]["up_relu"] is False

    # --resume with more epochs goes on from epoch 2; with no epochs left it writes nothing.
    code, out, err = run_cli(capsys, *args, "--epochs", "2", "--no-progress", "--resume")
    assert code == 0, err
    assert "after epoch 1" in out and "schedule is recomputed for 2 epochs" in out and "epoch 2/2" in out
    assert len(checkpoint.read(tmp_path / "run" / "last.pt")["history"]) == 2
    before = tree(tmp_path / "run")
    code, out, err = run_cli(capsys, *args, "--epochs", "2", "--no-progress", "--resume")
    assert code == 0 and "nothing to do" in out and "wrote" not in out, out
    assert tree(tmp_path / "run") == before


def test_checkpoint_loads_with_weights_only(tmp_path):
    fit(tiny_options(tmp_path / "run", epochs=1, samples=8))
    for name in ("last.pt", "best.pt"):
        torch.load(tmp_path / "run" / name, weights_only=True)  # raises if anything needs pickle code


def test_metrics_json_records_the_class_count_trained(tmp_path):
    """The built-in set has 4 classes whatever --num-classes (a --data folder's option) says."""
    fit(tiny_options(tmp_path / "run", epochs=1, samples=8))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["options"]["num_classes"] == len(metrics["config"]["class_names"]) == 4
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ckpt["train"]["args"]["num_classes"] == 4


def test_a_class_never_predicted_after_few_steps_gets_a_hint(tmp_path, monkeypatch):
    """A model whose output bias favours the background by far predicts nothing else after one
    step at a tiny learning rate: the record lists the other classes, as counted from the
    model's own predictions on the validation images, and the run ends with the hint."""
    real_init = train_module.init_weights

    def background_only(model):
        real_init(model)
        with torch.no_grad():
            model.out.bias.copy_(torch.tensor([100.0, 0.0, 0.0, 0.0]))
    monkeypatch.setattr(train_module, "init_weights", background_only)
    lines = []
    result = fit(tiny_options(tmp_path / "run", epochs=1, samples=8, lr=1e-9, log=lines.append))
    record = result["history"][-1]
    model, dataset = result["model"].eval(), result["dataset"]
    with torch.no_grad():
        predicted = set()
        for i in result["val_indices"]:
            image, _ = dataset[i]
            x = train_module.to_model_input(image.unsqueeze(0))
            predicted |= set(model(x).argmax(1).unique().tolist())
    names = result["class_names"]
    assert record["never_predicted"] == [n for k, n in enumerate(names) if k not in predicted]
    assert record["never_predicted"] == ["disc", "square", "triangle"]
    hint = [line for line in lines if line.startswith("hint:")]
    assert len(hint) == 1 and "disc, square, triangle" in hint[0] and "after 2 optimizer steps" in hint[0]
    assert "train longer" in hint[0] and "0..3" in hint[0]


def test_no_hint_once_every_class_is_predicted_or_after_many_steps():
    history = [{"never_predicted": []}]
    assert train_module.untrained_class_hint(history, 10, 4) is None
    history = [{"never_predicted": ["disc"]}]
    assert train_module.untrained_class_hint(history, train_module.FEW_STEPS, 4) is None
    assert "disc" in train_module.untrained_class_hint(history, train_module.FEW_STEPS - 1, 4)

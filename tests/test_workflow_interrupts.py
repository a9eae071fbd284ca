"""Training that stops part-way: a non-finite loss or weights, Ctrl-C, SIGTERM, a killed process.

Each ends in one line (exit code 2 for an error, 130 for an interrupt), keeps the last good
checkpoint, and leaves no temporary file behind.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from unet_fast.workflow import checkpoint, plots
from unet_fast.workflow import train as train_module
from unet_fast.workflow.atomic_write import prepare_output_dir
from unet_fast.models.unet import UNet
from workflow_fixtures import (assert_cli_error, pytorch_path, run_cli, run_subprocess,  # noqa: F401
                               tiny_options, tree)

# 8 built-in 16x16 images, 6 for training: 3 steps of 2 per epoch.
TINY = ["--samples", "8", "--image-size", "16", "--base-channels", "4", "--batch-size", "2", "--no-progress"]
RUN_FILES = ["best.pt", "curves.png", "last.pt", "metrics.json"]


def _loss_that_turns(value, at_call):
    """segmentation_loss, but the `at_call`-th training loss (validation's do not count) is `value`."""
    real, calls = train_module.segmentation_loss, []

    def loss(logits, target):
        result = real(logits, target)
        if torch.is_grad_enabled():
            calls.append(1)
            if len(calls) == at_call:
                return result * value
        return result
    return loss


def test_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(train_module, "segmentation_loss", _loss_that_turns(float("nan"), at_call=5))
    line = assert_cli_error(capsys, "train", *TINY, "--epochs", "2", "--out", out,
                            contains=["training diverged at epoch 2, step 5 (batch 2 of 3): the loss is nan",
                                      "last.pt keeps epoch 1, the last good one", "--lr"])
    assert str(out) in line
    assert sorted(tree(out)) == RUN_FILES
    for name in ("best.pt", "last.pt"):
        ckpt = checkpoint.read(out / name)
        assert ckpt["epoch"] == 1, name
        assert all(torch.isfinite(w).all() for w in ckpt["model"].values()), name


def test_an_infinite_loss_stops_training_before_the_step_too(tmp_path, capsys, monkeypatch):
    """Inf, not only NaN: a check with isnan alone would apply this step and ruin the weights."""
    out = tmp_path / "run"
    monkeypatch.setattr(train_module, "segmentation_loss", _loss_that_turns(float("inf"), at_call=2))
    stepped = []
    real_step = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: (stepped.append(1),
                                                                          real_step(self, *a, **k))[1])
    assert_cli_error(capsys, "train", *TINY, "--epochs", "1", "--out", out,
                     contains=["training diverged at epoch 1, step 2 (batch 2 of 3): the loss is inf",
                               "no checkpoint was saved yet"])
    assert len(stepped) == 1, "the step with the infinite loss was applied"
    assert tree(out) == {}


def test_non_finite_weights_are_never_saved(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real_evaluate = train_module.evaluate

    def poison_then_evaluate(model, *args):  # e.g. an overflow the loss did not show yet
        with torch.no_grad():
            model.enc2[0].weight[0, 0, 0, 0] = float("inf")
        return real_evaluate(model, *args)
    monkeypatch.setattr(train_module, "evaluate", poison_then_evaluate)
    assert_cli_error(capsys, "train", *TINY, "--epochs", "1", "--out", out,
                     contains=["training diverged in epoch 1: weight enc2.0.weight is not finite",
                               "no checkpoint was saved yet"])
    assert tree(out) == {}


def test_ctrl_c_while_the_curves_are_written_is_one_line_and_leaves_no_temporary(tmp_path, capsys,
                                                                                  monkeypatch):
    out = tmp_path / "run"
    real_atomic_write, curves = plots.atomic_write, []

    def ctrl_c_in_the_second_plot(path, write):
        def write_then_interrupt(tmp):  # the temporary file exists, still empty
            curves.append(path)
            if len(curves) == 2:
                raise KeyboardInterrupt
            write(tmp)
        real_atomic_write(path, write_then_interrupt)
    monkeypatch.setattr(plots, "atomic_write", ctrl_c_in_the_second_plot)
    try:
        code, stdout, err = run_cli(capsys, "train", *TINY, "--epochs", "3", "--out", out)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped `unet-fast train` as a traceback")
    assert code == 130
    assert err == "unet-fast train: interrupted at epoch 2; resume with --resume\n"
    assert sorted(tree(out)) == RUN_FILES  # no .curves.png.*.tmp
    assert checkpoint.read(out / "last.pt")["epoch"] == 2


# `unet-fast predict` in a subprocess that sends itself SIGTERM (what `kill PID` sends) while
# writing its first PNG, with the temporary file already made.
SIGTERM_WHILE_WRITING = """
import os, signal, sys, time
from unet_fast import cli
from unet_fast.workflow import overlay

real_atomic_write = overlay.atomic_write

def atomic_write(path, write):
    def write_then_get_killed(tmp):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
    real_atomic_write(path, write_then_get_killed)

overlay.atomic_write = atomic_write
sys.exit(cli.main(sys.argv[1:]))
"""


def test_sigterm_is_an_interrupt_that_leaves_no_temporary(tmp_path):
    model = UNet(out_channels=2, base_channels=4)
    ckpt = tmp_path / "model.pt"
    checkpoint.save(ckpt, {"config": checkpoint.model_config(model, ["bg", "fg"]),
                           "model": model.state_dict(), "epoch": 0, "history": []})
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(tmp_path / "a.png")
    script = tmp_path / "sigterm_while_writing.py"
    script.write_text(SIGTERM_WHILE_WRITING)
    out = tmp_path / "out"
    result = run_subprocess([str(script), "predict", str(ckpt), str(tmp_path / "a.png"), "--out", str(out)],
                            timeout=120)
    assert (result.returncode, result.stderr) == (130, "unet-fast predict: interrupted\n")
    assert tree(out) == {}  # no .a_mask.png.*.tmp


def test_an_interrupt_before_any_checkpoint_says_there_is_nothing_to_resume(tmp_path, monkeypatch):
    def ctrl_c(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(train_module, "segmentation_loss", ctrl_c)
    # From Python it stays a KeyboardInterrupt (a notebook's interrupt works as ever), now saying where.
    with pytest.raises(KeyboardInterrupt) as stopped:
        train_module.fit(tiny_options(tmp_path / "run", samples=8, image_size=(16, 16), epochs=1))
    assert str(stopped.value) == "interrupted at epoch 1; no checkpoint was saved yet"
    assert tree(tmp_path / "run") == {}


def test_temporary_files_of_killed_processes_are_removed_by_the_next_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a process id that no longer runs
    stale = out / f".curves.png.unet_fast-{gone.pid}.ab12cd34.tmp"  # left by a run killed with SIGKILL
    live = out / f".last.pt.unet_fast-{os.getppid()}.ef56gh78.tmp"  # a running process's: maybe still writing
    stale.write_bytes(b"")
    live.write_bytes(b"half")
    prepare_output_dir(out)
    assert sorted(p.name for p in out.iterdir()) == [live.name]
    plots.plot_curves([{"epoch": 1, "train_loss": 1.0}], ["bg"], out / "curves.png")
    assert sorted(p.name for p in out.iterdir()) == [live.name, "curves.png"]

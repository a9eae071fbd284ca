"""Output folders and files: a user's files are never removed, two runs never share a folder,
replaced files keep their mode, links are replaced rather than written through."""
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from unet_fast.errors import InputError
from unet_fast.workflow import atomic_write as atomic_write_module
from unet_fast.workflow import checkpoint
from unet_fast.workflow import train as train_module
from unet_fast.workflow.atomic_write import atomic_write_text, prepare_output_dir
from unet_fast.workflow.train import fit
from workflow_fixtures import (assert_cli_error, cli_env, pytorch_path, run_cli,  # noqa: F401
                               tiny_options, tree)


def _dead_pid() -> int:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


# ---- the stale-temporary sweep ------------------------------------------------------------------

def test_the_sweep_never_removes_a_users_file_that_looks_like_a_temporary(tmp_path, capsys, ckpt):
    """`.NAME.PID.XXXXXXXX.tmp` of a PID not running here may be anyone's: only files marked as
    this program's temporaries are removed."""
    out = tmp_path / "o"
    out.mkdir()
    pid = _dead_pid()
    users = [out / f".draft.{pid}.notes_v2.tmp", out / f".report.pdf.{pid}.abcdefgh.tmp"]
    for f in users:
        f.write_bytes(b"the user's notes")
    ours = out / f".x_mask.png.unet_fast-{pid}.ab12cd34.tmp"
    ours.write_bytes(b"")
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(image)
    code, _, err = run_cli(capsys, "predict", ckpt, image, "--out", out)
    assert code == 0, err
    assert all(f.read_bytes() == b"the user's notes" for f in users)
    assert not ours.exists()


def test_a_temporary_whose_process_cannot_be_signalled_is_kept(tmp_path, monkeypatch):
    """A PID that exists under another user (kill(pid, 0) -> PermissionError) may still be
    writing its temporary: it is left alone."""
    def no_permission(pid, sig):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(atomic_write_module.os, "kill", no_permission)
    temp = tmp_path / ".last.pt.unet_fast-4000000.ab12cd34.tmp"
    temp.write_bytes(b"half")
    prepare_output_dir(tmp_path)
    assert temp.read_bytes() == b"half"


# ---- one run per output folder ------------------------------------------------------------------

def test_a_second_train_run_into_the_same_out_is_refused_while_the_first_runs(tmp_path, monkeypatch):
    """The second run starts while the first is training, before the first has written anything
    (so a check of the folder's files alone passes both): the second is refused, naming the
    first's process, and the first's run is the one in the folder."""
    out = tmp_path / "run"
    real_loss, seen = train_module.segmentation_loss, {}

    def loss_that_starts_a_second_run(logits, target):
        if torch.is_grad_enabled() and "second" not in seen:
            seen["second"] = None
            try:
                fit(tiny_options(out, epochs=1, seed=7))
            except InputError as e:
                seen["second"] = str(e)
        return real_loss(logits, target)
    monkeypatch.setattr(train_module, "segmentation_loss", loss_that_starts_a_second_run)
    first = fit(tiny_options(out, epochs=1))
    assert seen["second"] is not None, "the second run into the same --out was not refused"
    assert f"in use by process {os.getpid()}" in seen["second"], seen["second"]
    assert checkpoint.read(out / "last.pt")["train"]["args"]["seed"] == 0
    assert first["history"][-1]["epoch"] == 1
    assert sorted(tree(out)) == ["best.pt", "curves.png", "last.pt", "metrics.json"]  # lock removed


def test_the_lock_of_a_crashed_run_is_stale_and_a_live_one_names_its_process(tmp_path, capsys):
    lock_name = atomic_write_module.LOCK_NAME
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from unet_fast.workflow.atomic_write import FolderLock;"
         " lock = FolderLock(sys.argv[1], 'a test'); print('locked', flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True, env=cli_env())
    try:
        assert holder.stdout.readline().strip() == "locked"
        args = ["train", "--samples", "8", "--image-size", "16", "--base-channels", "4", "--epochs", "1",
                "--batch-size", "4", "--no-progress", "--out", out]
        assert_cli_error(capsys, *args, contains=[f"{out} is in use by process {holder.pid}", lock_name])
        assert sorted(tree(out)) == [lock_name]
    finally:
        holder.kill()  # a crash: the kernel drops its flock, its lock file stays behind
        holder.wait()
    assert sorted(tree(out)) == [lock_name]  # left behind, but no longer held
    atomic_write_module.FolderLock(out, "a test").release()
    assert tree(out) == {}


def test_folder_lock_is_exclusive_and_released(tmp_path):
    FolderLock = atomic_write_module.FolderLock
    with FolderLock(tmp_path, "a test"):
        with pytest.raises(InputError, match=f"in use by process {os.getpid()}, a test"):
            FolderLock(tmp_path, "a test")
    assert not (tmp_path / atomic_write_module.LOCK_NAME).exists()
    FolderLock(tmp_path, "a test").release()


def test_resume_from_another_folder_into_an_out_that_holds_a_run_is_refused(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    fit(tiny_options(a, epochs=1, samples=8, image_size=(16, 16)))
    fit(tiny_options(b, epochs=1, samples=8, image_size=(16, 16), seed=3))
    before = tree(b)
    assert_cli_error(capsys, "train", "--samples", "8", "--image-size", "16", "--base-channels", "4",
                     "--batch-size", "4", "--epochs", "2", "--no-progress", "--resume", a / "last.pt",
                     "--out", b, contains=[str(b), "holds an earlier run"])
    assert tree(b) == before


# ---- modes and links ----------------------------------------------------------------------------

def test_a_replaced_file_keeps_its_mode_and_a_new_one_gets_the_umask(tmp_path):
    private = tmp_path / "private.json"
    private.write_text("old")
    private.chmod(0o600)
    atomic_write_text(private, "new")
    assert private.read_text() == "new" and stat.S_IMODE(private.stat().st_mode) == 0o600
    umask = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "fresh.json", "x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "fresh.json").stat().st_mode) == 0o640


def test_resume_keeps_private_checkpoints_private(tmp_path):
    out = tmp_path / "run"
    fit(tiny_options(out, epochs=1, samples=8, image_size=(16, 16)))
    for name in ("last.pt", "best.pt", "metrics.json"):
        (out / name).chmod(0o600)
    fit(tiny_options(out, epochs=2, samples=8, image_size=(16, 16), resume="last"))
    assert checkpoint.read(out / "last.pt")["epoch"] == 2
    for name in ("last.pt", "metrics.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600, name


def test_a_link_at_the_destination_is_replaced_not_written_through(tmp_path):
    target = tmp_path / "elsewhere.txt"
    target.write_text("keep me")
    link = tmp_path / "out.json"
    link.symlink_to(target)
    atomic_write_text(link, "written")
    assert target.read_text() == "keep me"
    assert not link.is_symlink() and link.read_text() == "written"

"""`torchrun --nproc_per_node=2 -m unet_fast train`: DistributedDataParallel over gloo on the CPU."""
import json

import pytest
import torch

import unet_fast
from unet_fast.workflow.data import SyntheticSegmentation, split_indices, to_model_input
from unet_fast.workflow.metrics import confusion_matrix, scores
from workflow_fixtures import pytorch_path, run_subprocess  # noqa: F401

# `unet-fast train` as torchrun runs it, except that each rank also saves its final weights to
# DUMP/rankR.pt (outside --out): equal weights on both ranks show the gradients were synced.
TRAIN_AND_DUMP_EACH_RANK = """
import sys
import torch
from unet_fast import cli
from unet_fast.workflow import train

real_fit = train.fit

def fit_and_dump(opts):
    result = real_fit(opts)
    torch.save(result["model"].state_dict(), f"{sys.argv[1]}/rank{result['context'].rank}.pt")
    return result

train.fit = fit_and_dump
sys.exit(cli.main(sys.argv[2:]))
"""


def test_two_process_training_with_gloo(tmp_path):
    out, dump = tmp_path / "ddp", tmp_path / "dump"
    dump.mkdir()
    script = tmp_path / "train_and_dump.py"
    script.write_text(TRAIN_AND_DUMP_EACH_RANK)
    result = run_subprocess(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(script), str(dump), "train", "--samples", "16", "--image-size", "32",
                             "--base-channels", "4", "--batch-size", "4", "--epochs", "1",
                             "--device", "cpu", "--no-progress", "--out", str(out)], timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # Rank 0 alone logs and writes.
    assert result.stdout.count("epoch 1/1") == 1, result.stdout
    assert "2 processes" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "curves.png", "last.pt", "metrics.json"]
    metrics = json.loads((out / "metrics.json").read_text())
    # 16 images, 4 for validation: each rank trains on 6 (one batch of 4 and one of 2).
    assert metrics["epochs"][0]["step"] == 2
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt["model"])  # saved unwrapped from DDP

    # Each rank trained on its own half of the data, yet both end with the same weights.
    rank0, rank1 = (torch.load(dump / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for name, weight in rank0.items():
        assert torch.equal(weight, rank1[name]), name
        assert torch.equal(weight, ckpt["model"][name]), name

    # The scores count the validation images of both ranks: they match scoring all of them here.
    dataset = SyntheticSegmentation(16, (32, 32), seed=0)
    _, val_idx = split_indices(16, 0.2, seed=0)
    model = unet_fast.load(out / "last.pt")
    with torch.no_grad():
        logits = model(to_model_input(dataset.images[val_idx]))
    here = scores(confusion_matrix(logits.argmax(1), dataset.masks[val_idx], 4), model.class_names)
    logged = metrics["epochs"][0]
    assert logged["pixel_accuracy"] == pytest.approx(here["pixel_accuracy"], abs=1e-3)
    for name in model.class_names:
        assert (logged["dice"][name] is None) == (here["dice"][name] != here["dice"][name]), name
        if logged["dice"][name] is not None:
            assert logged["dice"][name] == pytest.approx(here["dice"][name], abs=0.01), name

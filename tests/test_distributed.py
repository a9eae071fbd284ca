"""`torchrun --nproc_per_node=2 -m unet_fast train`: DistributedDataParallel over gloo on the CPU."""
import json

import torch

from workflow_fixtures import pytorch_path, run_subprocess  # noqa: F401


def test_two_process_training_with_gloo(tmp_path):
    out = tmp_path / "ddp"
    result = run_subprocess(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "unet_fast", "train", "--samples", "16", "--image-size", "32",
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
    assert 0 <= metrics["epochs"][0]["mean_dice"] <= 1
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt["model"])  # saved unwrapped from DDP

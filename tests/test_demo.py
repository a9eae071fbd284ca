"""`unet-fast demo`, the README's main job, at one epoch: it runs end to end and writes what it says."""
import numpy as np
from PIL import Image

from unet_fast.workflow.overlay import overlay
from workflow_fixtures import pytorch_path, run_cli  # noqa: F401


def test_demo_writes_checkpoints_metrics_plots_and_overlays(tmp_path, capsys):
    out = tmp_path / "demo"
    code, stdout, stderr = run_cli(capsys, "demo", "--epochs", "1", "--samples", "2", "--out", out,
                                   "--no-progress")
    assert code == 0, stderr
    for name in ("best.pt", "last.pt", "metrics.json", "curves.png", "predictions.png"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "samples").iterdir()) == sorted(
        f"sample_{k}{suffix}.png" for k in range(2) for suffix in ("", "_mask", "_overlay"))
    image = np.asarray(Image.open(out / "samples" / "sample_1.png"))
    assert image.shape == (96, 128, 3)  # height x width, as printed below
    mask = np.asarray(Image.open(out / "samples" / "sample_1_mask.png"))
    assert mask.shape == (96, 128) and mask.max() < 4
    drawn = np.asarray(Image.open(out / "samples" / "sample_1_overlay.png"))
    assert drawn.shape[0] > 96 and drawn.shape[1] >= 128  # the legend strip lies below the image
    np.testing.assert_array_equal(drawn[:96, :128], overlay(image, mask, 4))
    # The printed facts are what was done: sizes as height x width, counts as drawn and scored.
    assert "validation, 102 images of 64x64 (height x width): " in stdout
    assert "held-out, 32 new images of 96x128 (height x width): " in stdout
    assert "validation mean Dice" in stdout and f"wrote to {out}" in stdout
    assert "predictions.png (2 held-out images), samples/ (2 images " in stdout

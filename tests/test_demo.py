"""`unet-fast demo`, the README's main job, at one epoch: it runs end to end and writes what it says."""
from PIL import Image

from workflow_fixtures import pytorch_path, run_cli  # noqa: F401


def test_demo_writes_checkpoints_metrics_plots_and_overlays(tmp_path, capsys):
    out = tmp_path / "demo"
    code, stdout, stderr = run_cli(capsys, "demo", "--epochs", "1", "--samples", "2", "--out", out,
                                   "--no-progress")
    assert code == 0, stderr
    for name in ("best.pt", "last.pt", "metrics.json", "curves.png", "predictions.png"):
        assert (out / name).is_file(), name
    image = Image.open(out / "samples" / "sample_1.png")
    for suffix in ("_mask.png", "_overlay.png"):
        written = Image.open(out / "samples" / f"sample_1{suffix}")
        assert written.size == image.size, suffix
    assert "validation mean Dice" in stdout and f"wrote to {out}" in stdout

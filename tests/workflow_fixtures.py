"""Shared by the workflow tests (data, train, predict, export, distributed, CLI errors).

Training under Triton's CPU interpreter (which conftest.py turns on without a GPU) would take
hours, so every workflow test runs the model on the PyTorch path: import `pytorch_path` into a
test module and it applies to each test there (autouse). Subprocesses get `cli_env()`.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unet_fast import cli
from unet_fast.workflow.train import TrainOptions


@pytest.fixture(autouse=True)
def pytorch_path(monkeypatch):
    monkeypatch.setenv("UNET_FAST_DISABLE_TRITON", "1")


def cli_env() -> dict:
    return dict(os.environ, UNET_FAST_DISABLE_TRITON="1", PYTHONUNBUFFERED="1")


def run_subprocess(args, timeout=300, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=cli_env(), capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def run_cli(capsys, *args):
    """`unet-fast ARGS` in this process: (exit code, stdout, stderr)."""
    code = cli.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_cli_error(capsys, *args, contains=()):
    """The command fails with exit code 2 and exactly one line on stderr naming the problem."""
    code, out, err = run_cli(capsys, *args)
    assert code == 2, f"exit code {code}; stdout {out!r}; stderr {err!r}"
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {err!r}"
    assert lines[0].startswith(f"unet-fast {args[0]}: error: "), lines[0]
    for text in contains:
        assert str(text) in lines[0], f"{text!r} not in {lines[0]!r}"
    return lines[0]


def tiny_options(out, **overrides) -> TrainOptions:
    """A run of a few seconds: 24 built-in 32x32 images, base_channels 4."""
    kwargs = dict(samples=24, image_size=(32, 32), base_channels=4, batch_size=4, epochs=2, lr=3e-3,
                  val_split=0.25, out=str(out), progress=False, log=lambda line: None)
    kwargs.update(overrides)
    return TrainOptions(**kwargs)


def make_folder_dataset(root, count=6, size=(24, 32), num_classes=3, mask_suffix="_mask",
                        mask_mode="P", seed=0) -> Path:
    """ROOT/images/img_K.png (RGB) and ROOT/masks/img_K{suffix}.png (class indices)."""
    root = Path(root)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(seed)
    h, w = size
    for k in range(count):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        mask = np.zeros((h, w), np.uint8)
        mask[h // 4: h // 2, w // 4: w // 2] = 1 + k % (num_classes - 1)
        image[mask > 0] = (255, 0, 0)
        Image.fromarray(image).save(root / "images" / f"img_{k}.png")
        m = Image.frombytes(mask_mode, (w, h), mask.tobytes())
        if mask_mode == "P":
            m.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
        m.save(root / "masks" / f"img_{k}{mask_suffix}.png")
    return root


def tree(path) -> dict:
    """{relative path: bytes} of every file under `path` (empty if it does not exist)."""
    path = Path(path)
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}

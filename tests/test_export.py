"""ONNX export through ReferenceUNet, checked against PyTorch (skipped without onnxruntime)."""
import sys

import numpy as np
import pytest
import torch

import unet_fast
from unet_fast.workflow import checkpoint
from unet_fast.models.unet import UNet
from unet_fast.workflow.train import init_weights
from workflow_fixtures import pytorch_path, run_cli  # noqa: F401


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    model = UNet(out_channels=3, base_channels=4, up_relu=False)
    init_weights(model)
    path = tmp_path / "model.pt"
    checkpoint.save(path, {"config": checkpoint.model_config(model, ["bg", "a", "b"]),
                           "model": model.state_dict(), "epoch": 0, "history": []})
    return path


def test_export_matches_pytorch_at_any_size(tmp_path, capsys, ckpt):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")  # the TorchScript exporter itself needs no onnx; the extra has both
    onnx_path = tmp_path / "sub" / "unet.onnx"
    code, out, err = run_cli(capsys, "export", ckpt, "--onnx", onnx_path)
    assert code == 0, err
    assert "onnxruntime check passed" in out
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    loaded = unet_fast.load(ckpt)
    for shape in ((1, 3, 33, 50), (3, 3, 48, 40)):
        x = torch.rand(shape)
        got = session.run(None, {"image": x.numpy()})[0]
        with torch.no_grad():
            want = loaded(x).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert [p.name for p in onnx_path.parent.iterdir()] == ["unet.onnx"]  # no temporary files left


def test_export_without_onnxruntime_writes_the_file_unchecked(tmp_path, capsys, ckpt, monkeypatch):
    pytest.importorskip("onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now fails
    code, out, err = run_cli(capsys, "export", ckpt, "--onnx", tmp_path / "unet.onnx")
    assert code == 0, err
    assert "onnxruntime is not installed: output not checked" in out
    assert (tmp_path / "unet.onnx").stat().st_size > 1000


def test_export_refuses_to_replace_a_file_unless_asked(tmp_path, capsys, ckpt):
    """An existing FILE is kept, named in a one-line error, before anything is exported."""
    pytest.importorskip("onnx")
    onnx_path = tmp_path / "unet.onnx"
    onnx_path.write_bytes(b"an earlier export")
    code, out, err = run_cli(capsys, "export", ckpt, "--onnx", onnx_path, "--no-check")
    assert code == 2 and f"{onnx_path} already exists; pass --overwrite" in err
    assert onnx_path.read_bytes() == b"an earlier export"
    code, out, err = run_cli(capsys, "export", ckpt, "--onnx", onnx_path, "--no-check", "--overwrite")
    assert code == 0, err
    assert onnx_path.stat().st_size > 1000

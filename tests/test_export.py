"""ONNX export through ReferenceUNet, checked against PyTorch (skipped without onnxruntime)."""
import numpy as np
import pytest
import torch

import unet_fast
from unet_fast import checkpoint
from unet_fast.model import UNet
from unet_fast.train import init_weights
from workflow_fixtures import pytorch_path, run_cli  # noqa: F401


def test_export_matches_pytorch_at_any_size(tmp_path, capsys):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")  # the TorchScript exporter itself needs no onnx; the extra has both
    torch.manual_seed(0)
    model = UNet(out_channels=3, base_channels=4, up_relu=False)
    init_weights(model)
    ckpt = tmp_path / "model.pt"
    checkpoint.save(ckpt, {"config": checkpoint.model_config(model, ["bg", "a", "b"]),
                           "model": model.state_dict(), "epoch": 0, "history": []})
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

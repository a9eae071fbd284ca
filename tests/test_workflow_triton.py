"""The segmentation workflow on the Triton kernels: a training step and a prediction launch them
and agree with the PyTorch path and the reference.

The other workflow tests run the PyTorch path (their runs would take hours under Triton's CPU
interpreter); this one keeps everything tiny (base_channels 4, 16x16 images, one training step)
so that the kernels, interpreted here and compiled on a GPU, run inside `fit` and `predict`.
"""
import numpy as np
import pytest
import torch

import unet_fast
from unet_fast import ReferenceUNet
from unet_fast.kernels import up_concat_backward as bwd_module
from unet_fast.kernels import up_concat_forward as fwd_module
from unet_fast.workflow.predict import image_tensor, predict_logits
from unet_fast.workflow.train import fit
from helpers import assert_close_to_reference, select_path, spy_on_triton_launches
from workflow_fixtures import tiny_options

pytestmark = pytest.mark.gpu  # benchmarks/gpu_run.sh runs it compiled

# 4 images: 2 to train on (one step of batch 2), 2 to validate on (one batch).
OPTIONS = dict(samples=4, image_size=(16, 16), batch_size=2, epochs=1, val_split=0.5)
FORWARD = "up_concat_forward_kernel"
# The weight gradient, then the input gradient (whose first programs sum the weight gradient's
# partials and dbias on the device).
BACKWARD = ["up_concat_backward_input_kernel", "up_concat_backward_weight_kernel"]


def train_one_step(monkeypatch, out):
    """fit() for one step; returns its result and the gradients the optimizer was handed."""
    grads = []

    class GradientRecordingAdamW(torch.optim.AdamW):
        def step(self, closure=None):
            grads.append([p.grad.clone() for group in self.param_groups for p in group["params"]])
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "AdamW", GradientRecordingAdamW)
    result = fit(tiny_options(out, **OPTIONS))
    assert len(grads) == 1, f"{len(grads)} optimizer steps, expected 1"
    return result, grads[0]


def test_training_step_and_prediction_run_the_triton_kernels(monkeypatch, tmp_path):
    # The same seeded run on the PyTorch path gives the gradients to compare with.
    select_path(monkeypatch, "torch")
    _, torch_grads = train_one_step(monkeypatch, tmp_path / "torch")

    select_path(monkeypatch, "triton")
    forward = spy_on_triton_launches(monkeypatch, fwd_module, "forward")
    backward = spy_on_triton_launches(monkeypatch, bwd_module, "backward")
    result, triton_grads = train_one_step(monkeypatch, tmp_path / "triton")
    # Three decoder steps: the training forward and the validation forward, one backward.
    assert forward == [FORWARD] * 6, forward
    assert sorted(backward) == sorted(BACKWARD * 3), backward
    names = [name for name, _ in result["model"].named_parameters()]
    for name, got, want in zip(names, triton_grads, torch_grads):
        assert_close_to_reference(got, want, torch.float32, f"gradient of {name} after one step")

    # Predict with the checkpoint the Triton run wrote, at a size that needs padding.
    model = unet_fast.load(tmp_path / "triton" / "best.pt")
    ref = ReferenceUNet(**model.config()).double()
    ref.load_state_dict(model.state_dict())
    image = np.random.default_rng(0).integers(0, 256, (11, 13, 3), dtype=np.uint8)
    with torch.no_grad():
        want = ref(image_tensor(image)[None].double())[0]
    forward.clear()
    logits = predict_logits(model, image)
    mask = unet_fast.predict(model, image)
    assert forward == [FORWARD] * 6, forward  # 3 per call
    assert_close_to_reference(logits, want, torch.float32, "predicted logits")
    # The mask is the reference's argmax wherever the top two classes are not within rounding.
    top2 = want.topk(2, dim=0).values
    clear = (top2[0] - top2[1] > 1e-4).numpy()
    assert clear.mean() > 0.9
    assert mask.shape == (11, 13) and mask.dtype == np.uint8
    assert np.array_equal(mask[clear], want.argmax(0).numpy()[clear])

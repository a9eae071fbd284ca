"""`unet_fast.fuse` in general: what the other test_fuse_*.py files share (the comparison of a
fused model with its unfused copy), and the rules every adapter keeps (idempotent, parameters
untouched, unknown models left alone and reported, a library version whose forward differs
refused)."""
import copy
import importlib

import pytest
import torch
from torch import nn

import unet_fast
from unet_fast.adapters import FINGERPRINTS, fuse_report
from unet_fast.ops import up_concat_op
from helpers import DEVICE, assert_close_to_reference, select_path

INSTALL = ('pip install -e ".[interop]" && pip install --no-deps dynamic-network-architectures==0.4.4 '
           "(CI's .ci/run installs both)")


def require(module: str):
    """Import a library fuse adapts, or fail (never skip) saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        pytest.fail(f"{module} is not installed ({e}); the fuse tests run against the real library: {INSTALL}",
                    pytrace=False)


def count_fused_calls(monkeypatch) -> list:
    """Wrap the adapters' call of the op: each call appends the shapes it served."""
    calls = []
    real = up_concat_op.up_concat

    def counting(x, skip, *args, **kwargs):
        calls.append((tuple(x.shape), tuple(skip.shape)))
        return real(x, skip, *args, **kwargs)

    monkeypatch.setattr(up_concat_op, "up_concat", counting)
    return calls


def fused_twin(make_model, seed=0):
    """(fused model, its unfused deep copy): the same parameter values."""
    torch.manual_seed(seed)
    model = make_model().to(DEVICE)
    reference = copy.deepcopy(model)
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    keys = list(model.state_dict())
    assert unet_fast.fuse(model) is model
    # The same tensors, not copies: optimizers, EMA and checkpoints keep working.
    assert all(p is params[k] for k, p in model.named_parameters()) and len(params) == len(list(model.parameters()))
    assert all(b is buffers[k] for k, b in model.named_buffers())
    assert list(model.state_dict()) == keys
    return model, reference


def outputs(out) -> list:
    """A network's outputs as a list: one tensor, or every deep-supervision output."""
    return [out] if isinstance(out, torch.Tensor) else list(out)


def unpatched(model) -> bool:
    """No module of `model` was given a fused class or fuse's per-step state."""
    from unet_fast.adapters.fused_classes import origin
    return not any(origin(m) or "_unet_fast_steps" in m.__dict__ or "forward" in m.__dict__ for m in model.modules())


def check_fused_model(monkeypatch, make_model, shape, steps, path="torch", dtype=torch.float64, launches=None,
                      left=0):
    """A fused model against its unfused copy: every output (each deep-supervision output too) and
    every parameter's gradient (of a loss on all outputs) within TOLERANCES[dtype], the fused op
    called once per fused decoder step per forward, `steps` fused and `left` left.

    float64 by default: a convolution's bias followed by InstanceNorm has a gradient that is 0 in
    exact arithmetic, so in float32 both models' values are rounding noise of the sum's terms
    (about 1e-5 here), which a tolerance scaled by the result cannot judge; in float64 the noise is
    far below TOLERANCES[float64] and every other difference would show."""
    select_path(monkeypatch, path)
    model, reference = fused_twin(lambda: make_model().to(dtype))
    report = fuse_report(model)
    assert len(report.fused) == steps and len(report.left) == left, str(report)
    calls = count_fused_calls(monkeypatch)
    x = torch.randn(*shape, device=DEVICE, dtype=dtype)
    out = model(x)
    assert len(calls) == steps, f"{len(calls)} fused calls for {steps} decoder steps: {calls}"
    with monkeypatch.context() as m:
        m.setenv("UNET_FAST_DISABLE_TRITON", "1")
        expected = reference(x)
    outs, exps = outputs(out), outputs(expected)
    assert len(outs) == len(exps)
    for i, (o, e) in enumerate(zip(outs, exps)):
        assert_close_to_reference(o, e, dtype, f"output {i}")
    grads = [torch.randn_like(o) for o in outs]
    torch.autograd.backward(outs, grads)
    with monkeypatch.context() as m:
        m.setenv("UNET_FAST_DISABLE_TRITON", "1")
        torch.autograd.backward(exps, grads)
    assert_same_grads(model, reference, dtype)
    if launches is not None:
        assert launches, "the Triton kernels never launched"
    return model, reference


def assert_same_grads(model, reference, dtype):
    """Every parameter's gradient within TOLERANCES[dtype] of its twin's (None where its twin's is)."""
    ref_params = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        if ref_params[name].grad is None:
            assert p.grad is None, name
            continue
        assert_close_to_reference(p.grad, ref_params[name].grad, dtype, f"grad of {name}")


class TinyLessonLike(nn.Module):
    """A model fuse does not know: a transposed conv and a cat, but its own forward."""

    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(4, 4, 2, stride=2)
        self.head = nn.Conv2d(5, 1, 1)

    def forward(self, x):
        return self.head(torch.cat([self.up(self.down(x)), x], 1))


def test_unknown_model_is_left_untouched_and_reported():
    model = TinyLessonLike()
    before = dict(model.__dict__)
    unet_fast.fuse(model)
    report = fuse_report(model)
    assert unpatched(model) and type(model) is TinyLessonLike
    assert {k: v for k, v in model.__dict__.items() if k != "_unet_fast_fuse_report"} == before
    assert report.fused == [] and report.left == [] and report.others == [("up", "TinyLessonLike")]
    assert str(report).startswith("fused 0 of 0 decoder steps; left: none; not in a decoder step")


def test_fuse_refuses_a_library_forward_it_does_not_know(monkeypatch):
    """A library version whose forward differs from the checked one is left and reported, with a
    warning; nothing of it is patched."""
    require("monai")
    from monai.networks.nets import DynUNet
    key = ("monai.networks.blocks.dynunet_block", "UnetUpBlock")
    monkeypatch.setitem(FINGERPRINTS, key, {"0000000000000000"})
    model = DynUNet(2, 1, 2, [3, 3, 3], [1, 2, 2], [2, 2], filters=[4, 8, 8])
    with pytest.warns(UserWarning, match="differs from the one unet_fast.fuse reproduces"):
        unet_fast.fuse(model)
    report = fuse_report(model)
    assert not report.fused and len(report.left) == 2 and "monai 1.6.1" in report.left[0][1]
    assert unpatched(model)


def test_fuse_is_idempotent_and_verbose(monkeypatch, capsys):
    require("dynamic_network_architectures")
    from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
    from test_fuse_nnunet import plain_conv_unet
    model = unet_fast.fuse(plain_conv_unet(2), verbose=True)
    fused_class = type(model.decoder)
    assert fused_class is not UNetDecoder and isinstance(model.decoder, UNetDecoder)
    assert capsys.readouterr().out.strip() == "fused 2 of 2 decoder steps (decoder.transpconvs[0..1]); left: none"
    unet_fast.fuse(model, verbose=True)
    assert capsys.readouterr().out.strip() == "fused 2 of 2 decoder steps (decoder.transpconvs[0..1]); left: none"
    assert type(model.decoder) is fused_class and list(fuse_report(model).calls) == ["decoder.transpconvs.0",
                                                                                    "decoder.transpconvs.1"]
    select_path(monkeypatch, "torch")
    calls = count_fused_calls(monkeypatch)
    model(torch.randn(1, 1, 8, 8))
    assert len(calls) == 2


def test_unet_fast_models(monkeypatch):
    """ReferenceUNet is fused through its up_step (ReLU kept); UNet is reported as fused already."""
    from unet_fast import ReferenceUNet, UNet
    for up_relu in (True, False):
        check_fused_model(monkeypatch, lambda up_relu=up_relu: ReferenceUNet(1, 2, base_channels=4, up_relu=up_relu),
                          (2, 1, 16, 12), 3)
    model = unet_fast.fuse(UNet(1, 2, base_channels=4))
    assert unpatched(model) and len(fuse_report(model).fused) == 3


def test_lesson_model(monkeypatch):
    from lesson_unet import LessonUNet
    model, _ = check_fused_model(monkeypatch, lambda: LessonUNet(1, 2), (1, 1, 8, 8), 3)
    assert [p for p, _ in fuse_report(model).fused] == ["upconv3", "upconv2", "upconv1"]

"""The structure `fuse` checks, before and after: a subclass whose forward is the user's is never
patched; surgery after fuse (a decoder step's modules, their attributes or a class's forward
changed) sends that step to the library's own code at its next call, and the network computes
what the unfused one computes. Float64 on the PyTorch path: any stale fused computation shows."""
import pytest
import torch
from torch import nn

import unet_fast
from unet_fast.adapters import fuse_report
from helpers import DEVICE, assert_close_to_reference, select_path
from test_fuse_common import assert_same_grads, count_fused_calls, fused_twin, require, unpatched

require("dynamic_network_architectures")
require("monai")
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder  # noqa: E402
from monai.networks.blocks.dynunet_block import UnetUpBlock  # noqa: E402
from monai.networks.nets import DynUNet  # noqa: E402
from monai.networks.nets.basic_unet import UpCat  # noqa: E402
from test_fuse_monai import basic_unet  # noqa: E402
from test_fuse_nnunet import plain_conv_unet  # noqa: E402


def dyn_unet():
    return DynUNet(2, 1, 2, [3, 3, 3], [1, 2, 2], [2, 2], filters=[4, 8, 8])


# (network, input shape, its decoder steps, the step the surgery touches)
NNUNET = (lambda: plain_conv_unet(2), (2, 1, 16, 16), 2, "decoder.transpconvs.1")
BASIC = (lambda: basic_unet(2), (1, 1, 32, 32), 4, "upcat_4.upsample.deconv")
DYN = (dyn_unet, (1, 1, 16, 16), 2, "upsamples.0.transp_conv.conv")


def compare(monkeypatch, model, reference, shape):
    """Output and every gradient of the fused model equal the unfused one's; the fused op's calls."""
    calls = count_fused_calls(monkeypatch)
    x = torch.randn(*shape, device=DEVICE, dtype=torch.float64)
    out, expected = model(x), reference(x)
    assert_close_to_reference(out, expected, torch.float64, "output")
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    assert_same_grads(model, reference, torch.float64)
    return calls


class DoublingConvTranspose2d(nn.ConvTranspose2d):
    def forward(self, x):
        return super().forward(x) * 2


def _swap_in_subclass(conv):
    conv.__class__ = DoublingConvTranspose2d


def _dilate_keeping_size(conv):
    # (H - 1) * 2 - 2 * 1 + 3 * (2 - 1) + 1 = 2H: the skip still fits, the taps are not the op's
    conv.dilation, conv.padding = (3, 3), (1, 1)


def _instance_forward(conv):
    conv.forward = lambda x: nn.ConvTranspose2d.forward(conv, x) * 2


def _wrap_in_sequential(conv_path):
    def surgery(model):
        parent, name = conv_path.rsplit(".", 1)
        container = model.get_submodule(parent)
        setattr(container, name, nn.Sequential(getattr(container, name), nn.Tanh()))
    return surgery


def _module_after(conv_path):
    def surgery(model):
        model.get_submodule(conv_path.rsplit(".", 1)[0]).add_module("after", nn.Tanh())
    return surgery


def _on_conv(change, path):
    return lambda model: change(model.get_submodule(path))


SURGERIES = {
    "convtranspose-subclass": (NNUNET, _on_conv(_swap_in_subclass, NNUNET[3])),
    "attributes": (NNUNET, _on_conv(_dilate_keeping_size, NNUNET[3])),
    "instance-forward": (NNUNET, _on_conv(_instance_forward, NNUNET[3])),
    "sequential-for-deconv": (BASIC, _wrap_in_sequential(BASIC[3])),
    "module-after-deconv": (BASIC, _module_after(BASIC[3])),
    "module-after-transp-conv": (DYN, _module_after(DYN[3])),
}


@pytest.mark.parametrize("name", list(SURGERIES))
def test_surgery_after_fuse_runs_the_library_step(monkeypatch, name):
    (make, shape, steps, path), surgery = SURGERIES[name]
    select_path(monkeypatch, "torch")
    model, reference = fused_twin(lambda: make().double())
    surgery(model)
    surgery(reference)
    with pytest.warns(UserWarning, match="surgery.*call unet_fast.fuse"):
        calls = compare(monkeypatch, model, reference, shape)
    assert len(calls) == steps - 1
    counted = fuse_report(model).calls[path]
    assert counted.fused == 0 and counted.library == {"surgery": 1}


def test_a_class_level_forward_patched_after_fuse_is_honoured(monkeypatch):
    """ConvTranspose2d.forward and UNetDecoder.forward replaced after fuse: every step runs them."""
    select_path(monkeypatch, "torch")
    model, reference = fused_twin(lambda: plain_conv_unet(2).double())
    conv_forward = nn.ConvTranspose2d.forward
    monkeypatch.setattr(nn.ConvTranspose2d, "forward", lambda self, x: conv_forward(self, x) * 2)
    assert compare(monkeypatch, model, reference, NNUNET[1]) == []
    assert [c.library for c in fuse_report(model).calls.values()] == [{"surgery": 1}] * 2
    decoder_forward = UNetDecoder.forward
    monkeypatch.setattr(UNetDecoder, "forward", lambda self, skips: decoder_forward(self, skips) + 1)
    for m in (model, reference):
        m.zero_grad()
    assert compare(monkeypatch, model, reference, NNUNET[1]) == []
    assert [c.library for c in fuse_report(model).calls.values()] == [{"surgery": 2}] * 2


def test_fuse_again_after_surgery_reports_the_new_structure(monkeypatch):
    select_path(monkeypatch, "torch")
    model, _ = fused_twin(lambda: plain_conv_unet(2).double())
    _dilate_keeping_size(model.decoder.transpconvs[1])
    unet_fast.fuse(model)
    report = fuse_report(model)
    assert [p for p, _ in report.fused] == ["decoder.transpconvs.0"]
    assert report.left == [("decoder.transpconvs.1", "padding (1, 1), output_padding (0, 0), dilation (3, 3), "
                                                     "groups 1 (the fused step has none)")]
    calls = count_fused_calls(monkeypatch)
    model(torch.randn(2, 1, 16, 16, dtype=torch.float64))
    assert len(calls) == 1


class UserDecoder(UNetDecoder):
    def forward(self, skips):
        return super().forward(skips) * 2


class UserUpCat(UpCat):
    def forward(self, x, x_e):
        return super().forward(x, x_e) + 1


class UserUpBlock(UnetUpBlock):
    def forward(self, inp, skip):
        return super().forward(inp, skip) - 1


@pytest.mark.parametrize("network, holder, cls, left", [
    (NNUNET, "decoder", UserDecoder, 2),
    (BASIC, "upcat_4", UserUpCat, 1),
    (DYN, "upsamples.0", UserUpBlock, 1),
], ids=["UNetDecoder", "UpCat", "UnetUpBlock"])
def test_a_subclass_with_its_own_forward_is_not_patched(monkeypatch, network, holder, cls, left):
    make, shape, steps, _ = network
    select_path(monkeypatch, "torch")

    def make_with_subclass():
        model = make().double()
        model.get_submodule(holder).__class__ = cls
        return model

    with pytest.warns(UserWarning, match=f"{cls.__name__} overrides"):
        model, reference = fused_twin(make_with_subclass)
    assert type(model.get_submodule(holder)) is cls and unpatched(model.get_submodule(holder))
    report = fuse_report(model)
    assert len(report.left) == left and all("overrides" in why for _, why in report.left)
    assert len(compare(monkeypatch, model, reference, shape)) == steps - left

"""`fuse_report(model).calls`: per fused step, the calls the fused op served and those that ran the
library's code, with the reason; the first such call per step and reason warns once, naming the
cure. And the calls that must run the library's code do, with the network's output unchanged:
MONAI MetaTensors, odd sizes, a float64 network under autocast, an nnU-Net decoder whose later
step cannot be fused. The PyTorch path."""
import warnings

import pytest
import torch
from torch import nn

import unet_fast
from unet_fast.adapters import fuse_report
from helpers import DEVICE, assert_close_to_reference, select_path
from test_fuse_common import check_fused_model, count_fused_calls, fused_twin, require

require("dynamic_network_architectures")
require("monai")
from test_fuse_monai import basic_unet  # noqa: E402
from test_fuse_nnunet import plain_conv_unet  # noqa: E402


def _warnings_of(run):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run()
    return result, [str(w.message) for w in caught if issubclass(w.category, UserWarning)
                    and "unet_fast.fuse" in str(w.message)]


def test_a_meta_tensor_input_is_counted_and_warned_once_per_step(monkeypatch):
    from monai.data import MetaTensor
    select_path(monkeypatch, "torch")
    model, reference = fused_twin(lambda: basic_unet(2).double())
    calls = count_fused_calls(monkeypatch)
    image = MetaTensor(torch.randn(1, 1, 32, 32, dtype=torch.float64))
    out, first = _warnings_of(lambda: model(image))
    again, second = _warnings_of(lambda: model(image))
    assert torch.equal(out, reference(image)) and torch.equal(again, out) and calls == []
    report = fuse_report(model)
    assert [(c.fused, c.library) for c in report.calls.values()] == [(0, {"MetaTensor input": 2})] * 4
    assert len(first) == 4 and second == []
    assert all("MetaTensor input" in w and "x.as_tensor()" in w and "set_track_meta(False)" in w for w in first)
    assert report.calls_text().splitlines()[0] == "upcat_4.upsample.deconv: 0 fused, 2 library (MetaTensor input: 2)"
    # a plain tensor afterwards is fused and counted as such
    model(image.as_tensor())
    assert len(calls) == 4 and all(c.fused == 1 for c in report.calls.values())


def test_odd_sizes_are_counted_and_the_warning_says_to_pad(monkeypatch):
    """BasicUNet at 32x36: pooling takes 36 to 18, 9, 4, 2, so upcat_3 upsamples 4 to 8 beside a
    skip of 9 (MONAI's replicate pad): that step runs MONAI's code and says to pad the input."""
    select_path(monkeypatch, "torch")
    model, reference = fused_twin(lambda: basic_unet(2).double())
    x = torch.randn(1, 1, 32, 36, dtype=torch.float64)
    out, caught = _warnings_of(lambda: model(x))
    assert_close_to_reference(out, reference(x), torch.float64, "output")
    report = fuse_report(model)
    library = {path: c.library for path, c in report.calls.items() if c.library}
    assert library == {"upcat_3.upsample.deconv": {"size mismatch": 1}}, library
    assert len(caught) == 1 and "pad the network's input to a multiple of" in caught[0]


def test_a_float64_network_under_autocast_runs_the_library_code(monkeypatch):
    """Autocast leaves float64 alone, so the library's ConvTranspose runs in float64: the op is not
    asked to compute what autocast would not cast; the output is the library's, bit for bit."""
    select_path(monkeypatch, "torch")
    model, reference = fused_twin(lambda: plain_conv_unet(2).double())
    calls = count_fused_calls(monkeypatch)
    x = torch.randn(2, 1, 16, 16, device=DEVICE, dtype=torch.float64)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        (out, caught), expected = _warnings_of(lambda: model(x)), reference(x)
    assert out.dtype == torch.float64 and torch.equal(out, expected) and calls == []
    assert [c.library for c in fuse_report(model).calls.values()] == [{"dtype": 1}] * 2 and len(caught) == 2


def _dilated_transpconv(model, s):
    """Replace decoder.transpconvs[s] by a ConvTranspose2d of the same output size that the op does
    not compute (dilation 3, padding 1)."""
    old = model.decoder.transpconvs[s]
    model.decoder.transpconvs[s] = nn.ConvTranspose2d(old.in_channels, old.out_channels, 2, 2, padding=1,
                                                      dilation=3).to(old.weight.dtype)
    return model


def test_nnunet_decoder_whose_later_step_cannot_be_fused(monkeypatch):
    """Step 0 fused, step 1 left at fuse time: the decoder's output and gradients are the library's."""
    model, _ = check_fused_model(monkeypatch, lambda: _dilated_transpconv(plain_conv_unet(2), 1),
                                 (2, 1, 16, 16), steps=1, left=1)
    report = fuse_report(model)
    assert [p for p, _ in report.left] == ["decoder.transpconvs.1"] and list(report.calls) == ["decoder.transpconvs.0"]
    assert report.calls["decoder.transpconvs.0"].fused == 1


def test_check_fused_model_compares_every_deep_supervision_output(monkeypatch):
    """The fused-vs-unfused comparison judges each deep-supervision output, not only the first: a
    planted error in the fused model's coarsest output alone fails it."""
    from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder

    def planted(module, args, out):
        return out[:-1] + [out[-1] + 1e-3] if type(module) is not UNetDecoder else None  # fused only

    def make():
        model = plain_conv_unet(2, deep_supervision=True)
        model.decoder.register_forward_hook(planted)
        return model

    with pytest.raises(AssertionError, match="output 1: .* elements differ"):
        check_fused_model(monkeypatch, make, (1, 1, 16, 16), steps=2)


def test_fuse_report_counts_nothing_for_a_never_called_model():
    model = unet_fast.fuse(plain_conv_unet(2))
    assert fuse_report(model).calls_text() == ("decoder.transpconvs.0: 0 fused, 0 library\n"
                                               "decoder.transpconvs.1: 0 fused, 0 library")

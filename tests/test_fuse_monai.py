"""`unet_fast.fuse` on MONAI's networks (BasicUNet, DynUNet, UNETR, SwinUNETR; 2D and 3D),
against the real package: outputs, gradients, the fused op called once per decoder step, the
steps that must run MONAI's own code (odd sizes, other upsample modes, MetaTensor inputs), the
Triton kernels, sliding_window_inference."""
import pytest
import torch

import unet_fast
from unet_fast.adapters import fuse_report
from helpers import DEVICE, assert_close_to_reference, select_path, spy_on_triton_launches
from test_fuse_common import check_fused_model, count_fused_calls, fused_twin, require, unpatched

require("monai")
from monai.networks.nets import UNETR, BasicUNet, DynUNet, SwinUNETR

SMALL = (2, 2, 4, 4, 8, 2)


def basic_unet(dims, **kwargs):
    return BasicUNet(dims, 1, 2, features=SMALL, **kwargs)


def swin_unetr(dims):
    # GroupNorm: at 32 pixels a side (the least SwinUNETR takes) the deepest InstanceNorm would see
    # a single pixel.
    return SwinUNETR(1, 2, feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), spatial_dims=dims,
                     norm_name=("group", {"num_groups": 1}))


@pytest.mark.parametrize("make, shape, steps", [
    (lambda: basic_unet(2), (2, 1, 32, 32), 4),
    (lambda: basic_unet(3), (1, 1, 32, 32, 32), 4),
    (lambda: DynUNet(2, 1, 2, [3, 3, 3], [1, 2, 2], [2, 2], filters=[4, 8, 8]), (2, 1, 16, 16), 2),
    (lambda: DynUNet(3, 1, 2, [3, 3, 3], [1, 2, (1, 2, 2)], [2, (1, 2, 2)], filters=[4, 8, 8],
                     deep_supervision=True, deep_supr_num=1), (1, 1, 8, 16, 16), 2),
    (lambda: UNETR(1, 2, (32, 32), feature_size=4, hidden_size=16, mlp_dim=16, num_heads=2,
                   spatial_dims=2), (2, 1, 32, 32), 4),
    (lambda: UNETR(1, 2, (32, 32, 32), feature_size=2, hidden_size=16, mlp_dim=16, num_heads=2),
     (1, 1, 32, 32, 32), 4),
    (lambda: swin_unetr(2), (2, 1, 32, 32), 5),
    (lambda: swin_unetr(3), (1, 1, 32, 32, 32), 5),
], ids=["basicunet2d", "basicunet3d", "dynunet2d", "dynunet3d-aniso-deep-supervision", "unetr2d", "unetr3d",
        "swinunetr2d", "swinunetr3d"])
def test_monai_fused_equals_unfused(monkeypatch, make, shape, steps):
    check_fused_model(monkeypatch, make, shape, steps)


def test_monai_triton_path(monkeypatch):
    """The Triton kernels (interpreted on the CPU) serve BasicUNet 2D's decoder steps (skip first)."""
    from unet_fast.kernels import up_concat_backward as bwd_module
    from unet_fast.kernels import up_concat_forward as fwd_module
    select_path(monkeypatch, "triton")
    launches = spy_on_triton_launches(monkeypatch, fwd_module, "forward")
    launches += spy_on_triton_launches(monkeypatch, bwd_module, "backward")
    check_fused_model(monkeypatch, lambda: BasicUNet(2, 1, 1, features=(2, 2, 2, 2, 4, 2), norm="batch"),
                      (2, 1, 16, 16), 4, path="triton", dtype=torch.float32, launches=launches)


@pytest.mark.parametrize("shape, fused", [((2, 1, 31, 31), 0), ((2, 1, 32, 31), 0), ((1, 1, 32, 32, 17), 3)],
                         ids=["all-odd", "one-axis-odd", "3d-some-steps-odd"])
def test_basic_unet_odd_sizes_run_monai_code(monkeypatch, shape, fused):
    """BasicUNet replicate-pads the upsampled map where a pooling dropped an odd edge: those steps run
    UpCat's own code, and the network's output is MONAI's."""
    select_path(monkeypatch, "torch")
    model, reference = fused_twin(lambda: basic_unet(len(shape) - 2, norm="batch").double())
    calls = count_fused_calls(monkeypatch)
    x = torch.randn(*shape, device=DEVICE, dtype=torch.float64)
    out, expected = model(x), reference(x)
    assert len(calls) == fused, calls
    if fused == 0:
        assert torch.equal(out, expected)
    assert_close_to_reference(out, expected, torch.float64, "output")


def test_basic_unet_other_upsample_modes_are_left_and_reported():
    model = unet_fast.fuse(basic_unet(2, upsample="nontrainable"))
    report = fuse_report(model)
    assert not report.fused and len(report.left) == 4
    assert all("upsample is not mode 'deconv'" in why for _, why in report.left), report.left
    assert unpatched(model)


def test_unetr_encoder_transposed_convs_are_not_decoder_steps():
    model = unet_fast.fuse(UNETR(1, 2, (32, 32), feature_size=4, hidden_size=16, mlp_dim=16, num_heads=2,
                                 spatial_dims=2))
    report = fuse_report(model)
    assert [p for p, _ in report.fused] == [f"decoder{i}.transp_conv.conv" for i in (5, 4, 3, 2)]
    assert report.others and all(owner == "UnetrPrUpBlock" for _, owner in report.others)


def test_meta_tensor_input_runs_monai_code(monkeypatch):
    """A MetaTensor (what MONAI's transforms yield) carries metadata through MONAI's torch.cat: the
    fused op does not, so such calls run MONAI's code; sliding_window_inference passes plain
    tensors to the network, so there every step is fused."""
    from monai.data import MetaTensor
    from monai.inferers import sliding_window_inference
    select_path(monkeypatch, "torch")
    model, reference = fused_twin(lambda: basic_unet(2).double())
    model.eval(), reference.eval()
    calls = count_fused_calls(monkeypatch)
    image = MetaTensor(torch.randn(1, 1, 48, 40, dtype=torch.float64))
    with torch.no_grad():
        out, expected = model(image), reference(image)
        assert type(out) is type(expected) is MetaTensor and torch.equal(out, expected) and calls == []
        out = sliding_window_inference(image, (32, 32), 2, model, overlap=0.25)
        expected = sliding_window_inference(image, (32, 32), 2, reference, overlap=0.25)
    assert len(calls) > 0 and len(calls) % 4 == 0
    assert_close_to_reference(out, expected, torch.float64, "sliding window output")

"""`unet_fast.fuse` on nnU-Net's networks (dynamic_network_architectures PlainConvUNet and
ResidualEncoderUNet, 2D and 3D), against the real package: outputs, gradients, the fused op called
once per decoder step, optimizer steps, autocast, hooks, torch.compile, the Triton kernels."""
import pytest
import torch
from torch import nn

from unet_fast.adapters import fuse_report
from helpers import DEVICE, assert_close_to_reference, select_path, spy_on_triton_launches
from test_fuse_common import check_fused_model, count_fused_calls, fused_twin, require

require("dynamic_network_architectures")
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet


def plain_conv_unet(dims, features=(4, 8, 16), strides=None, deep_supervision=False, inplace=True):
    """nnU-Net's PlainConvUNet as its planner builds it (InstanceNorm, LeakyReLU, bias), tiny;
    inplace=False where a global backward hook wraps every module (an in-place LeakyReLU on a
    hooked module's output is refused by autograd)."""
    conv = nn.Conv3d if dims == 3 else nn.Conv2d
    norm = nn.InstanceNorm3d if dims == 3 else nn.InstanceNorm2d
    strides = strides or [1] + [2] * (len(features) - 1)
    return PlainConvUNet(1, len(features), features, conv, 3, strides, 2, 3, 2, conv_bias=True, norm_op=norm,
                         norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
                         nonlin_kwargs={"inplace": inplace}, deep_supervision=deep_supervision)


def residual_encoder_unet(dims, features=(4, 8, 16)):
    conv = nn.Conv3d if dims == 3 else nn.Conv2d
    norm = nn.InstanceNorm3d if dims == 3 else nn.InstanceNorm2d
    return ResidualEncoderUNet(1, len(features), features, conv, 3, [1] + [2] * (len(features) - 1), 1, 3, 1,
                               conv_bias=True, norm_op=norm, norm_op_kwargs={"eps": 1e-5, "affine": True},
                               nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True})


@pytest.mark.parametrize("make, shape", [
    (lambda: plain_conv_unet(2), (2, 1, 16, 12)),
    # per-axis strides as nnU-Net plans them for anisotropic volumes
    (lambda: plain_conv_unet(3, strides=[1, (1, 2, 2), 2]), (2, 1, 8, 16, 8)),
    (lambda: plain_conv_unet(3, deep_supervision=True), (1, 1, 8, 8, 8)),
    (lambda: residual_encoder_unet(2), (2, 1, 16, 16)),
    (lambda: residual_encoder_unet(3), (1, 1, 8, 8, 8)),
], ids=["plain2d", "plain3d-aniso", "plain3d-deep-supervision", "resenc2d", "resenc3d"])
def test_nnunet_fused_equals_unfused(monkeypatch, make, shape):
    model, _ = check_fused_model(monkeypatch, make, shape, steps=2)
    assert str(fuse_report(model)) == "fused 2 of 2 decoder steps (decoder.transpconvs[0..1]); left: none"


@pytest.mark.parametrize("dims, shape", [(2, (1, 1, 4, 4)), (3, (1, 1, 2, 4, 4))], ids=["2d", "3d"])
def test_nnunet_triton_path(monkeypatch, dims, shape):
    """The Triton kernels (interpreted on the CPU) serve every decoder step, forward and backward."""
    from unet_fast.kernels import up_concat_backward as bwd_module
    from unet_fast.kernels import up_concat_forward as fwd_module
    select_path(monkeypatch, "triton")
    launches = spy_on_triton_launches(monkeypatch, fwd_module, "forward")
    launches += spy_on_triton_launches(monkeypatch, bwd_module, "backward")
    check_fused_model(monkeypatch, lambda: plain_conv_unet(dims, features=(2, 3)), shape, steps=1, path="triton",
                      dtype=torch.float32, launches=launches)


def test_nnunet_optimizer_steps_stay_equal(monkeypatch):
    select_path(monkeypatch, "torch")
    model, reference = fused_twin(lambda: plain_conv_unet(3))
    opts = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in (model, reference)]
    for _ in range(3):
        x = torch.randn(2, 1, 8, 8, 8, device=DEVICE)
        for m, opt in zip((model, reference), opts):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
    ref_params = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        assert_close_to_reference(p, ref_params[name], torch.float32, name)


def test_nnunet_autocast_and_eval(monkeypatch):
    """nnU-Net trains under autocast and predicts in eval/no_grad: the fused op takes autocast's
    dtype, cast as autocast casts the library's ConvTranspose, and serves every step."""
    select_path(monkeypatch, "torch")
    model, reference = fused_twin(lambda: plain_conv_unet(3))
    calls = count_fused_calls(monkeypatch)
    x = torch.randn(2, 1, 8, 8, 8, device=DEVICE)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        out, expected = model(x), reference(x)
    assert out.dtype == expected.dtype == torch.bfloat16 and len(calls) == 2
    assert_close_to_reference(out, expected, torch.bfloat16, "autocast output")
    model.eval(), reference.eval()
    with torch.no_grad():
        assert_close_to_reference(model(x), reference(x), torch.float32, "eval output")
    assert len(calls) == 4


def test_nnunet_hooked_step_runs_the_library_code(monkeypatch):
    """A forward hook on a transposed conv (feature extraction) sends that step back to the library's
    own code, so the hook sees the ConvTranspose's output; the other step stays fused."""
    select_path(monkeypatch, "torch")
    model, reference = fused_twin(lambda: plain_conv_unet(2))
    seen = []
    model.decoder.transpconvs[1].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    calls = count_fused_calls(monkeypatch)
    x = torch.randn(2, 1, 16, 16, device=DEVICE)
    assert_close_to_reference(model(x), reference(x), torch.float32, "output")
    assert len(calls) == 1 and seen == [torch.Size([2, 4, 16, 16])]


def test_nnunet_mixed_dtypes_run_the_library_code(monkeypatch):
    """The decoder under autocast with float32 skips (computed outside it): the library's cat
    promotes the bfloat16 upsampled half to float32, which the op does not compute: its own code."""
    select_path(monkeypatch, "torch")
    model, reference = fused_twin(lambda: plain_conv_unet(2))
    calls = count_fused_calls(monkeypatch)
    skips = [torch.randn(1, 4, 8, 8), torch.randn(1, 8, 4, 4), torch.randn(1, 16, 2, 2)]
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        out, expected = model.decoder(skips), reference.decoder(skips)
    assert torch.equal(out, expected) and calls == []


def test_nnunet_torch_compile(monkeypatch):
    """torch.compile(fullgraph=True) of a fused network: the op stays one node per step; outputs equal."""
    select_path(monkeypatch, "torch")
    model, reference = fused_twin(lambda: plain_conv_unet(2, features=(2, 4)))
    nodes = []

    def inductor_counting_nodes(gm, example_inputs):
        from torch._inductor.compile_fx import compile_fx
        nodes.extend(n for n in gm.graph.nodes if "unet_fast.up_concat" in str(n.target))
        return compile_fx(gm, example_inputs)

    x = torch.randn(2, 1, 8, 8, device=DEVICE)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=inductor_counting_nodes, fullgraph=True)
    assert_close_to_reference(compiled(x), reference(x), torch.float32, "compiled output")
    assert len(nodes) == 1, nodes

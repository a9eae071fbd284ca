"""Hooks on a fused step's modules send the step to the library's own code, so they fire as they
would unfused: backward hooks and pre-hooks (module and global) on the ConvTranspose, which may
rewrite gradients, and forward hooks on MONAI's wrappers around it (UpSample, Convolution).
The PyTorch path: the decision is the same on both."""
import pytest
import torch
from torch import nn
from torch.nn.modules import module as torch_module

from unet_fast.adapters import fuse_report
from helpers import DEVICE, assert_close_to_reference, select_path
from test_fuse_common import assert_same_grads, count_fused_calls, fused_twin, require

require("dynamic_network_architectures")
require("monai")
from test_fuse_monai import basic_unet  # noqa: E402
from test_fuse_nnunet import plain_conv_unet  # noqa: E402


def _tripled(grads):
    return tuple(g * 3 if g is not None else None for g in grads)


def _only_transposed(hook):
    """A global hook that rewrites the gradients of transposed convolutions only."""
    return lambda m, *grads: hook(m, *grads) if isinstance(m, nn.ConvTranspose2d) else None


# (how to register on one module, what the hook returns): each triples a gradient.
BACKWARD_HOOKS = {
    "module-full-backward": lambda conv, fired: conv.register_full_backward_hook(
        lambda m, gi, go: (fired.append(m), _tripled(gi))[1]),
    "module-full-backward-pre": lambda conv, fired: conv.register_full_backward_pre_hook(
        lambda m, go: (fired.append(m), _tripled(go))[1]),
    "global-full-backward": lambda conv, fired: torch_module.register_module_full_backward_hook(
        _only_transposed(lambda m, gi, go: (fired.append(m), _tripled(gi))[1])),
    "global-full-backward-pre": lambda conv, fired: torch_module.register_module_full_backward_pre_hook(
        _only_transposed(lambda m, go: (fired.append(m), _tripled(go))[1])),
}


@pytest.mark.parametrize("kind", list(BACKWARD_HOOKS))
def test_backward_hooks_on_a_fused_steps_convolution_fire_and_rewrite_gradients(monkeypatch, kind):
    """A backward hook on decoder.transpconvs[1] (a global one: on every transposed convolution) fires
    in the fused model as in the unfused one and its tripled gradient reaches every parameter."""
    select_path(monkeypatch, "torch")
    model, reference = fused_twin(lambda: plain_conv_unet(2, inplace=False).double())
    fired = []
    owners = [model, reference] if kind.startswith("module") else [model]  # a global hook: once
    handles = [BACKWARD_HOOKS[kind](m.decoder.transpconvs[1], fired) for m in owners]
    try:
        calls = count_fused_calls(monkeypatch)
        x = torch.randn(2, 1, 16, 16, device=DEVICE, dtype=torch.float64)
        out, expected = model(x), reference(x)
        grad = torch.randn_like(out)
        out.backward(grad)
        expected.backward(grad)
    finally:
        for handle in handles:
            handle.remove()
    assert_close_to_reference(out, expected, torch.float64, "output")
    assert_same_grads(model, reference, torch.float64)
    global_hook = kind.startswith("global")
    # a global hook is on every module: both steps run the library's code and both hooks fire
    assert len(calls) == 0 if global_hook else len(calls) == 1
    in_fused = [m for m in fired if any(m is c for c in model.modules())]
    assert len(in_fused) == len(fired) - len(in_fused) == (2 if global_hook else 1)
    counted = fuse_report(model).calls["decoder.transpconvs.1"]
    assert counted.fused == 0 and counted.library == {"hook": 1}


@pytest.mark.parametrize("wrapper", ["upsample", "transp_conv"])
def test_a_forward_hook_on_a_monai_wrapper_runs_the_library_step(monkeypatch, wrapper):
    """A forward hook on BasicUNet's UpSample (upcat_4.upsample) or on DynUNet's Convolution
    (upsamples[0].transp_conv) sees the wrapper's output: that step runs MONAI's code, the others
    stay fused."""
    from monai.networks.nets import DynUNet
    select_path(monkeypatch, "torch")
    if wrapper == "upsample":
        make, shape, path = lambda: basic_unet(2).double(), (1, 1, 32, 32), "upcat_4.upsample.deconv"
        steps, upsampled = 4, (1, 4, 4, 4)
    else:
        make, shape, path = (lambda: DynUNet(2, 1, 2, [3, 3, 3], [1, 2, 2], [2, 2], filters=[4, 8, 8]).double(),
                             (1, 1, 16, 16), "upsamples.0.transp_conv.conv")
        steps, upsampled = 2, (1, 8, 8, 8)
    model, reference = fused_twin(make)
    seen = {}
    for name, m in (("fused", model), ("unfused", reference)):
        m.get_submodule(path.rsplit(".", 1)[0]).register_forward_hook(
            lambda mod, args, out, name=name: seen.setdefault(name, []).append(out))
    calls = count_fused_calls(monkeypatch)
    x = torch.randn(*shape, device=DEVICE, dtype=torch.float64)
    assert_close_to_reference(model(x), reference(x), torch.float64, "output")
    assert len(calls) == steps - 1
    assert len(seen["fused"]) == len(seen["unfused"]) == 1 and seen["fused"][0].shape == upsampled
    assert torch.equal(seen["fused"][0], seen["unfused"][0])
    assert fuse_report(model).calls[path].library == {"hook": 1}

"""UNet keeps the behaviour of its decoder's modules: hooks fire, hook-based weight tools count.

UNet's fused decoder step reads `upconvK.weight` itself; when the module carries forward hooks
or forward pre-hooks (feature extraction, the hook-based weight_norm, pruning) the step calls
the module instead, so the result is ReferenceUNet's. Parametrizations recompute the weight on
access and stay on the fused path. Run on the PyTorch path (the decision is the same on both).
"""
import warnings

import pytest
import torch
from torch.nn.utils import parametrize, prune

from unet_fast import ReferenceUNet, UNet
from unet_fast.models.module_hooks import calls_module
from helpers import DEVICE, select_path

BASE = 4


@pytest.fixture
def twins(monkeypatch):
    select_path(monkeypatch, "torch")
    torch.manual_seed(0)
    model = UNet(3, 2, base_channels=BASE).to(DEVICE)
    ref = ReferenceUNet(3, 2, base_channels=BASE).to(DEVICE)
    ref.load_state_dict(model.state_dict())
    return model, ref


def _same(model, ref, x):
    """The whole model and each decoder step alone (the step's output shows a stale weight
    plainly; after the decoder's convolutions it is damped) agree with ReferenceUNet."""
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-5)
        for name, channels in (("upconv3", 8 * BASE), ("upconv2", 4 * BASE), ("upconv1", 2 * BASE)):
            low = torch.randn(2, channels, 4, 6, device=DEVICE)
            skip = torch.randn(2, channels // 2, 8, 12, device=DEVICE)
            got = model.up_step(getattr(model, name), low, skip)
            want = ref.up_step(getattr(ref, name), low, skip)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=name)


def test_a_forward_hook_fires_once_per_step_with_the_modules_output(twins):
    model, ref = twins
    seen = {}
    for name, m in (("unet", model), ("ref", ref)):
        m.upconv3.register_forward_hook(lambda mod, args, out, n=name: seen.setdefault(n, []).append(out))
    x = torch.rand(1, 3, 16, 16, device=DEVICE)
    _same(model, ref, x)
    # once in model(x), once more in the step-by-step comparison
    assert len(seen["unet"]) == len(seen["ref"]) == 2
    torch.testing.assert_close(seen["unet"][0], seen["ref"][0])


def test_a_forward_pre_hook_that_changes_the_input_is_honoured(twins):
    model, ref = twins
    for m in (model, ref):
        m.upconv2.register_forward_pre_hook(lambda mod, args: (args[0] * 2,))
    _same(model, ref, torch.rand(1, 3, 16, 16, device=DEVICE))


def test_hook_based_weight_norm_uses_the_recomputed_weight(twins):
    model, ref = twins
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates the hook-based weight_norm
        for m in (model, ref):
            torch.nn.utils.weight_norm(m.upconv3)
    x = torch.rand(1, 3, 16, 16, device=DEVICE)
    _same(model, ref, x)
    with torch.no_grad():
        for m in (model, ref):
            m.upconv3.weight_g.mul_(3.0)  # the weight is recomputed from g and v in a pre-hook
    _same(model, ref, x)


def test_pruning_masks_the_weight(twins):
    model, ref = twins
    for m in (model, ref):
        prune.l1_unstructured(m.upconv1, "weight", amount=0.5)
    x = torch.rand(1, 3, 16, 16, device=DEVICE)
    _same(model, ref, x)
    with torch.no_grad():
        for m in (model, ref):
            m.upconv1.weight_orig.mul_(-2.0)  # e.g. a training step: the pre-hook re-applies the mask
    _same(model, ref, x)


class _Scale(torch.nn.Module):
    def forward(self, w):
        return w * 0.5


def test_a_parametrization_stays_on_the_fused_path_and_matches(twins, monkeypatch):
    model, ref = twins
    for m in (model, ref):
        parametrize.register_parametrization(m.upconv3, "weight", _Scale())
    assert not calls_module(model.upconv3)
    _same(model, ref, torch.rand(1, 3, 16, 16, device=DEVICE))


def test_calls_module_sees_global_hooks():
    conv = torch.nn.ConvTranspose2d(2, 2, 2, 2)
    assert not calls_module(conv)
    handle = torch.nn.modules.module.register_module_forward_pre_hook(lambda mod, args: None)
    try:
        assert calls_module(conv)
    finally:
        handle.remove()
    assert not calls_module(conv)


@pytest.mark.parametrize("register", [
    lambda conv, hook: conv.register_full_backward_hook(hook),
    lambda conv, hook: conv.register_full_backward_pre_hook(lambda m, go: hook(m, None, go)),
    lambda conv, hook: torch.nn.modules.module.register_module_full_backward_hook(hook),
    lambda conv, hook: torch.nn.modules.module.register_module_full_backward_pre_hook(lambda m, go: hook(m, None, go)),
], ids=["module", "module-pre", "global", "global-pre"])
def test_calls_module_sees_backward_hooks(register):
    """A backward hook fires only when its module is called: a module or global one makes the
    fused op call the module."""
    conv = torch.nn.ConvTranspose2d(2, 2, 2, 2)
    assert not calls_module(conv)
    handle = register(conv, lambda m, grad_in, grad_out: None)
    try:
        assert calls_module(conv)
    finally:
        handle.remove()
    assert not calls_module(conv)


def test_a_backward_hook_that_rewrites_gradients_is_honoured(twins):
    """A full backward hook on upconv2 that doubles its input's gradient fires in UNet as in
    ReferenceUNet, and every parameter's gradient shows it."""
    model, ref = twins
    fired = []
    for m in (model, ref):
        m.upconv2.register_full_backward_hook(lambda mod, gi, go: (fired.append(mod), (gi[0] * 2,))[1])
    x = torch.rand(1, 3, 16, 16, device=DEVICE)
    out, want = model(x), ref(x)
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-5)
    grad = torch.randn_like(out)
    out.backward(grad)
    want.backward(grad)
    assert len(fired) == 2
    ref_params = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[name].grad, rtol=1e-4, atol=1e-5, msg=name)

"""Derivatives beyond the first-order backward, through up_concat and UNet, against the reference
in float64: forward-mode AD (torch.func.jvp, jacfwd, torch.autograd.forward_ad), torch.func.grad,
and double backward (gradgradcheck, a gradient penalty)."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import functional_call

from unet_fast import ReferenceUNet, UNet, reference, up_concat
from unet_fast.ops import autodiff
from helpers import DEVICE, PATHS, assert_close_to_reference, make_step, select_path

F64 = torch.float64

# (N, Cin, Cout, Cs, spatial, kernel): tiny, so the Triton interpreter runs them quickly.
STEPS = {
    "2d": (2, 3, 2, 2, (2, 3), (2, 2)),
    "3d": (1, 2, 3, 2, (2, 1, 2), (1, 2, 2)),
}


# Smaller still for gradgradcheck, which perturbs every input and every grad_output element.
GRADGRAD_STEPS = {
    "2d": (1, 2, 2, 1, (1, 2), (2, 2)),
    "3d": (1, 2, 1, 1, (1, 1, 2), (1, 2, 2)),
}


def _inputs(step):
    return make_step(*STEPS[step], F64)


def _tangents(args):
    return tuple(torch.randn_like(t) for t in args)


def _step_fn(impl, relu, skip_first):
    return lambda x, skip, weight, bias: impl(x, skip, weight, bias, relu=relu, skip_first=skip_first)


def _assert_all_close(got, want, what):
    for i, (g, w) in enumerate(zip(got, want)):
        assert_close_to_reference(g, w, F64, f"{what}[{i}]")


@pytest.mark.parametrize("skip_first", [False, True], ids=["up-first", "skip-first"])
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "none"])
@pytest.mark.parametrize("step", list(STEPS))
def test_func_jvp_matches_reference(step, relu, skip_first):
    args = _inputs(step)
    tangents = _tangents(args)
    out, tangent = torch.func.jvp(_step_fn(up_concat, relu, skip_first), args, tangents)
    want_out, want_tangent = torch.func.jvp(_step_fn(reference.up_concat, relu, skip_first), args, tangents)
    assert_close_to_reference(out, want_out, F64, "out")
    assert want_tangent.abs().max() > 0
    assert_close_to_reference(tangent, want_tangent, F64, "tangent")


@pytest.mark.parametrize("skip_first", [False, True], ids=["up-first", "skip-first"])
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "none"])
@pytest.mark.parametrize("step", list(STEPS))
def test_forward_ad_dual_tensors_match_reference(step, relu, skip_first):
    """torch.autograd.forward_ad: no functorch transform, only inputs that carry a tangent."""
    args = _inputs(step)
    tangents = _tangents(args)
    results = []
    for impl in (up_concat, reference.up_concat):
        with fwAD.dual_level():
            duals = [fwAD.make_dual(t, dt) for t, dt in zip(args, tangents)]
            results.append(fwAD.unpack_dual(_step_fn(impl, relu, skip_first)(*duals)))
    (out, tangent), (want_out, want_tangent) = results
    assert tangent is not None, "up_concat dropped the forward-mode tangent"
    assert_close_to_reference(out, want_out, F64, "out")
    assert_close_to_reference(tangent, want_tangent, F64, "tangent")


def test_forward_ad_tangent_on_one_input_only():
    """A tangent on weight alone (a directional derivative in parameter space) still counts."""
    x, skip, weight, bias = _inputs("2d")
    dw = torch.randn_like(weight)
    with fwAD.dual_level():
        got = fwAD.unpack_dual(up_concat(x, skip, fwAD.make_dual(weight, dw), bias)).tangent
        want = fwAD.unpack_dual(reference.up_concat(x, skip, fwAD.make_dual(weight, dw), bias)).tangent
    assert got is not None
    assert_close_to_reference(got, want, F64, "tangent")


def test_direct_op_refuses_forward_ad_instead_of_a_zero_tangent():
    x, skip, weight, bias = _inputs("2d")
    with fwAD.dual_level():
        dual = fwAD.make_dual(x, torch.randn_like(x))
        with pytest.raises(RuntimeError, match="unet_fast::up_concat has no forward-mode derivative"):
            torch.ops.unet_fast.up_concat(dual, skip, weight, bias, True, False)


@pytest.mark.parametrize("skip_first", [False, True], ids=["up-first", "skip-first"])
@pytest.mark.parametrize("step", list(STEPS))
def test_jacfwd_matches_reference(step, skip_first):
    args = _inputs(step)
    argnums = (0, 1, 2, 3)
    got = torch.func.jacfwd(_step_fn(up_concat, True, skip_first), argnums=argnums)(*args)
    want = torch.func.jacfwd(_step_fn(reference.up_concat, True, skip_first), argnums=argnums)(*args)
    _assert_all_close(got, want, "jacobian")


@pytest.mark.parametrize("skip_first", [False, True], ids=["up-first", "skip-first"])
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "none"])
@pytest.mark.parametrize("step", list(STEPS))
def test_func_grad_matches_reference(step, relu, skip_first):
    args = _inputs(step)

    def loss(impl):
        return lambda *a: _step_fn(impl, relu, skip_first)(*a).pow(2).sum()

    got = torch.func.grad(loss(up_concat), argnums=(0, 1, 2, 3))(*args)
    want = torch.func.grad(loss(reference.up_concat), argnums=(0, 1, 2, 3))(*args)
    _assert_all_close(got, want, "grad")


def test_no_transform_runs_the_fused_op(monkeypatch):
    """The composite serves transforms only: plain calls and first-order backward keep the op."""
    def composite(*args, **kwargs):
        raise AssertionError("the composite ran without a transform")

    monkeypatch.setattr(autodiff, "composite_forward", composite)
    monkeypatch.setattr(autodiff, "differentiable_backward", composite)
    args = [t.requires_grad_() for t in _inputs("2d")]
    up_concat(*args).sum().backward()
    assert all(t.grad is not None for t in args)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("skip_first", [False, True], ids=["up-first", "skip-first"])
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "none"])
@pytest.mark.parametrize("step", list(STEPS))
def test_gradgradcheck_float64(monkeypatch, path, step, relu, skip_first):
    """Finite differences of the first-order gradients (each a run of the op) against the
    analytic second derivatives. fast_mode: a random projection of the Jacobian, so a few runs of
    the op instead of two per input element (the interpreter runs each in seconds)."""
    select_path(monkeypatch, path)
    args = [t.requires_grad_() for t in make_step(*GRADGRAD_STEPS[step], F64)]
    assert torch.autograd.gradgradcheck(_step_fn(up_concat, relu, skip_first), args, fast_mode=True)


def _penalty_grads(impl, args, relu, skip_first, r):
    """d/d(args) of ||d loss / d(x, weight)||^2, loss = sum(r * out^2) / 2: a gradient penalty,
    whose value needs the backward to be differentiated once more."""
    leaves = [t.detach().requires_grad_() for t in args]
    out = _step_fn(impl, relu, skip_first)(*leaves)
    gx, gw = torch.autograd.grad((r * out.pow(2)).sum() / 2, (leaves[0], leaves[2]), create_graph=True)
    (gx.pow(2).sum() + gw.pow(2).sum()).backward()
    return [t.grad for t in leaves]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("skip_first", [False, True], ids=["up-first", "skip-first"])
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "none"])
@pytest.mark.parametrize("step", list(STEPS))
def test_gradient_penalty_matches_reference(monkeypatch, path, step, relu, skip_first):
    select_path(monkeypatch, path)
    args = _inputs(step)
    r = torch.rand(reference.up_concat(*args).shape, dtype=F64, device=DEVICE)
    got = _penalty_grads(up_concat, args, relu, skip_first, r)
    want = _penalty_grads(reference.up_concat, args, relu, skip_first, r)
    for name, g, w in zip(("x", "skip", "weight", "bias"), got, want):
        assert w is not None and g is not None, name
        assert_close_to_reference(g, w, F64, f"d penalty / d {name}")


def _unets():
    model = UNet(base_channels=4).to(DEVICE, F64)
    ref = ReferenceUNet(base_channels=4).to(DEVICE, F64)
    ref.load_state_dict(model.state_dict())
    return model, ref


def test_unet_func_grad_matches_reference():
    model, ref = _unets()
    image = torch.rand(2, 3, 16, 16, dtype=F64, device=DEVICE)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(net):
        return lambda p: functional_call(net, p, (image,)).pow(2).mean()

    got = torch.func.grad(loss(model))(params)
    want = torch.func.grad(loss(ref))(params)
    for name in params:
        assert_close_to_reference(got[name], want[name], F64, name)


def test_unet_jvp_matches_reference():
    model, ref = _unets()
    image = torch.rand(1, 3, 16, 16, dtype=F64, device=DEVICE)
    tangent = torch.randn_like(image)
    _, got = torch.func.jvp(model, (image,), (tangent,))
    _, want = torch.func.jvp(ref, (image,), (tangent,))
    assert_close_to_reference(got, want, F64, "tangent")


@pytest.mark.parametrize("path", PATHS)
def test_unet_gradient_penalty_matches_reference(monkeypatch, path):
    """Double backward through UNet (a gradient penalty on the input) against ReferenceUNet."""
    select_path(monkeypatch, path)
    model, ref = _unets()
    image = torch.rand(1, 3, 16, 16, dtype=F64, device=DEVICE)
    grads = []
    for net in (model, ref):
        leaf = image.clone().requires_grad_()
        g, = torch.autograd.grad(net(leaf).pow(2).sum(), leaf, create_graph=True)
        penalty = g.pow(2).sum()
        grads.append(torch.autograd.grad(penalty, list(net.parameters()) + [leaf]))
    names = [n for n, _ in model.named_parameters()] + ["image"]
    for name, g, w in zip(names, *grads):
        assert_close_to_reference(g, w, F64, f"d penalty / d {name}")

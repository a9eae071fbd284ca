"""The fused op on steps whose kernel differs per axis (kh != kw), and on a skip and an incoming
gradient that are not flat over their spatial dims (the kernels' strided copy, FLAT_SKIP off):
forward and backward against unet_fast.reference in float64, on the Triton kernels and the
PyTorch path."""
import pytest
import torch

from unet_fast import up_concat
from helpers import (PATHS, assert_close_to_reference, grads_against_reference, make_step, randn, reference_out,
                     select_path)

# (N, Cin, Cout, Cs, spatial, kernel): tiny (the interpreter is slow), odd sizes.
UNEVEN_STEPS = [
    (2, 3, 2, 3, (2, 3), (1, 2)),
    (1, 3, 4, 2, (3, 2), (2, 1)),
    (1, 2, 3, 2, (2, 3, 2), (2, 2, 1)),
    (2, 3, 2, 3, (1, 2, 3), (1, 2, 2)),
]
UNEVEN_IDS = [f"{len(s[4])}d-k{'x'.join(map(str, s[5]))}" for s in UNEVEN_STEPS]


def _record_flat_skip(monkeypatch, path) -> list:
    """The FLAT_SKIP constexpr of every kernel launch that takes one (the Triton path)."""
    if path != "triton":
        return []
    from unet_fast.kernels import up_concat_launch

    seen = []
    original = up_concat_launch.launch

    def launch(kernel, grid, *args, **kwargs):
        if "FLAT_SKIP" in kwargs:
            seen.append(kwargs["FLAT_SKIP"])
        return original(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(up_concat_launch, "launch", launch)
    return seen


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("skip_first", [False, True], ids=["up-first", "skip-first"])
@pytest.mark.parametrize("step", UNEVEN_STEPS, ids=UNEVEN_IDS)
def test_kernel_differing_per_axis(monkeypatch, path, step, skip_first):
    select_path(monkeypatch, path)
    args = make_step(*step, torch.float32)
    out = up_concat(*args, skip_first=skip_first)
    assert_close_to_reference(out, reference_out(*args, True, skip_first), torch.float32, "out")
    grads_against_reference(args, True, torch.float32, skip_first=skip_first)


def _cropped_w(n, c, h, w, extra=3):
    """[n, c, h, w] cropped along W from a wider tensor: H's stride is w + extra, not w."""
    return randn(n, c, h, w + extra)[..., :w]


def _irregular_depth(n, c, d, h, w):
    """[n, c, d, h, w] with regular H/W strides (h*w pixels flat per slice) but a depth stride of
    (h + 1) * w: cropped along H from a taller volume."""
    return randn(n, c, d, h + 1, w)[:, :, :, :h]


def _backward_with_grad(args, grad, relu, skip_first, what):
    leaves = [t.detach().requires_grad_() for t in args]
    got = torch.autograd.grad(up_concat(*leaves, relu=relu, skip_first=skip_first), leaves, grad)
    ref_leaves = [t.detach().double().requires_grad_() for t in args]
    want = torch.autograd.grad(reference_out(*ref_leaves, relu, skip_first), ref_leaves, grad.double())
    for name, g, w in zip(("dx", "dskip", "dweight", "dbias"), got, want):
        assert_close_to_reference(g, w, torch.float32, f"{name} ({what})")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "none"])
@pytest.mark.parametrize("dims", [2, 3])
def test_skip_and_grad_not_flat_over_spatial_dims(monkeypatch, path, dims, relu):
    select_path(monkeypatch, path)
    flat_skip = _record_flat_skip(monkeypatch, path)
    n, cin, cout, cs = 2, 3, 2, 3
    if dims == 2:
        spatial, kernel = (3, 2), (2, 2)                       # skip 6 x 4: H != W
        skip, grad_of = _cropped_w(n, cs, 6, 4), lambda shape: _cropped_w(*shape)
    else:
        spatial, kernel = (2, 2, 1), (1, 2, 2)                 # skip 2 x 4 x 2
        skip, grad_of = _irregular_depth(n, cs, 2, 4, 2), lambda shape: _irregular_depth(*shape)
    x, _, weight, bias = make_step(n, cin, cout, cs, spatial, kernel, torch.float32)
    assert not skip.is_contiguous()
    for skip_first in (False, True):
        args = (x, skip, weight, bias)
        out = up_concat(*args, relu=relu, skip_first=skip_first)
        assert_close_to_reference(out, reference_out(*args, relu, skip_first), torch.float32, "out")
        grad = grad_of(tuple(out.shape))
        assert not grad.is_contiguous()
        _backward_with_grad(args, grad, relu, skip_first, f"{dims}-D, strided skip and grad")
    if path == "triton":
        assert False in flat_skip, f"the strided copy never ran: FLAT_SKIP was {flat_skip}"

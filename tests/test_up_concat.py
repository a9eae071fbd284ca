"""Forward of the fused op against unet_fast.reference, on the Triton kernels and the PyTorch path."""
import pytest
import torch

import unet_fast
from unet_fast import up_concat
from helpers import (DEVICE, DTYPES, LAYOUTS, PATHS, SHAPES, assert_close_to_reference, layout_inputs,
                     make_inputs, randn, reference_out, select_path, spy_on_triton_launches)

@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_matches_reference(monkeypatch, path, shape, dtype, relu):
    select_path(monkeypatch, path)
    args = make_inputs(*shape, dtype)
    out = up_concat(*args, relu=relu)
    assert out.dtype == dtype and out.device.type == DEVICE.type
    assert_close_to_reference(out, reference_out(*args, relu), dtype, "out")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_forward_layouts(monkeypatch, path, layout, dtype):
    select_path(monkeypatch, path)
    args = layout_inputs(layout, dtype)
    out = up_concat(*args)
    assert_close_to_reference(out, reference_out(*args, True), dtype, f"out ({layout})")
    # The result keeps x's memory format.
    x = args[0]
    channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@pytest.mark.parametrize("path", PATHS)
def test_forward_without_bias(monkeypatch, path):
    select_path(monkeypatch, path)
    args = make_inputs(2, 5, 6, 7, 3, 4, torch.float32, bias=False)
    assert_close_to_reference(up_concat(*args), reference_out(*args, True), torch.float32, "out")


@pytest.mark.parametrize("path", PATHS)
def test_empty_batch(monkeypatch, path):
    select_path(monkeypatch, path)
    args = make_inputs(0, 5, 6, 7, 3, 4, torch.float32)
    out = up_concat(*args)
    assert out.shape == (0, 13, 6, 8)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("relu", [True, False])
def test_nan_and_inf_propagate_as_in_reference(monkeypatch, path, relu):
    select_path(monkeypatch, path)
    x, skip, weight, bias = make_inputs(1, 4, 5, 3, 3, 3, torch.float32)
    x[0, 1, 1, 1] = float("nan")
    x[0, 2, 0, 2] = float("inf")
    skip[0, 0, 2, 3] = float("nan")
    skip[0, 1, 4, 4] = float("-inf")
    skip[0, 2, 1, 1] = float("inf")
    out = up_concat(x, skip, weight, bias, relu=relu)
    expected = reference_out(x, skip, weight, bias, relu)
    assert expected.isnan().any() and expected.isinf().any()  # the test really exercises both
    assert_close_to_reference(out, expected, torch.float32, "out")


def test_triton_path_runs_the_triton_kernel(monkeypatch):
    """With the Triton path selected (compiled on a GPU, TRITON_INTERPRET=1 on the CPU), the op
    launches the Triton kernel once and never touches the PyTorch path."""
    from unet_fast.kernels import up_concat_forward as fwd_module

    select_path(monkeypatch, "triton")
    launches = spy_on_triton_launches(monkeypatch, fwd_module, "forward")
    args = make_inputs(1, 3, 4, 5, 2, 3, torch.float32)
    out = up_concat(*args)
    assert len(launches) == 1, "exactly one kernel launch per forward"
    assert_close_to_reference(out, reference_out(*args, True), torch.float32, "out")


@pytest.mark.gpu  # on a GPU a wrapped int32 offset is an illegal memory access, not a wrong value
def test_offsets_past_2_31_elements(monkeypatch):
    """Views whose images lie up to 2**31 elements past their start, forward and backward: every
    image, pixel and channel offset must be computed in int64.

    Three images with an image stride of 2**30: Triton passes an integer below 2**31 as int32, so
    image 2's offset 2 * 2**30 = 2**31 overflows unless the image index itself is int64. (With a
    stride of 2**31, which arrives as int64, an int32 pixel index would pass unnoticed.) Each view
    starts 2**31 elements into one float16 storage, so an offset that wraps to -2**31 still
    lands inside it: the bug gives wrong values and a clean failure, not a crash. The storage is
    reserved but, beyond each image's few elements, never touched, so this costs little memory."""
    from unet_fast.kernels.up_concat_launch import launch_forward  # it takes out=

    select_path(monkeypatch, "triton")
    n, cin, cout, cs, h, w = 3, 3, 2, 2, 2, 2
    stride, start = 2**30, 2**31
    x_len, out_len = cin * h * w, (cout + cs) * 4 * h * w
    store = torch.empty(start + (n - 1) * stride + x_len + 2 * out_len, dtype=torch.float16, device=DEVICE)

    def images(offset, c, hh, ww):  # image k at store[start + offset + k * stride:], dense inside
        return store.as_strided((n, c, hh, ww), (stride, hh * ww, ww, 1), storage_offset=start + offset)

    x = images(0, cin, h, w)
    out = images(x_len, cout + cs, 2 * h, 2 * w)
    grad = images(x_len + out_len, cout + cs, 2 * h, 2 * w)
    x.copy_(randn(n, cin, h, w, dtype=torch.float16))
    out.fill_(float("nan"))
    skip = randn(n, cs, 2 * h, 2 * w, dtype=torch.float16)
    weight = randn(cin, cout, 2, 2, dtype=torch.float16)
    bias = randn(cout, dtype=torch.float16)
    launch_forward(x, skip, weight, bias, relu=True, skip_first=False, out=out)
    assert_close_to_reference(out, reference_out(x, skip, weight, bias, True), torch.float16, "out")

    leaves = [t.double().requires_grad_() for t in (x, skip, weight, bias)]
    with torch.no_grad():
        pre = reference_out(*leaves, False)
    # No gradient where the output is within float16 rounding of the ReLU's kink (ill-defined).
    grad.copy_(randn(*pre.shape, dtype=torch.float16).masked_fill(pre.abs() < 1e-3 * pre.abs().max(), 0))
    reference_out(*leaves, True).backward(grad.double())
    got = torch.ops.unet_fast.up_concat_backward(grad, out, x, weight, True, False)
    for name, g, leaf in zip(("dx", "dskip", "dweight", "dbias"), got, leaves):
        assert_close_to_reference(g, leaf.grad, torch.float16, name)


def test_this_run_tests_the_triton_kernels(monkeypatch):
    """conftest.py asks torch whether the kernels can run compiled and otherwise turns Triton's
    interpreter on, so the kernel tests run them here. (Asked of nvidia-smi, it once left the
    interpreter off on a machine with an NVIDIA driver and a CPU torch: every kernel test skipped
    and the run passed.)"""
    monkeypatch.delenv("UNET_FAST_DISABLE_TRITON", raising=False)
    assert unet_fast.uses_triton(torch.empty(0, device=DEVICE)), "the Triton kernels would not run"


def test_kernel_tests_fail_rather_than_skip_where_the_kernels_cannot_run(monkeypatch):
    from unet_fast.ops import up_concat_op

    monkeypatch.setattr(up_concat_op, "_triton_common", None)  # as where the kernels fail to import
    # pytest's skip and fail outcomes are BaseExceptions: catch either, then tell them apart.
    with pytest.raises(BaseException) as info:
        select_path(monkeypatch, "triton")
    assert info.type is pytest.fail.Exception, f"{info.type.__name__}: {info.value}"
    assert "could not import the Triton kernels" in str(info.value)

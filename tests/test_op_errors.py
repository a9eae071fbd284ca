"""Bad input gets a TypeError/ValueError naming the argument, before any kernel launches."""
import numpy as np
import pytest
import torch

from unet_fast import ReferenceUNet, UNet, reference, up_concat
from unet_fast.ops import torch_path, up_concat_op
from unet_fast.ops.layout import CHANNELS_LAST
from helpers import DEVICE, PATHS, assert_close_to_reference, make_step, reference_out, select_path


def good(**changes):
    args = dict(
        x=torch.randn(2, 3, 4, 5, device=DEVICE),
        skip=torch.randn(2, 6, 8, 10, device=DEVICE),
        weight=torch.randn(3, 7, 2, 2, device=DEVICE),
        bias=torch.randn(7, device=DEVICE),
        relu=True,
    )
    args.update(changes)
    return args


CASES = [
    # (changes, exception, words the message must contain)
    (dict(x=torch.randn(3, 4, 5)), ValueError, ["x", "4-D", "(3, 4, 5)"]),
    (dict(x=[[1.0]]), TypeError, ["x", "torch.Tensor"]),
    (dict(skip=torch.randn(2, 6, 8)), ValueError, ["skip", "4-D"]),
    (dict(skip=torch.randn(2, 6, 8, 11)), ValueError, ["skip", "[N=2, Cs>=1, 8, 10]", "(2, 6, 8, 11)"]),
    (dict(skip=torch.randn(2, 6, 9, 10)), ValueError, ["skip", "(2, 6, 9, 10)"]),
    (dict(skip=torch.randn(3, 6, 8, 10)), ValueError, ["skip", "batch size 3", "x's 2"]),
    (dict(weight=torch.randn(4, 7, 2, 2)), ValueError, ["weight", "[Cin=3, Cout, k, k]", "(4, 7, 2, 2)"]),
    # A 3x3 kernel is a valid step (stride 3), but then skip must be 3x x's size.
    (dict(weight=torch.randn(3, 7, 3, 3)), ValueError, ["skip", "[N=2, Cs>=1, 12, 15]", "kernel size [3, 3]"]),
    (dict(weight=torch.randn(3, 7, 2, 0)), ValueError, ["weight", "(3, 7, 2, 0)"]),
    (dict(weight=torch.randn(3, 7, 2, 2, 2)), ValueError, ["weight", "(3, 7, 2, 2, 2)"]),
    (dict(stride=(2, 1)), ValueError, ["stride", "kernel size [2, 2]", "(2, 1)"]),
    (dict(skip_first=None), TypeError, ["skip_first", "bool"]),
    (dict(x=torch.randn(2, 3, 4, 5, 6, 7)), ValueError, ["x", "5-D", "(2, 3, 4, 5, 6, 7)"]),
    # Volumes: x [2, 3, 2, 4, 5] with a 1x2x2 kernel wants skip [2, Cs, 2, 8, 10].
    (dict(x=torch.randn(2, 3, 2, 4, 5), weight=torch.randn(3, 7, 1, 2, 2), skip=torch.randn(2, 6, 4, 8, 10)),
     ValueError, ["skip", "[N=2, Cs>=1, 2, 8, 10]", "(2, 6, 4, 8, 10)"]),
    (dict(x=torch.randn(2, 3, 2, 4, 5), weight=torch.randn(3, 7, 2, 2), skip=torch.randn(2, 6, 4, 8, 10)),
     ValueError, ["weight", "ConvTranspose3d", "(3, 7, 2, 2)"]),
    (dict(weight=torch.randn(3, 7)), ValueError, ["weight", "(3, 7)"]),
    (dict(bias=torch.randn(6)), ValueError, ["bias", "[Cout=7]", "(6,)"]),
    (dict(bias=torch.randn(7, 1)), ValueError, ["bias", "(7, 1)"]),
    (dict(bias=torch.randn(7, dtype=torch.float64)), TypeError, ["bias=torch.float64", "one dtype"]),
    (dict(skip=torch.randn(2, 6, 8, 10, dtype=torch.float16)), TypeError, ["skip=torch.float16"]),
    (dict(x=torch.ones(2, 3, 4, 5, dtype=torch.int32)), TypeError, ["x", "torch.int32"]),
    (dict(relu=1), TypeError, ["relu", "bool"]),
    (dict(x=torch.randn(2, 3, 0, 5)), ValueError, ["x", "spatial size >= 1"]),
    (dict(skip=torch.randn(2, 0, 8, 10)), ValueError, ["skip", "Cs>=1"]),
]


def _case_id(value) -> str:
    """A test id from a case's changes that names tensors by shape and dtype, not by their random
    values: the same on every collection (pytest-xdist's workers must agree)."""
    if not isinstance(value, dict):
        return ""
    return ",".join(f"{k}={list(v.shape)}{str(v.dtype)[6:]}" if isinstance(v, torch.Tensor) else f"{k}={v!r}"
                    for k, v in value.items())


@pytest.mark.parametrize("changes,exc,words", CASES, ids=_case_id)
def test_up_concat_rejects_bad_input(monkeypatch, changes, exc, words):
    # Both implementations fail loudly if they are reached: the check must come first.
    def reached(*args, **kwargs):
        pytest.fail("up_concat ran before rejecting its input")

    monkeypatch.setattr(up_concat_op, "_triton_forward", reached)
    monkeypatch.setattr(torch_path, "forward", reached)
    args = good(**{k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in changes.items()})
    with pytest.raises(exc) as info:
        up_concat(**args)
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
def test_up_concat_rejects_mixed_devices():
    with pytest.raises(ValueError, match="one device"):
        up_concat(**good(bias=torch.randn(7)))


def test_mixed_devices_message_names_each_tensor():
    # A CPU-only stand-in for the check: the meta device is a second device everywhere.
    with pytest.raises(ValueError, match=r"bias=meta"):
        up_concat(**good(bias=torch.randn(7, device="meta")))


@pytest.mark.parametrize("model_class", [UNet, ReferenceUNet])
@pytest.mark.parametrize("image,exc,words", [
    (torch.rand(3, 16, 16), ValueError, ["x", "4-D", "(3, 16, 16)"]),
    (torch.rand(1, 4, 16, 16), ValueError, ["x", "3 channels", "(1, 4, 16, 16)"]),
    (torch.ones(1, 3, 16, 16, dtype=torch.uint8), TypeError, ["x", "floating-point", "uint8"]),
    ("image.png", TypeError, ["x", "torch.Tensor", "str"]),
])
def test_models_reject_bad_input(model_class, image, exc, words):
    with pytest.raises(exc) as info:
        model_class(base_channels=2)(image)
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


@pytest.mark.parametrize("kwargs,exc,word", [
    (dict(in_channels=0), ValueError, "in_channels"),
    (dict(out_channels=2.0), ValueError, "out_channels"),
    (dict(base_channels=-1), ValueError, "base_channels"),
    (dict(up_relu="yes"), TypeError, "up_relu"),
])
def test_models_reject_bad_arguments(kwargs, exc, word):
    with pytest.raises(exc, match=word):
        UNet(**kwargs)


@pytest.mark.parametrize("value, disabled", [("1", True), ("true", True), ("YES", True), ("on", True),
                                             ("0", False), ("false", False), ("No", False), ("", False)])
def test_disable_triton_variable_reads_as_people_write_booleans(monkeypatch, value, disabled):
    from unet_fast.kernels import common
    monkeypatch.setattr(common, "interpreting", lambda: True)  # so that Triton would run unless disabled
    monkeypatch.setattr(common, "interpreter_problem", lambda: None)
    monkeypatch.setenv("UNET_FAST_DISABLE_TRITON", value)
    assert up_concat_op.uses_triton(torch.empty(0)) is (not disabled)


def test_disable_triton_variable_refuses_what_it_cannot_read(monkeypatch):
    monkeypatch.setenv("UNET_FAST_DISABLE_TRITON", "banana")
    with pytest.raises(ValueError, match="UNET_FAST_DISABLE_TRITON='banana'"):
        up_concat_op.uses_triton(torch.empty(0))


# The registered op itself checks its arguments (a direct torch.ops.unet_fast.up_concat call skips
# the wrapper): each of these once left uninitialized memory in the result, broadcast skip, or let
# a kernel read past a tensor's end, on one path or the other.
DIRECT_CASES = [
    # (changes, the argument the message must name)
    (dict(skip=torch.randn(2, 6, 8, 9)), "skip"),               # short skip
    (dict(skip=torch.randn(1, 6, 8, 10)), "skip"),              # batch-1 skip for a batch-2 x
    (dict(bias=torch.randn(6)), "bias"),                        # short bias
    (dict(weight=torch.randn(4, 7, 2, 2)), "weight"),           # Cin of weight != x's
    (dict(weight=torch.randn(2, 7, 2, 2)), "weight"),           # x has channels weight does not read
]


def _no_launch(monkeypatch):
    """Make every kernel launch and the PyTorch path fail: the check must come first."""
    from unet_fast.kernels import up_concat_launch

    def reached(*args, **kwargs):
        pytest.fail("the op ran (a kernel launched or the PyTorch path started) before rejecting its input")

    monkeypatch.setattr(up_concat_launch, "launch", reached)
    monkeypatch.setattr(torch_path, "forward", reached)
    monkeypatch.setattr(torch_path, "backward", reached)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("changes,name", DIRECT_CASES, ids=_case_id)
def test_direct_op_rejects_bad_input_before_launching(monkeypatch, path, changes, name):
    select_path(monkeypatch, path)
    _no_launch(monkeypatch)
    args = good(**{k: v.to(DEVICE) for k, v in changes.items()})
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        torch.ops.unet_fast.up_concat(args["x"], args["skip"], args["weight"], args["bias"], True, False)


def _backward_args(**changes):
    a = good()
    args = dict(grad=torch.randn(2, 13, 8, 10, device=DEVICE), out=torch.randn(2, 13, 8, 10, device=DEVICE),
                x=a["x"], weight=a["weight"], has_bias=True, skip_first=False)
    args.update(changes)
    return args


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("changes,exc,name", [
    (dict(grad=torch.randn(2, 13, 8, 9)), ValueError, "grad"),
    (dict(grad=torch.randn(1, 13, 8, 10)), ValueError, "grad"),
    (dict(grad=torch.randn(2, 7, 8, 10)), ValueError, "grad"),        # no skip channels
    (dict(grad=torch.randn(2, 13, 8)), ValueError, "grad"),
    (dict(grad=torch.randn(2, 13, 8, 10, dtype=torch.float64)), TypeError, "grad"),
    (dict(out=torch.randn(2, 12, 8, 10)), ValueError, "out"),
    (dict(weight=torch.randn(4, 7, 2, 2)), ValueError, "weight"),
], ids=_case_id)
def test_backward_op_rejects_bad_input_before_launching(monkeypatch, path, changes, exc, name):
    select_path(monkeypatch, path)
    _no_launch(monkeypatch)
    args = _backward_args(**{k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in changes.items()})
    with pytest.raises(exc, match=rf"\b{name}\b") as info:
        torch.ops.unet_fast.up_concat_backward(*args.values())
    assert "grad" in str(info.value) or name != "grad"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("grad_up,exc", [
    (torch.randn(2, 13, 8, 10), ValueError),                        # the whole grad, skip channels too
    (torch.randn(2, 7, 8, 9), ValueError),
    (torch.randn(1, 7, 8, 10), ValueError),
    (torch.randn(2, 7, 8, 10, dtype=torch.float64), TypeError),
], ids=["skip channels too", "width", "batch", "dtype"])
def test_conv_backward_op_rejects_bad_input_before_launching(monkeypatch, path, grad_up, exc):
    """The transposed convolution's backward (a step without ReLU) takes the upsampled channels'
    gradient alone, [N, Cout, *(S * k)]."""
    select_path(monkeypatch, path)
    _no_launch(monkeypatch)
    a = good()
    with pytest.raises(exc, match=r"\bgrad_up\b"):
        torch.ops.unet_fast.up_concat_conv_backward(grad_up.to(DEVICE), a["x"], a["weight"], True)


def test_fake_implementation_checks_too():
    """torch.compile and torch.export trace the op with fake tensors: bad shapes fail there, with
    the same message, instead of at run time."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        a = {k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in good().items()}
        with pytest.raises(ValueError, match="skip's batch size 1"):
            torch.ops.unet_fast.up_concat(a["x"], a["skip"][:1], a["weight"], a["bias"], True, False)
        with pytest.raises(ValueError, match="grad must have"):
            torch.ops.unet_fast.up_concat_backward(a["skip"], None, a["x"], a["weight"], True, False)


@pytest.mark.parametrize("stride", [np.int64(2), np.int32(2), torch.tensor(2), (np.int64(2), np.int64(2)),
                                    [2, torch.tensor(2)], (2, 2)],
                         ids=["np.int64", "np.int32", "0-d tensor", "tuple of np.int64", "list", "tuple"])
def test_stride_accepts_integers_of_any_kind(stride):
    args = good()
    assert torch.equal(up_concat(**args, stride=stride), up_concat(**args, stride=2))


@pytest.mark.parametrize("stride", [2.0, True, torch.tensor(2.0), torch.tensor(True), (2,), (2, 2, 2), "2",
                                    (2.0, 2), torch.tensor([2, 2]), np.float64(2.0)],
                         ids=["float", "bool", "float tensor", "bool tensor", "one value for 2-D",
                              "three values for 2-D", "str", "tuple with a float", "1-d tensor", "np.float64"])
def test_stride_refuses_what_is_not_integers(monkeypatch, stride):
    _no_launch(monkeypatch)
    with pytest.raises((TypeError, ValueError), match="stride must be "):
        up_concat(**good(), stride=stride)


@pytest.mark.parametrize("kernel,stride", [((2, 2, 2), 2), ((2, 2, 2), np.int64(2)), ((1, 2, 2), (1, 2, 2)),
                                           ((3, 3, 3), torch.tensor(3))], ids=str)
def test_stride_of_a_3d_step(kernel, stride):
    x, skip, weight, bias = make_step(1, 2, 3, 2, (2, 1, 2), kernel, torch.float32)
    out = up_concat(x, skip, weight, bias, stride=stride)
    assert_close_to_reference(out, reference_out(x, skip, weight, bias, True), torch.float32, "out")
    with pytest.raises(ValueError, match="stride must equal the kernel size"):
        up_concat(x, skip, weight, bias, stride=4)


def _both_layouts(shape, strides_like):
    """A tensor of `shape` that is contiguous AND channels-last (size-1 dims, or C == 1), with the
    strides of `strides_like` ("channels_last": torch.empty(..., memory_format=channels_last),
    "contiguous": torch.randn's)."""
    fmt = CHANNELS_LAST[len(shape)] if strides_like == "channels_last" else torch.contiguous_format
    t = torch.empty(shape, device=DEVICE, memory_format=fmt).normal_()
    assert t.is_contiguous() and t.is_contiguous(memory_format=CHANNELS_LAST[len(shape)])
    return t


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("strides_like", ["channels_last", "contiguous"])
# Batch 2: on the CPU, nn.ConvTranspose3d of a single volume returns a contiguous result whatever
# the input's layout, so a batch of one says nothing about the rule.
@pytest.mark.parametrize("x_shape", [(2, 3, 1, 1), (2, 1, 3, 2), (2, 3, 1, 1, 1), (2, 1, 2, 1, 3)], ids=str)
def test_output_memory_format_of_an_input_both_contiguous_and_channels_last(monkeypatch, path, x_shape,
                                                                             strides_like):
    """The result is laid out as nn.ConvTranspose + torch.cat lay out theirs (skip in the layout
    x's strides suggest, so that cat keeps it)."""
    select_path(monkeypatch, path)
    x = _both_layouts(x_shape, strides_like)
    fmt = CHANNELS_LAST[x.dim()] if strides_like == "channels_last" else torch.contiguous_format
    skip = torch.randn(x_shape[0], 2, *(2 * s for s in x_shape[2:]), device=DEVICE).contiguous(memory_format=fmt)
    weight = torch.randn(x_shape[1], 3, *(2,) * (x.dim() - 2), device=DEVICE)
    bias = torch.randn(3, device=DEVICE)
    out = up_concat(x, skip, weight, bias)
    want = reference.up_concat(x, skip, weight, bias)
    for f in (torch.contiguous_format, CHANNELS_LAST[x.dim()]):
        assert out.is_contiguous(memory_format=f) == want.is_contiguous(memory_format=f), \
            f"result strides {out.stride()}, nn.ConvTranspose + cat give {want.stride()}"
    assert_close_to_reference(out, reference_out(x, skip, weight, bias, True), torch.float32, "out")

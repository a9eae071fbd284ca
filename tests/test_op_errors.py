"""Bad input gets a TypeError/ValueError naming the argument, before any kernel launches."""
import pytest
import torch

from unet_fast import ReferenceUNet, UNet, up_concat
from unet_fast.ops import torch_path, up_concat_op
from helpers import DEVICE


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

"""The torch.library registration: opcheck, and torch.compile(fullgraph=True) with no graph break."""
import pytest
import torch

from unet_fast import ReferenceUNet, UNet, reference, up_concat
from helpers import DEVICE, PATHS, assert_close_to_reference, make_inputs, select_path


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=str)
def test_opcheck_up_concat(monkeypatch, path, relu, layout):
    select_path(monkeypatch, path)
    x, skip, weight, bias = [t.requires_grad_() for t in make_inputs(2, 3, 4, 5, 2, 3, torch.float32,
                                                                     memory_format=layout)]
    torch.library.opcheck(torch.ops.unet_fast.up_concat.default, (x, skip, weight, bias, relu, False))
    torch.library.opcheck(torch.ops.unet_fast.up_concat.default, (x, skip, weight, None, relu, True))


@pytest.mark.parametrize("path", PATHS)
def test_opcheck_up_concat_backward(monkeypatch, path):
    select_path(monkeypatch, path)
    x, skip, weight, bias = make_inputs(2, 3, 4, 5, 2, 3, torch.float32)
    out = up_concat(x, skip, weight, bias)
    grad = torch.randn_like(out)
    torch.library.opcheck(torch.ops.unet_fast.up_concat_backward.default, (grad, out, x, weight, True, False))
    torch.library.opcheck(torch.ops.unet_fast.up_concat_backward.default, (grad, None, x, weight, False, True))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=str)
def test_opcheck_up_concat_conv_backward(monkeypatch, path, layout):
    """The backward of a step without ReLU: grad's upsampled channels as a slice (not contiguous)."""
    select_path(monkeypatch, path)
    x, skip, weight, bias = make_inputs(2, 3, 4, 5, 2, 3, torch.float32, memory_format=layout)
    grad = torch.randn_like(up_concat(x, skip, weight, bias, relu=False))
    cout, cs = weight.shape[1], skip.shape[1]
    torch.library.opcheck(torch.ops.unet_fast.up_concat_conv_backward.default, (grad[:, :cout], x, weight, True))
    torch.library.opcheck(torch.ops.unet_fast.up_concat_conv_backward.default, (grad[:, cs:], x, weight, False))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=str)
def test_opcheck_up_concat_masked(monkeypatch, path, layout):
    """The training forward (result and ReLU mask bits) and the backward that reads the bits."""
    select_path(monkeypatch, path)
    x, skip, weight, bias = [t.requires_grad_() for t in make_inputs(2, 3, 11, 5, 2, 3, torch.float32,
                                                                     memory_format=layout)]
    torch.library.opcheck(torch.ops.unet_fast.up_concat_masked.default, (x, skip, weight, bias, False))
    torch.library.opcheck(torch.ops.unet_fast.up_concat_masked.default, (x, skip, weight, None, True))
    out, bits = torch.ops.unet_fast.up_concat_masked(x, skip, weight, bias, False)
    grad = torch.randn_like(out)
    args = (grad, bits, x.detach(), weight.detach())
    torch.library.opcheck(torch.ops.unet_fast.up_concat_masked_backward.default, (*args, True, False))
    torch.library.opcheck(torch.ops.unet_fast.up_concat_masked_backward.default, (*args, False, True))


@pytest.mark.parametrize("path", PATHS)
def test_compiled_training_step_takes_the_masked_op(monkeypatch, path):
    """torch.compile(fullgraph=True) of a training step with ReLU: the masked op where the kernels
    run (the plain op on the PyTorch path), gradients as the reference's."""
    select_path(monkeypatch, path)
    torch._dynamo.reset()
    x, skip, weight, bias = [t.requires_grad_() for t in make_inputs(2, 3, 11, 5, 2, 3, torch.float32)]
    step = torch.compile(lambda *a: up_concat(*a, relu=True).square().sum(), fullgraph=True)
    step(x, skip, weight, bias).backward()
    leaves = [t.detach().double().requires_grad_() for t in (x, skip, weight, bias)]
    reference.up_concat(*leaves, relu=True).square().sum().backward()
    for name, got, want in zip(("x", "skip", "weight", "bias"), (x, skip, weight, bias), leaves):
        assert_close_to_reference(got.grad, want.grad, torch.float32, f"compiled grad of {name}")


@pytest.mark.gpu  # run by benchmarks/gpu_run.sh too: torch.compile of UNet, compiled kernels
@pytest.mark.parametrize("path", PATHS)
def test_compiled_unet_fullgraph_forward_and_backward(monkeypatch, path):
    select_path(monkeypatch, path)
    torch._dynamo.reset()
    model = UNet(base_channels=4).to(DEVICE)
    ref = ReferenceUNet(base_channels=4).to(DEVICE).double()
    ref.load_state_dict(model.state_dict())
    compiled = torch.compile(model, fullgraph=True)
    image = torch.rand(2, 3, 16, 24, device=DEVICE)
    out = compiled(image)
    expected = ref(image.double())
    assert_close_to_reference(out, expected, torch.float32, "compiled logits")
    out.square().mean().backward()
    expected.square().mean().backward()
    params64 = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        assert_close_to_reference(p.grad, params64[name].grad, torch.float32, f"compiled grad of {name}")


def test_triton_36_interpreter_with_numpy_24_is_refused_clearly(monkeypatch):
    """Triton 3.6's interpreter fails in every kernel with numpy >= 2.4: say so, naming the fix."""
    import numpy
    import triton
    from unet_fast.kernels import common
    from unet_fast.ops.up_concat_op import uses_triton

    monkeypatch.setattr(triton, "__version__", "3.6.0")
    monkeypatch.setattr(numpy, "__version__", "2.4.1")
    monkeypatch.setattr(common, "interpreting", lambda: True)
    with pytest.raises(RuntimeError, match=r"numpy<2.4"):
        uses_triton(torch.empty(0))
    monkeypatch.setattr(numpy, "__version__", "2.3.5")
    assert common.interpreter_problem() is None
    monkeypatch.setattr(triton, "__version__", "3.9.0")
    monkeypatch.setattr(numpy, "__version__", "2.4.1")
    assert common.interpreter_problem() is None

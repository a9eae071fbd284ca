"""A fused model's copies compute with their own modules: DataParallel's replicas, copy.deepcopy,
torch.save / torch.load; and the ways torch turns a model into another (torch.jit.script,
torch.jit.trace, torch.compile's wrapper) work on a fused model. The PyTorch path."""
import copy
import io

import pytest
import torch

from unet_fast.adapters import fuse_report
from helpers import DEVICE, assert_close_to_reference, select_path
from test_fuse_common import count_fused_calls, fused_twin, require

require("dynamic_network_architectures")
require("monai")
from monai.networks.nets import DynUNet  # noqa: E402
from test_fuse_monai import basic_unet  # noqa: E402
from test_fuse_nnunet import plain_conv_unet  # noqa: E402


def cpu_replica(model):
    """What torch.nn.parallel.replicate builds for one device, on the CPU (replicate itself
    broadcasts to CUDA devices only): each module's _replicate_for_data_parallel(), wired to the
    replicated children, holding its own copies of the parameters."""
    replicas = {m: m._replicate_for_data_parallel() for m in model.modules()}
    for m, replica in replicas.items():
        for name, sub in m._modules.items():
            replica._modules[name] = replicas[sub] if sub is not None else None
        for name, p in m._parameters.items():
            setattr(replica, name, p.detach().clone() if p is not None else None)
    return replicas[model]


def _scramble(model):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))


def _saved_and_loaded(model):
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("how", ["replicate", "deepcopy", "pickle"])
def test_a_copy_of_a_fused_model_computes_with_its_own_modules(monkeypatch, how):
    """The copy is taken, then the original's weights change: the copy's output is still the
    unfused model's at the old weights, through the fused op, and its calls count on its own."""
    select_path(monkeypatch, "torch")
    model, reference = fused_twin(lambda: plain_conv_unet(2).double())
    clone = {"replicate": cpu_replica, "deepcopy": copy.deepcopy, "pickle": _saved_and_loaded}[how](model)
    _scramble(model)
    assert type(clone.decoder) is type(model.decoder)
    calls = count_fused_calls(monkeypatch)
    x = torch.randn(2, 1, 16, 16, device=DEVICE, dtype=torch.float64)
    with torch.no_grad():
        assert_close_to_reference(clone(x), reference(x), torch.float64, f"{how} output")
    assert len(calls) == 2
    if how != "replicate":  # a replica shares its original's counters, as DataParallel's replicas do
        assert [c.fused for c in fuse_report(clone).calls.values()] == [1, 1]
        assert [c.fused for c in fuse_report(model).calls.values()] == [0, 0]


@pytest.mark.parametrize("make, shape", [
    (lambda: basic_unet(2), (1, 1, 32, 32)),
    (lambda: DynUNet(2, 1, 2, [3, 3, 3], [1, 2, 2], [2, 2], filters=[4, 8, 8]), (1, 1, 16, 16)),
], ids=["basicunet", "dynunet"])
def test_torch_jit_script_of_a_fused_monai_model_runs_monais_code(monkeypatch, make, shape):
    """torch.jit.script compiles MONAI's own forward (no fused op in TorchScript), equal to the
    unfused model; the fused model itself is left fused."""
    select_path(monkeypatch, "torch")
    model, reference = fused_twin(lambda: make().double())
    model.eval(), reference.eval()
    scripted = torch.jit.script(model)
    calls = count_fused_calls(monkeypatch)
    x = torch.randn(*shape, device=DEVICE, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(scripted(x), reference(x)) and calls == []
        assert_close_to_reference(model(x), reference(x), torch.float64, "fused output after scripting")
    assert len(calls) == len(fuse_report(model).fused)


def test_torch_jit_trace_of_a_fused_model_records_the_library_code(monkeypatch):
    """A trace records MONAI's operations (the fused op's Python dispatch cannot be traced); the
    traced model equals the unfused one, and the report counts the traced calls."""
    select_path(monkeypatch, "torch")
    model, reference = fused_twin(lambda: basic_unet(2).double())
    model.eval(), reference.eval()
    x = torch.randn(1, 1, 32, 32, device=DEVICE, dtype=torch.float64)
    with torch.no_grad(), pytest.warns(UserWarning, match="tracing"):
        traced = torch.jit.trace(model, x, check_trace=False)
    calls = count_fused_calls(monkeypatch)
    y = torch.randn(2, 1, 32, 32, device=DEVICE, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(traced(y), reference(y)) and calls == []
    assert all(c.library == {"tracing": 1} and c.fused == 0 for c in fuse_report(model).calls.values())


def test_torch_compile_of_a_fused_monai_model_keeps_one_op_per_step(monkeypatch):
    """torch.compile(fullgraph=True) traces the per-call checks of every step (no graph break) and
    keeps one op node per step; fuse_report of the compiled model is the model's, and a compiled
    graph's calls are not counted (it replays no Python)."""
    select_path(monkeypatch, "torch")
    model, reference = fused_twin(lambda: basic_unet(2))
    nodes = []

    def eager_counting_nodes(gm, example_inputs):
        nodes.extend(n for n in gm.graph.nodes if "unet_fast.up_concat" in str(n.target))
        return gm.forward

    x = torch.randn(1, 1, 32, 32, device=DEVICE)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=eager_counting_nodes, fullgraph=True)
    assert_close_to_reference(compiled(x), reference(x), torch.float32, "compiled output")
    assert len(nodes) == 4, nodes
    report = fuse_report(compiled)
    assert report is fuse_report(model) and len(report.fused) == 4
    assert all(c.fused == 0 and not c.library for c in report.calls.values())

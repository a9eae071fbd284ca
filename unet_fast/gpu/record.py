"""Record mode: run a part of the GPU run on this CPU and record every Triton launch it makes.

Inside `record_mode(capability)`:
- the op (unet_fast.ops.up_concat_op) takes its Triton path for CPU tensors, as it does for CUDA
  ones (`uses_triton` is replaced, in every loaded module that imported it, by one that says yes
  unless UNET_FAST_DISABLE_TRITON is set);
- every launch the launchers make (kernels/up_concat_launch.py `launch`, through
  `recording_launches`) is compiled-not-run for sm_<capability> under the offline target: Triton's
  `knobs.runtime.jit_cache_hook` receives its serialized specialization (exactly what `preload`
  needs to compile it later) and stops the compile;
- the launchers' results are then filled in by PyTorch (`launch_forward` / `launch_backward` are
  wrapped: the same buffers, written with the reference math), so the part's own code (its
  asserts, its gradients) runs to the end on CPU tensors unchanged;
- the weight-gradient split count is the H200's (132 SMs), as on the GPU: it is an integer
  argument of a kernel, so its divisibility by 16 selects a compiled kernel too;
- meta tensors (shapes and strides, no storage) launch too: the ops' Meta kernels (unet_fast::up_concat,
  its masked variant for training, and their backward ops), their fake implementations, are
  overridden for the block by the ops' own implementations (a row's error against the reference
  reads NaN there: reference.relative_error). So a part whose other layers would need tens of GB
  at the GPU's sizes (a UNet at batch 8 on 512x512, nnU-Net at 128^3) runs
  on the meta device in seconds and launches exactly what it would on CPU tensors of those shapes
  (Triton specializes on dtypes, integer values and pointer alignment; a meta tensor's data_ptr is
  0 plus its offset, aligned as a fresh allocation is).

Nothing here names a kernel or an argument: what is recorded is what the launchers pass.
"""
import contextlib
import inspect
import sys
from types import SimpleNamespace

import torch

from unet_fast import reference
from unet_fast.ops import relu_mask
# Bound now: a test that spies on the op (making its PyTorch path fail, to prove the kernels ran)
# must not catch record mode filling in the launchers' results with it.
from unet_fast.ops.torch_path import backward as torch_path_backward

# Streaming multiprocessors of the GPU the plan is recorded for (H200 / H100 SXM: 132).
GPU_SMS = 132


class Recorder:
    """Specializations seen so far, each with the parts that launched it."""

    def __init__(self):
        self.entries = {}  # specialization JSON -> dict(kernel, specialization, parts)
        self.part = None
        self.launches = 0

    def add(self, kernel: str, specialization: str) -> None:
        entry = self.entries.setdefault(specialization, dict(kernel=kernel, specialization=specialization,
                                                             parts=[]))
        if self.part and self.part not in entry["parts"]:
            entry["parts"].append(self.part)

    def keys(self, part=None) -> set:
        return {s for s, e in self.entries.items() if part is None or part in e["parts"]}

    def specializations(self) -> list:
        return list(self.entries.values())


# --- the launchers' results, in PyTorch ---------------------------------------------------------

def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _upcast(dtype, *tensors):
    acc = _acc(dtype)
    return [None if t is None else t.to(acc) for t in tensors]


def forward_result(x, skip, weight, bias, relu, skip_first):
    """The launcher's result, from the op's reference at float32 (float64 for float64)."""
    return reference.up_concat(*_upcast(x.dtype, x, skip, weight, bias), relu=relu, skip_first=skip_first)


def backward_result(grad, out, x, weight, skip_first, has_bias):
    """(dx, dskip, dweight, dbias) from the op's PyTorch path at float32 (float64 for float64);
    `out` is the forward's result when it applied a ReLU, else None."""
    grad, out, x, weight = _upcast(x.dtype, grad, out, x, weight)
    return torch_path_backward(grad, out, x, weight, has_bias, skip_first)


def _wrap_forward(original):
    signature = inspect.signature(original)

    def launch_forward(*args, **kwargs):
        with _state.target():  # the launcher asks Triton's driver for the device's limits
            result = original(*args, **kwargs)
        a = signature.bind(*args, **kwargs)
        a.apply_defaults()
        p = a.arguments
        if _state.compute and result.numel() and not result.is_meta:
            with torch.no_grad():
                result.copy_(forward_result(p["x"], p["skip"], p["weight"], p["bias"], p["relu"],
                                            p.get("skip_first", False)))
                if p.get("bits") is not None:  # the ReLU mask the forward writes for the backward
                    p["bits"].copy_(relu_mask.pack_relu_mask(result, p["weight"], p.get("skip_first", False)))
        return result
    launch_forward.__wrapped__ = original
    return launch_forward


def _wrap_backward(original):
    signature = inspect.signature(original)

    def launch_backward(*args, **kwargs):
        with _state.target():
            result = original(*args, **kwargs)
        a = signature.bind(*args, **kwargs)
        a.apply_defaults()
        p = a.arguments
        if _state.compute and p["x"].numel() and not p["x"].is_meta:
            with torch.no_grad():
                out = p["out"]
                if out is None and p.get("bits") is not None:  # the mask as bits: an output with that mask
                    out = relu_mask.unpack_relu_mask(p["bits"], p["x"], p["weight"], p["grad"].shape,
                                                     p.get("skip_first", False)).to(p["grad"].dtype)
                values = backward_result(p["grad"], out, p["x"], p["weight"], p.get("skip_first", False),
                                         p["has_bias"])
                for buffer, value in zip(result, values):
                    if buffer.shape == value.shape:
                        buffer.copy_(value)
        return result
    launch_backward.__wrapped__ = original
    return launch_backward


def _gpu_splits(original):
    """weight_grad_splits as on the GPU: the device's SM count, not the CPU's stand-in."""
    def as_gpu(value):
        return torch.device("cuda") if isinstance(value, torch.device) and value.type in ("cpu", "meta") else value

    def weight_grad_splits(*args, **kwargs):
        args = [as_gpu(a) for a in args]
        kwargs = {k: as_gpu(v) for k, v in kwargs.items()}
        saved = torch.cuda.get_device_properties
        torch.cuda.get_device_properties = lambda device=None: SimpleNamespace(multi_processor_count=GPU_SMS)
        try:
            return original(*args, **kwargs)
        finally:
            torch.cuda.get_device_properties = saved
    weight_grad_splits.__wrapped__ = original
    return weight_grad_splits


# --- the mode --------------------------------------------------------------------------------

_state = SimpleNamespace(compute=True, target=contextlib.nullcontext)


def _replace_everywhere(original, replacement, patches):
    """Point every attribute of a loaded unet_fast (or test helper) module that is `original` at
    `replacement`: `from m import f` copies the name, so patching m alone would miss them."""
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "unet_fast" or name.startswith("unet_fast.") or name == "helpers"
                                  or name.startswith("test_")):
            continue
        for attr, value in list(vars(module).items()):
            if value is original:
                patches.append((module, attr, value))
                setattr(module, attr, replacement)


def _disabled() -> bool:
    """UNET_FAST_DISABLE_TRITON, read as the op reads it."""
    from unet_fast.ops.up_concat_op import env_flag
    return env_flag("UNET_FAST_DISABLE_TRITON")


def _recording_uses_triton(t) -> bool:
    if _disabled():
        return False
    return t.device.type in ("cpu", "cuda", "meta")


@contextlib.contextmanager
def _meta_tensors_launch():
    """The op's Meta kernels are its own CPU/CUDA implementations for the block (which, with
    `uses_triton` replaced, call the recording launchers); Library._destroy restores the fake
    implementations."""
    from unet_fast.ops import up_concat_masked_op, up_concat_op

    library = torch.library.Library("unet_fast", "IMPL")
    library.impl("up_concat", up_concat_op.forward_impl, "Meta")
    library.impl("up_concat_backward", up_concat_op.backward_impl, "Meta")
    library.impl("up_concat_conv_backward", up_concat_op.conv_backward_impl, "Meta")
    library.impl("up_concat_masked", up_concat_masked_op.masked_forward_impl, "Meta")
    library.impl("up_concat_masked_backward", up_concat_masked_op.masked_backward_impl, "Meta")
    try:
        yield
    finally:
        library._destroy()


@contextlib.contextmanager
def record_mode(capability: int, recorder: Recorder, compute: bool = True, compile: bool = False):
    """Within the block, the op records its launches into `recorder` (see the module docstring).
    compute=False leaves the launchers' buffers unwritten (recording launches of empty tensors);
    compile=True lets Triton go on to compile each launch (or find it in TRITON_CACHE_DIR), as a
    launch on the GPU would, instead of stopping at the record."""
    from triton import knobs

    from unet_fast.gpu.static_compile import compile_launch
    from unet_fast.kernels import up_concat_launch as L
    from unet_fast.kernels.common import interpreting
    from unet_fast.kernels.offline_target import offline_target
    from unet_fast.ops import up_concat_op

    if interpreting():
        raise RuntimeError("TRITON_INTERPRET=1 is set: the kernels were decorated for the interpreter and "
                           "cannot be compiled; record in a process without it")

    def hook(*, key, repr, fn, compile, is_manual_warmup, already_compiled, **_):
        recorder.add(fn.name, compile["specialization_data"])
        return not compile_launches  # True: Triton skips the compile

    compile_launches = compile

    def record_launch(kernel, grid, args, kwargs):
        recorder.launches += 1
        with offline_target(capability):
            compile_launch(kernel, grid, args, kwargs)

    patches = []
    saved = knobs.runtime.jit_cache_hook, _state.compute, _state.target
    knobs.runtime.jit_cache_hook = hook
    _state.compute, _state.target = compute, (lambda: offline_target(capability))
    try:
        for name, wrap in (("launch_forward", _wrap_forward), ("launch_backward", _wrap_backward),
                           ("weight_grad_splits", _gpu_splits)):
            original = getattr(L, name, None)
            if original is not None and not hasattr(original, "__wrapped__"):
                _replace_everywhere(original, wrap(original), patches)
        _replace_everywhere(up_concat_op.uses_triton, _recording_uses_triton, patches)
        with recording_launches_of(L, record_launch), _meta_tensors_launch():
            yield recorder
    finally:
        for module, attr, value in reversed(patches):
            setattr(module, attr, value)
        knobs.runtime.jit_cache_hook, _state.compute, _state.target = saved


@contextlib.contextmanager
def recording_launches_of(launch_module, recorder):
    with launch_module.recording_launches(recorder):
        yield

"""Who is measured. Every provider computes the same function; only the implementation differs.

    fused           unet_fast.up_concat / UNet: the Triton kernels on a GPU, the PyTorch fast path
                    (torch_path.py) on the CPU
    eager           unet_fast.reference.up_concat / ReferenceUNet: ConvTranspose2d, cat, relu
    compiled        the reference under torch.compile(mode="max-autotune-no-cudagraphs")
    fused-compiled  UNet under torch.compile (models only: the op is opaque to Inductor, so a
                    compiled lone up_concat is the fused op itself; in a model Inductor still
                    compiles the encoder and the convolutions around it)

The baseline for every speedup is `eager`. The reference comes from unet_fast.reference and is
never rewritten here.
"""
import torch

from unet_fast import reference
from unet_fast.models.unet import UNet
from unet_fast.ops.up_concat_op import up_concat

PROVIDERS = ("fused", "eager", "compiled", "fused-compiled")
STEP_PROVIDERS = ("fused", "eager", "compiled")
MODEL_PROVIDERS = PROVIDERS
COMPILED = ("compiled", "fused-compiled")
BASELINE = "eager"
# The default torch.compile mode of the compiled providers (RunConfig.compile_mode). No CUDA
# graphs: they would hide launch overhead for compiled providers only, and the fused op is called
# eagerly; max-autotune still lets Inductor pick its best GEMM/conv configurations.
DEFAULT_COMPILE_MODE = "max-autotune-no-cudagraphs"


def providers_for(case) -> tuple:
    return STEP_PROVIDERS if case.kind == "step" else MODEL_PROVIDERS


def describe(provider: str, case) -> str:
    """What the provider runs, for the table and the JSON."""
    step = case.kind == "step"
    return {"fused": "unet_fast.up_concat" if step else "UNet",
            "eager": "reference.up_concat" if step else "ReferenceUNet",
            "compiled": ("torch.compile(reference.up_concat)" if step else "torch.compile(ReferenceUNet)"),
            "fused-compiled": "torch.compile(UNet)"}[provider]


def _compile(fn, mode: str):
    # Dynamo caches compiled code per Python code object, and every row compiles the same
    # function for a new dtype/layout/shape: past the recompile limit it would silently run
    # eagerly, and after a second shape it would switch to dynamic shapes. A reset per row and
    # dynamic=False give each row its own static-shape compilation.
    torch._dynamo.reset()
    return torch.compile(fn, mode=mode, dynamic=False)


def step_impl(provider: str, compile_mode: str = DEFAULT_COMPILE_MODE):
    """fn(x, skip, weight, bias) -> out for a decoder-step provider."""
    if provider == "fused":
        return up_concat
    if provider == "eager":
        return reference.up_concat
    if provider == "compiled":
        return _compile(reference.up_concat, compile_mode)
    raise ValueError(f"provider {provider!r} has no decoder-step implementation")


def provider_model(provider: str, case, dtype, layout_format, device, seed: int = 0,
                   compile_mode: str = DEFAULT_COMPILE_MODE):
    """(module, runnable): the provider's model, with weights identical across providers
    (ReferenceUNet's init), and what to call (the module, or its torch.compile wrapper)."""
    torch.manual_seed(seed)
    ref = reference.ReferenceUNet(case.in_channels, case.out_channels, case.base_channels)
    if provider in ("fused", "fused-compiled"):
        model = UNet(case.in_channels, case.out_channels, case.base_channels)
        model.load_state_dict(ref.state_dict(), strict=True)
    else:
        model = ref
    model = model.to(device=device, dtype=dtype, memory_format=layout_format)
    return model, (_compile(model, compile_mode) if provider in COMPILED else model)


def reference_model_fp64(case, state_dict, device):
    """ReferenceUNet in float64 holding `state_dict` (a provider's weights, already rounded to its
    dtype): the accuracy oracle, so a row's error is the computation's, not the weights' rounding."""
    ref = reference.ReferenceUNet(case.in_channels, case.out_channels, case.base_channels)
    ref = ref.to(device=device, dtype=torch.float64)
    ref.load_state_dict(state_dict)  # copied into the float64 parameters, on the device
    return ref.eval()

"""The one table of names for dtypes and memory layouts, used by every command, result file and test.

A dtype name says how a launch computes, not only what it stores: "tf32" is float32 with
torch.backends.cudnn.allow_tf32 on (PyTorch's default for convolutions, which the fused op
follows), "fp32" is float32 with it off (the tests' setting); the two compile different kernels.
Commands accept torch's spellings too ("bfloat16", "float32" ...) and report the short ones.
"""
import torch

# name -> (torch dtype, TF32 on)
DTYPES = {
    "fp32": (torch.float32, False),
    "tf32": (torch.float32, True),
    "bf16": (torch.bfloat16, False),
    "fp16": (torch.float16, False),
    "fp64": (torch.float64, False),
}
DTYPE_ALIASES = {"float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16",
                 "float64": "fp64", "double": "fp64"}
# A layout name and the memory format it means for 4-D (2D images) and 5-D (volumes) tensors.
LAYOUTS = {
    "contiguous": (torch.contiguous_format, torch.contiguous_format),
    "channels_last": (torch.channels_last, torch.channels_last_3d),
}
LAYOUT_ALIASES = {"channels_last_3d": "channels_last", "nchw": "contiguous", "ncdhw": "contiguous"}


def dtype_name(text: str) -> str:
    """'bfloat16' or 'bf16' -> 'bf16'; ValueError naming the choices for anything else."""
    key = str(text).strip().lower()
    key = DTYPE_ALIASES.get(key, key)
    if key not in DTYPES:
        raise ValueError(f"unknown dtype {text!r}; choose from {', '.join(DTYPES)} "
                         f"(or {', '.join(DTYPE_ALIASES)})")
    return key


def layout_name(text: str) -> str:
    key = str(text).strip().lower()
    key = LAYOUT_ALIASES.get(key, key)
    if key not in LAYOUTS:
        raise ValueError(f"unknown layout {text!r}; choose from {', '.join(LAYOUTS)}")
    return key


def torch_dtype(name: str) -> torch.dtype:
    return DTYPES[dtype_name(name)][0]


def tf32_on(name: str) -> bool:
    return DTYPES[dtype_name(name)][1]


def name_of(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> 'bf16' (float32 is 'fp32': TF32 is a setting, not a dtype)."""
    for name, (d, tf32) in DTYPES.items():
        if d == dtype and not tf32:
            return name
    raise ValueError(f"no name for dtype {dtype}")


def memory_format(layout: str, ndim: int = 4) -> torch.memory_format:
    """The memory format `layout` means for a tensor of `ndim` dims (4: images, 5: volumes)."""
    if ndim not in (4, 5):
        raise ValueError(f"layouts name 4-D or 5-D tensors, got {ndim} dims")
    return LAYOUTS[layout_name(layout)][ndim - 4]


def parse_list(text: str, allowed, option: str, canonical=None) -> list:
    """A command's comma list ('all' for every allowed name): each item put through `canonical`
    (dtype_name, layout_name ...) when given, then checked against `allowed`. Raises ValueError
    naming the option, the bad items and the choices."""
    allowed = list(allowed)
    if str(text).strip() == "all":
        return allowed
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    out, bad = [], []
    for item in items:
        try:
            name = canonical(item) if canonical else item
        except ValueError:
            name = None
        (out if name in allowed else bad).append(name if name in allowed else item)
    if bad or not items:
        raise ValueError(f"{option}: unknown {', '.join(map(repr, bad)) or repr(text)}; "
                         f"choose from {', '.join(allowed)} (comma-separated, or 'all')")
    return out

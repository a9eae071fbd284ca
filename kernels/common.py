"""What the up_concat kernels share: interpreter detection, the tile product, the tile configs.

No torch import here or in the kernel modules (up_concat_forward.py, up_concat_backward.py): a
Python with Triton alone can import them and compile the kernels for a GPU that is not there
(benchmarks/build_triton_cache.py builds the GPU machines' Triton cache that way).
"""
import os
import re

import triton
import triton.language as tl

# Triton versions the kernels are checked on: 3.6 (the GPU machines) to 3.9 (CI's newest).
OLDEST_TRITON = (3, 6)


def _major_minor(version: str) -> tuple:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:2])


if _major_minor(triton.__version__) < OLDEST_TRITON:
    # up_concat_op catches this and runs the PyTorch path, saying why.
    raise ImportError(f"unet_fast's Triton kernels need Triton >= {'.'.join(map(str, OLDEST_TRITON))}, "
                      f"found {triton.__version__}")


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def interpreter_problem():
    """Why Triton's CPU interpreter cannot run the kernels here, or None.

    Triton 3.6's interpreter fails in every kernel with numpy >= 2.4 ("only 0-dimensional arrays
    can be converted to Python scalars" at a range() over a runtime bound); 3.9 does not. 3.7 and
    3.8 were not checked, so they are not refused."""
    import numpy
    if _major_minor(triton.__version__) == (3, 6) and _major_minor(numpy.__version__) >= (2, 4):
        return (f"Triton {triton.__version__}'s interpreter (TRITON_INTERPRET=1) fails in every kernel with "
                f"numpy {numpy.__version__}: install 'numpy<2.4' or Triton >= 3.9, or unset TRITON_INTERPRET "
                "to run the PyTorch path")
    return None


@triton.jit
def tile_product(a, b, acc, USE_DOT: tl.constexpr, UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """acc + a @ b for a [M, K] and b [K, N] tile, accumulating in acc's dtype."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if USE_DOT:
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
    else:
        acc += tl.sum(a[:, :, None].to(acc.dtype) * b[None, :, :].to(acc.dtype), axis=1)
    return acc


@triton.jit
def as_offset(v, IDX64: tl.constexpr):
    """v in the integer type element offsets are computed in: int64 when a tensor of the launch
    spans 2**31 elements or more (the launcher decides), else int32, which halves the registers
    the offset tensors take and avoids 64-bit division in pixel_coords."""
    if IDX64:
        return v.to(tl.int64)
    return v


@triton.jit
def relu_keep_nan(v):
    """max(v, 0) that lets NaN through, as torch.relu does (tl.maximum would turn NaN into 0)."""
    return tl.where(v < 0, tl.zeros_like(v), v)


@triton.jit
def pixel_coords(offs_m, H, W):
    """Split flat input-pixel indices (n, i, j) of an [N, *, H, W] tensor into their parts."""
    hw = H * W
    img = offs_m // hw
    rem = offs_m - img * hw
    row = rem // W
    col = rem - row * W
    return img, row, col

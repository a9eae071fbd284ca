"""What the up_concat kernels share: interpreter detection, per-dtype math settings, the tile product."""
import os

import torch
import triton
import triton.language as tl


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def math_settings(dtype: torch.dtype) -> dict:
    """Constexprs that pick how a tile product runs for `dtype`.

    - float64 takes a broadcast multiply-and-sum: tl.dot has no float64 path on every Triton we
      support, and float64 only serves gradcheck.
    - Under the interpreter everything 16/32-bit is upcast to float32 first: the interpreter keeps
      bfloat16 as raw uint16 bits, so a bf16 tl.dot or tl.maximum there is simply wrong.
    - On the GPU, 16-bit operands go to tl.dot natively; float32 uses TF32 exactly when PyTorch's
      own convolutions would (torch.backends.cudnn.allow_tf32), so the fused op and
      nn.ConvTranspose2d agree on precision.
    """
    if dtype == torch.float64:
        return dict(USE_DOT=False, UPCAST=False, ACC_F64=True, INPUT_PRECISION="ieee")
    if interpreting():
        return dict(USE_DOT=True, UPCAST=True, ACC_F64=False, INPUT_PRECISION="ieee")
    tf32 = dtype == torch.float32 and torch.backends.cudnn.allow_tf32
    return dict(USE_DOT=True, UPCAST=False, ACC_F64=False, INPUT_PRECISION="tf32" if tf32 else "ieee")


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



# Tiles the GPU chooses among, per (CIN, COUT, CS) and dtype (Triton's autotuner adds the dtypes
# to the key). Four fp32 accumulators of BLOCK_M x BLOCK_N must fit in registers, so the large
# tiles come with 8 warps. All sides are >= 16 (tl.dot's minimum for 16-bit types).
GPU_TILE_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)
    for bm, bn, bk, warps, stages in [
        (128, 64, 32, 8, 3),
        (128, 32, 64, 4, 3),
        (64, 64, 64, 4, 3),
        (64, 128, 32, 8, 3),
        (128, 128, 32, 8, 2),
        (256, 32, 32, 8, 3),
        (64, 32, 32, 4, 4),
        (32, 64, 64, 4, 3),
    ]
]


def autotuned(kernel):
    """The kernel behind Triton's autotuner, for GPU launches of 16/32-bit tensors."""
    return triton.autotune(configs=GPU_TILE_CONFIGS, key=["CIN", "COUT", "CS"])(kernel)


def fixed_tiles(dtype: torch.dtype):
    """Tiles for launches that are not autotuned, or None for an autotuned launch.

    float64 (gradcheck only) takes small tiles: its broadcast product holds BLOCK_M*BLOCK_K*BLOCK_N
    values. The interpreter takes the GPU's smallest legal tiles, so CPU tests run shapes the GPU
    also compiles, without timing eight configurations program by program."""
    if dtype == torch.float64:
        return dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=8, num_warps=4, num_stages=1)
    if interpreting():
        return dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=16, num_warps=4, num_stages=1)
    return None

"""Host side of the up_concat kernels: buffers, grids, per-dtype math settings, and the launches.

The kernels themselves live in up_concat_forward.py and up_concat_backward.py (no torch there).
Every launch goes through `launch`, so a compile-only recorder (unet_fast.gpu.kernel_report) can take
the place of the GPU and see exactly the arguments a real launch would pass.
"""
import contextlib

import torch
import triton

from . import up_concat_backward as bwd
from . import up_concat_forward as fwd
from .common import interpreting
from .configs import fixed_tile, operand_class
from ..ops.layout import new_buffer, output_memory_format

_recorder = None


@contextlib.contextmanager
def recording_launches(recorder):
    """Within the block, `recorder(kernel, grid, args, kwargs)` receives each launch instead of the
    GPU: compile-only analysis of what the op would run, on a machine without one."""
    global _recorder
    previous, _recorder = _recorder, recorder
    try:
        yield
    finally:
        _recorder = previous


def launch(kernel, grid, *args, **kwargs):
    if _recorder is not None:
        _recorder(kernel, grid, args, kwargs)
    else:
        kernel[grid](*args, **kwargs)


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


def fixed_tiles(dtype: torch.dtype):
    """Tiles for launches that are not autotuned, or None for an autotuned launch.

    float64 (gradcheck only) takes small tiles: its broadcast product holds BLOCK_M*BLOCK_K*BLOCK_N
    values. The interpreter takes the GPU's smallest legal tiles, so CPU tests run shapes the GPU
    also compiles, without timing every configuration program by program."""
    if dtype == torch.float64:
        return dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=8, num_warps=4, num_stages=1)
    if interpreting():
        return dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=16, num_warps=4, num_stages=1)
    return None


def needs_int64_offsets(*tensors) -> bool:
    """Whether an element offset of any of `tensors` can reach 2**31 (the IDX64 constexpr): the
    largest is sum((size - 1) * stride), which the kernels' offset arithmetic never exceeds for an
    element it reads or writes."""
    return any(t.numel() and sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride())) >= 2**31 - 1
               for t in tensors)


def stride_1_along_w(*tensors) -> bool:
    """The PAIR_W constexpr: every tensor is stride-1 along W (NCHW), so the two W taps of a
    pixel are adjacent elements the kernels move as pairs."""
    return all(t.stride(3) == 1 for t in tensors)


def up_concat_forward(x: torch.Tensor, skip: torch.Tensor, weight: torch.Tensor,
                      bias, relu: bool, out=None) -> torch.Tensor:
    """Launch the fused forward. Arguments must already be validated (unet_fast.ops.validation).

    `out`, if given, is the [N, Cout + Cs, 2H, 2W] buffer to write, with any strides."""
    n, cin, h, w = x.shape
    cout = weight.shape[1]
    cs = skip.shape[1]
    if out is None:
        out = new_buffer((n, cout + cs, 2 * h, 2 * w), x, memory_format=output_memory_format(x))
    m = n * h * w
    if m == 0:
        return out
    tiles = fixed_tiles(x.dtype)
    kernel = fwd.up_concat_forward_kernel if tiles else fwd.up_concat_forward_kernel_autotuned

    def grid(meta):
        # Column tiles: Cout channels of the convolution, then Cs channels of skip.
        block_n = meta["BLOCK_N"]
        return triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(cout, block_n) + triton.cdiv(cs, block_n)

    launch(
        kernel, grid,
        x, skip, weight, bias if bias is not None else weight, out,
        m, h, w, cin, cout, cs,
        *x.stride(), *skip.stride(), *weight.stride(), bias.stride(0) if bias is not None else 0,
        *out.stride(),
        HAS_BIAS=bias is not None, RELU=relu, **math_settings(x.dtype),
        IDX64=needs_int64_offsets(x, skip, out), PAIR_W=stride_1_along_w(skip, out), **(tiles or {}),
    )
    return out


def weight_grad_splits(m: int, tiles: int, block_k: int, device: torch.device) -> int:
    """How many pixel ranges dW is split into: enough programs to fill the device (twice its SMs),
    never a range smaller than one block. The interpreter takes 2 so tests cover the reduction."""
    if device.type == "cuda":
        target = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        target = 2
    return max(1, min(triton.cdiv(m, block_k), triton.cdiv(target, tiles)))


def up_concat_backward(grad: torch.Tensor, out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                       relu: bool, has_bias: bool):
    """Gradients (dx, dskip, dweight, dbias) of up_concat given its output `out` (read for the
    ReLU mask only when relu). dbias is zeros of [Cout] when has_bias is False."""
    n, cin, h, w = x.shape
    cout = weight.shape[1]
    cs = out.shape[1] - cout
    fmt = output_memory_format(x)
    dx = new_buffer(x.shape, x, memory_format=fmt)
    dskip = new_buffer((n, cs, 2 * h, 2 * w), x, memory_format=fmt)
    m = n * h * w
    if m == 0:
        return dx, dskip, torch.zeros_like(weight), weight.new_zeros(cout)
    math = math_settings(x.dtype)
    math["IDX64"] = needs_int64_offsets(grad, out, x, dx, dskip)
    tiles = fixed_tiles(x.dtype)

    def input_grid(meta):
        # Column tiles: Cin channels of dx, then Cs channels of dskip.
        block_n = meta["BLOCK_N"]
        return triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(cin, block_n) + triton.cdiv(cs, block_n)

    kernel = bwd.up_concat_backward_input_kernel if tiles else bwd.up_concat_backward_input_kernel_autotuned
    launch(
        kernel, input_grid,
        grad, out, weight, dx, dskip,
        m, h, w, cin, cout, cs,
        *grad.stride(), *out.stride(), *weight.stride(), *dx.stride(), *dskip.stride(),
        RELU=relu, PAIR_W=stride_1_along_w(grad, out, dskip), **math, **(tiles or {}),
    )

    tiles = tiles or fixed_tile("backward_weight", operand_class(x.element_size(), math["INPUT_PRECISION"]))
    # dw_part below is [splits, Cin, Cout, 4]: far under 2**31 elements whenever the rest is.
    block_m, block_n, block_k = tiles["BLOCK_M"], tiles["BLOCK_N"], tiles["BLOCK_K"]
    splits = weight_grad_splits(m, triton.cdiv(cin, block_m) * triton.cdiv(cout, block_n), block_k, x.device)
    pix_per_split = triton.cdiv(triton.cdiv(m, block_k), splits) * block_k
    splits = triton.cdiv(m, pix_per_split)
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    dw_part = new_buffer((splits, cin, cout, 4), x, dtype=acc_dtype)
    db_part = new_buffer((splits, cout), x, dtype=acc_dtype)
    launch(
        bwd.up_concat_backward_weight_kernel, (triton.cdiv(cin, block_m), triton.cdiv(cout, block_n), splits),
        grad, out, x, dw_part, db_part,
        m, h, w, cin, cout, pix_per_split,
        *grad.stride(), *out.stride(), *x.stride(),
        RELU=relu, HAS_BIAS=has_bias, **math, **tiles,
    )
    dweight = dw_part.sum(0).view(cin, cout, 2, 2).to(weight.dtype)
    dbias = db_part.sum(0).to(weight.dtype) if has_bias else weight.new_zeros(cout)
    return dx, dskip, dweight, dbias

"""Host side of the up_concat kernels: buffers, grids, per-dtype math settings, and the launches.

The kernels live in up_concat_forward.py and up_concat_backward.py (no torch there). Every
launch goes through `launch`, so a compile-only recorder (the static compile report) can take
the place of the GPU and see exactly the arguments a real launch would pass.

2-D steps (x [N, Cin, H, W], weight [Cin, Cout, kh, kw]) run as 3-D ones with D = 1 and kd = 1:
their depth stride is passed as 0. The kernels want the weight stride-1 along Cout, so that one
tap's [Cin, Cout] tile is a dense block (vector and async-copy loads): a channels_last(_3d)
weight already is; any other is repacked once per call (weight.numel() elements, at most a few MB).
"""
import contextlib

import torch
import triton

from . import up_concat_backward as bwd
from . import up_concat_forward as fwd
from ..ops.layout import channel_slices, new_buffer, output_memory_format, step_shapes
from .byte_model import PARTIAL_BYTES_SHARE
from .common import interpreting
from .configs import REDUCE_BLOCK, REDUCE_WARPS, channels_last_operand, fixed_tile, operand_class

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
      nn.ConvTranspose2d/3d agree on precision.
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
    values. The interpreter takes the GPU's smallest legal tiles (a 16-bit dot needs K >= 16), so
    CPU tests run shapes the GPU also compiles, without timing every configuration."""
    if dtype == torch.float64:
        return dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=8, num_warps=4, num_stages=1)
    if interpreting():
        return dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=16, num_warps=4, num_stages=1)
    return None


def needs_int64_offsets(*tensors) -> bool:
    """Whether an element offset of any of `tensors` can reach 2**31 (the IDX64 constexpr): the
    largest is sum((size - 1) * stride), which the kernels' offset arithmetic never exceeds for an
    element it reads or writes; also when a tensor has 2**31 elements or more (its flat index)."""
    return any(t.numel() and (sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride())) >= 2**31 - 1
                              or t.numel() >= 2**31 - 1)
               for t in tensors)


def kernel_size(weight: torch.Tensor) -> tuple:
    """(kd, kh, kw) of a [Cin, Cout, kh, kw] or [Cin, Cout, kd, kh, kw] weight."""
    k = tuple(weight.shape[2:])
    return (1,) * (3 - len(k)) + k


def strides5(t: torch.Tensor) -> tuple:
    """t's strides along (n, c, d, h, w); a 4-D tensor has depth 1 and depth stride 0."""
    s = t.stride()
    return s if t.dim() == 5 else (s[0], s[1], 0, s[2], s[3])


def sizes3(t: torch.Tensor) -> tuple:
    """t's spatial sizes (d, h, w); d = 1 for a 4-D tensor."""
    return tuple(t.shape[2:]) if t.dim() == 5 else (1, *t.shape[2:])


def weight_for_kernels(weight: torch.Tensor) -> torch.Tensor:
    """The weight with weight's shape, stride-1 along Cout: itself when it already is (a
    channels_last(_3d) weight), else a copy laid out [Cin, *k, Cout] (viewed back to weight's
    shape). One tap's [BLOCK_K Cin, BLOCK_N Cout] tile is then dense: 16-byte loads, cp.async.
    Made per call, never cached: a weight changed through .data (gradcheck, some EMA code) keeps
    its version counter, so a cache keyed on it would serve a stale copy."""
    if weight.stride(1) == 1 or weight.shape[1] == 1:
        return weight
    nd = weight.dim()
    packed = weight.permute(0, *range(2, nd), 1).contiguous()
    return packed.permute(0, nd - 1, *range(1, nd - 1))


def flat_pixels(tensors, sizes) -> bool:
    """The FLAT_SKIP constexpr: every tensor merges its spatial dims (of `sizes` d, h, w) into one
    of stride w, so a copy tile's pixel offsets are p * stride_w."""
    ds, hs, ws = sizes
    for t in tensors:
        _, _, sd, sh, sw = strides5(t)
        if (hs > 1 and sh != ws * sw) or (ds > 1 and sd != hs * ws * sw):
            return False
    return True


def gemm_copy_grid(nimg: int, dhw: int, n_cols: int, skip_pix: int, cs: int, block_m: int, block_n: int) -> int:
    """Programs of a GEMM-plus-copy launch: common.program_role's grid (row blocks per image),
    on the host."""
    n_m = nimg * triton.cdiv(dhw, block_m)
    n_copy = nimg * triton.cdiv(skip_pix, block_m) * triton.cdiv(cs, block_n)
    return n_m * (n_cols + triton.cdiv(n_copy, n_m))


def launch_forward(x: torch.Tensor, skip: torch.Tensor, weight: torch.Tensor, bias, *,
                   relu: bool, skip_first: bool, out=None) -> torch.Tensor:
    """The fused forward. Arguments must already be validated.

    x [N, Cin, *S], skip [N, Cs, *(S*k)], weight [Cin, Cout, *k] (stride = kernel size k),
    bias [Cout] or None. `out`, if given, is the [N, Cout + Cs, *(S*k)] buffer to write, with any
    strides. skip_first puts the skip channels at [0, Cs) and the upsampled ones after them."""
    n, cin = x.shape[:2]
    cout, cs = weight.shape[1], skip.shape[1]
    kd, kh, kw = kernel_size(weight)
    d, h, w = sizes3(x)
    if out is None:
        out = new_buffer(step_shapes(x, weight, cs)[1], x, memory_format=output_memory_format(x))
    m = n * d * h * w
    if m == 0:
        return out
    wk = weight_for_kernels(weight)
    skip_pix = kd * d * kh * h * kw * w
    up, sk = channel_slices(cout, cs, skip_first)
    tiles = fixed_tiles(x.dtype)
    kernel = fwd.up_concat_forward_kernel if tiles else fwd.up_concat_forward_kernel_autotuned
    taps = kd * kh * kw

    def grid(meta):
        bm, bn = meta["BLOCK_M"], meta["BLOCK_N"]
        return (gemm_copy_grid(n, d * h * w, taps * triton.cdiv(cout, bn), skip_pix, cs, bm, bn),)

    launch(
        kernel, grid,
        x, wk, bias if bias is not None else wk, skip, out,
        n, d, h, w, d * h * w, cin, cout, cs, skip_pix, up.start, sk.start,
        *strides5(x), wk.stride(0), wk.stride(1), *strides5(wk)[2:], bias.stride(0) if bias is not None else 0,
        *strides5(skip), *strides5(out),
        KD=kd, KH=kh, KW=kw, HAS_BIAS=bias is not None, RELU=relu, FLAT_X=flat_pixels((x,), (d, h, w)),
        FLAT_SKIP=flat_pixels((skip, out), sizes3(skip)), **math_settings(x.dtype),
        IDX64=needs_int64_offsets(x, wk, skip, out) or m * taps >= 2**31 - 1, **(tiles or {}),
    )
    return out


# Tests set an int here to force the number of weight-gradient splits (1 = no reduction of dW).
WEIGHT_GRAD_SPLITS = None


def weight_grad_splits(m: int, tiles: int, block_k: int, device: torch.device,
                       read_bytes: int = 0, bytes_per_split: int = 0) -> int:
    """How many pixel ranges dW is split into: enough programs to fill the device (twice its SMs),
    never a range smaller than one block, and partials costing at most PARTIAL_BYTES_SHARE of
    `read_bytes`. The interpreter takes 2 so tests cover the reduction."""
    if WEIGHT_GRAD_SPLITS is not None:
        splits = WEIGHT_GRAD_SPLITS
    elif device.type == "cuda":
        splits = triton.cdiv(2 * torch.cuda.get_device_properties(device).multi_processor_count, tiles)
        if bytes_per_split:
            splits = min(splits, int(PARTIAL_BYTES_SHARE * read_bytes) // bytes_per_split)
    else:
        splits = 2
    return max(1, min(triton.cdiv(m, block_k), splits))


def launch_backward(grad: torch.Tensor, out, x: torch.Tensor, weight: torch.Tensor, *,
                    skip_first: bool, has_bias: bool):
    """Gradients (dx, dskip, dweight, dbias) of up_concat. `out` is the forward's result when the
    forward applied a ReLU (the mask is out <= 0, threshold_backward's), None when it did not.
    dbias is zeros [Cout] when has_bias is False; dweight has weight's shape and dtype."""
    relu = out is not None
    n, cin = x.shape[:2]
    cout = weight.shape[1]
    cs = grad.shape[1] - cout
    kd, kh, kw = kernel_size(weight)
    d, h, w = sizes3(x)
    fmt = output_memory_format(x)
    dx = new_buffer(x.shape, x, memory_format=fmt)
    dskip = new_buffer((n, cs, *grad.shape[2:]), x, memory_format=fmt)
    m = n * d * h * w
    if m == 0:
        return dx, dskip, torch.zeros_like(weight), weight.new_zeros(cout)
    taps = kd * kh * kw
    skip_pix = kd * d * kh * h * kw * w
    up, sk = channel_slices(cout, cs, skip_first)
    conv_c0, skip_c0 = up.start, sk.start
    wk = weight_for_kernels(weight)
    mask_src = out if relu else grad  # read only when RELU
    # The ReLU mask of the upsampled channels as bits, written by backward_input and read by
    # backward_weight instead of out (1/16 of out's bytes in 16-bit).
    nb = triton.cdiv(cout, 8)
    bits = torch.empty(m * taps * nb if relu else 1, dtype=torch.uint8, device=x.device)
    math = math_settings(x.dtype)
    math["IDX64"] = needs_int64_offsets(grad, mask_src, x, wk, dx, dskip, bits) or m * taps >= 2**31 - 1
    sizes = dict(KD=kd, KH=kh, KW=kw, RELU=relu, MASK_BITS=relu)
    tiles = fixed_tiles(x.dtype)

    def input_grid(meta):
        bm, bn = meta["BLOCK_M"], meta["BLOCK_N"]
        return (gemm_copy_grid(n, d * h * w, triton.cdiv(cin, bn), skip_pix, cs, bm, bn),)

    kernel = bwd.up_concat_backward_input_kernel if tiles else bwd.up_concat_backward_input_kernel_autotuned
    launch(
        kernel, input_grid,
        grad, mask_src, wk, dx, dskip, bits,
        n, d, h, w, d * h * w, cin, cout, cs, skip_pix, conv_c0, skip_c0, nb,
        *strides5(grad), *strides5(mask_src), wk.stride(0), wk.stride(1), *strides5(wk)[2:],
        *strides5(dx), *strides5(dskip),
        **sizes, FLAT_X=flat_pixels((dx,), (d, h, w)), FLAT_SKIP=flat_pixels((grad, mask_src, dskip), sizes3(dskip)),
        **math, **(tiles or {}),
    )

    dweight, dbias = launch_weight_grad(grad, mask_src, bits, x, weight, relu=relu, has_bias=has_bias,
                                        conv_c0=conv_c0, math=math, tiles=tiles)
    return dx, dskip, dweight, dbias


def launch_weight_grad(grad, mask_src, bits, x, weight, *, relu: bool, has_bias: bool, conv_c0: int, math: dict,
                       tiles):
    """(dweight, dbias) of up_concat: the weight-gradient kernel and the reduction of its
    partials. `mask_src` and `bits` are launch_backward's (the ReLU mask); `math` its math
    settings with IDX64; `tiles` the fixed tiles of the dtype, or None for the device's."""
    n, cin = x.shape[:2]
    cout = weight.shape[1]
    kd, kh, kw = kernel_size(weight)
    d, h, w = sizes3(x)
    m = n * d * h * w
    taps = kd * kh * kw
    nb = triton.cdiv(cout, 8)
    sizes = dict(KD=kd, KH=kh, KW=kw, RELU=relu, MASK_BITS=relu)
    tiles = tiles or fixed_tile("backward_weight", operand_class(x.element_size(), math["INPUT_PRECISION"],
                                                                channels_last_operand(x)))
    block_m, block_n, block_k = tiles["BLOCK_M"], tiles["BLOCK_N"], tiles["BLOCK_K"]
    gemm_tiles = triton.cdiv(cin, block_m) * taps * triton.cdiv(cout, block_n)
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    acc_size = 8 if x.dtype == torch.float64 else 4
    read_bytes = x.element_size() * m * (cin + taps * cout) + bits.numel() * relu
    splits = weight_grad_splits(m, gemm_tiles, block_k, x.device, read_bytes, 2 * acc_size * cin * taps * cout)
    pixel_blocks = n * triton.cdiv(d * h * w, block_k)  # per image, as common.row_block
    blocks_per_split = triton.cdiv(pixel_blocks, splits)
    splits = triton.cdiv(pixel_blocks, blocks_per_split)
    direct = splits == 1
    dweight = new_buffer(weight.shape, weight)
    dbias = new_buffer((cout,), weight) if has_bias else weight.new_zeros(cout)
    # The partials are [splits, Cin, T, Cout] and [splits, T, Cout]: far under 2**31 elements.
    db_part = new_buffer((splits, taps, cout), x, dtype=acc_dtype)
    # With one split the kernel stores dW itself; db_part stands in for the unused dw_part.
    dw_part = db_part if direct else new_buffer((splits, cin, taps, cout), x, dtype=acc_dtype)
    dw_strides = (dweight.stride(0), dweight.stride(1), *strides5(dweight)[2:])
    launch(
        bwd.up_concat_backward_weight_kernel, (splits * gemm_tiles,),
        grad, mask_src, x, dw_part, db_part, dweight, bits,
        n, d, h, w, d * h * w, cin, cout, conv_c0, blocks_per_split, nb,
        *strides5(grad), *strides5(mask_src), *strides5(x), *dw_strides,
        **sizes, HAS_BIAS=has_bias, DIRECT=direct, FLAT_X=flat_pixels((x,), (d, h, w)), **math, **tiles,
    )

    elements = 0 if direct else cin * taps * cout
    programs = triton.cdiv(elements, REDUCE_BLOCK) + (triton.cdiv(cout, REDUCE_BLOCK) if has_bias else 0)
    if programs:
        launch(
            bwd.up_concat_weight_reduce_kernel, (programs,),
            dw_part, db_part, dweight, dbias,
            splits, cin, cout, elements,
            *dw_strides, dbias.stride(0),
            KD=kd, KH=kh, KW=kw, HAS_BIAS=has_bias, BLOCK=REDUCE_BLOCK, num_warps=REDUCE_WARPS,
        )
    return dweight, dbias

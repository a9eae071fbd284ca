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
from . import up_concat_backward_fused as fused
from . import up_concat_forward as fwd
from ..ops.layout import channel_slices, new_buffer, output_memory_format, step_shapes
from ..ops.relu_mask import mask_parts, pack_relu_mask
from .byte_model import fused_backward_splits as _fused_splits, weight_grad_layout
from .common import interpreting
from .configs import (INPUT_REDUCE_BLOCK, INPUT_REDUCE_ROWS, INPUT_REDUCE_SPLITS, REDUCE_BLOCK, REDUCE_CHANNELS,
                      REDUCE_ROWS, REDUCE_SPLITS, REDUCE_WARPS, channels_last_operand, device_limits, fixed_tile,
                      fused_backward_tile, operand_class, weight_grad_ctas_per_sm)

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
                   relu: bool, skip_first: bool, out=None, bits=None) -> torch.Tensor:
    """The fused forward. Arguments must already be validated.

    x [N, Cin, *S], skip [N, Cs, *(S*k)], weight [Cin, Cout, *k] (stride = kernel size k),
    bias [Cout] or None. `out`, if given, is the [N, Cout + Cs, *(S*k)] buffer to write, with any
    strides. skip_first puts the skip channels at [0, Cs) and the upsampled ones after them.
    `bits`, if given (relu only), is a ops.relu_mask.new_mask_buffer the kernel fills with the
    ReLU mask of out (kernels/mask_bits.py), for the backward to read instead of out."""
    if bits is not None and not relu:
        raise ValueError("launch_forward: bits= is the ReLU mask; it needs relu=True")
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
    conv_bytes = mask_parts(x, weight, cs)[0]

    def grid(meta):
        bm, bn = meta["BLOCK_M"], meta["BLOCK_N"]
        return (gemm_copy_grid(n, d * h * w, taps * triton.cdiv(cout, bn), skip_pix, cs, bm, bn),)

    launch(
        kernel, grid,
        x, wk, bias if bias is not None else wk, skip, out, bits if bits is not None else out,
        n, d, h, w, d * h * w, cin, cout, cs, skip_pix, up.start, sk.start, conv_bytes,
        *strides5(x), wk.stride(0), wk.stride(1), *strides5(wk)[2:], bias.stride(0) if bias is not None else 0,
        *strides5(skip), *strides5(out),
        KD=kd, KH=kh, KW=kw, HAS_BIAS=bias is not None, RELU=relu, WRITE_BITS=bits is not None,
        FLAT_X=flat_pixels((x,), (d, h, w)), FLAT_SKIP=flat_pixels((skip, out), sizes3(skip)),
        **math_settings(x.dtype), IDX64=needs_int64_offsets(x, wk, skip, out, *(() if bits is None else (bits,)))
        or m * taps >= 2**31 - 1, **(tiles or {}),
    )
    return out


# Tests set an int here to force the number of weight-gradient splits of every tile (1 = no
# reduction of dW).
WEIGHT_GRAD_SPLITS = None
# The SM count a launch that compiles without a GPU (the static compile report) models: an H100's.
MODELLED_SMS = 132


def weight_grad_splits(blocks: int, tiles: int, device: torch.device, ctas_per_sm: int = 1) -> tuple:
    """(S_LO, R_EXTRA): the weight gradient's `tiles` tiles take S_LO pixel ranges each, the first
    R_EXTRA one more, over `blocks` pixel blocks. On a GPU, byte_model.weight_grad_layout: the grid
    is the fewest whole waves of `ctas_per_sm` programs on every SM that hold every tile, a single
    wave as few ranges a tile as keep its longest range, so the partials stay few and are read
    back from L2. The interpreter takes two ranges per tile and one tile three, so tests cover
    both kinds; a compile without a GPU models MODELLED_SMS."""
    if WEIGHT_GRAD_SPLITS is not None:
        return max(1, min(blocks, WEIGHT_GRAD_SPLITS)), 0
    if device.type == "cuda":
        return weight_grad_layout(tiles, blocks, torch.cuda.get_device_properties(device).multi_processor_count,
                                  ctas_per_sm)
    if interpreting():
        programs = max(tiles, min(2 * tiles + 1, tiles * blocks))
        return programs // tiles, programs % tiles
    return weight_grad_layout(tiles, blocks, MODELLED_SMS, ctas_per_sm)


def fused_backward_splits(blocks: int, c_tiles: int, device: torch.device) -> int:
    """Splits of the one-pass backward's pixel blocks (every Cin tile takes the same ones): on a
    GPU one wave (byte_model.fused_backward_splits); the interpreter three, so tests cover a
    reduction; WEIGHT_GRAD_SPLITS when a test sets it."""
    if WEIGHT_GRAD_SPLITS is not None:
        return max(1, min(blocks, WEIGHT_GRAD_SPLITS))
    if device.type == "cuda":
        return _fused_splits(c_tiles, blocks, torch.cuda.get_device_properties(device).multi_processor_count)
    if interpreting():
        return min(blocks, 3)
    return _fused_splits(c_tiles, blocks, MODELLED_SMS)


def pixel_block_width(h: int, w: int, block_k: int) -> int:
    """The backward_weight kernel's BLOCK_W: the widest power of two <= block_k dividing w, when
    block_k // BLOCK_W rows divide h (a pixel block is then whole rows of one image plane, and
    the kernel's offsets are a scalar per step plus a fixed tile); else 0 (per-pixel index math)."""
    bw = min(block_k, w & -w)
    return bw if h % (block_k // bw) == 0 else 0


def launch_backward(grad: torch.Tensor, out, x: torch.Tensor, weight: torch.Tensor, *,
                    skip_first: bool, has_bias: bool, bits=None):
    """Gradients (dx, dskip, dweight, dbias) of up_concat. After a ReLU the mask comes from
    `bits`, the mask buffer the forward wrote (launch_forward's bits=), or else from `out`, the
    forward's result (packed into bits here: out > 0 or NaN passes, threshold_backward's); both
    None: no ReLU. dbias is zeros [Cout] when has_bias is False; dweight has weight's shape and dtype.
    Without a ReLU, when grad holds the upsampled channels alone (no skip channels: the op's
    autograd passes that slice) and a tile takes the step, the one-pass backward runs
    (launch_fused_backward) instead. Otherwise backward_weight runs first, then backward_input,
    whose first programs sum the former's partials (stream order makes them visible; before
    Hopper weight_reduce does, after it: sums_in_backward_input). From Hopper on backward_input
    is the weight gradient's programmatic dependent (dependent_launches): its sum programs wait
    for that kernel's end, its dx and dskip programs need not."""
    relu = out is not None or bits is not None
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
    if not relu and cs == 0:
        tile = backward_fused_tile(grad, x, taps, cout)
        if tile is not None:
            dweight, dbias = launch_fused_backward(grad, x, wk, weight, dx, has_bias=has_bias, tile=tile)
            return dx, dskip, dweight, dbias
    conv_bytes = mask_parts(x, weight, cs)[0]
    if relu and bits is None:
        bits = pack_relu_mask(out, weight, skip_first)
    mask = bits if relu else grad  # read only when RELU
    math = math_settings(x.dtype)
    math["IDX64"] = needs_int64_offsets(grad, mask, x, wk, dx, dskip) or m * taps >= 2**31 - 1
    tiles = fixed_tiles(x.dtype)

    # The weight gradient first: backward_input's first programs sum its partials.
    # It reads the upsampled channels' part of the bits (MASK_BITS), never out.
    conv_bits = bits[:conv_bytes] if relu else torch.empty(1, dtype=torch.uint8, device=x.device)
    dependent = dependent_launches()
    dweight, dbias, weight_sum = launch_weight_grad(grad, grad, conv_bits, x, weight, relu=relu, has_bias=has_bias,
                                                    conv_c0=conv_c0, math=math, tiles=tiles,
                                                    let_next_start=dependent)
    sum_block = input_reduce_block()
    sums_here = sums_in_backward_input()
    n_sum = weight_sum.programs(sum_block) if sums_here else 0

    def input_grid(meta):
        bm, bn = meta["BLOCK_M"], meta["BLOCK_N"]
        return (n_sum + gemm_copy_grid(n, d * h * w, triton.cdiv(cin, bn), skip_pix, cs, bm, bn),)

    kernel = bwd.up_concat_backward_input_kernel if tiles else bwd.up_concat_backward_input_kernel_autotuned
    launch(
        kernel, input_grid,
        grad, mask, wk, dx, dskip, *weight_sum.pointers,
        n, d, h, w, d * h * w, cin, cout, cs, skip_pix, conv_c0, skip_c0, conv_bytes,
        *strides5(grad), wk.stride(0), wk.stride(1), *strides5(wk)[2:],
        *strides5(dx), *strides5(dskip), n_sum, *weight_sum.sizes,
        KD=kd, KH=kh, KW=kw, RELU=relu, FLAT_X=flat_pixels((dx,), (d, h, w)),
        FLAT_SKIP=flat_pixels((grad, dskip), sizes3(dskip)), **math, **(tiles or {}),
        SUM_PARTIALS=sums_here, HAS_BIAS=has_bias, SUM_BLOCK=sum_block, SUM_SPLITS=INPUT_REDUCE_SPLITS,
        SUM_ROWS=INPUT_REDUCE_ROWS, SUM_CHANNELS=REDUCE_CHANNELS, DEPENDENT=dependent, launch_pdl=dependent,
    )
    if not sums_here:
        launch_weight_reduce(weight_sum)
    return dx, dskip, dweight, dbias


def sums_in_backward_input() -> bool:
    """Whether backward_input's first programs sum the weight gradient's partials (one launch
    fewer) rather than a weight_reduce launch after it: on sm_90 and newer, and under the
    interpreter. Before Hopper the sum's code beside the 16-bit 128 x 128 tile made ptxas (Triton
    3.6, sm_80) keep 128 registers for two CTAs an SM and spill 4 bytes; without it, 133 and none."""
    return interpreting() or device_limits()[0] >= 90


def dependent_launches() -> bool:
    """Whether backward_input is launched as a programmatic dependent of the weight gradient
    (Triton's launch_pdl; kernels/common.py): on sm_90 and newer, where griddepcontrol exists, not
    under the interpreter. The weight gradient lets it start at once; its dx and dskip programs,
    which read nothing the weight gradient writes, then take SMs as that kernel's programs end,
    and its launch overlaps that kernel's run instead of following it."""
    return not interpreting() and device_limits()[0] >= 90


def input_reduce_block() -> int:
    """dW elements per reduction program of backward_input: configs.INPUT_REDUCE_BLOCK; under the
    interpreter 32, so that the tests' small weights take several programs and a partial last one."""
    return 32 if interpreting() else INPUT_REDUCE_BLOCK


def launch_weight_grad(grad, mask_src, bits, x, weight, *, relu: bool, has_bias: bool, conv_c0: int, math: dict,
                       tiles, let_next_start: bool = False):
    """(dweight, dbias, WeightSum) of up_concat: the weight-gradient kernel, whose partials the
    returned WeightSum's programs must then sum into dweight and dbias. `bits` holds the ReLU mask
    of the upsampled channels ([M, T, cdiv(Cout, 8)] bytes; read when relu); `mask_src` stands in
    for the 16-bit output the kernel can read instead (no launcher does now); `math` is
    launch_backward's math settings with IDX64; `tiles` the fixed tiles of the dtype, or None for
    the device's; `let_next_start`: the next launch is backward_input as a programmatic dependent."""
    n, cin = x.shape[:2]
    cout = weight.shape[1]
    kd, kh, kw = kernel_size(weight)
    d, h, w = sizes3(x)
    taps = kd * kh * kw
    nb = triton.cdiv(cout, 8)
    # Columns are (tap, channel) pairs over Cout padded to a multiple of 16: whole mask bytes, and a
    # divisor the compiler sees (an integer argument's divisibility by 16 is specialized), so the
    # 8 columns of a byte are provably contiguous: 16-byte loads of grad.
    cout_p = 16 * triton.cdiv(cout, 16)
    operands = operand_class(x.element_size(), math["INPUT_PRECISION"], channels_last_operand(x))
    tiles = tiles or fixed_tile("backward_weight", operands, cin, taps * cout_p)
    block_m, block_n, block_k = tiles["BLOCK_M"], tiles["BLOCK_N"], tiles["BLOCK_K"]
    n_col = triton.cdiv(taps * cout_p, block_n)
    gemm_tiles = triton.cdiv(cin, block_m) * n_col
    block_w = pixel_block_width(h, w, block_k)
    blocks = n * (d * h * w // block_k if block_w else triton.cdiv(d * h * w, block_k))
    occupancy = weight_grad_ctas_per_sm(tuple(tiles[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps",
                                                                 "num_stages")), x.element_size())
    s_lo, r_extra = weight_grad_splits(blocks, gemm_tiles, x.device, occupancy)
    slots = s_lo + (r_extra > 0)
    direct = slots == 1
    dweight, dbias, dw_part, db_part = weight_grad_buffers(x, weight, slots, has_bias)
    dw_strides = (dweight.stride(0), dweight.stride(1), *strides5(dweight)[2:])
    launch(
        bwd.up_concat_backward_weight_kernel, (s_lo * gemm_tiles + r_extra,),
        grad, mask_src, x, dw_part, db_part, dweight, bits,
        n, d, h, w, d * h * w, cin, cout, cout_p, conv_c0, nb, gemm_tiles, s_lo, r_extra,
        *strides5(grad), *strides5(mask_src), *strides5(x), *dw_strides,
        KD=kd, KH=kh, KW=kw, RELU=relu, MASK_BITS=relu, HAS_BIAS=has_bias, DIRECT=direct,
        FLAT_X=flat_pixels((x,), (d, h, w)), BLOCK_W=block_w, COUT8=cout % 8 == 0, LET_NEXT_START=let_next_start,
        **math, **tiles,
    )
    weight_sum = WeightSum(dw_part, db_part, dweight, dbias, cout=cout, cout_p=cout_p, has_bias=has_bias,
                           direct=direct, n_col=n_col, block_m=block_m, block_n=block_n, s_lo=s_lo, r_extra=r_extra)
    return dweight, dbias, weight_sum


def weight_grad_buffers(x, weight, slots: int, has_bias: bool) -> tuple:
    """(dweight, dbias, dw_part, db_part) for a weight gradient summed over `slots` pixel ranges:
    the partials [slots, Cin, T, Cout] and [slots, T, Cout] in the accumulator's dtype (far under
    2**31 elements). With one slot the kernel stores dW itself and db_part stands in for the
    unused dw_part. dbias is zeros when there is no bias."""
    cin, cout = weight.shape[:2]
    kd, kh, kw = kernel_size(weight)
    taps = kd * kh * kw
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    dweight = new_buffer(weight.shape, weight)
    dbias = new_buffer((cout,), weight) if has_bias else weight.new_zeros(cout)
    db_part = new_buffer((slots, taps, cout), x, dtype=acc_dtype)
    dw_part = db_part if slots == 1 else new_buffer((slots, cin, taps, cout), x, dtype=acc_dtype)
    return dweight, dbias, dw_part, db_part


class WeightSum:
    """The fixed-order sum of the weight-gradient partials into dweight and dbias
    (kernels/up_concat_backward_weight.py sum_weight_partials), as arguments: `pointers` and
    `sizes` (after COUT) in the order the kernels take them, and `programs(block)`, the grid it
    takes at `block` dW elements a program: none when `direct` left dweight written and there is
    no bias. The split layout (n_col column tiles of block_n over taps * cout_p columns, Cin tiles
    of block_m, s_lo splits and r_extra tiles with one more) is the partials' writer's."""

    def __init__(self, dw_part, db_part, dweight, dbias, *, cout, cout_p, has_bias, direct, n_col, block_m, block_n,
                 s_lo, r_extra):
        self.kernel = kernel_size(dweight)
        self.cout, self.has_bias = cout, has_bias
        self.elements = 0 if direct else dweight.numel()
        self.pointers = (dw_part, db_part, dweight, dbias)
        self.sizes = (cout_p, self.elements, n_col, block_m, block_n, s_lo, r_extra,
                      dweight.stride(0), dweight.stride(1), *strides5(dweight)[2:], dbias.stride(0))

    def programs(self, block: int) -> int:
        return triton.cdiv(self.elements, block) + (triton.cdiv(self.cout, REDUCE_CHANNELS) if self.has_bias else 0)


def launch_weight_reduce(weight_sum: WeightSum):
    """The weight-gradient reduction as a launch of its own (after the one-pass backward)."""
    programs = weight_sum.programs(REDUCE_BLOCK)
    if programs:
        kd, kh, kw = weight_sum.kernel
        launch(
            bwd.up_concat_weight_reduce_kernel, (programs,),
            *weight_sum.pointers, weight_sum.cout, *weight_sum.sizes,
            KD=kd, KH=kh, KW=kw, HAS_BIAS=weight_sum.has_bias, BLOCK=REDUCE_BLOCK, SPLIT_STEP=REDUCE_SPLITS,
            BLOCK_S=REDUCE_ROWS,
            BLOCK_O=REDUCE_CHANNELS, num_warps=REDUCE_WARPS,
        )


def backward_fused_tile(grad: torch.Tensor, x: torch.Tensor, taps: int, cout: int):
    """The tile of the one-pass backward (kernels/up_concat_backward_fused.py) for this launch, or
    None when the two-kernel backward runs: every (tap, Cout) column must fit one tile of its
    operand class (configs.FUSED_BACKWARD; both streamed operands, x and grad, decide the class).
    The interpreter takes it whenever the columns fit 512, with its small fixed tiles."""
    columns = taps * 16 * triton.cdiv(cout, 16)
    if interpreting() or x.dtype == torch.float64:
        if columns > 512:
            return None
        tiles = fixed_tiles(x.dtype)
        return dict({k: tiles[k] for k in ("BLOCK_M", "BLOCK_K", "num_warps", "num_stages")},
                    BLOCK_N=max(16, triton.next_power_of_2(columns)))
    stride1 = channels_last_operand(x) and channels_last_operand(grad)
    operands = operand_class(x.element_size(), math_settings(x.dtype)["INPUT_PRECISION"], stride1)
    capability, shared_limit = device_limits()
    return fused_backward_tile(operands, capability, columns, shared_limit)


def launch_fused_backward(grad, x, wk, weight, dx, *, has_bias: bool, tile: dict):
    """dx (written into `dx`), and (dweight, dbias), of a step without ReLU whose gradient `grad`
    is the upsampled channels' alone: the one-pass kernel, then the reduction of its partials.
    `wk` is weight_for_kernels(weight); `tile` backward_fused_tile's."""
    n, cin = x.shape[:2]
    cout = weight.shape[1]
    kd, kh, kw = kernel_size(weight)
    d, h, w = sizes3(x)
    taps = kd * kh * kw
    math = math_settings(x.dtype)
    math["IDX64"] = needs_int64_offsets(grad, x, wk, dx) or n * d * h * w * taps >= 2**31 - 1
    cout_p = 16 * triton.cdiv(cout, 16)
    block_m, block_n, block_k = tile["BLOCK_M"], tile["BLOCK_N"], tile["BLOCK_K"]
    c_tiles = triton.cdiv(cin, block_m)
    block_w = pixel_block_width(h, w, block_k)
    blocks = n * (d * h * w // block_k if block_w else triton.cdiv(d * h * w, block_k))
    splits = fused_backward_splits(blocks, c_tiles, x.device)
    direct = splits == 1
    dweight, dbias, dw_part, db_part = weight_grad_buffers(x, weight, splits, has_bias)
    dw_strides = (dweight.stride(0), dweight.stride(1), *strides5(dweight)[2:])
    launch(
        fused.up_concat_backward_fused_kernel, (splits * c_tiles,),
        grad, x, wk, dx, dw_part, db_part, dweight,
        n, d, h, w, d * h * w, cin, cout, cout_p, c_tiles, splits,
        *strides5(grad), *strides5(x), *strides5(dx), wk.stride(0), wk.stride(1), *strides5(wk)[2:], *dw_strides,
        KD=kd, KH=kh, KW=kw, HAS_BIAS=has_bias, DIRECT=direct, FLAT_X=flat_pixels((x, dx), (d, h, w)),
        BLOCK_W=block_w, COUT8=cout % 8 == 0, **math, **tile,
    )
    launch_weight_reduce(WeightSum(dw_part, db_part, dweight, dbias, cout=cout, cout_p=cout_p, has_bias=has_bias,
                                   direct=direct, n_col=1, block_m=block_m, block_n=block_n, s_lo=splits, r_extra=0))
    return dweight, dbias

"""Forward of up_concat in one launch, for 2-D and 3-D decoder steps:
    out = act(cat([conv_transpose_nd(x, w, b, stride=k), skip], 1))   (or skip first)

Index math. A transposed convolution whose stride equals its kernel k = (KD, KH, KW) has
non-overlapping taps t = (td, th, tw):
    out[n, o, KD*d+td, KH*h+th, KW*w+tw] = bias[o] + sum_c x[n, c, d, h, w] * w[c, o, td, th, tw]
so with M = N*D*H*W input pixels it is one GEMM X[M, Cin] @ W[Cin, T*Cout] (T = KD*KH*KW taps)
whose columns scatter to the T output pixels of each input pixel. A 2-D step runs as a 3-D one
with D = 1, KD = 1 (its depth strides are 0): one kernel for every tap count.

Taps as GEMM column tiles: program (row block m, tap t, Cout tile j) computes the [BLOCK_M,
BLOCK_N] tile X[m] @ W[:, t, j] with one accumulator and stores it to tap t's output pixels.
Within a tap the output channels are contiguous in channels_last, so the stores are vectors, and
the weight tile of one tap is a dense [BLOCK_K, BLOCK_N] block when the weight is stride-1 along
Cout (the launcher passes it so: a channels_last weight as it is, any other repacked once).
The T*cdiv(Cout, BLOCK_N) column tiles of a row block run next to each other, so x is read from
DRAM once and re-read from L2; the skip copy tiles are interleaved with them (common.program_role).
All strides are passed, so any layout works; offsets are int64 when a tensor of the launch spans
2**31 elements or more (IDX64), int32 otherwise.

ReLU mask bits (WRITE_BITS, when a gradient will be needed): every program also writes the mask
of what it stored, one bit per element (mask_bits.py in this package has the layout), so the
backward reads 1 bit per element instead of the 16-bit output. The GEMM programs take it from
the values they store (their accumulator, cast), the copy programs from the copied skip values.
"""
import triton
import triton.language as tl

from .common import (as_offset, copy_tile_coords, copy_tile_offsets, pixel_offset, program_role, relu_keep_nan,
                     row_block, spatial_coords, tap_offset, tile_product, up_pixel_offset)
from .configs import autotuned
from .mask_bits import store_conv_bits, store_skip_bits


@triton.jit
def skip_relu(v, RELU: tl.constexpr, UPCAST: tl.constexpr):
    """The ReLU over copied skip channels (when RELU): torch.relu's, NaN kept."""
    if RELU:
        if UPCAST:  # the interpreter cannot compare bfloat16 values
            v = v.to(tl.float32)
        v = relu_keep_nan(v)
    return v


@triton.jit
def up_concat_forward_kernel(
    # Pointers: x [N, CIN, D, H, W]; w [CIN, COUT, KD, KH, KW] (stride-1 along COUT on the GPU);
    # b [COUT] (any pointer when not HAS_BIAS); skip [N, CS, KD*D, KH*H, KW*W];
    # out [N, COUT + CS, KD*D, KH*H, KW*W].
    # bits: the ReLU mask bits (mask_bits.py), written when WRITE_BITS (any pointer otherwise).
    x_ptr, w_ptr, b_ptr, skip_ptr, out_ptr, bits_ptr,
    # Sizes: NIMG = N images of DHW = D*H*W input pixels (passed, so that its divisibility
    # by 16 is known to the compiler: vector loads along pixels in NCHW); SKIP_PIX = KD*D * KH*H * KW*W output pixels
    # per image; CONV_C0 / SKIP_C0 = first output channel of the upsampled / skip channels
    # (0 and COUT, or CS and 0 when the skip comes first); SKIP_BITS0 = first byte of the skip
    # channels' bits in bits_ptr (mask_bits.py).
    NIMG, D, H, W, DHW, CIN, COUT, CS, SKIP_PIX, CONV_C0, SKIP_C0, SKIP_BITS0,
    # Strides, in elements: sx* of x along n, c, d, h, w (sxd = 0 in 2-D) ...
    sxn, sxc, sxd, sxh, sxw,
    # ... sw* of w along c (input channel), o (output channel), td, th, tw; sb of b ...
    swc, swo, swd, swh, sww, sb,
    # ... ss* of skip and so* of out along n, c, d, h, w.
    ssn, ssc, ssd, ssh, ssw,
    son, soc, sod, soh, sow,
    # Meta-parameters: the kernel size (taps) per axis; bias; ReLU over every output channel;
    # FLAT_X: x merges (d, h, w) into one dimension of stride sxw; FLAT_SKIP: skip and out do.
    KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    HAS_BIAS: tl.constexpr, RELU: tl.constexpr, WRITE_BITS: tl.constexpr, FLAT_X: tl.constexpr,
    FLAT_SKIP: tl.constexpr,
    # How a tile product runs (launcher's math_settings) and the offset width.
    USE_DOT: tl.constexpr, UPCAST: tl.constexpr, ACC_F64: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    IDX64: tl.constexpr,
    # Tile: BLOCK_M pixels x BLOCK_N channels, BLOCK_K input channels per step.
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One program: a GEMM tile (row block, tap, Cout tile) or a skip copy tile. Row blocks
    are per image (common.row_block)."""
    T = KD * KH * KW
    n_co = tl.cdiv(COUT, BLOCK_N)
    dhw = DHW
    pid_m, col, q, n_copy = program_role(tl.program_id(0), NIMG * tl.cdiv(dhw, BLOCK_M), NIMG, SKIP_PIX, CS,
                                         T * n_co, BLOCK_M, BLOCK_N)
    out_dtype = out_ptr.dtype.element_ty

    if col < T * n_co:
        tap = col // n_co
        offs_o = (col - tap * n_co) * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_o = offs_o < COUT
        img, r, mask_m = row_block(pid_m, dhw, IDX64, BLOCK_M)
        d, h, w = spatial_coords(r, H, W)
        x_pix = pixel_offset(img, r, d, h, w, sxn, sxd, sxh, sxw, FLAT_X)
        w_tap = tap_offset(tap, swd, swh, sww, KH, KW)
        acc_dtype = tl.float64 if ACC_F64 else tl.float32
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_dtype)
        for k0 in range(0, CIN, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mask_k = offs_k < CIN
            x_tile = tl.load(x_ptr + x_pix[:, None] + as_offset(offs_k, IDX64)[None, :] * sxc,
                             mask=mask_m[:, None] & mask_k[None, :], other=0.0)
            w_tile = tl.load(w_ptr + w_tap + offs_k[:, None] * swc + offs_o[None, :] * swo,
                             mask=mask_k[:, None] & mask_o[None, :], other=0.0)
            acc = tile_product(x_tile, w_tile, acc, USE_DOT, UPCAST, INPUT_PRECISION)
        if HAS_BIAS:
            acc += tl.load(b_ptr + offs_o * sb, mask=mask_o, other=0.0).to(acc_dtype)[None, :]
        if RELU:
            acc = relu_keep_nan(acc)
        out_pix = (up_pixel_offset(img, d, h, w, son, sod, soh, sow, KD, KH, KW)
                   + tap_offset(tap, sod, soh, sow, KH, KW))
        out_ptrs = out_ptr + out_pix[:, None] + as_offset(CONV_C0 + offs_o, IDX64)[None, :] * soc
        stored = acc.to(out_dtype)
        mask = mask_m[:, None] & mask_o[None, :]
        tl.store(out_ptrs, stored, mask=mask)
        if WRITE_BITS:
            store_conv_bits(bits_ptr, stored, mask, img * dhw + r, mask_m, tap, (col - tap * n_co) * BLOCK_N,
                            tl.cdiv(COUT, 8), T, UPCAST, BLOCK_M, BLOCK_N)
    elif q < n_copy:
        img, offs_p, offs_c, mask = copy_tile_coords(q, SKIP_PIX, CS, IDX64, BLOCK_M, BLOCK_N)
        hs = KH * H
        ws = KW * W
        src = copy_tile_offsets(img, offs_p, offs_c, ssn, ssc, ssd, ssh, ssw, hs, ws, FLAT_SKIP)
        dst = copy_tile_offsets(img, offs_p, SKIP_C0 + offs_c, son, soc, sod, soh, sow, hs, ws, FLAT_SKIP)
        v = skip_relu(tl.load(skip_ptr + src, mask=mask, other=0.0), RELU, UPCAST).to(out_dtype)
        tl.store(out_ptr + dst, v, mask=mask)
        if WRITE_BITS:
            store_skip_bits(bits_ptr + SKIP_BITS0, v, mask, img * SKIP_PIX + offs_p, offs_p < SKIP_PIX,
                            (q % tl.cdiv(CS, BLOCK_N)) * BLOCK_N, tl.cdiv(CS, 8), UPCAST, BLOCK_M, BLOCK_N)


up_concat_forward_kernel_autotuned = autotuned(up_concat_forward_kernel, "forward", "x_ptr", "sxc", "COUT")

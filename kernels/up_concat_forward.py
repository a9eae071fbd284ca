"""Forward of up_concat in one launch: out = relu(cat([conv_transpose2d(x, w, b, stride=2), skip], 1)).

Index math. A 2x2 stride-2 transposed convolution has non-overlapping taps:
    out[n, o, 2i+a, 2j+b] = bias[o] + sum_c x[n, c, i, j] * w[c, o, a, b]
so with M = N*H*W input pixels, the convolution is one GEMM X[M, Cin] @ W[Cin, 4*Cout] whose
columns are scattered to the four output pixels (2i+a, 2j+b) of each input pixel (i, j).

The grid is (M blocks, Cout tiles + Cs tiles). A program whose column tile is below Cout computes
a [BLOCK_M pixels, BLOCK_N channels] tile for all four taps from one load of its x tile; a program
past Cout copies skip channels of the same 2x2 output pixels. So x and skip are read once, every
output element is written once, and neither the convolution result nor the concatenation ever
exists as a tensor of its own. All strides are passed, so any layout works; pixel and channel
offsets are int64 when a tensor spans 2**31 elements or more (IDX64), int32 otherwise.
"""
import triton
import triton.language as tl

from .common import as_offset, pixel_coords, relu_keep_nan, tile_product
from .configs import autotuned


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
    x_ptr, skip_ptr, w_ptr, b_ptr, out_ptr,
    M, H, W, CIN, COUT, CS,
    sxn, sxc, sxh, sxw,
    ssn, ssc, ssh, ssw,
    swc, swo, swa, swb, sb,
    son, soc, soh, sow,
    HAS_BIAS: tl.constexpr, RELU: tl.constexpr,
    USE_DOT: tl.constexpr, UPCAST: tl.constexpr, ACC_F64: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    IDX64: tl.constexpr, PAIR_W: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """PAIR_W: skip and out are stride-1 along W (NCHW), so the two W taps (b = 0, 1) of an output
    pixel pair are adjacent: stored (and skip copied) as [BLOCK_M, BLOCK_N, 2] runs, joined in
    registers, instead of two accesses at stride 2."""
    pid_m = as_offset(tl.program_id(0), IDX64)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    img, row, col = pixel_coords(offs_m, H, W)
    # Offset of output pixel (2i, 2j); tap (a, b) adds a*soh + b*sow.
    out_pix = img * son + (2 * row) * soh + (2 * col) * sow
    out_dtype = out_ptr.dtype.element_ty
    n_conv_tiles = tl.cdiv(COUT, BLOCK_N)

    if pid_n < n_conv_tiles:
        offs_o = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_o = offs_o < COUT
        acc_dtype = tl.float64 if ACC_F64 else tl.float32
        acc00 = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_dtype)
        acc01 = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_dtype)
        acc10 = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_dtype)
        acc11 = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_dtype)
        x_pix = img * sxn + row * sxh + col * sxw
        for k0 in range(0, CIN, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mask_k = offs_k < CIN
            x_tile = tl.load(x_ptr + x_pix[:, None] + as_offset(offs_k[None, :], IDX64) * sxc,
                             mask=mask_m[:, None] & mask_k[None, :], other=0.0)
            w_ptrs = w_ptr + offs_k[:, None] * swc + offs_o[None, :] * swo
            w_mask = mask_k[:, None] & mask_o[None, :]
            acc00 = tile_product(x_tile, tl.load(w_ptrs, mask=w_mask, other=0.0), acc00,
                                 USE_DOT, UPCAST, INPUT_PRECISION)
            acc01 = tile_product(x_tile, tl.load(w_ptrs + swb, mask=w_mask, other=0.0), acc01,
                                 USE_DOT, UPCAST, INPUT_PRECISION)
            acc10 = tile_product(x_tile, tl.load(w_ptrs + swa, mask=w_mask, other=0.0), acc10,
                                 USE_DOT, UPCAST, INPUT_PRECISION)
            acc11 = tile_product(x_tile, tl.load(w_ptrs + swa + swb, mask=w_mask, other=0.0), acc11,
                                 USE_DOT, UPCAST, INPUT_PRECISION)
        if HAS_BIAS:
            bias = tl.load(b_ptr + offs_o * sb, mask=mask_o, other=0.0).to(acc_dtype)[None, :]
            acc00 += bias
            acc01 += bias
            acc10 += bias
            acc11 += bias
        if RELU:
            acc00 = relu_keep_nan(acc00)
            acc01 = relu_keep_nan(acc01)
            acc10 = relu_keep_nan(acc10)
            acc11 = relu_keep_nan(acc11)
        out_ptrs = out_ptr + out_pix[:, None] + as_offset(offs_o[None, :], IDX64) * soc
        out_mask = mask_m[:, None] & mask_o[None, :]
        if PAIR_W:
            pair = tl.arange(0, 2)[None, None, :]
            pair_mask = out_mask[:, :, None] & (pair < 2)
            tl.store(out_ptrs[:, :, None] + pair, tl.join(acc00, acc01).to(out_dtype), mask=pair_mask)
            tl.store(out_ptrs[:, :, None] + soh + pair, tl.join(acc10, acc11).to(out_dtype), mask=pair_mask)
        else:
            tl.store(out_ptrs, acc00.to(out_dtype), mask=out_mask)
            tl.store(out_ptrs + sow, acc01.to(out_dtype), mask=out_mask)
            tl.store(out_ptrs + soh, acc10.to(out_dtype), mask=out_mask)
            tl.store(out_ptrs + soh + sow, acc11.to(out_dtype), mask=out_mask)
    else:
        offs_s = (pid_n - n_conv_tiles) * BLOCK_N + tl.arange(0, BLOCK_N)
        mask = mask_m[:, None] & (offs_s < CS)[None, :]
        skip_ptrs = (skip_ptr + (img * ssn + (2 * row) * ssh + (2 * col) * ssw)[:, None]
                     + as_offset(offs_s[None, :], IDX64) * ssc)
        out_ptrs = out_ptr + out_pix[:, None] + as_offset((COUT + offs_s)[None, :], IDX64) * soc
        if PAIR_W:  # taps (a, 0) and (a, 1) in one access
            pair = tl.arange(0, 2)[None, None, :]
            pair_mask = mask[:, :, None] & (pair < 2)
            for a in tl.static_range(2):
                v = tl.load(skip_ptrs[:, :, None] + a * ssh + pair, mask=pair_mask, other=0.0)
                v = skip_relu(v, RELU, UPCAST)
                tl.store(out_ptrs[:, :, None] + a * soh + pair, v.to(out_dtype), mask=pair_mask)
        else:
            for tap in tl.static_range(4):
                a = tap // 2
                b = tap % 2
                v = skip_relu(tl.load(skip_ptrs + a * ssh + b * ssw, mask=mask, other=0.0), RELU, UPCAST)
                tl.store(out_ptrs + a * soh + b * sow, v.to(out_dtype), mask=mask)


up_concat_forward_kernel_autotuned = autotuned(up_concat_forward_kernel, "forward", "x_ptr")

"""Backward of up_concat: two launches plus a small reduction.

With gy = grad[:, :Cout] (zeroed where out <= 0 when relu=True) seen as the GEMM output
unshuffled to [M, 4*Cout] (see up_concat_forward.py for the index math):
  dx     = gy @ W^T            one [BLOCK_M pixels, BLOCK_N Cin] tile per program, K = 4 taps x Cout
  dskip  = grad[:, Cout:] * mask    copied by extra column tiles of the same launch, as in forward
  dW     = X^T @ gy            K = the M pixels: split over programs (split-K), partial sums
  dbias  = sum of gy           in fp32, summed on the host (deterministic, no atomics)
The mask is read from the saved output (so no separate mask tensor is kept).
"""
import triton
import triton.language as tl

from .common import as_offset, pixel_coords, tile_product
from .configs import autotuned


@triton.jit
def masked_grad(g_ptrs, o_ptrs, mask, RELU: tl.constexpr, UPCAST: tl.constexpr):
    """0 where the forward ReLU clipped the value (out <= 0), else grad: torch's threshold_backward,
    the reference's ReLU backward. A NaN grad under the mask stays 0; a NaN output (not <= 0)
    passes its grad, as in the reference."""
    g = tl.load(g_ptrs, mask=mask, other=0.0)
    if UPCAST:
        g = g.to(tl.float32)
    if RELU:
        out = tl.load(o_ptrs, mask=mask, other=0.0)
        if UPCAST:  # the interpreter cannot compare bfloat16 values
            out = out.to(tl.float32)
        g = tl.where(out <= 0, tl.zeros_like(g), g)
    return g


@triton.jit
def up_concat_backward_input_kernel(
    g_ptr, o_ptr, w_ptr, dx_ptr, dskip_ptr,
    M, H, W, CIN, COUT, CS,
    sgn, sgc, sgh, sgw,
    son, soc, soh, sow,
    swc, swo, swa, swb,
    sdxn, sdxc, sdxh, sdxw,
    sdsn, sdsc, sdsh, sdsw,
    RELU: tl.constexpr,
    USE_DOT: tl.constexpr, UPCAST: tl.constexpr, ACC_F64: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    IDX64: tl.constexpr, PAIR_W: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """PAIR_W: grad, out and dskip are stride-1 along W (NCHW), so the two W taps (b = 0, 1) of a
    pixel are adjacent elements: one [BLOCK_M, BLOCK_K, 2] access of 2-element runs (split or
    joined in registers) instead of two at stride 2, which the compiler can pipeline (cp.async)."""
    pid_m = as_offset(tl.program_id(0), IDX64)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    img, row, col = pixel_coords(offs_m, H, W)
    # Offsets of output pixel (2i, 2j) in grad and in the saved output; tap (a, b) adds a*sh + b*sw.
    g_pix = img * sgn + (2 * row) * sgh + (2 * col) * sgw
    o_pix = img * son + (2 * row) * soh + (2 * col) * sow
    n_dx_tiles = tl.cdiv(CIN, BLOCK_N)

    if pid_n < n_dx_tiles:
        offs_c = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_c = offs_c < CIN
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float64 if ACC_F64 else tl.float32)
        for k0 in range(0, COUT, BLOCK_K):
            offs_o = k0 + tl.arange(0, BLOCK_K)
            mask_o = offs_o < COUT
            mask = mask_m[:, None] & mask_o[None, :]
            g_ptrs = g_ptr + g_pix[:, None] + as_offset(offs_o[None, :], IDX64) * sgc
            o_ptrs = o_ptr + o_pix[:, None] + as_offset(offs_o[None, :], IDX64) * soc
            wt_ptrs = w_ptr + offs_o[:, None] * swo + offs_c[None, :] * swc
            wt_mask = mask_o[:, None] & mask_c[None, :]
            for a in tl.static_range(2):
                if PAIR_W:  # taps (a, 0) and (a, 1) in one load
                    pair = tl.arange(0, 2)[None, None, :]
                    gy0, gy1 = tl.split(masked_grad(g_ptrs[:, :, None] + a * sgh + pair,
                                                    o_ptrs[:, :, None] + a * soh + pair,
                                                    mask[:, :, None] & (pair < 2), RELU, UPCAST))
                else:
                    gy0 = masked_grad(g_ptrs + a * sgh, o_ptrs + a * soh, mask, RELU, UPCAST)
                    gy1 = masked_grad(g_ptrs + a * sgh + sgw, o_ptrs + a * soh + sow, mask, RELU, UPCAST)
                wt0 = tl.load(wt_ptrs + a * swa, mask=wt_mask, other=0.0)
                wt1 = tl.load(wt_ptrs + a * swa + swb, mask=wt_mask, other=0.0)
                acc = tile_product(gy0, wt0, acc, USE_DOT, UPCAST, INPUT_PRECISION)
                acc = tile_product(gy1, wt1, acc, USE_DOT, UPCAST, INPUT_PRECISION)
        dx_ptrs = (dx_ptr + (img * sdxn + row * sdxh + col * sdxw)[:, None]
                   + as_offset(offs_c[None, :], IDX64) * sdxc)
        tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_c[None, :])
    else:
        offs_s = (pid_n - n_dx_tiles) * BLOCK_N + tl.arange(0, BLOCK_N)
        mask = mask_m[:, None] & (offs_s < CS)[None, :]
        chan = as_offset((COUT + offs_s)[None, :], IDX64)
        g_ptrs = g_ptr + g_pix[:, None] + chan * sgc
        o_ptrs = o_ptr + o_pix[:, None] + chan * soc
        ds_ptrs = (dskip_ptr + (img * sdsn + (2 * row) * sdsh + (2 * col) * sdsw)[:, None]
                   + as_offset(offs_s[None, :], IDX64) * sdsc)
        for a in tl.static_range(2):
            if PAIR_W:
                pair = tl.arange(0, 2)[None, None, :]
                pair_mask = mask[:, :, None] & (pair < 2)
                g = masked_grad(g_ptrs[:, :, None] + a * sgh + pair, o_ptrs[:, :, None] + a * soh + pair,
                                pair_mask, RELU, UPCAST)
                tl.store(ds_ptrs[:, :, None] + a * sdsh + pair, g.to(dskip_ptr.dtype.element_ty), mask=pair_mask)
            else:
                for b in tl.static_range(2):
                    g = masked_grad(g_ptrs + a * sgh + b * sgw, o_ptrs + a * soh + b * sow, mask, RELU, UPCAST)
                    tl.store(ds_ptrs + a * sdsh + b * sdsw, g.to(dskip_ptr.dtype.element_ty), mask=mask)


@triton.jit
def up_concat_backward_weight_kernel(
    g_ptr, o_ptr, x_ptr, dw_ptr, db_ptr,
    M, H, W, CIN, COUT, PIX_PER_SPLIT,
    sgn, sgc, sgh, sgw,
    son, soc, soh, sow,
    sxn, sxc, sxh, sxw,
    RELU: tl.constexpr, HAS_BIAS: tl.constexpr,
    USE_DOT: tl.constexpr, UPCAST: tl.constexpr, ACC_F64: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    IDX64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Program (c tile, o tile, split s) writes dw_part[s, c, o, tap] and, from the first c tile,
    db_part[s, o]: partial sums over pixels [s*PIX_PER_SPLIT, (s+1)*PIX_PER_SPLIT)."""
    pid_c = tl.program_id(0)
    pid_o = tl.program_id(1)
    pid_s = as_offset(tl.program_id(2), IDX64)
    offs_c = pid_c * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_o = pid_o * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_c = offs_c < CIN
    mask_o = offs_o < COUT
    acc_dtype = tl.float64 if ACC_F64 else tl.float32
    acc00 = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_dtype)
    acc01 = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_dtype)
    acc10 = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_dtype)
    acc11 = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_dtype)
    bias_acc = tl.zeros((BLOCK_N,), dtype=acc_dtype)
    start = pid_s * PIX_PER_SPLIT
    x_chan = as_offset(offs_c[:, None], IDX64) * sxc
    g_chan = as_offset(offs_o[None, :], IDX64) * sgc
    o_chan = as_offset(offs_o[None, :], IDX64) * soc
    for k0 in range(0, PIX_PER_SPLIT, BLOCK_K):
        offs_p = start + k0 + tl.arange(0, BLOCK_K)
        mask_p = offs_p < M
        img, row, col = pixel_coords(offs_p, H, W)
        x_t = tl.load(x_ptr + x_chan + (img * sxn + row * sxh + col * sxw)[None, :],
                      mask=mask_c[:, None] & mask_p[None, :], other=0.0)
        g_ptrs = g_ptr + (img * sgn + (2 * row) * sgh + (2 * col) * sgw)[:, None] + g_chan
        o_ptrs = o_ptr + (img * son + (2 * row) * soh + (2 * col) * sow)[:, None] + o_chan
        mask = mask_p[:, None] & mask_o[None, :]
        gy00 = masked_grad(g_ptrs, o_ptrs, mask, RELU, UPCAST)
        gy01 = masked_grad(g_ptrs + sgw, o_ptrs + sow, mask, RELU, UPCAST)
        gy10 = masked_grad(g_ptrs + sgh, o_ptrs + soh, mask, RELU, UPCAST)
        gy11 = masked_grad(g_ptrs + sgh + sgw, o_ptrs + soh + sow, mask, RELU, UPCAST)
        acc00 = tile_product(x_t, gy00, acc00, USE_DOT, UPCAST, INPUT_PRECISION)
        acc01 = tile_product(x_t, gy01, acc01, USE_DOT, UPCAST, INPUT_PRECISION)
        acc10 = tile_product(x_t, gy10, acc10, USE_DOT, UPCAST, INPUT_PRECISION)
        acc11 = tile_product(x_t, gy11, acc11, USE_DOT, UPCAST, INPUT_PRECISION)
        if HAS_BIAS:
            # Each tap upcast before adding: on the GPU gy is bf16/fp16, and a sum of four in that
            # dtype would round every pixel's contribution to dbias.
            bias_acc += tl.sum(gy00.to(acc_dtype) + gy01.to(acc_dtype) + gy10.to(acc_dtype)
                               + gy11.to(acc_dtype), axis=0)
    # dw_part is [SPLIT, CIN, COUT, 4] contiguous: the 4 taps of weight[c, o] are adjacent.
    dw_ptrs = dw_ptr + pid_s * CIN * COUT * 4 + (offs_c[:, None] * COUT + offs_o[None, :]) * 4
    dw_mask = mask_c[:, None] & mask_o[None, :]
    tl.store(dw_ptrs, acc00, mask=dw_mask)
    tl.store(dw_ptrs + 1, acc01, mask=dw_mask)
    tl.store(dw_ptrs + 2, acc10, mask=dw_mask)
    tl.store(dw_ptrs + 3, acc11, mask=dw_mask)
    if HAS_BIAS:
        if pid_c == 0:
            tl.store(db_ptr + pid_s * COUT + offs_o, bias_acc, mask=mask_o)


up_concat_backward_input_kernel_autotuned = autotuned(up_concat_backward_input_kernel, "backward_input", "g_ptr")

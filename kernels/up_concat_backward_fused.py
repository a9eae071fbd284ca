"""Backward of up_concat without a ReLU in one pass over grad: dx and the weight-gradient partials
from the same gy tiles, then the weight_reduce kernel (up_concat_backward_weight.py).

Why: without a ReLU the step's backward floor reads gy (the upsampled channels of grad) once, and
gy is most of it (nnU-Net's 3-D steps: 67% on 3d1 and 3d2). The two-kernel backward reads it
twice, once for dx = gy @ W^T and once for dW = X^T @ gy, which caps it at about 60% of the floor
even at full DRAM speed. Here program (split s, Cin tile c) walks the pixel blocks of split s;
for each block it loads gy [BLOCK_K pixels, every (tap, Cout) column] and x [BLOCK_K pixels,
BLOCK_M Cin] once and computes both products:
    dx[block, c]     = gy @ W^T[columns, c]     (complete: the block holds every column)
    dW^T[cols, c]   += gy^T @ x[block, c]       (split s's partial, kept across its blocks)
dW is accumulated transposed so that the tensor cores' M is the columns (up to 512) and a
32-channel Cin tile stays a legal N. Programs of Cin tile 0 also sum dbias, as gy^T @ ones.
The Cin tiles of a split are adjacent in the grid (program g: split g // N_CTILES, Cin tile
g % N_CTILES), so they walk the same blocks side by side and gy comes from DRAM once. Columns are
laid out as in the weight-gradient kernel (tap j // COUT_P, channel j % COUT_P, Cout padded to
a multiple of 16), every column in one BLOCK_N tile (the launcher takes this kernel when
T * COUT_P fits one). The partials [S, CIN, T, COUT] (and dbias's [S, T, COUT]) have the
weight-gradient kernel's layout with one column tile, so weight_reduce sums them in fixed order:
no atomics, the same bits run to run. The pixel blocks and their two paths (whole rows with
BLOCK_W > 0, per-pixel index math with 0) are the weight-gradient kernel's.
"""
import triton
import triton.language as tl

from .common import (as_offset, block_origin, next_block, origin_offsets, pixel_offset, row_block, spatial_coords,
                     split_blocks, tap_offset, tile_product, up_pixel_offset)


@triton.jit
def _block_step(x_t, g3, w_t, dx_ptrs, dx_mask, acc, bias,
                WITH_BIAS: tl.constexpr, USE_DOT: tl.constexpr, UPCAST: tl.constexpr, ACC_F64: tl.constexpr,
                INPUT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_K: tl.constexpr):
    """Both products of one pixel block: dx stored; dW^T [columns, Cin tile] and, WITH_BIAS,
    dbias (as gy^T @ ones [pixels, 16]: a tensor-core product, no per-step reduction across
    threads; its 16 columns are equal) carried."""
    if UPCAST:
        g3 = g3.to(tl.float32)
    gy = tl.reshape(g3, (BLOCK_K, BLOCK_N))
    dx = tl.zeros((BLOCK_K, BLOCK_M), dtype=acc.dtype)
    dx = tile_product(gy, w_t, dx, USE_DOT, UPCAST, INPUT_PRECISION)
    tl.store(dx_ptrs, dx.to(dx_ptrs.dtype.element_ty), mask=dx_mask)
    gy_t = tl.trans(gy)
    acc = tile_product(gy_t, x_t, acc, USE_DOT, UPCAST, INPUT_PRECISION)
    if WITH_BIAS:
        bias = tile_product(gy_t, tl.full((BLOCK_K, 16), 1.0, gy.dtype), bias, USE_DOT, UPCAST, INPUT_PRECISION)
    return acc, bias


@triton.jit
def _fused_loop(
    kb0, kb1, g_ptr, x_ptr, dx_ptr, w_t,
    D, H, W, DHW,
    sgn, sgd, sgh, sgw, sxn, sxc, sxd, sxh, sxw, sdxn, sdxc, sdxd, sdxh, sdxw,
    offs_c, mask_c, g_col, mask_j,
    KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, WITH_BIAS: tl.constexpr,
    FLAT_X: tl.constexpr, BLOCK_W: tl.constexpr, USE_DOT: tl.constexpr, UPCAST: tl.constexpr,
    ACC_F64: tl.constexpr, INPUT_PRECISION: tl.constexpr, IDX64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """(dW^T [BLOCK_N, BLOCK_M], dbias [BLOCK_N, 16]) over pixel blocks [kb0, kb1), dx of each
    block stored on the way. WITH_BIAS: a separate loop, so programs that do not own dbias skip it."""
    acc_dtype = tl.float64 if ACC_F64 else tl.float32
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=acc_dtype)
    bias = tl.zeros((BLOCK_N, 16), dtype=acc_dtype)
    i = tl.arange(0, BLOCK_K)
    x_chan = as_offset(offs_c, IDX64) * sxc
    dx_chan = as_offset(offs_c, IDX64) * sdxc
    if BLOCK_W > 0:
        # As in the weight-gradient kernel: a block is BLOCK_K // BLOCK_W whole rows of one plane,
        # its offsets a scalar base per block plus tiles computed here once.
        ih = as_offset(i // BLOCK_W, IDX64)
        iw = as_offset(i % BLOCK_W, IDX64)
        x_tile = (ih * sxh + iw * sxw)[:, None] + x_chan[None, :]
        dx_tile = (ih * sdxh + iw * sdxw)[:, None] + dx_chan[None, :]
        # [pixels, Cin tile]: the mask of the x tile and of the dx tile alike.
        block_mask = (i < BLOCK_K)[:, None] & mask_c[None, :]
        g_tile = (ih * (KH * sgh) + iw * (KW * sgw))[:, None, None] + g_col[None, :, :]
        g_mask = (i < BLOCK_K)[:, None, None] & mask_j[None, :, :]
        img_k, d_k, h_k, w_k = block_origin(kb0, D, H, W, BLOCK_W, BLOCK_K)
        for kb in range(kb0, kb1):
            img, d, h0, w0 = origin_offsets(img_k, d_k, h_k, w_k, IDX64)
            img_k, d_k, h_k, w_k = next_block(img_k, d_k, h_k, w_k, D, H, W, BLOCK_W, BLOCK_K)
            # The block's first pixel: of x and dx with a unit kernel, of grad (tap 0) with the step's.
            x_t = tl.load(x_ptr + up_pixel_offset(img, d, h0, w0, sxn, sxd, sxh, sxw, 1, 1, 1) + x_tile,
                          mask=block_mask, other=0.0)
            g3 = tl.load(g_ptr + up_pixel_offset(img, d, h0, w0, sgn, sgd, sgh, sgw, KD, KH, KW) + g_tile,
                         mask=g_mask, other=0.0)
            dx_ptrs = dx_ptr + up_pixel_offset(img, d, h0, w0, sdxn, sdxd, sdxh, sdxw, 1, 1, 1) + dx_tile
            acc, bias = _block_step(x_t, g3, w_t, dx_ptrs, block_mask, acc, bias, WITH_BIAS, USE_DOT, UPCAST,
                                    ACC_F64, INPUT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
    else:
        for kb in range(kb0, kb1):
            img, r, mask_p = row_block(kb, DHW, IDX64, BLOCK_K)
            d, h, w = spatial_coords(r, H, W)
            x_t = tl.load(x_ptr + pixel_offset(img, r, d, h, w, sxn, sxd, sxh, sxw, FLAT_X)[:, None] + x_chan[None, :],
                          mask=mask_p[:, None] & mask_c[None, :], other=0.0)
            g3 = tl.load(g_ptr + up_pixel_offset(img, d, h, w, sgn, sgd, sgh, sgw, KD, KH, KW)[:, None, None]
                         + g_col[None, :, :], mask=mask_p[:, None, None] & mask_j[None, :, :], other=0.0)
            dx_ptrs = (dx_ptr + pixel_offset(img, r, d, h, w, sdxn, sdxd, sdxh, sdxw, FLAT_X)[:, None]
                       + dx_chan[None, :])
            acc, bias = _block_step(x_t, g3, w_t, dx_ptrs, mask_p[:, None] & mask_c[None, :], acc, bias, WITH_BIAS,
                                    USE_DOT, UPCAST, ACC_F64, INPUT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
    return acc, bias


@triton.jit
def up_concat_backward_fused_kernel(
    # Pointers: g = the upsampled channels' gradient [N, COUT, KD*D, KH*H, KW*W] (any strides);
    # x [N, CIN, D, H, W]; w [CIN, COUT, KD, KH, KW]; dx like x; dw_part [S, CIN, T, COUT] and
    # db_part [S, T, COUT], contiguous, fp32 (fp64 for fp64); dw [CIN, COUT, KD, KH, KW], written
    # directly (cast) instead of dw_part when DIRECT.
    g_ptr, x_ptr, w_ptr, dx_ptr, dw_part_ptr, db_ptr, dw_ptr,
    # Sizes: NIMG images of DHW = D*H*W input pixels; COUT_P: Cout padded to a multiple of 16;
    # N_CTILES Cin tiles; S splits of the pixel blocks.
    NIMG, D, H, W, DHW, CIN, COUT, COUT_P, N_CTILES, S,
    # Strides, in elements, along n, c, d, h, w: sg* of g, sx* of x, sdx* of dx; sw* of w along
    # c, o, td, th, tw; sdw* of dw along c, o, td, th, tw (read only when DIRECT).
    sgn, sgc, sgd, sgh, sgw,
    sxn, sxc, sxd, sxh, sxw,
    sdxn, sdxc, sdxd, sdxh, sdxw,
    swc, swo, swd, swh, sww,
    sdwc, sdwo, sdwd, sdwh, sdww,
    # Meta-parameters as in the weight-gradient kernel (BLOCK_M Cin, BLOCK_N columns, BLOCK_K
    # pixels per block; BLOCK_W: pixel-block width of the strided path, 0 for the general one).
    KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, HAS_BIAS: tl.constexpr, DIRECT: tl.constexpr,
    FLAT_X: tl.constexpr, BLOCK_W: tl.constexpr, COUT8: tl.constexpr,
    USE_DOT: tl.constexpr, UPCAST: tl.constexpr, ACC_F64: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    IDX64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Program g: split g // N_CTILES, Cin tile g % N_CTILES; Cin tile 0 also sums dbias."""
    T: tl.constexpr = KD * KH * KW
    pid = tl.program_id(0)
    s = pid // N_CTILES
    pid_c = pid - s * N_CTILES
    kb0, kb1 = split_blocks(s, S, NIMG, DHW, BLOCK_W, BLOCK_K)
    offs_c = pid_c * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_c = offs_c < CIN
    # Columns as [BLOCK_N // 8, 8]: whole groups of 8 channels of one tap, so that the loads of a
    # channels_last gy are provably 16-byte vectors.
    j = 8 * tl.arange(0, BLOCK_N // 8)[:, None] + tl.arange(0, 8)[None, :]
    tap_j = j // COUT_P
    o_j = j - tap_j * COUT_P
    if COUT8:
        q8 = 8 * tl.arange(0, BLOCK_N // 8)
        mask_j = tl.broadcast_to(((q8 - (q8 // COUT_P) * COUT_P < COUT) & (q8 // COUT_P < T))[:, None],
                                 (BLOCK_N // 8, 8))
    else:
        mask_j = (o_j < COUT) & (tap_j < T)
    g_col = tap_offset(tap_j, sgd, sgh, sgw, KH, KW) + as_offset(o_j, IDX64) * sgc
    # W^T [columns, Cin tile]: every column of this Cin tile, loaded once for all the blocks.
    w_t = tl.load(w_ptr + (tap_offset(tap_j, swd, swh, sww, KH, KW) + o_j * swo)[:, :, None]
                  + offs_c[None, None, :] * swc, mask=mask_j[:, :, None] & mask_c[None, None, :], other=0.0)
    if UPCAST:
        w_t = w_t.to(tl.float32)
    w_t = tl.reshape(w_t, (BLOCK_N, BLOCK_M))
    if HAS_BIAS and pid_c == 0:
        acc, bias = _fused_loop(
            kb0, kb1, g_ptr, x_ptr, dx_ptr, w_t, D, H, W, DHW,
            sgn, sgd, sgh, sgw, sxn, sxc, sxd, sxh, sxw, sdxn, sdxc, sdxd, sdxh, sdxw,
            offs_c, mask_c, g_col, mask_j, KD, KH, KW, True, FLAT_X, BLOCK_W, USE_DOT, UPCAST, ACC_F64,
            INPUT_PRECISION, IDX64, BLOCK_M, BLOCK_N, BLOCK_K)
        jb = tl.arange(0, BLOCK_N)
        tap_b = jb // COUT_P
        o_b = jb - tap_b * COUT_P
        # Column 0 of the [BLOCK_N, 16] product: its 16 columns are equal.
        db = tl.sum(tl.where((tl.arange(0, 16) == 0)[None, :], bias, tl.zeros_like(bias)), axis=1)
        tl.store(db_ptr + (s * T + tap_b) * COUT + o_b, db, mask=(o_b < COUT) & (tap_b < T))
    else:
        acc, bias = _fused_loop(
            kb0, kb1, g_ptr, x_ptr, dx_ptr, w_t, D, H, W, DHW,
            sgn, sgd, sgh, sgw, sxn, sxc, sxd, sxh, sxw, sdxn, sdxc, sdxd, sdxh, sdxw,
            offs_c, mask_c, g_col, mask_j, KD, KH, KW, False, FLAT_X, BLOCK_W, USE_DOT, UPCAST, ACC_F64,
            INPUT_PRECISION, IDX64, BLOCK_M, BLOCK_N, BLOCK_K)
    # dW^T [columns, Cin tile]: column j is tap j // COUT_P, channel j % COUT_P.
    jn = tl.arange(0, BLOCK_N)
    tap_n = jn // COUT_P
    o_n = jn - tap_n * COUT_P
    dw_mask = ((o_n < COUT) & (tap_n < T))[:, None] & mask_c[None, :]
    if DIRECT:
        dw_ptrs = (dw_ptr + offs_c[None, :] * sdwc + o_n[:, None] * sdwo
                   + tap_offset(tap_n, sdwd, sdwh, sdww, KH, KW)[:, None])
        tl.store(dw_ptrs, acc.to(dw_ptr.dtype.element_ty), mask=dw_mask)
    else:
        dw_ptrs = dw_part_ptr + ((s * CIN + offs_c[None, :]) * T + tap_n[:, None]) * COUT + o_n[:, None]
        tl.store(dw_ptrs, acc, mask=dw_mask)

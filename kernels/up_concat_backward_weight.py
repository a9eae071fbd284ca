"""Weight gradient of up_concat, 2-D and 3-D: dW = X^T @ gy split over pixel ranges (split-K),
then a fixed-order reduction of the partials. No atomics: deterministic by construction.
The index math and the ReLU mask bits are described in up_concat_forward.py and
up_concat_backward.py.
"""
import triton
import triton.language as tl

from .common import (as_offset, pixel_offset, row_block, spatial_coords, tap_offset, tile_product,
                     up_pixel_offset)
from .up_concat_backward import load_mask_bits, masked_grad


@triton.jit
def up_concat_backward_weight_kernel(
    # Pointers: grad, out as in backward_input; x [N, CIN, D, H, W];
    # dw_part [S, CIN, T, COUT] and db_part [S, T, COUT], contiguous, fp32 (fp64 for fp64);
    # dw [CIN, COUT, KD, KH, KW], written directly (cast) instead of dw_part when DIRECT.
    # bits: the ReLU mask store_mask_bits wrote (read instead of out when MASK_BITS).
    g_ptr, o_ptr, x_ptr, dw_part_ptr, db_ptr, dw_ptr, bits_ptr,
    # Sizes: NIMG images of DHW = D*H*W input pixels, taken in per-image blocks of BLOCK_K pixels, split
    # into ranges of BLOCKS_PER_SPLIT blocks; CONV_C0 = first upsampled channel of grad and out.
    NIMG, D, H, W, DHW, CIN, COUT, CONV_C0, BLOCKS_PER_SPLIT, NB,
    # Strides, in elements, along n, c, d, h, w: sg* of grad, so* of out, sx* of x.
    sgn, sgc, sgd, sgh, sgw,
    son, soc, sod, soh, sow,
    sxn, sxc, sxd, sxh, sxw,
    # ... sdw* of dw along c, o, td, th, tw (read only when DIRECT).
    sdwc, sdwo, sdwd, sdwh, sdww,
    # Meta-parameters: taps per axis; ReLU mask; bias partials; DIRECT: one split (S = 1), dw
    # stored here in its dtype, no dw_part and no reduction of it; FLAT_X: x merges (d, h, w)
    # into one dimension of stride sxw; tile-product settings; offset
    # width; tile (BLOCK_M input channels x BLOCK_N output channels, BLOCK_K pixels per step).
    KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    RELU: tl.constexpr, MASK_BITS: tl.constexpr, HAS_BIAS: tl.constexpr, DIRECT: tl.constexpr,
    FLAT_X: tl.constexpr,
    USE_DOT: tl.constexpr, UPCAST: tl.constexpr, ACC_F64: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    IDX64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Program (split s, Cin tile, tap, Cout tile), Cout tiles fastest: the programs of one split
    read the same pixels side by side (x and gy from DRAM once, then L2). With MASK_BITS the ReLU
    mask comes from the bits backward_input wrote, not from the 16-bit output."""
    T = KD * KH * KW
    n_co = tl.cdiv(COUT, BLOCK_N)
    n_ci = tl.cdiv(CIN, BLOCK_M)
    pid = tl.program_id(0)
    pid_o = pid % n_co
    rest = pid // n_co
    tap = rest % T
    rest = rest // T
    pid_c = rest % n_ci
    pid_s = rest // n_ci
    offs_c = pid_c * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_o = pid_o * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_c = offs_c < CIN
    mask_o = offs_o < COUT
    acc_dtype = tl.float64 if ACC_F64 else tl.float32
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_dtype)
    bias_acc = tl.zeros((BLOCK_N,), dtype=acc_dtype)
    x_chan = as_offset(offs_c, IDX64)[:, None] * sxc
    chan = as_offset(CONV_C0 + offs_o, IDX64)[None, :]
    g_tap = tap_offset(tap, sgd, sgh, sgw, KH, KW)
    o_tap = tap_offset(tap, sod, soh, sow, KH, KW)
    dhw = DHW
    kb0 = pid_s * BLOCKS_PER_SPLIT
    kb1 = tl.minimum(kb0 + BLOCKS_PER_SPLIT, NIMG * tl.cdiv(dhw, BLOCK_K))
    for kb in range(kb0, kb1):
        img, r, mask_p = row_block(kb, dhw, IDX64, BLOCK_K)
        d, h, w = spatial_coords(r, H, W)
        x_t = tl.load(x_ptr + x_chan + pixel_offset(img, r, d, h, w, sxn, sxd, sxh, sxw, FLAT_X)[None, :],
                      mask=mask_c[:, None] & mask_p[None, :], other=0.0)
        mask = mask_p[:, None] & mask_o[None, :]
        g_ptrs = g_ptr + (up_pixel_offset(img, d, h, w, sgn, sgd, sgh, sgw, KD, KH, KW) + g_tap)[:, None] + chan * sgc
        if MASK_BITS:
            gy = masked_grad(g_ptrs, g_ptrs, mask, False, UPCAST)
            keep = load_mask_bits(bits_ptr, img * DHW + r, mask_p, tap, pid_o * BLOCK_N, NB, T, BLOCK_K, BLOCK_N)
            gy = tl.where(keep, gy, tl.zeros_like(gy))
        else:
            gy = masked_grad(g_ptrs,
                             o_ptr + (up_pixel_offset(img, d, h, w, son, sod, soh, sow, KD, KH, KW) + o_tap)[:, None]
                             + chan * soc,
                             mask, RELU, UPCAST)
        acc = tile_product(x_t, gy, acc, USE_DOT, UPCAST, INPUT_PRECISION)
        if HAS_BIAS:
            # Upcast before adding: on the GPU gy is bf16/fp16, and a 16-bit sum would round
            # every pixel's contribution to dbias.
            bias_acc += tl.sum(gy.to(acc_dtype), axis=0)
    dw_mask = mask_c[:, None] & mask_o[None, :]
    if DIRECT:
        dw_ptrs = (dw_ptr + offs_c[:, None] * sdwc + offs_o[None, :] * sdwo
                   + tap_offset(tap, sdwd, sdwh, sdww, KH, KW))
        tl.store(dw_ptrs, acc.to(dw_ptr.dtype.element_ty), mask=dw_mask)
    else:
        # dw_part [S, CIN, T, COUT]: a tile's Cout row is contiguous (vector stores).
        dw_ptrs = dw_part_ptr + ((pid_s * CIN + offs_c[:, None]) * T + tap) * COUT + offs_o[None, :]
        tl.store(dw_ptrs, acc, mask=dw_mask)
    if HAS_BIAS:
        if pid_c == 0:
            tl.store(db_ptr + (pid_s * T + tap) * COUT + offs_o, bias_acc, mask=mask_o)


@triton.jit
def up_concat_weight_reduce_kernel(
    # Pointers: dw_part [S, CIN, T, COUT] and db_part [S, T, COUT] contiguous (accumulator
    # dtype); dw [CIN, COUT, KD, KH, KW] and db [COUT] (the weight's dtype).
    dw_part_ptr, db_part_ptr, dw_ptr, db_ptr,
    # Sizes: S splits; E = CIN*T*COUT weight elements.
    S, CIN, COUT, E,
    # Strides of dw along c, o, td, th, tw; of db.
    sdwc, sdwo, sdwd, sdwh, sdww, sdb,
    # Meta-parameters: taps per axis; whether db is summed; elements per program.
    KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr,
):
    """Programs below cdiv(E, BLOCK) sum dW over the splits s = 0, 1, ... in order; the next
    cdiv(COUT, BLOCK) sum dbias over (s, t) in order. Same inputs, same bits: no atomics.
    E = 0 when the weight kernel wrote dW itself (one split): only dbias is summed."""
    T = KD * KH * KW
    pid = tl.program_id(0)
    n_w = tl.cdiv(E, BLOCK)
    if pid < n_w:
        e = pid * BLOCK + tl.arange(0, BLOCK)
        mask = e < E
        acc = tl.load(dw_part_ptr + e, mask=mask, other=0.0)
        for s in range(1, S):
            acc += tl.load(dw_part_ptr + s * E + e, mask=mask, other=0.0)
        o = e % COUT
        ct = e // COUT
        tap = ct % T
        c = ct // T
        dst = c * sdwc + o * sdwo + tap_offset(tap, sdwd, sdwh, sdww, KH, KW)
        tl.store(dw_ptr + dst, acc.to(dw_ptr.dtype.element_ty), mask=mask)
    elif HAS_BIAS:
        o = (pid - n_w) * BLOCK + tl.arange(0, BLOCK)
        mask = o < COUT
        acc = tl.load(db_part_ptr + o, mask=mask, other=0.0)
        for st in range(1, S * T):
            acc += tl.load(db_part_ptr + st * COUT + o, mask=mask, other=0.0)
        tl.store(db_ptr + o * sdb, acc.to(db_ptr.dtype.element_ty), mask=mask)

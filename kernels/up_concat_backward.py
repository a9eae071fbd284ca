"""Backward of up_concat, 2-D and 3-D: three launches, no atomics (deterministic by construction).

With gy = the upsampled channels of grad (zeroed where out <= 0 after a ReLU), seen as the GEMM
output unshuffled to [M, T*Cout] (see up_concat_forward.py for the index math):
  backward_input   dx = gy @ W^T, K = T taps x Cout: program (row block, Cin tile) loops over
                   every tap and Cout block; the Cin tiles of a row block run side by side so
                   its gy rows come from DRAM once. Extra copy programs of the same launch,
                   interleaved, write dskip = masked grad of the skip channels.
  backward_weight  dW = X^T @ gy, K = the M pixels split over S ranges (split-K): program
                   (split s, Cin tile, tap, Cout tile) writes the fp32 partial dw_part[s, c, t, o]
                   and, from Cin tile 0, db_part[s, t, o] (each tap's gy upcast before summing).
  weight_reduce    dW[c, o, t] = sum over s of dw_part, dbias[o] = sum over s, t of db_part, in a
                   fixed order, cast to the weight's dtype.
The mask is read from the saved output (threshold_backward's: out <= 0; a NaN output passes).
"""
import triton
import triton.language as tl

from .common import (as_offset, copy_tile_coords, copy_tile_offsets, pixel_offset, program_role, row_block,
                     spatial_coords, tap_offset, tile_product, up_pixel_offset)
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
def store_mask_bits(bits_ptr, o_ptrs, mask, pix, mask_p, tap, o0, NB, T: tl.constexpr, UPCAST: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """Write the ReLU mask of one [BLOCK_M pixels, BLOCK_K channels from o0] tile of the upsampled
    channels as bits: bit (o % 8) of byte bits[pix, tap, o // 8] is 1 where out > 0 or out is NaN
    (not out <= 0: threshold_backward's pass condition). The weight-gradient kernel reads these,
    1/16 of the 16-bit output's bytes, instead of the output."""
    o = tl.load(o_ptrs, mask=mask, other=0.0)
    if UPCAST:
        o = o.to(tl.float32)
    keep = ((o > 0) | (o != o)).to(tl.int32)
    shifted = tl.reshape(keep, (BLOCK_M, BLOCK_K // 8, 8)) << tl.arange(0, 8)[None, None, :]
    byte = tl.sum(shifted, axis=2).to(tl.uint8)
    first = o0 // 8 + tl.arange(0, BLOCK_K // 8)
    tl.store(bits_ptr + pix[:, None] * (T * NB) + tap * NB + first[None, :], byte,
             mask=mask_p[:, None] & (first < NB)[None, :])


@triton.jit
def load_mask_bits(bits_ptr, pix, mask_p, tap, o0, NB, T: tl.constexpr, BLOCK_P: tl.constexpr,
                   BLOCK_O: tl.constexpr):
    """The [BLOCK_P pixels, BLOCK_O channels from o0] pass mask (True: the gradient passes) from
    the bits store_mask_bits wrote."""
    first = o0 // 8 + tl.arange(0, BLOCK_O // 8)
    byte = tl.load(bits_ptr + pix[:, None] * (T * NB) + tap * NB + first[None, :],
                   mask=mask_p[:, None] & (first < NB)[None, :], other=0).to(tl.int32)
    bits = (byte[:, :, None] >> tl.arange(0, 8)[None, None, :]) & 1
    return tl.reshape(bits, (BLOCK_P, BLOCK_O)) != 0


@triton.jit
def up_concat_backward_input_kernel(
    # Pointers: g = grad and o = out [N, COUT + CS, KD*D, KH*H, KW*W] (o read only when RELU);
    # w [CIN, COUT, KD, KH, KW]; dx [N, CIN, D, H, W]; dskip [N, CS, KD*D, KH*H, KW*W];
    # bits [N*D*H*W, T, NB] uint8: the ReLU mask of the upsampled channels, written when MASK_BITS.
    g_ptr, o_ptr, w_ptr, dx_ptr, dskip_ptr, bits_ptr,
    # Sizes: NIMG = N images of DHW = D*H*W input pixels (passed, so that its divisibility
    # by 16 is known to the compiler: vector loads along pixels in NCHW); SKIP_PIX = output pixels per image;
    # CONV_C0 / SKIP_C0 = first channel of the upsampled / skip channels in grad and out;
    # NB = cdiv(COUT, 8) mask bytes per pixel and tap.
    NIMG, D, H, W, DHW, CIN, COUT, CS, SKIP_PIX, CONV_C0, SKIP_C0, NB,
    # Strides, in elements, along n, c, d, h, w: sg* of grad, so* of out ...
    sgn, sgc, sgd, sgh, sgw,
    son, soc, sod, soh, sow,
    # ... sw* of w along c (input channel), o (output channel), td, th, tw ...
    swc, swo, swd, swh, sww,
    # ... sdx* of dx and sds* of dskip along n, c, d, h, w.
    sdxn, sdxc, sdxd, sdxh, sdxw,
    sdsn, sdsc, sdsd, sdsh, sdsw,
    # Meta-parameters: taps per axis; ReLU mask; FLAT_X: dx merges (d, h, w) into one dimension
    # of stride sdxw; FLAT_SKIP: grad, out and dskip do; tile-product settings; offset width;
    # tile (BLOCK_M pixels x BLOCK_N input channels, BLOCK_K output channels per step).
    KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    RELU: tl.constexpr, MASK_BITS: tl.constexpr, FLAT_X: tl.constexpr, FLAT_SKIP: tl.constexpr,
    USE_DOT: tl.constexpr, UPCAST: tl.constexpr, ACC_F64: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    IDX64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One program: a dx tile (row block, Cin tile) over K = T*COUT, or a dskip copy tile."""
    T = KD * KH * KW
    n_ci = tl.cdiv(CIN, BLOCK_N)
    dhw = DHW
    pid_m, col, q, n_copy = program_role(tl.program_id(0), NIMG * tl.cdiv(dhw, BLOCK_M), NIMG, SKIP_PIX, CS,
                                         n_ci, BLOCK_M, BLOCK_N)

    if col < n_ci:
        offs_c = col * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_c = offs_c < CIN
        img, r, mask_m = row_block(pid_m, dhw, IDX64, BLOCK_M)
        d, h, w = spatial_coords(r, H, W)
        g_pix = up_pixel_offset(img, d, h, w, sgn, sgd, sgh, sgw, KD, KH, KW)
        o_pix = up_pixel_offset(img, d, h, w, son, sod, soh, sow, KD, KH, KW)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float64 if ACC_F64 else tl.float32)
        n_kb = tl.cdiv(COUT, BLOCK_K)
        # One loop over (tap, Cout block): a single pipelined K loop of T * n_kb steps.
        for kk in range(0, T * n_kb):
            tap = kk // n_kb
            offs_o = (kk - tap * n_kb) * BLOCK_K + tl.arange(0, BLOCK_K)
            mask_o = offs_o < COUT
            chan = as_offset(CONV_C0 + offs_o, IDX64)[None, :]
            mask = mask_m[:, None] & mask_o[None, :]
            o_ptrs = o_ptr + (o_pix + tap_offset(tap, sod, soh, sow, KH, KW))[:, None] + chan * soc
            gy = masked_grad(g_ptr + (g_pix + tap_offset(tap, sgd, sgh, sgw, KH, KW))[:, None] + chan * sgc,
                             o_ptrs, mask, RELU, UPCAST)
            if MASK_BITS:
                if col == 0:  # one program per row block writes its bits (the out tile is in L1/L2)
                    store_mask_bits(bits_ptr, o_ptrs, mask, img * DHW + r, mask_m, tap,
                                    (kk - tap * n_kb) * BLOCK_K, NB, T, UPCAST, BLOCK_M, BLOCK_K)
            # W^T tile [BLOCK_K Cout, BLOCK_N Cin]: stride-1 along Cout (dim 0) on the GPU.
            wt = tl.load(w_ptr + tap_offset(tap, swd, swh, sww, KH, KW) + offs_o[:, None] * swo
                         + offs_c[None, :] * swc, mask=mask_o[:, None] & mask_c[None, :], other=0.0)
            acc = tile_product(gy, wt, acc, USE_DOT, UPCAST, INPUT_PRECISION)
        dx_ptrs = (dx_ptr + pixel_offset(img, r, d, h, w, sdxn, sdxd, sdxh, sdxw, FLAT_X)[:, None]
                   + as_offset(offs_c, IDX64)[None, :] * sdxc)
        tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_c[None, :])
    elif q < n_copy:
        img, offs_p, offs_c, mask = copy_tile_coords(q, SKIP_PIX, CS, IDX64, BLOCK_M, BLOCK_N)
        hs = KH * H
        ws = KW * W
        g = masked_grad(g_ptr + copy_tile_offsets(img, offs_p, SKIP_C0 + offs_c, sgn, sgc, sgd, sgh, sgw,
                                                  hs, ws, FLAT_SKIP),
                        o_ptr + copy_tile_offsets(img, offs_p, SKIP_C0 + offs_c, son, soc, sod, soh, sow,
                                                  hs, ws, FLAT_SKIP),
                        mask, RELU, UPCAST)
        dst = copy_tile_offsets(img, offs_p, offs_c, sdsn, sdsc, sdsd, sdsh, sdsw, hs, ws, FLAT_SKIP)
        tl.store(dskip_ptr + dst, g.to(dskip_ptr.dtype.element_ty), mask=mask)


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


up_concat_backward_input_kernel_autotuned = autotuned(up_concat_backward_input_kernel, "backward_input", "g_ptr", "sgc")

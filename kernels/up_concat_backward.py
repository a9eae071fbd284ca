"""Backward of up_concat, 2-D and 3-D: two launches, no atomics (deterministic by construction);
without a ReLU, when a tile takes every column, up_concat_backward_fused.py's one pass instead.

With gy = the upsampled channels of grad (zeroed where the forward's ReLU clipped, after a ReLU),
seen as the GEMM output unshuffled to [M, T*Cout] (see up_concat_forward.py for the index math):
  backward_weight  first: dW = X^T @ gy, K = the M pixels split over S ranges (split-K), each
                   program writing its partial (up_concat_backward_weight.py);
  backward_input   then: dx = gy @ W^T, K = T taps x Cout: program (row block, Cin tile) loops
                   over every tap and Cout block; the Cin tiles of a row block run side by side
                   so its gy rows come from DRAM once. Extra copy programs of the same launch,
                   interleaved, write dskip = masked grad of the skip channels; and its first
                   programs sum the weight gradient's partials into dW and dbias in fixed order
                   (sum_weight_partials). The launch after the weight gradient's sees every
                   partial written, as a separate reduction kernel would, one launch fewer: the
                   partials, written just before, are still in L2 when those first programs run.
                   From Hopper on it is launched as the weight gradient's programmatic dependent
                   (common.py): it may start while that kernel runs, its sum programs waiting
                   for that kernel's end.
The ReLU mask is read as bits (mask_bits.py), which the forward wrote (or the launcher packed from
the saved output): 1 where out > 0 or out is NaN, threshold_backward's pass condition.
"""
import triton
import triton.language as tl

from .common import (as_offset, copy_tile_coords, copy_tile_offsets, pixel_offset, program_role, row_block,
                     spatial_coords, tap_offset, tile_product, up_pixel_offset, wait_for_previous_kernel)
from .configs import autotuned
from .mask_bits import load_mask_bits, load_skip_bits
from .up_concat_backward_weight import sum_weight_partials


@triton.jit
def masked_grad(g_ptrs, o_ptrs, mask, RELU: tl.constexpr, UPCAST: tl.constexpr):
    """grad, 0 where the forward ReLU clipped the value (out <= 0; a NaN output passes): torch's
    threshold_backward, with the mask read from the 16-bit output (when RELU)."""
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
    # Pointers: g = grad [N, COUT + CS, KD*D, KH*H, KW*W]; bits: the ReLU mask (mask_bits.py),
    # read only when RELU; w [CIN, COUT, KD, KH, KW]; dx [N, CIN, D, H, W];
    # dskip [N, CS, KD*D, KH*H, KW*W]; the weight gradient's partials and dW, dbias as
    # up_concat_weight_reduce_kernel's.
    g_ptr, bits_ptr, w_ptr, dx_ptr, dskip_ptr, dw_part_ptr, db_part_ptr, dw_ptr, db_ptr,
    # Sizes: NIMG = N images of DHW = D*H*W input pixels (passed, so that its divisibility
    # by 16 is known to the compiler: vector loads along pixels in NCHW); SKIP_PIX = output pixels per image;
    # CONV_C0 / SKIP_C0 = first channel of the upsampled / skip channels in grad;
    # SKIP_BITS0 = first byte of the skip channels' bits.
    NIMG, D, H, W, DHW, CIN, COUT, CS, SKIP_PIX, CONV_C0, SKIP_C0, SKIP_BITS0,
    # Strides, in elements, along n, c, d, h, w: sg* of grad ...
    sgn, sgc, sgd, sgh, sgw,
    # ... sw* of w along c (input channel), o (output channel), td, th, tw ...
    swc, swo, swd, swh, sww,
    # ... sdx* of dx and sds* of dskip along n, c, d, h, w.
    sdxn, sdxc, sdxd, sdxh, sdxw,
    sdsn, sdsc, sdsd, sdsh, sdsw,
    # The reduction of the weight gradient's partials: its N_SUM programs come first; then its
    # sizes, split layout and dW / dbias strides as up_concat_weight_reduce_kernel's.
    N_SUM, COUT_P, E, N_COL, TILE_M, TILE_N, S_LO, R_EXTRA, sdwc, sdwo, sdwd, sdwh, sdww, sdb,
    # Meta-parameters: taps per axis; ReLU mask; FLAT_X: dx merges (d, h, w) into one dimension
    # of stride sdxw; FLAT_SKIP: grad and dskip do; tile-product settings; offset width;
    # tile (BLOCK_M pixels x BLOCK_N input channels, BLOCK_K output channels per step).
    KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    RELU: tl.constexpr, FLAT_X: tl.constexpr, FLAT_SKIP: tl.constexpr,
    USE_DOT: tl.constexpr, UPCAST: tl.constexpr, ACC_F64: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    IDX64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    # The reduction's: whether this launch runs it; dbias summed; dW elements per program, splits
    # loaded at once; dbias channels per program and (split, tap) rows loaded at once.
    SUM_PARTIALS: tl.constexpr, HAS_BIAS: tl.constexpr, SUM_BLOCK: tl.constexpr, SUM_SPLITS: tl.constexpr,
    SUM_ROWS: tl.constexpr, SUM_CHANNELS: tl.constexpr,
    # Launched as a programmatic dependent of the weight gradient (common.py), which lets it start
    # at once: the sum programs wait for it before they read its partials.
    DEPENDENT: tl.constexpr,
):
    """One program: a share of the weight gradient's reduction (the first N_SUM), a dx tile
    (row block, Cin tile) over K = T*COUT, or a dskip copy tile."""
    T = KD * KH * KW
    NB = tl.cdiv(COUT, 8)
    n_ci = tl.cdiv(CIN, BLOCK_N)
    dhw = DHW
    pid = tl.program_id(0)
    pid_m, col, q, n_copy = program_role(pid - N_SUM, NIMG * tl.cdiv(dhw, BLOCK_M), NIMG, SKIP_PIX, CS,
                                         n_ci, BLOCK_M, BLOCK_N)

    if pid < N_SUM:
        if SUM_PARTIALS:  # else N_SUM is 0 and the code is left out
            wait_for_previous_kernel(DEPENDENT)
            sum_weight_partials(pid, dw_part_ptr, db_part_ptr, dw_ptr, db_ptr, COUT, COUT_P, E, N_COL, TILE_M,
                                TILE_N, S_LO, R_EXTRA, sdwc, sdwo, sdwd, sdwh, sdww, sdb, KD, KH, KW, HAS_BIAS,
                                SUM_BLOCK, SUM_SPLITS, SUM_ROWS, SUM_CHANNELS, False)
    elif col < n_ci:
        offs_c = col * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_c = offs_c < CIN
        img, r, mask_m = row_block(pid_m, dhw, IDX64, BLOCK_M)
        d, h, w = spatial_coords(r, H, W)
        g_pix = up_pixel_offset(img, d, h, w, sgn, sgd, sgh, sgw, KD, KH, KW)
        pix = img * dhw + r
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float64 if ACC_F64 else tl.float32)
        n_kb = tl.cdiv(COUT, BLOCK_K)
        # One loop over (tap, Cout block): a single pipelined K loop of T * n_kb steps.
        for kk in range(0, T * n_kb):
            tap = kk // n_kb
            o0 = (kk - tap * n_kb) * BLOCK_K
            offs_o = o0 + tl.arange(0, BLOCK_K)
            mask_o = offs_o < COUT
            chan = as_offset(CONV_C0 + offs_o, IDX64)[None, :]
            gy = tl.load(g_ptr + (g_pix + tap_offset(tap, sgd, sgh, sgw, KH, KW))[:, None] + chan * sgc,
                         mask=mask_m[:, None] & mask_o[None, :], other=0.0)
            if RELU:
                keep = load_mask_bits(bits_ptr, pix, mask_m, tap, o0, NB, T, BLOCK_M, BLOCK_K)
                gy = tl.where(keep, gy, tl.zeros_like(gy))
            if UPCAST:
                gy = gy.to(tl.float32)
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
        g = tl.load(g_ptr + copy_tile_offsets(img, offs_p, SKIP_C0 + offs_c, sgn, sgc, sgd, sgh, sgw, hs, ws,
                                              FLAT_SKIP), mask=mask, other=0.0)
        if RELU:
            keep = load_skip_bits(bits_ptr + SKIP_BITS0, img * SKIP_PIX + offs_p, offs_p < SKIP_PIX,
                                  (q % tl.cdiv(CS, BLOCK_N)) * BLOCK_N, tl.cdiv(CS, 8), BLOCK_M, BLOCK_N)
            g = tl.where(keep, g, tl.zeros_like(g))
        dst = copy_tile_offsets(img, offs_p, offs_c, sdsn, sdsc, sdsd, sdsh, sdsw, hs, ws, FLAT_SKIP)
        tl.store(dskip_ptr + dst, g.to(dskip_ptr.dtype.element_ty), mask=mask)
    # Every program waits before it ends, so that this launch's end implies the weight gradient's
    # (what runs after it on the stream may read dW, which that kernel writes directly in one
    # split). dx and dskip programs reach it long after that kernel has ended.
    wait_for_previous_kernel(DEPENDENT)


up_concat_backward_input_kernel_autotuned = autotuned(up_concat_backward_input_kernel, "backward_input", "g_ptr", "sgc",
                                                     "CIN")


# The weight-gradient kernels and the one-pass backward live in their own modules; they are named
# here too, so that one import of this module reaches every backward kernel.
from .up_concat_backward_weight import up_concat_backward_weight_kernel, up_concat_weight_reduce_kernel  # noqa: E402,F401
from .up_concat_backward_fused import up_concat_backward_fused_kernel  # noqa: E402,F401

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


up_concat_backward_input_kernel_autotuned = autotuned(up_concat_backward_input_kernel, "backward_input", "g_ptr", "sgc")


# The weight-gradient kernels live in their own module; they are named here too, so that one
# import of this module reaches every backward kernel.
from .up_concat_backward_weight import up_concat_backward_weight_kernel, up_concat_weight_reduce_kernel  # noqa: E402,F401

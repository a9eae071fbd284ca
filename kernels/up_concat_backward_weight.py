"""Weight gradient of up_concat, 2-D and 3-D: dW = X^T @ gy split over pixel ranges (split-K),
then a fixed-order reduction of the partials. No atomics: deterministic by construction.
The index math and the ReLU mask bits are described in up_concat_forward.py and
up_concat_backward.py.

The GEMM's N dimension is every (tap, output channel) pair: column j is tap j // COUT_P, channel
j % COUT_P, where COUT_P is Cout padded to a multiple of 16 (columns past Cout are masked). So a
small Cout (T * COUT_P <= BLOCK_N) puts every tap in one program, and no group of 8 columns (one
mask byte) spans two taps. Program g of the grid is split g // N_TILES
of tile g % N_TILES (tile = Cin tile x column tile, column tiles fastest: the programs side by
side read the same pixels, x and gy from DRAM once, then L2); tile t has S_LO splits, one more
when t < R_EXTRA, so a grid of several waves can fill its last one. Split s
of a tile with S splits covers the pixel blocks [s * NBLK // S, (s + 1) * NBLK // S).

The K loop's offsets: with BLOCK_W > 0 (the launcher checks W % BLOCK_W == 0 and
H % (BLOCK_K // BLOCK_W) == 0) a pixel block is BLOCK_K // BLOCK_W rows of BLOCK_W pixels inside
one image plane, so every offset of a step is a scalar base plus a tile computed once before the
loop; the block's origin (image, d, h, w) is stepped, not divided, from one block to the next.
BLOCK_W = 0 takes the general per-pixel index math.
"""
import triton
import triton.language as tl

from .common import (as_offset, block_origin, let_next_kernel_start, next_block, origin_offsets, pixel_offset,
                     row_block, spatial_coords, split_blocks, tap_offset, tile_product, up_pixel_offset)


@triton.jit
def _masked_gy(g3, byte, e, RELU: tl.constexpr, MASK_BITS: tl.constexpr):
    """Zero gy where the ReLU clipped: bit e of `byte` (one byte per 8 channels) is 1 where the
    gradient passes."""
    if RELU and MASK_BITS:
        keep = ((byte.to(tl.int32)[:, :, None] >> e[None, None, :]) & 1) != 0
        g3 = tl.where(keep, g3, tl.zeros_like(g3))
    return g3


@triton.jit
def _weight_grad_loop(
    kb0, kb1, g_ptr, o_ptr, x_ptr, bits_ptr,
    D, H, W, DHW, NB,
    sgn, sgd, sgh, sgw, son, sod, soh, sow, sxn, sxc, sxd, sxh, sxw,
    offs_c, mask_c, g_col, o_col, byte_col, mask_j, mask_q,
    KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    RELU: tl.constexpr, MASK_BITS: tl.constexpr, WITH_BIAS: tl.constexpr, FLAT_X: tl.constexpr,
    BLOCK_W: tl.constexpr, USE_DOT: tl.constexpr, UPCAST: tl.constexpr, ACC_F64: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, IDX64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """(acc [BLOCK_M, BLOCK_N], bias [BLOCK_N // 8, 8]) over pixel blocks [kb0, kb1). gy is held
    as [pixels, BLOCK_N // 8, 8]: one mask byte per 8 channels, decoded where the channels are.
    WITH_BIAS: also sum gy over the pixels, elementwise in registers (one reduction after the
    loop); a separate loop, so the programs that do not own dbias run the plain one."""
    T: tl.constexpr = KD * KH * KW
    acc_dtype = tl.float64 if ACC_F64 else tl.float32
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_dtype)
    bias = tl.zeros((BLOCK_K, BLOCK_N // 8, 8), dtype=acc_dtype)
    e = tl.arange(0, 8)
    i = tl.arange(0, BLOCK_K)
    x_chan = as_offset(offs_c, IDX64) * sxc
    if BLOCK_W > 0:
        # Loop-invariant tiles: pixel i of a block is row i // BLOCK_W, column i % BLOCK_W.
        ih = as_offset(i // BLOCK_W, IDX64)
        iw = as_offset(i % BLOCK_W, IDX64)
        x_tile = x_chan[:, None] + (ih * sxh + iw * sxw)[None, :]
        x_mask = mask_c[:, None] & (i < BLOCK_K)[None, :]
        g_tile = (ih * (KH * sgh) + iw * (KW * sgw))[:, None, None] + g_col[None, :, :]
        o_tile = (ih * (KH * soh) + iw * (KW * sow))[:, None, None] + o_col[None, :, :]
        g_mask = (i < BLOCK_K)[:, None, None] & mask_j[None, :, :]
        bit_tile = (ih * W + iw)[:, None] * (T * NB) + byte_col[None, :]
        bit_mask = (i < BLOCK_K)[:, None] & mask_q[None, :]
        # The first block's origin by division, then the next ones by stepping: no division in the loop.
        img_k, d_k, h_k, w_k = block_origin(kb0, D, H, W, BLOCK_W, BLOCK_K)
        for kb in range(kb0, kb1):
            img, d, h0, w0 = origin_offsets(img_k, d_k, h_k, w_k, IDX64)
            img_k, d_k, h_k, w_k = next_block(img_k, d_k, h_k, w_k, D, H, W, BLOCK_W, BLOCK_K)
            # The block's first pixel: of x with a unit kernel, of grad (tap 0) with the step's.
            x_t = tl.load(x_ptr + up_pixel_offset(img, d, h0, w0, sxn, sxd, sxh, sxw, 1, 1, 1) + x_tile, mask=x_mask,
                          other=0.0)
            g3 = tl.load(g_ptr + up_pixel_offset(img, d, h0, w0, sgn, sgd, sgh, sgw, KD, KH, KW) + g_tile,
                         mask=g_mask, other=0.0)
            if UPCAST:
                g3 = g3.to(tl.float32)
            byte = tl.zeros((BLOCK_K, BLOCK_N // 8), dtype=tl.uint8)
            if RELU:
                if MASK_BITS:
                    byte = tl.load(bits_ptr + ((img * D + d) * H + h0) * W * (T * NB) + w0 * (T * NB) + bit_tile,
                                   mask=bit_mask, other=0)
                else:
                    out = tl.load(o_ptr + up_pixel_offset(img, d, h0, w0, son, sod, soh, sow, KD, KH, KW)
                                  + o_tile, mask=g_mask, other=0.0)
                    if UPCAST:  # the interpreter cannot compare bfloat16 values
                        out = out.to(tl.float32)
                    g3 = tl.where(out <= 0, tl.zeros_like(g3), g3)
            g3 = _masked_gy(g3, byte, e, RELU, MASK_BITS)
            acc = tile_product(x_t, tl.reshape(g3, (BLOCK_K, BLOCK_N)), acc, USE_DOT, UPCAST, INPUT_PRECISION)
            if WITH_BIAS:
                # Upcast before adding: a 16-bit sum would round every pixel's contribution.
                bias += g3.to(acc_dtype)
    else:
        for kb in range(kb0, kb1):
            img, r, mask_p = row_block(kb, DHW, IDX64, BLOCK_K)
            d, h, w = spatial_coords(r, H, W)
            x_t = tl.load(x_ptr + x_chan[:, None] + pixel_offset(img, r, d, h, w, sxn, sxd, sxh, sxw, FLAT_X)[None, :],
                          mask=mask_c[:, None] & mask_p[None, :], other=0.0)
            g_mask = mask_p[:, None, None] & mask_j[None, :, :]
            g3 = tl.load(g_ptr + up_pixel_offset(img, d, h, w, sgn, sgd, sgh, sgw, KD, KH, KW)[:, None, None]
                         + g_col[None, :, :], mask=g_mask, other=0.0)
            if UPCAST:
                g3 = g3.to(tl.float32)
            byte = tl.zeros((BLOCK_K, BLOCK_N // 8), dtype=tl.uint8)
            if RELU:
                if MASK_BITS:
                    byte = tl.load(bits_ptr + (img * DHW + r)[:, None] * (T * NB) + byte_col[None, :],
                                   mask=mask_p[:, None] & mask_q[None, :], other=0)
                else:
                    out = tl.load(o_ptr + up_pixel_offset(img, d, h, w, son, sod, soh, sow, KD, KH, KW)[:, None, None]
                                  + o_col[None, :, :], mask=g_mask, other=0.0)
                    if UPCAST:
                        out = out.to(tl.float32)
                    g3 = tl.where(out <= 0, tl.zeros_like(g3), g3)
            g3 = _masked_gy(g3, byte, e, RELU, MASK_BITS)
            acc = tile_product(x_t, tl.reshape(g3, (BLOCK_K, BLOCK_N)), acc, USE_DOT, UPCAST, INPUT_PRECISION)
            if WITH_BIAS:
                bias += g3.to(acc_dtype)
    return acc, tl.sum(bias, axis=0)


@triton.jit
def up_concat_backward_weight_kernel(
    # Pointers: grad, out as in backward_input; x [N, CIN, D, H, W];
    # dw_part [S, CIN, T, COUT] and db_part [S, T, COUT], contiguous, fp32 (fp64 for fp64);
    # dw [CIN, COUT, KD, KH, KW], written directly (cast) instead of dw_part when DIRECT.
    # bits [N*D*H*W, T, NB] uint8: the ReLU mask (bit o % 8 of byte o // 8 is 1 where the
    # gradient passes), read instead of out when MASK_BITS.
    g_ptr, o_ptr, x_ptr, dw_part_ptr, db_ptr, dw_ptr, bits_ptr,
    # Sizes: NIMG images of DHW = D*H*W input pixels, in per-image blocks of BLOCK_K pixels;
    # COUT_P: Cout padded (see above); CONV_C0 = first upsampled channel of grad and out;
    # NB = cdiv(COUT, 8) mask bytes per pixel and tap; the split layout N_TILES, S_LO, R_EXTRA.
    NIMG, D, H, W, DHW, CIN, COUT, COUT_P, CONV_C0, NB, N_TILES, S_LO, R_EXTRA,
    # Strides, in elements, along n, c, d, h, w: sg* of grad, so* of out, sx* of x.
    sgn, sgc, sgd, sgh, sgw,
    son, soc, sod, soh, sow,
    sxn, sxc, sxd, sxh, sxw,
    # ... sdw* of dw along c, o, td, th, tw (read only when DIRECT).
    sdwc, sdwo, sdwd, sdwh, sdww,
    # Meta-parameters: taps per axis; ReLU mask; bias partials; DIRECT: one split per tile, dw
    # stored here in its dtype, no dw_part and no reduction of it; FLAT_X: x merges (d, h, w)
    # into one dimension of stride sxw; BLOCK_W: the pixel-block width of the strided path (0:
    # general path); COUT8: COUT % 8 == 0; tile-product settings; offset width; tile (BLOCK_M input channels x
    # BLOCK_N columns, BLOCK_K pixels per step); LET_NEXT_START: backward_input, launched next as
    # a programmatic dependent, may start as soon as every program of this one has (common.py).
    KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    RELU: tl.constexpr, MASK_BITS: tl.constexpr, HAS_BIAS: tl.constexpr, DIRECT: tl.constexpr,
    FLAT_X: tl.constexpr, BLOCK_W: tl.constexpr, COUT8: tl.constexpr,
    USE_DOT: tl.constexpr, UPCAST: tl.constexpr, ACC_F64: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    IDX64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, LET_NEXT_START: tl.constexpr,
):
    """Program g: split g // N_TILES of tile g % N_TILES. The programs of Cin tile 0 also sum
    dbias (db_part[s, t, o]); the others run a loop without it."""
    # At once: backward_input's dx and dskip programs read nothing this kernel writes.
    let_next_kernel_start(LET_NEXT_START)
    T: tl.constexpr = KD * KH * KW
    n_col = tl.cdiv(T * COUT_P, BLOCK_N)
    pid = tl.program_id(0)
    s = pid // N_TILES
    tile = pid - s * N_TILES
    n_split = S_LO + (tile < R_EXTRA).to(tl.int32)
    pid_c = tile // n_col
    col = tile - pid_c * n_col
    kb0, kb1 = split_blocks(s, n_split, NIMG, DHW, BLOCK_W, BLOCK_K)
    offs_c = pid_c * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_c = offs_c < CIN
    # Columns as [BLOCK_N // 8 mask bytes, 8 channels]: tap, channel, offsets, mask; per byte.
    q8 = col * BLOCK_N + 8 * tl.arange(0, BLOCK_N // 8)
    j = q8[:, None] + tl.arange(0, 8)[None, :]
    tap_q = q8 // COUT_P
    o_q = q8 - tap_q * COUT_P
    tap_j = j // COUT_P
    o_j = j - tap_j * COUT_P
    mask_q = (o_q < COUT) & (tap_q < T)
    if COUT8:
        # Whole mask bytes are valid or not: a mask constant over each 8 columns keeps 16-byte loads.
        mask_j = tl.broadcast_to(mask_q[:, None], (BLOCK_N // 8, 8))
    else:
        mask_j = (o_j < COUT) & (tap_j < T)
    chan = as_offset(CONV_C0 + o_j, IDX64)
    g_col = tap_offset(tap_j, sgd, sgh, sgw, KH, KW) + chan * sgc
    o_col = tap_offset(tap_j, sod, soh, sow, KH, KW) + chan * soc
    byte_col = tap_q * NB + o_q // 8
    if HAS_BIAS:
        if pid_c == 0:
            acc, bias = _weight_grad_loop(
                kb0, kb1, g_ptr, o_ptr, x_ptr, bits_ptr, D, H, W, DHW, NB,
                sgn, sgd, sgh, sgw, son, sod, soh, sow, sxn, sxc, sxd, sxh, sxw,
                offs_c, mask_c, g_col, o_col, byte_col, mask_j, mask_q,
                KD, KH, KW, RELU, MASK_BITS, True, FLAT_X, BLOCK_W, USE_DOT, UPCAST, ACC_F64, INPUT_PRECISION,
                IDX64, BLOCK_M, BLOCK_N, BLOCK_K)
            tl.store(db_ptr + (s * T + tap_j) * COUT + o_j, bias, mask=mask_j)
        else:
            acc, bias = _weight_grad_loop(
                kb0, kb1, g_ptr, o_ptr, x_ptr, bits_ptr, D, H, W, DHW, NB,
                sgn, sgd, sgh, sgw, son, sod, soh, sow, sxn, sxc, sxd, sxh, sxw,
                offs_c, mask_c, g_col, o_col, byte_col, mask_j, mask_q,
                KD, KH, KW, RELU, MASK_BITS, False, FLAT_X, BLOCK_W, USE_DOT, UPCAST, ACC_F64, INPUT_PRECISION,
                IDX64, BLOCK_M, BLOCK_N, BLOCK_K)
    else:
        acc, bias = _weight_grad_loop(
            kb0, kb1, g_ptr, o_ptr, x_ptr, bits_ptr, D, H, W, DHW, NB,
            sgn, sgd, sgh, sgw, son, sod, soh, sow, sxn, sxc, sxd, sxh, sxw,
            offs_c, mask_c, g_col, o_col, byte_col, mask_j, mask_q,
            KD, KH, KW, RELU, MASK_BITS, False, FLAT_X, BLOCK_W, USE_DOT, UPCAST, ACC_F64, INPUT_PRECISION, IDX64,
            BLOCK_M, BLOCK_N, BLOCK_K)
    # The accumulator's columns, flat.
    jn = col * BLOCK_N + tl.arange(0, BLOCK_N)
    tap_n = jn // COUT_P
    o_n = jn - tap_n * COUT_P
    dw_mask = mask_c[:, None] & ((o_n < COUT) & (tap_n < T))[None, :]
    if DIRECT:
        dw_ptrs = (dw_ptr + offs_c[:, None] * sdwc + o_n[None, :] * sdwo
                   + tap_offset(tap_n, sdwd, sdwh, sdww, KH, KW)[None, :])
        tl.store(dw_ptrs, acc.to(dw_ptr.dtype.element_ty), mask=dw_mask)
    else:
        # dw_part [S, CIN, T, COUT]: a tile's Cout row is contiguous (vector stores).
        dw_ptrs = dw_part_ptr + ((s * CIN + offs_c[:, None]) * T + tap_n[None, :]) * COUT + o_n[None, :]
        tl.store(dw_ptrs, acc, mask=dw_mask)


@triton.jit
def sum_weight_partials(
    pid, dw_part_ptr, db_part_ptr, dw_ptr, db_ptr,
    COUT, COUT_P, E, N_COL, TILE_M, TILE_N, S_LO, R_EXTRA,
    sdwc, sdwo, sdwd, sdwh, sdww, sdb,
    KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr,
    SPLIT_STEP: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_O: tl.constexpr, BIAS_TREE: tl.constexpr,
):
    """Program `pid` of the fixed-order reduction of the weight-gradient partials: below
    cdiv(E, BLOCK) it sums BLOCK dW elements over the splits s = 0, 1, ... in order, SPLIT_STEP
    splits' loads issued together (their latency overlaps; the adds stay in order); the next
    cdiv(COUT, BLOCK_O) each sum dbias for BLOCK_O channels over the (split, tap) rows, BLOCK_S
    rows' loads at a time. BIAS_TREE: the rows of a step are added elementwise, then one tree sum
    over the rows at the end (few steps however many rows: the kernel of its own); else row by
    row in order (no cross-warp sum: its shared-memory scratch changed the code Triton 3.8
    generates for backward_input's K loop, which this shares a kernel with: +9 instructions a
    step). Same inputs, same bits: no atomics. Arguments as up_concat_weight_reduce_kernel's."""
    T: tl.constexpr = KD * KH * KW
    n_w = tl.cdiv(E, BLOCK)
    if pid < n_w:
        e = pid * BLOCK + tl.arange(0, BLOCK)
        mask = e < E
        o = e % COUT
        ct = e // COUT
        tap = ct % T
        c = ct // T
        n_split = S_LO + ((c // TILE_M) * N_COL + (tap * COUT_P + o) // TILE_N < R_EXTRA).to(tl.int32)
        acc = tl.zeros((BLOCK,), dtype=dw_part_ptr.dtype.element_ty)
        for s0 in range(0, S_LO + (R_EXTRA > 0).to(tl.int32), SPLIT_STEP):
            for i in tl.static_range(SPLIT_STEP):
                acc += tl.load(dw_part_ptr + (s0 + i) * E + e, mask=mask & (s0 + i < n_split), other=0.0)
        dst = c * sdwc + o * sdwo + tap_offset(tap, sdwd, sdwh, sdww, KH, KW)
        tl.store(dw_ptr + dst, acc.to(dw_ptr.dtype.element_ty), mask=mask)
    elif HAS_BIAS:
        # Names differ from the branch above: the compiler wants one type per name across branches.
        ob = (pid - n_w) * BLOCK_O + tl.arange(0, BLOCK_O)
        mask_ob = ob < COUT
        # dbias comes from Cin tile 0, whose tile index is its column tile.
        rows = (S_LO + (R_EXTRA > 0).to(tl.int32)) * T
        if BIAS_TREE:
            sums = tl.zeros((BLOCK_S, BLOCK_O), dtype=db_part_ptr.dtype.element_ty)
            for r0 in range(0, rows, BLOCK_S):
                r = r0 + tl.arange(0, BLOCK_S)
                sr = r // T
                tap_r = r - sr * T
                n_split_r = S_LO + ((tap_r[:, None] * COUT_P + ob[None, :]) // TILE_N < R_EXTRA).to(tl.int32)
                sums += tl.load(db_part_ptr + r[:, None] * COUT + ob[None, :],
                                mask=(sr[:, None] < n_split_r) & mask_ob[None, :], other=0.0)
            db = tl.sum(sums, axis=0)
        else:
            db = tl.zeros((BLOCK_O,), dtype=db_part_ptr.dtype.element_ty)
            for r0 in range(0, rows, BLOCK_S):
                for i in tl.static_range(BLOCK_S):
                    sr = (r0 + i) // T
                    tap_r = r0 + i - sr * T
                    n_split_r = S_LO + ((tap_r * COUT_P + ob) // TILE_N < R_EXTRA).to(tl.int32)
                    db += tl.load(db_part_ptr + (r0 + i) * COUT + ob, mask=(sr < n_split_r) & mask_ob, other=0.0)
        tl.store(db_ptr + ob * sdb, db.to(db_ptr.dtype.element_ty), mask=mask_ob)


@triton.jit
def up_concat_weight_reduce_kernel(
    # Pointers: dw_part [S, CIN, T, COUT] and db_part [S, T, COUT] contiguous (accumulator
    # dtype); dw [CIN, COUT, KD, KH, KW] and db [COUT] (the weight's dtype).
    dw_part_ptr, db_part_ptr, dw_ptr, db_ptr,
    # Sizes: E = CIN*T*COUT weight elements (0: the weight kernel wrote dW itself); the weight
    # kernel's split layout (N_COL column tiles of TILE_N over T * COUT_P columns, Cin tiles of
    # TILE_M; tile t has S_LO splits, one more when t < R_EXTRA).
    COUT, COUT_P, E, N_COL, TILE_M, TILE_N, S_LO, R_EXTRA,
    # Strides of dw along c, o, td, th, tw; of db.
    sdwc, sdwo, sdwd, sdwh, sdww, sdb,
    # Meta-parameters: taps per axis; whether db is summed; dW elements per program and splits
    # loaded at once; dbias tile (BLOCK_S rows (split, tap) x BLOCK_O channels), tree-summed.
    KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr,
    SPLIT_STEP: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_O: tl.constexpr,
):
    """The reduction of the one-pass backward's partials (the two-kernel backward runs the same
    programs first in its backward_input launch): sum_weight_partials."""
    sum_weight_partials(tl.program_id(0), dw_part_ptr, db_part_ptr, dw_ptr, db_ptr,
                        COUT, COUT_P, E, N_COL, TILE_M, TILE_N, S_LO, R_EXTRA, sdwc, sdwo, sdwd, sdwh, sdww, sdb,
                        KD, KH, KW, HAS_BIAS, BLOCK, SPLIT_STEP, BLOCK_S, BLOCK_O, True)

"""Byte model of the up_concat kernels: bytes each kernel moves, as written, against its floor.

MODELLED, NOT MEASURED. Pure arithmetic (no torch, no Triton at import):
`python -m unet_fast.kernels.byte_model` prints the table for the steps of the static report
(unet_fast.cases.report_cases).

What is counted. For each kernel launch of a decoder step, the DRAM bytes its code reads and
writes with the grid order it has (kernels/common.py program_role, the weight-gradient grid):
  - every tensor the kernel reads, once, plus every re-read that the L2 assumption below does not
    cover (none, for these grids: each re-read is by a program that runs in the same wave);
  - every element it writes, once (masked lanes move nothing);
  - the split-K partials of the weight gradient (fp32, written by one kernel, read by the next)
    and the repacked weight (when the weight is not stride-1 along Cout).
`l2_bytes` separately counts what the programs request from L2 with every re-read included
(x once per tap and Cout tile in the forward, gy once per Cin tile in the backward ...): the L2
bandwidth a kernel needs, not DRAM traffic.

L2 assumption. A tile re-read by programs that are adjacent in launch order (the column tiles of
one row block, which the grid puts side by side; the programs of one weight-gradient split, all
in one wave by construction) is served by L2 after its first read: those programs are resident
together (132 SMs x 2 or more blocks each), and their shared tiles (a row block of x: BLOCK_M x Cin
elements, under 1 MB) are far below the 50 MB L2 of an H100/H200. Writes to one 32-byte sector from
two programs (NCHW tap interleaving) merge in L2 before they reach DRAM.

The floor is what no implementation can avoid: forward elem*(N*prod(S)*Cin +
N*prod(S*k)*(Cout + 2*Cs)) + weight; backward the gradient read once, x read once, dx, dskip, dW
and dbias written once, the weight read once, and the ReLU mask as 1 bit per output element when
there is a ReLU. Without a ReLU the skip channels' gradient is grad's own slice, a view (as
torch.cat's backward gives): the floor then reads the upsampled channels of grad alone and writes
no dskip. Per kernel, the floor is that part of it the kernel must move itself.

Times: bytes / bandwidth, a range from the HBM peak (3.35 TB/s H100, 4.8 TB/s H200) to the
measured copy ceiling (about 3.0 TB/s on an H100; scaled by the same 0.9 on an H200).
"""

H100_HBM = 3.35e12
H100_COPY = 3.0e12
H200_HBM = 4.8e12
H200_COPY = H200_HBM * H100_COPY / H100_HBM
SMS = 132  # H100 SXM / H200
# The weight gradient's partials are read back by the next kernel: from L2 when they take at most
# half of an H100's 50 MB L2 (the rest holds the lines streamed meanwhile), else from DRAM.
PARTIALS_IN_L2 = 25e6
# The weight gradient's grid holds at least this many programs per SM. Each program writes a
# partial of its tile (BLOCK_M x BLOCK_N fp32, 128 KB for 256 x 128), and one 8-warp program runs
# per SM at a time (228-255 registers): one wave of equal programs has no uneven tail, and its
# 132 x 128 KB = 17 MB of partials stay in L2 for the reduction, where 4 per SM (69 MB) would go
# to DRAM and back.
WEIGHT_GRAD_PROGRAMS_PER_SM = 1
# A pixel range of the weight gradient spans at least this many pixel blocks where the step has
# them: fewer read less (blocks x BLOCK_K x (BLOCK_M + BLOCK_N) 16-bit elements, 98 KB for 4 x 32
# pixels at 256 x 128) than the fp32 partial its program writes and the reduction reads (128 KB).
# Two ranges at least where there are two blocks: a program of a single range stores its dW tile
# in the weight's layout, element by element, where a partial takes 16-byte stores.
WEIGHT_GRAD_MIN_BLOCKS = 4


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


# A step is a unet_fast.cases.StepCase (the one definition of the shapes the project names):
# n, cin, cout, cs, spatial, kernel, relu, and m (input pixels), taps, mout (output pixels).

# The tiles modelled: each kernel's first 16-bit channels_last tile on sm_90 in kernels/configs.py
# (BLOCK_M, BLOCK_N, BLOCK_K). Only the L2 figures and the weight-gradient split depend on them.
DEFAULT_TILES = {"forward": (128, 128, 64), "backward_input": (128, 256, 32)}
# The weight gradient's sm_90 16-bit channels_last tiles, Cin x (tap, Cout) columns, in the order
# kernels/configs.py lists them: the launcher takes the first no wider along either than 128 or
# the step rounded up to a power of two (configs.fixed_tile; 128 x 128 always is).
WEIGHT_GRAD_TILES = ((256, 128, 32), (128, 256, 32), (128, 128, 64))


def weight_grad_tile(step) -> tuple:
    """(BLOCK_M, BLOCK_N, BLOCK_K) of `step`'s weight gradient (WEIGHT_GRAD_TILES' rule)."""
    columns = step.taps * 16 * cdiv(step.cout, 16)

    def fits(block: int, n: int) -> bool:
        return block <= max(128, 1 << (n - 1).bit_length())
    return next(t for t in WEIGHT_GRAD_TILES if fits(t[0], step.cin) and fits(t[1], columns))


def narrow_tile(block_n: int, n: int) -> int:
    """The BLOCK_N a launch of GEMM N `n` takes from a list starting at block_n: the autotuner
    prunes tiles over 64 wide and wider than n rounded up to a power of two (configs.narrow_enough)."""
    return min(block_n, max(64, 1 << (n - 1).bit_length()))


KERNELS = ("weight_pack", "forward", "backward_input", "backward_weight", "backward_fused", "weight_reduce")
# The one-pass backward's sm_90 tiles (kernels/configs.py FUSED_BACKWARD): (most (tap, Cout)
# columns, BLOCK_M Cin, BLOCK_K pixels). A step without ReLU whose columns fit one takes it
# instead of backward_input and backward_weight.
FUSED_TILES = ((256, 64, 64), (512, 32, 64))


def fused_tile(step, relu=None):
    """(BLOCK_M, BLOCK_N, BLOCK_K) of the one-pass backward of `step`, or None when it takes the
    two-kernel backward (a ReLU, or more columns than a tile holds)."""
    relu = step.relu if relu is None else relu
    columns = step.taps * 16 * cdiv(step.cout, 16)
    if relu:
        return None
    for most, bm, bk in FUSED_TILES:
        if columns <= most:
            return bm, 1 << (columns - 1).bit_length(), bk
    return None


def backward_kernels(step, relu=None) -> tuple:
    """The backward's launches of `step` (besides weight_pack), as the launcher chooses them: the
    two-kernel backward sums the weight gradient's partials in backward_input's first programs."""
    if fused_tile(step, relu):
        return "backward_fused", "weight_reduce"
    return "backward_weight", "backward_input"


def weight_grad_layout(tiles: int, blocks: int, sms: int, ctas_per_sm: int = 1) -> tuple:
    """(S_LO, R_EXTRA) of the weight gradient on a GPU of `sms` SMs running `ctas_per_sm` of its
    programs each: its `tiles` tiles take S_LO pixel ranges each and the first R_EXTRA one more, so
    that the grid (tiles * S_LO + R_EXTRA programs) is the fewest whole waves holding every tile and
    WEIGHT_GRAD_PROGRAMS_PER_SM programs per SM; no range under WEIGHT_GRAD_MIN_BLOCKS of the
    `blocks` pixel blocks, but two ranges a tile at least where there are two blocks. The
    launcher's rule.

    A grid of one wave runs every program at once and ends with its longest range, cdiv(blocks,
    S_LO): from two ranges a tile it takes the fewest that keep that longest range, and no extra
    ones (a tile's extra range shortens that tile's ranges, not the kernel, and adds a partial to
    write and sum: up3's 132 programs become 128). With one range a tile the extra ones stay: they
    keep every tile on partials (16-byte stores, where a grid of single ranges stores dW itself,
    element by element). Across waves they even out the last wave."""
    wave = sms * ctas_per_sm
    programs = cdiv(max(tiles, WEIGHT_GRAD_PROGRAMS_PER_SM * sms), wave) * wave
    ranges = max(min(2, blocks), blocks // WEIGHT_GRAD_MIN_BLOCKS)
    programs = max(tiles, min(programs, tiles * ranges))
    s_lo, r_extra = programs // tiles, programs % tiles
    if programs <= wave and s_lo >= 2:
        return cdiv(blocks, cdiv(blocks, s_lo)), 0
    return s_lo, r_extra


def fused_backward_splits(c_tiles: int, blocks: int, sms: int) -> int:
    """Pixel ranges (splits) of the one-pass backward: one wave of `sms` programs over its Cin
    tiles (a program holds a whole SM's registers), so each split writes one dW partial; no range
    under one of the `blocks` pixel blocks. The launcher's rule."""
    return max(1, min(blocks, sms // c_tiles))


def weight_grad_splits(step, tile, sms: int = SMS, ctas_per_sm: int = 1) -> tuple:
    """(tiles, S_LO, R_EXTRA) of the weight gradient of `step` with `tile` (BLOCK_M Cin, BLOCK_N
    (tap, Cout) columns over Cout padded to a multiple of 16, BLOCK_K pixels)."""
    bm, bn, bk = tile
    tiles = cdiv(step.cin, bm) * cdiv(step.taps * 16 * cdiv(step.cout, 16), bn)
    return (tiles, *weight_grad_layout(tiles, cdiv(step.m, bk), sms, ctas_per_sm))


def fused_step_splits(step, tile) -> int:
    """Splits of `step`'s one-pass backward with `tile` on an H100 (fused_backward_splits)."""
    bm, _bn, bk = tile
    return fused_backward_splits(cdiv(step.cin, bm), cdiv(step.m, bk), SMS)


def fused_partials(step, tile, has_bias: bool, acc: int = 4) -> tuple:
    """(dW partial bytes, dbias partial bytes) of the one-pass backward with `tile`: one of each
    per split (no dW partial with one split: dW is stored directly)."""
    splits = fused_step_splits(step, tile)
    dw = 0 if splits == 1 else acc * step.cin * step.taps * step.cout * splits
    db = acc * step.taps * step.cout * splits if has_bias else 0
    return dw, db


def weight_grad_partials(step, tile, has_bias: bool, acc: int = 4) -> tuple:
    """(dW partial bytes, dbias partial bytes) the weight-gradient kernel writes (0, ... when
    every tile has one split: dW is then stored directly): each program its tile's share of
    [Cin, T, Cout], and the programs of Cin tile 0 their columns of [T, Cout]."""
    tiles, s_lo, r_extra = weight_grad_splits(step, tile)
    programs = tiles * s_lo + r_extra
    dw = 0 if programs == tiles else acc * step.cin * step.taps * step.cout * programs / tiles
    db = acc * step.taps * step.cout * programs / tiles if has_bias else 0
    return dw, db


def weight_sum_bytes(step, weight_tile, fused, has_bias: bool, w: float, bias: float) -> tuple:
    """(moved, floor, l2_bytes) of the sum of the weight gradient's partials: of the one-pass
    backward's (`fused`: its tile), or else of the weight-gradient kernel's (`weight_tile`); `w`
    and `bias`: the bytes of dW and dbias, written once. The partials come from L2 while they fit
    in PARTIALS_IN_L2 (the sum runs in the launch right after their writer's)."""
    if fused:
        dw_part, db_part = fused_partials(step, fused, has_bias)
    else:
        dw_part, db_part = weight_grad_partials(step, weight_tile, has_bias)
    partials = dw_part + db_part
    from_dram = partials if partials > PARTIALS_IN_L2 else 0
    written = (w if dw_part else 0) + bias
    return from_dram + written, written, partials + written


def kernel_bytes(kernel: str, step, elem: int = 2, relu=None, has_bias: bool = True,
                 weight_stride1: bool = False, tile=None, sums_partials: bool = True) -> dict:
    """{moved, floor, l2_bytes, ratio, h100_us (lo, hi), h200_us (lo, hi)} of one kernel launch
    of `step` with `elem`-byte tensors (the partials are fp32). relu=None takes the step's own.
    weight_stride1: the weight is already stride-1 along Cout (channels_last), so no repack.
    sums_partials: backward_input's launch sums the weight gradient's partials (from Hopper on;
    before it weight_reduce does, after backward_input)."""
    relu = step.relu if relu is None else relu
    if tile is None and kernel == "backward_fused":
        tile = fused_tile(step, False)
    if tile is None and kernel == "backward_weight":
        tile = weight_grad_tile(step)
    tile = tile or DEFAULT_TILES.get(kernel, (64, 64, 64))
    bm, bn, _bk = tile
    m, mout, taps = step.m, step.mout, step.taps
    x = elem * m * step.cin
    w = elem * step.cin * step.cout * taps
    bias = elem * step.cout if has_bias else 0
    up = elem * mout * step.cout      # the upsampled channels of out / grad
    sk = elem * mout * step.cs        # the skip channels of out / grad / skip / dskip
    mask_bits = mout * (step.cout + step.cs) / 8 if relu else 0
    if kernel == "weight_pack":
        moved = 0 if weight_stride1 else 2 * w
        floor, l2 = 0, moved
    elif kernel == "forward":
        # With ReLU, the training forward (the one a step with a backward runs) also writes the
        # mask bits the backward reads: part of its floor, since the backward's floor reads them.
        bn = narrow_tile(bn, step.cout)
        moved = x + w + bias + up + 2 * sk + mask_bits
        floor = x + up + 2 * sk + w + mask_bits
        l2 = x * taps * cdiv(step.cout, bn) + w * cdiv(m, bm) + up + 2 * sk + mask_bits
    elif kernel == "backward_input":
        # Reads grad and the mask bits the forward wrote (upsampled channels once per Cin tile).
        # Without a ReLU the skip channels' gradient is a view of grad: no copy programs. Its first
        # programs sum the weight gradient's partials (weight_sum_bytes) where `sums_partials`.
        bn = narrow_tile(bn, step.cin)
        conv_bits = mout * step.cout / 8 if relu else 0
        skip_copy = 2 * sk if relu else 0
        sum_moved, sum_floor, sum_l2 = (weight_sum_bytes(step, weight_grad_tile(step), None, has_bias, w, bias)
                                        if sums_partials else (0, 0, 0))
        moved = up + mask_bits + w + x + skip_copy + sum_moved
        floor = up + mask_bits + w + x + skip_copy + sum_floor
        l2 = ((up + conv_bits) * cdiv(step.cin, bn) + skip_copy + (mask_bits - conv_bits) + w * cdiv(m, bm) + x
              + sum_l2)
    elif kernel == "backward_weight":
        # Partials: written to DRAM (L2 writes back every dirty line); the reduction reads them
        # back at once, from L2 while they fit in PARTIALS_IN_L2 (see weight_sum_bytes).
        dw_part, db_part = weight_grad_partials(step, tile, has_bias)
        written = w if not dw_part else dw_part
        bits = mout * step.cout / 8 if relu else 0  # the ReLU mask as bits, not the 16-bit output
        moved = x + up + bits + written + db_part
        floor = x + up + bits + w
        # x once per column tile (of BLOCK_N (tap, Cout) columns), gy and bits once per Cin tile.
        n_col = cdiv(taps * 16 * cdiv(step.cout, 16), bn)
        l2 = x * n_col + (up + bits) * cdiv(step.cin, bm) + written + db_part
    elif kernel == "backward_fused":
        # gy and x read once (the Cin tiles of a split walk the same pixels side by side: gy comes
        # once per Cin tile from L2), dx written; each program loads its Cin tile of W once.
        dw_part, db_part = fused_partials(step, tile, has_bias)
        written = w if not dw_part else dw_part
        moved = up + 2 * x + w + written + db_part
        floor = up + 2 * x + w + (0 if dw_part else w)
        l2 = up * cdiv(step.cin, bm) + 2 * x + w * fused_step_splits(step, tile) + written + db_part
    elif kernel == "weight_reduce":
        fused = fused_tile(step, relu)
        moved, floor, l2 = weight_sum_bytes(step, None if fused else weight_grad_tile(step), fused, has_bias, w, bias)
    else:
        raise ValueError(f"unknown kernel {kernel!r}; one of {', '.join(KERNELS)}")
    return _with_times(dict(kernel=kernel, step=step.name, moved=moved, floor=floor, l2_bytes=l2))


def _with_times(row: dict) -> dict:
    moved, floor = row["moved"], row["floor"]
    row["ratio"] = moved / floor if floor else (1.0 if not moved else float("inf"))
    row["h100_us"] = (moved / H100_HBM * 1e6, moved / H100_COPY * 1e6)
    row["h200_us"] = (moved / H200_HBM * 1e6, moved / H200_COPY * 1e6)
    return row


def step_floor(step, direction: str, elem: int = 2, relu=None, has_bias: bool = True) -> float:
    """The whole step's floor: 'forward' (the formula above) or 'backward'."""
    relu = step.relu if relu is None else relu
    x = elem * step.m * step.cin
    w = elem * step.cin * step.cout * step.taps
    grad = elem * step.mout * (step.cout + step.cs)
    if direction == "forward":
        return x + elem * step.mout * (step.cout + 2 * step.cs) + w
    if not relu:  # the skip channels' gradient is a view of grad: neither read nor written
        grad = elem * step.mout * step.cout
    mask = step.mout * (step.cout + step.cs) / 8 if relu else 0
    dskip = elem * step.mout * step.cs if relu else 0
    return grad + mask + x + x + dskip + w + w + (elem * step.cout if has_bias else 0)


def step_rows(step, elem: int = 2, relu=None, weight_stride1: bool = False) -> list:
    """Every kernel of a training step (forward and backward) and the two totals. The forward and
    the backward each repack a weight that is not stride-1 along Cout (weight_pack, counted in
    both totals)."""
    launched = ("weight_pack", "forward", *backward_kernels(step, relu))
    rows = [kernel_bytes(k, step, elem, relu, weight_stride1=weight_stride1) for k in KERNELS if k in launched]
    fwd = [r for r in rows if r["kernel"] in ("weight_pack", "forward")]
    bwd = [r for r in rows if r["kernel"] in ("weight_pack", *backward_kernels(step, relu))]
    for name, part, direction in (("forward total", fwd, "forward"), ("backward total", bwd, "backward")):
        rows.append(_with_times(dict(kernel=name, step=step.name, moved=sum(r["moved"] for r in part),
                                     floor=step_floor(step, direction, elem, relu),
                                     l2_bytes=sum(r["l2_bytes"] for r in part))))
    return rows


def format_table(rows) -> str:
    head = ("step", "kernel", "moved MB", "floor MB", "x floor", "L2 MB", "H100 us", "H200 us")
    lines = []
    for r in rows:
        lines.append((r["step"], r["kernel"], f"{r['moved'] / 1e6:.2f}", f"{r['floor'] / 1e6:.2f}",
                      f"{r['ratio']:.2f}" if r["floor"] else "-", f"{r['l2_bytes'] / 1e6:.1f}",
                      "{:.1f}-{:.1f}".format(*r["h100_us"]), "{:.1f}-{:.1f}".format(*r["h200_us"])))
    widths = [max(len(c) for c in col) for col in zip(head, *lines)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    return "\n".join(out)


def main() -> None:
    from unet_fast.cases import report_cases
    print("Byte model, bf16 (MODELLED, NOT MEASURED): DRAM bytes as written under the L2 assumption")
    for step in report_cases():
        print(f"\n{step.label} relu={step.relu} (weight repacked: not channels_last)")
        print(format_table(step_rows(step)))


if __name__ == "__main__":
    main()

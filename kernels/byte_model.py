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
there is a ReLU. Per kernel, the floor is that part of it the kernel must move itself.

Times: bytes / bandwidth, a range from the HBM peak (3.35 TB/s H100, 4.8 TB/s H200) to the
measured copy ceiling (about 3.0 TB/s on an H100; scaled by the same 0.9 on an H200).
"""

H100_HBM = 3.35e12
H100_COPY = 3.0e12
H200_HBM = 4.8e12
H200_COPY = H200_HBM * H100_COPY / H100_HBM
SMS = 132  # H100 SXM / H200: the launcher's split count fills 2 blocks per SM
# The split-K partials of the weight gradient (written once, read once) may cost at most this share
# of the bytes the weight-gradient kernel reads, or the launcher cuts the split count (to 1: dW
# stored directly). Defined here, where the model and the launcher both read it.
PARTIAL_BYTES_SHARE = 0.05


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


# A step is a unet_fast.cases.StepCase (the one definition of the shapes the project names):
# n, cin, cout, cs, spatial, kernel, relu, and m (input pixels), taps, mout (output pixels).

# The tiles modelled: each kernel's first 16-bit channels_last tile on sm_90 in kernels/configs.py
# (BLOCK_M, BLOCK_N, BLOCK_K). Only the L2 figures and the weight-gradient split depend on them.
DEFAULT_TILES = {"forward": (128, 64, 64), "backward_input": (128, 64, 64), "backward_weight": (64, 64, 64)}
KERNELS = ("weight_pack", "forward", "backward_input", "backward_weight", "weight_reduce")


def weight_grad_splits(step, tile, elem: int, relu: bool, acc: int = 4, sms: int = SMS) -> int:
    """The launcher's split count for the weight gradient on a GPU of `sms` SMs."""
    bm, bn, bk = tile
    tiles = cdiv(step.cin, bm) * step.taps * cdiv(step.cout, bn)
    read = elem * (step.m * step.cin + step.mout * step.cout) + (step.mout * step.cout // 8 if relu else 0)
    splits = min(cdiv(2 * sms, tiles), int(PARTIAL_BYTES_SHARE * read) // (2 * acc * step.cin * step.taps * step.cout))
    splits = max(1, min(cdiv(step.m, bk), splits))
    per_split = cdiv(cdiv(step.m, bk), splits) * bk
    return cdiv(step.m, per_split)


def kernel_bytes(kernel: str, step, elem: int = 2, relu=None, has_bias: bool = True,
                 weight_stride1: bool = False, tile=None) -> dict:
    """{moved, floor, l2_bytes, ratio, h100_us (lo, hi), h200_us (lo, hi)} of one kernel launch
    of `step` with `elem`-byte tensors (the partials are fp32). relu=None takes the step's own.
    weight_stride1: the weight is already stride-1 along Cout (channels_last), so no repack."""
    relu = step.relu if relu is None else relu
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
        moved = x + w + bias + up + 2 * sk
        floor = x + up + 2 * sk + w
        l2 = x * taps * cdiv(step.cout, bn) + w * cdiv(m, bm) + up + 2 * sk
    elif kernel == "backward_input":
        grad = up + sk
        bits = mout * step.cout / 8 if relu else 0  # the mask bits it writes for backward_weight
        moved = grad * (2 if relu else 1) + w + x + sk + bits
        floor = grad + mask_bits + w + x + sk
        l2 = (up * (2 if relu else 1)) * cdiv(step.cin, bn) + sk * (3 if relu else 2) + w * cdiv(m, bm) + x + bits
    elif kernel == "backward_weight":
        splits = weight_grad_splits(step, tile, elem, relu)
        partials = 0 if splits == 1 else 4 * splits * step.cin * taps * step.cout
        written = w if splits == 1 else partials
        db_part = 4 * splits * taps * step.cout if has_bias else 0
        bits = mout * step.cout / 8 if relu else 0  # the ReLU mask as bits, not the 16-bit output
        moved = x + up + bits + written + db_part
        floor = x + up + bits + w
        l2 = x * taps * cdiv(step.cout, bn) + (up + bits) * cdiv(step.cin, bm) + written + db_part
    elif kernel == "weight_reduce":
        splits = weight_grad_splits(step, DEFAULT_TILES["backward_weight"], elem, relu)
        partials = 0 if splits == 1 else 4 * splits * step.cin * taps * step.cout
        db_part = 4 * splits * taps * step.cout if has_bias else 0
        moved = partials + (w if splits > 1 else 0) + db_part + bias
        floor = (w if splits > 1 else 0) + bias
        l2 = moved
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
    mask = step.mout * (step.cout + step.cs) / 8 if relu else 0
    dskip = elem * step.mout * step.cs
    return grad + mask + x + x + dskip + w + w + (elem * step.cout if has_bias else 0)


def step_rows(step, elem: int = 2, relu=None, weight_stride1: bool = False) -> list:
    """Every kernel of a training step (forward and backward) and the two totals. The forward and
    the backward each repack a weight that is not stride-1 along Cout (weight_pack, counted in
    both totals)."""
    rows = [kernel_bytes(k, step, elem, relu, weight_stride1=weight_stride1) for k in KERNELS]
    fwd = [r for r in rows if r["kernel"] in ("weight_pack", "forward")]
    bwd = [r for r in rows if r["kernel"] in ("weight_pack", "backward_input", "backward_weight", "weight_reduce")]
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

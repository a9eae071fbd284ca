"""The tiles each kernel may launch with on a GPU, per operand class, and the pruning that keeps
every launchable config inside the device's shared memory.

Why per operand class: a tile that fits registers and shared memory in bf16 can overflow both in
fp32 (FlagGems keeps its configs per dtype too). Each list below was checked with
`unet-fast kernels --arch sm_90 --arch sm_80` (tests/test_kernel_report.py runs it in CI).
No torch import: see common.py.
"""
import functools

import triton

from .common import major_minor

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) per kernel and operand class: "16-bit"
# (bf16, fp16), "tf32" (float32 through TF32 tensor cores, PyTorch's default for convolutions) and
# "fp32" (float32 in full precision: FMA, no tensor cores, so the smallest tiles). Every kernel
# keeps one float32 accumulator of BLOCK_M x BLOCK_N (taps are column tiles, not extra
# accumulators), so the tiles are those of a plain GEMM. Each list was compiled for sm_90 and
# sm_80 without a spill (tests/test_kernel_report.py). The forward's and the backward-input's
# first 16-bit tile is the one kernels/byte_model.py models (its BLOCK_N cut to the step's GEMM N,
# as the autotuner's pruning cuts it: narrow_enough).
# Wide N tiles cut the L2 re-reads of the streamed operand: the forward reads a row block of x once
# per tap and Cout tile, backward_input reads a row block of grad once per Cin tile. 128 is the
# widest that fits: a 128x256 forward tile spilled (IDX64) and loaded its bias element by element.
# backward_input's 128x128 tile takes BLOCK_K 32: with ReLU it keeps 119-125 registers on sm_90 (two
# 8-warp CTAs per SM); BLOCK_K 64 took 170-181 (the decoded mask bits of a wider K step), one CTA.
TILES = {
    "forward": {
        "16-bit": [(128, 128, 64, 8, 3), (128, 64, 64, 8, 3), (64, 64, 64, 4, 4), (64, 32, 64, 4, 4)],
        "tf32": [(128, 64, 32, 8, 3), (64, 32, 32, 4, 3)],
        "fp32": [(32, 32, 32, 4, 2)],
        "16-bit-nchw": [(64, 32, 64, 4, 4), (64, 32, 32, 4, 3)],
        "tf32-nchw": [(64, 32, 32, 4, 3)],
        "fp32-nchw": [(32, 32, 32, 4, 2)],
    },
    "backward_input": {
        "16-bit": [(128, 128, 32, 8, 4), (128, 64, 64, 8, 3), (64, 64, 64, 4, 3)],
        "tf32": [(64, 64, 32, 4, 3), (64, 32, 32, 4, 3)],
        "fp32": [(32, 32, 16, 4, 2)],  # BLOCK_K 32 spilled 4 bytes on sm_80 (ReLU, IDX64: the mask decode)
        "16-bit-nchw": [(64, 32, 32, 4, 3)],
        "tf32-nchw": [(32, 32, 16, 4, 2)],
        "fp32-nchw": [(32, 32, 16, 4, 2)],
    },
    # Not autotuned: its grid depends on the tile through the split of pixels. The first tile that
    # fits the device's shared memory is taken. BLOCK_N counts (tap, Cout) columns.
    "backward_weight": {
        "16-bit": [(64, 64, 32, 8, 3)],  # 64x64x64 w8 spilled 8 bytes on sm_80 (Triton 3.9, 3d1)
        "tf32": [(64, 64, 32, 8, 3)],
        # 4 warps spilled 16-80 bytes (fp32 FMA dot, M-major x^T); BLOCK_K 32 spilled 16 bytes on
        # sm_90 without ReLU, with dbias (Triton 3.9, 3d2 and 3da).
        "fp32": [(32, 32, 16, 8, 2)],
        "16-bit-nchw": [(64, 32, 64, 8, 4), (64, 32, 32, 8, 4)],
        "tf32-nchw": [(64, 32, 16, 4, 3)],  # 64x32x32 spilled 4-12 bytes on sm_80 (Triton 3.9; w4 and w8)
        # 32 x 32: 4-12 bytes spilled at 8 warps, 300+ at 4 (Triton 3.6, 3.9); 32 x 16 x 32 spilled
        # 4-12 bytes with int64 offsets on sm_90 (3d4, Triton 3.9). From Triton 3.9: FROM_TRITON.
        "fp32-nchw": [(32, 16, 16, 8, 2)],
    },
}
# "-nchw": the class of a launch whose streamed operand (x for the forward and the weight
# gradient, grad for the input gradient) is not stride-1 along channels (NCHW, NCDHW, views).
# Its tap loads and stores are strided element by element (stride kw along pixels), so each
# element holds its own address: narrower tiles, or the register file spills.


# Tiles for Hopper (sm_90) and later only, tried before the lists above: wgmma keeps its
# accumulators in fewer registers than sm_80's mma.sync, and these spilled 4 to 24 bytes on sm_80
# (`unet-fast kernels --arch sm_80`) but not on sm_90.
HOPPER_TILES = {
    "forward": {"fp32": [(64, 32, 32, 4, 2)]},
    # 128 x 256 (219-242 registers at 8 warps on sm_90 with ReLU, int64 offsets included) reads grad
    # through L2 half as often as 128 x 128: up3 0.73 -> 0.58 GB, and 426 warp-instructions per 64^3
    # multiply-adds against 828 (the mask decode serves twice the Cin columns).
    "backward_input": {"16-bit": [(128, 256, 32, 8, 4)], "tf32-nchw": [(64, 32, 16, 4, 2)]},
    # 32K-element tiles, Cin x columns (228-255 registers with ReLU and dbias, no spill under
    # Triton 3.6, 3.8, 3.9): 256 x 128 decodes each mask bit for 256 Cin, 128 x 256 serves a step of
    # 128 Cin or fewer (fixed_tile); either reads x and gy through L2 0.40 GB on up3 against 0.54 at
    # 128 x 128. 128 x 128 at 8 warps: 213 registers at most on sm_90, 40 bytes spilled on sm_80.
    # At BLOCK_K 64 both 32K tiles spilled 52-400 bytes.
    "backward_weight": {"16-bit": [(256, 128, 32, 8, 3), (128, 256, 32, 8, 3), (128, 128, 64, 8, 3)],
                        "tf32": [(64, 64, 32, 4, 3)], "16-bit-nchw": [(64, 32, 64, 4, 4)]},
}

# Tiles for a kernel's light variant on Hopper (sm_90) and later, tried first: the forward of
# inference (no ReLU mask bits to write) with int32 offsets and one tap along depth (2-D steps,
# 1x2x2 kernels). 256 x 128 reads the weight through L2 half as often as 128 x 128 (up3: 0.75 ->
# 0.61 GB through L2 in all); on sm_90 it took 236-244 registers at 8 warps, and spilled 40-212
# bytes writing mask bits or with int64 offsets, 28 with ReLU on 2x2x2 steps (3d5, 3d4 in bf16),
# 20-168 at 16 warps (whose 128-register cap binds too).
LIGHT_TILES = {"forward": {"16-bit": [(256, 128, 64, 8, 3)]}}


# The one-pass backward without ReLU (kernels/up_concat_backward_fused.py), per operand class and
# the least compute capability: (most (tap, Cout) columns, BLOCK_M Cin, BLOCK_K pixels, warps,
# stages), the first whose column count holds the step's taken. BLOCK_N is every column of the
# step (a power of two). Its float32 accumulator is columns x BLOCK_M, so the Cin tile narrows as
# the columns grow: 256 x 64 took 174-181 registers on sm_90 (Triton 3.6), 512 x 32 207-236;
# 512 x 64 spilled 524-2148 bytes at 8 and 16 warps. On sm_80 (mma.sync accumulators) 256 x 64
# and 512 x 32 reached 255 registers, so it takes 256 x 32 at most. Steps with more columns,
# and classes not listed, take the two-kernel backward.
FUSED_BACKWARD = {
    "16-bit": {90: [(256, 64, 64, 8, 2), (512, 32, 64, 8, 2)], 80: [(256, 32, 64, 8, 2)]},
}


def fused_backward_tile(operands: str, capability: int, columns: int, shared_limit: int):
    """Launch arguments of the one-pass backward for `operands` on compute capability
    `capability` and a step of `columns` (tap, Cout) columns, BLOCK_N included (every column, a
    power of two); None when no tile takes it or fits `shared_limit` bytes of shared memory."""
    by_arch = FUSED_BACKWARD.get(operands, {})
    archs = [a for a in by_arch if a <= capability]
    element_size = 2 if operands.startswith("16-bit") else 4
    block_n = max(16, triton.next_power_of_2(columns))
    for most, bm, bk, warps, stages in by_arch[max(archs)] if archs else []:
        if columns <= most and shared_memory_bound("backward_fused", (bm, block_n, bk, warps, stages),
                                                   element_size) <= shared_limit:
            return dict(BLOCK_M=bm, BLOCK_N=block_n, BLOCK_K=bk, num_warps=warps, num_stages=stages)
    return None


def light_variant(constexprs: dict) -> bool:
    """Whether a launch with these constexprs is a light variant (LIGHT_TILES apply)."""
    return not constexprs.get("WRITE_BITS") and not constexprs.get("IDX64") and constexprs.get("KD", 1) == 1


# The split-K reduction of the weight gradient: dW elements per program, warps, splits whose loads
# are issued together; the dbias tile of REDUCE_ROWS (split, tap) rows x REDUCE_CHANNELS channels
# per step. One config.
REDUCE_BLOCK, REDUCE_WARPS, REDUCE_SPLITS = 512, 4, 4
REDUCE_ROWS, REDUCE_CHANNELS = 128, 32
# The same where the reduction runs as the first programs of backward_input, whose tiles take
# 4 or 8 warps: at most 8 dW elements per thread, 2 splits' loads in flight, so the reduction
# adds few registers to the GEMM tiles' (sm_90, 64 x 64 at 4 warps: 70 -> 87, still four CTAs
# an SM; 2048 elements took 161, three; 4 splits spilled 4 bytes of the float32 32 x 32 tile
# under Triton 3.8); dbias row by row, 8 rows' loads at a time.
INPUT_REDUCE_BLOCK, INPUT_REDUCE_SPLITS, INPUT_REDUCE_ROWS = 1024, 2, 8

# Registers per thread the backward_weight kernel is assumed to take (its 8-warp tiles take 122-234
# on sm_90, `unet-fast kernels`: one program per SM), and what an SM holds: they decide how many of
# its programs an SM runs at once, and so the size of a whole wave.
WEIGHT_GRAD_REGISTERS = 255
SM_REGISTERS = 65536
SM_SHARED_MEMORY = 233472  # sm_90 and sm_80 alike allot at most this per SM (228 KB)


# Tiles of the lists above that spilled 4 to 12 bytes on sm_80 under Triton 3.9 in one
# specialization (nnU-Net's 4^3 step, sizes not divisible by 16: the forward writing mask bits,
# the weight gradient with ReLU and IDX64) and none on sm_90: skipped before Hopper.
NOT_BEFORE_HOPPER = {
    "forward": {"16-bit": [(64, 64, 64, 4, 4)], "16-bit-nchw": [(64, 32, 32, 4, 3)]},
    "backward_weight": {"16-bit-nchw": [(64, 32, 64, 8, 4)]},
}


# Lists that replace a TILES list from a Triton version on, where ptxas spills one version's code
# and not the other's. fp32-nchw backward_weight: 32x16x16 w8 with 2 stages spilled 4 bytes on
# sm_90 under Triton 3.9 (3d3, no ReLU, with dbias) and none under 3.6 and 3.8; with 1 stage
# none under 3.9 and 4-8 bytes under 3.6 and 3.8 (int64 offsets, no ReLU). 16x16x16 w4,
# 16x32x16 w4, 32x16x16 w4 and 32x16x16 w8 s3 each spilled under at least one of the three.
FROM_TRITON = {(3, 9): {"backward_weight": {"fp32-nchw": [(32, 16, 16, 8, 1)]}}}


def base_tiles(kernel: str, operands: str, version: str = triton.__version__) -> list:
    """TILES[kernel][operands], or its FROM_TRITON replacement for Triton `version`."""
    tiles = TILES[kernel][operands]
    for since, table in sorted(FROM_TRITON.items()):
        if major_minor(version) >= since:
            tiles = table.get(kernel, {}).get(operands, tiles)
    return tiles


def tiles_for(kernel: str, operands: str, capability: int, light: bool = False) -> list:
    """The tiles a kernel may launch with for `operands` on a GPU of compute capability
    `capability` (90 for sm_90), before shared-memory pruning; `light`: for a light variant
    (light_variant), whose LIGHT_TILES come first."""
    tiles = base_tiles(kernel, operands)
    if capability >= 90:
        light_tiles = LIGHT_TILES.get(kernel, {}).get(operands, []) if light else []
        return light_tiles + HOPPER_TILES.get(kernel, {}).get(operands, []) + tiles
    skipped = NOT_BEFORE_HOPPER.get(kernel, {}).get(operands, [])
    return [t for t in tiles if t not in skipped]


def operand_class(element_size: int, input_precision: str, channels_last: bool = True) -> str:
    """Which TILES list a launch takes: by the operands' size, the dot's precision, and whether
    the streamed operand is stride-1 along channels (else the "-nchw" lists)."""
    if element_size == 2:
        base = "16-bit"
    else:
        base = "tf32" if input_precision == "tf32" else "fp32"
    return base if channels_last else base + "-nchw"


def channels_last_operand(t) -> bool:
    """Whether tensor `t` (x or grad) is stride-1 along channels: the operand-class layout bit."""
    return t.stride(1) == 1 or t.shape[1] == 1


# Shared memory a kernel uses, in elements: per pipeline stage, the tiles it loads (forward: the
# x tile and one tap's W tile; backward_input: grad and W, and the mask bits' bytes (1/16 of a 16-bit
# grad tile, bounded by a second grad tile); backward_weight:
# the x tile, the grad tile and its masked copy for the tensor cores, the mask bytes within that
# bound), and once, its float32 accumulator of BM x BN, which the
# compiler may pass through shared memory to change layout before the stores.
# backward_fused: the gy tile (BLOCK_K pixels x BLOCK_N columns) and the x tile per stage, and
# once its Cin tile of W^T (BLOCK_N x BLOCK_M), loaded before the loop.
STAGE_ELEMENTS = {
    "forward": lambda bm, bn, bk: bm * bk + bk * bn,
    "backward_input": lambda bm, bn, bk: 2 * bm * bk + bk * bn,
    "backward_weight": lambda bm, bn, bk: bm * bk + 2 * bk * bn,
    "backward_fused": lambda bm, bn, bk: bk * bn + bk * bm,
}
ONCE_ELEMENTS = {"backward_fused": lambda bm, bn, bk: bn * bm}
ACCUMULATORS = {"forward": 1, "backward_input": 1, "backward_weight": 1, "backward_fused": 1}


def shared_memory_bound(kernel: str, tile, element_size: int) -> int:
    """Bytes of shared memory a config can need at most: every stage's tiles, or the stages in
    flight (all but the one being computed) plus the accumulators, whichever is more. An upper
    bound, checked against what the compiler allots for every launchable config in
    tests/test_kernel_report.py (TF32 tiles of two stages take both stages, not one); it prunes
    configs on GPUs with less shared memory (an A100 has 166,912 bytes, an RTX 4090 101,376)
    before anything is compiled."""
    bm, bn, bk, _warps, stages = tile
    stage = STAGE_ELEMENTS[kernel](bm, bn, bk) * element_size
    once = ONCE_ELEMENTS.get(kernel, lambda *_: 0)(bm, bn, bk) * element_size
    return once + max(stages * stage, (stages - 1) * stage + ACCUMULATORS[kernel] * bm * bn * 4)


def weight_grad_ctas_per_sm(tile, element_size: int) -> int:
    """Programs of the backward_weight kernel an SM runs at once with `tile`: its registers (at
    WEIGHT_GRAD_REGISTERS per thread) and shared memory (shared_memory_bound) both fit."""
    warps = tile[3]
    by_registers = SM_REGISTERS // (warps * 32 * WEIGHT_GRAD_REGISTERS)
    by_shared = SM_SHARED_MEMORY // shared_memory_bound("backward_weight", tile, element_size)
    return max(1, min(by_registers, by_shared))


def device_limits() -> tuple:
    """(compute capability, shared memory per block) of the device Triton compiles for now."""
    from triton.runtime import driver
    return _limits(driver.active, driver.active.get_current_device())


@functools.lru_cache(maxsize=None)
def _limits(active_driver, device) -> tuple:
    arch = active_driver.get_current_target().arch
    capability = arch if isinstance(arch, int) else 0  # an AMD target names its arch "gfx..."
    return capability, active_driver.utils.get_device_properties(device)["max_shared_mem"]


def tiles_that_fit(kernel: str, operands: str, capability: int, shared_limit: int, light: bool = False) -> list:
    """tiles_for(...) without the tiles whose bound exceeds `shared_limit`; the smallest one if
    none fits (the launch then reports the real shortfall)."""
    element_size = 2 if operands.startswith("16-bit") else 4
    tiles = tiles_for(kernel, operands, capability, light)
    fitting = [t for t in tiles if shared_memory_bound(kernel, t, element_size) <= shared_limit]
    return fitting or [min(tiles, key=lambda t: shared_memory_bound(kernel, t, element_size))]


def _config(tile) -> triton.Config:
    bm, bn, bk, warps, stages = tile
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)


def _tile_of(config: triton.Config) -> tuple:
    kw = config.kwargs
    return kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"], config.num_warps, config.num_stages


def fixed_tile(kernel: str, operands: str, m: int, n: int) -> dict:
    """Launch arguments of a kernel that is not autotuned, for a GEMM of `m` x `n` outputs: its
    first tile that fits the device and is no wider along either than 128 or the GEMM rounded up
    to a power of two, else its first that fits. (Not 64, as narrow_enough: a 64 x 64 weight-gradient
    tile with ReLU issues 2304 warp-instructions per 64^3 multiply-adds on sm_90, so half a
    128-wide tile's tensor-core work wasted costs less.)"""
    tiles = tiles_that_fit(kernel, operands, *device_limits())
    narrow = [t for t in tiles if narrow_enough(t[0], m, least=128) and narrow_enough(t[1], n, least=128)]
    return dict(_config((narrow or tiles)[0]).all_kwargs())


def narrow_enough(block_n: int, n: int, least: int = 64) -> bool:
    """Whether a tile BLOCK_N wide is worth launching for a GEMM N of `n` (Cout for the forward,
    Cin for backward_input): at most `least` wide, or not wider than n rounded up to a power of
    two, so that a narrow step does not compute (and load weights for) 128 columns that do not exist."""
    return block_n <= max(least, triton.next_power_of_2(n))


# With a ReLU, backward_input decodes the mask once per grad element whatever its tile's width, so
# a tile under 128 wide issues about twice the instructions per multiply-add (sm_90, Triton 3.6:
# 1196-1288 warp-instructions per 64^3 at 128 x 64 and 64 x 64, against 426-828 at 256 and 128
# wide) and re-reads grad through L2 twice as often: such a tile is launched with a ReLU only for a
# GEMM N under 128. Without one, the narrow tiles (624-676) keep more programs busy on small steps.
LEAST_BLOCK_N_WITH_RELU = {"backward_input": 128}


def wide_enough(kernel: str, block_n: int, n: int, relu: bool) -> bool:
    """Whether a tile BLOCK_N wide is wide enough for `kernel` and a GEMM N of `n`
    (LEAST_BLOCK_N_WITH_RELU, with a ReLU)."""
    least = LEAST_BLOCK_N_WITH_RELU.get(kernel, 0) if relu else 0
    return block_n >= min(least, triton.next_power_of_2(n))


def autotuned(kernel_fn, kernel: str, dtype_arg: str, channel_stride_arg: str, n_arg: str):
    """`kernel_fn` behind Triton's autotuner. Before anything is compiled, the configs are pruned
    to the tiles TILES[kernel] lists for the operands (the element size and channel stride of
    argument `dtype_arg`, and INPUT_PRECISION) that fit the device's shared memory. The autotuner keys on the dtypes and
    the precision follows cudnn.allow_tf32, so INPUT_PRECISION joins the key; so does the
    operand's channel stride (`channel_stride_arg`), which picks the "-nchw" lists, and WRITE_BITS
    and IDX64, since a light variant (light_variant) also tries LIGHT_TILES. Tiles wider than the
    GEMM's N (argument `n_arg`) are pruned too (narrow_enough), and with a ReLU tiles narrower than
    it needs (wide_enough), unless none is left."""
    every_tile = sorted({t for table in (TILES, HOPPER_TILES, LIGHT_TILES, *FROM_TRITON.values())
                         for tiles in table.get(kernel, {}).values() for t in tiles})

    def prune(configs, named_args, **kwargs):
        operand = named_args[dtype_arg]
        operands = operand_class(operand.element_size(), kwargs["INPUT_PRECISION"], channels_last_operand(operand))
        allowed = set(tiles_that_fit(kernel, operands, *device_limits(), light=light_variant(kwargs)))
        fitting = [c for c in configs if _tile_of(c) in allowed]
        n = named_args[n_arg]
        return [c for c in fitting if narrow_enough(c.kwargs["BLOCK_N"], n)
                and wide_enough(kernel, c.kwargs["BLOCK_N"], n, kwargs.get("RELU", False))] or fitting

    # A light variant's best tile may not compile for the others: WRITE_BITS and IDX64 key it (KD
    # already does); RELU decides wide_enough.
    key = [name for name in ("CIN", "COUT", "CS", "KD", "KH", "KW", "INPUT_PRECISION", "WRITE_BITS", "IDX64", "RELU",
                             channel_stride_arg) if name in kernel_fn.arg_names]
    return triton.autotune(configs=[_config(t) for t in every_tile], key=key,
                           prune_configs_by={"early_config_prune": prune})(kernel_fn)

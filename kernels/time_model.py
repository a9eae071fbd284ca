"""Time model of the up_concat kernels, and of the eager and torch.compile decoder step, on an H100 SXM.

MODELLED, NOT MEASURED. Pure arithmetic (no torch, no Triton at import), like byte_model.py.
A kernel's modelled time is the largest of four bounds, plus a launch (less for a programmatic
dependent: DEPENDENT_LAUNCH_S):
  - DRAM: the bytes of byte_model.kernel_bytes (`moved`) at DRAM_BANDWIDTH;
  - L2: the bytes the programs request from L2 (byte_model's `l2_bytes`, every re-read included)
    at L2_BANDWIDTH;
  - issue: the warp-instructions of the busiest SM (K-loop SASS per warp x warps x K iterations,
    plus the code outside the loop once per program) at one per scheduler (SCHEDULERS per SM) per
    cycle, derated by issue_efficiency when few warps per scheduler leave latency unhidden;
  - tensor cores: the multiply-adds of the busiest SM (the K loop's tensor-core instructions, tile
    padding included) at TENSOR_FLOPS / SMS.
The DRAM and L2 bounds spread bytes evenly over the GPU; the issue and tensor-core bounds count
the busiest SM: a grid of P programs puts ceil(P / SMS) of them on some SM (a partial last wave
costs a whole one there), run ctas_per_sm at a time.

Eager and torch.compile are modelled the same way, pass by pass (eager_passes, compile_passes):
each pass max(bytes / DRAM_BANDWIDTH, flops / TENSOR_FLOPS) + LAUNCH_S.

benchmarks/NOTES.md ("Time model") states these assumptions and the profiler metrics that would
check them on a GPU.
"""
import math

from .byte_model import cdiv, step_floor

# H100 SXM (sm_90).
SMS = 132
SMS_PCIE = 114            # H100 PCIe: the waves column's second figure
CLOCK_HZ = 1.75e9         # sustained SM clock under load (1.98 GHz boost)
DRAM_BANDWIDTH = 3.0e12   # achievable copy bandwidth (3.35 TB/s peak)
L2_BANDWIDTH = 7.0e12     # L2 -> SM (6.5-9 TB/s quoted; the low-middle of it)
# Dense tensor-core rate, achievable (bf16/fp16: 989 TFLOP/s peak; tf32: 495 peak).
TENSOR_FLOPS = {"bf16": 800e12, "fp16": 800e12, "tf32": 400e12}
LAUNCH_S = 4e-6           # per kernel, launched back to back on one stream (3-5 us)
# A programmatic dependent launch (sm_90+: backward_input after the weight gradient, which lets it
# start at once) is launched while the kernel before it runs, and its programs that read nothing
# that kernel writes take SMs as its programs end: its launch and ramp overlap that kernel. Left:
# the wait of its first programs (the sum of the partials) for that kernel's end and memory flush.
DEPENDENT_LAUNCH_S = 1e-6
SCHEDULERS = 4            # warp schedulers per SM, each issuing at most 1 warp-instruction a cycle
# Share of issue slots a scheduler fills with this many resident warps. A warp waits 4-6 cycles
# on a dependent ALU result and far longer on shared memory or a tensor-core wait; the compiler's
# interleaving hides about half of it with one warp. Four warps per scheduler hide it.
ISSUE_EFFICIENCY = {1: 0.5, 2: 0.7, 3: 0.85}
# The SASS outside the K loop holds the code of every program role (GEMM tile, skip copy, and in
# backward_input the sum of the weight gradient's partials) and every epilogue variant; a program
# runs about this share of it once.
OUTSIDE_LOOP_SHARE = 0.5

# Occupancy limits of one SM.
REGISTERS_PER_SM = 65536
REGISTER_GRANULE = 8      # registers per thread are allocated in multiples of 8 (256 per warp)
SHARED_PER_SM = {90: 233472, 80: 167936}  # 228 KB (sm_90), 164 KB (sm_80)
SHARED_RESERVED_PER_CTA = 1024            # the driver's own shared memory per CTA
MAX_CTAS_PER_SM = 32
MAX_WARPS_PER_SM = 64


def ctas_per_sm(registers: int, warps: int, shared: int, capability: int = 90) -> int:
    """CTAs of one kernel resident on an SM at once: the least of the register file, shared
    memory, 32 CTAs and 64 warps allow."""
    per_warp = cdiv(registers, REGISTER_GRANULE) * REGISTER_GRANULE * 32
    by_registers = (REGISTERS_PER_SM // per_warp) // warps
    by_shared = SHARED_PER_SM[capability] // (shared + SHARED_RESERVED_PER_CTA)
    return max(0, min(by_registers, by_shared, MAX_CTAS_PER_SM, MAX_WARPS_PER_SM // warps))


def warps_per_scheduler(ctas: int, warps: int) -> float:
    return ctas * warps / SCHEDULERS


def issue_efficiency(per_scheduler: float) -> float:
    if per_scheduler >= 4:
        return 1.0
    return ISSUE_EFFICIENCY[max(1, round(per_scheduler))]


def waves(programs: int, ctas: int, sms: int = SMS) -> float:
    """Programs over the CTAs the GPU holds at once (2.18: two full waves and a fifth)."""
    return programs / (ctas * sms) if ctas else float("inf")


def k_iterations(kernel: str, step, tile, launch_args=None) -> int:
    """K-loop iterations of the longest GEMM program, from the kernel's loop bounds and its tile
    (BLOCK_M, BLOCK_N, BLOCK_K); launch_args: the launch's integer arguments by name:
      forward          out[pixels, tap, Cout tile] = x[pixels, Cin] @ w[Cin, tap, Cout tile]:
                       cdiv(Cin, BLOCK_K) steps;
      backward_input   dx[pixels, Cin tile] = sum over taps of grad[pixels, tap, Cout] @ w^T:
                       taps x cdiv(Cout, BLOCK_K) steps;
      backward_weight  dW[Cin tile, columns] = sum over one split's pixels of x^T @ grad: the
                       pixel blocks of BLOCK_K (per image; whole rows when BLOCK_W > 0) over
                       the S_LO splits of a tile (a tile with one split more runs shorter ones),
                       or the launch's BLOCKS_PER_SPLIT;
      backward_fused   both products of one pixel block of BLOCK_K per step, over one of the
                       launch's S splits of the blocks."""
    _bm, _bn, bk = tile
    args = launch_args or {}
    if kernel == "forward":
        return cdiv(step.cin, bk)
    if kernel == "backward_input":
        return step.taps * cdiv(step.cout, bk)
    if kernel == "backward_fused":
        per_image = step.m // step.n
        blocks = step.n * (per_image // bk if args.get("BLOCK_W") else cdiv(per_image, bk))
        return cdiv(blocks, args.get("S", 1))
    if kernel == "backward_weight":
        if "BLOCKS_PER_SPLIT" in args:
            return args["BLOCKS_PER_SPLIT"]
        per_image = step.m // step.n
        blocks = step.n * (per_image // bk if args.get("BLOCK_W") else cdiv(per_image, bk))
        return cdiv(blocks, args.get("S_LO", 1))
    raise ValueError(f"{kernel!r} has no K loop")


def gemm_programs(kernel: str, step, tile, programs: int) -> int:
    """Programs of the grid that run the K loop (the rest copy the skip channels, or in
    backward_input sum the weight gradient's partials): the row blocks of each image times the
    column tiles (kernels/common.py program_role); every program of the weight gradient."""
    bm, bn, _bk = tile
    row_blocks = step.n * cdiv(step.m // step.n, bm)
    if kernel == "forward":
        return min(programs, row_blocks * step.taps * cdiv(step.cout, bn))
    if kernel == "backward_input":
        return min(programs, row_blocks * cdiv(step.cin, bn))
    return programs


def kernel_time(*, dram_bytes: float, l2_bytes: float, programs: int, gemm_programs: int = 0,
                k_iterations: int = 0, loop_instructions: int = 0, loop_macs: int = 0,
                outside_instructions: int = 0, warps: int, ctas: int, tensor_flops: float = TENSOR_FLOPS["bf16"],
                sms: int = SMS, dependent: bool = False) -> dict:
    """The four bounds of one launch (seconds), the binding one, and the modelled time with launch.
    loop_instructions: the K loop's SASS per warp; loop_macs: its multiply-adds for the whole CTA
    per iteration; outside_instructions: the SASS outside the loop a program runs once (per warp);
    dependent: a programmatic dependent launch (DEPENDENT_LAUNCH_S, not LAUNCH_S)."""
    copy_programs = programs - gemm_programs
    busiest_gemm = cdiv(gemm_programs, sms)           # a partial wave costs a whole one on its SMs
    busiest_copy = copy_programs / sms                 # the short copy programs fill the gaps
    per_warp = (busiest_gemm * (loop_instructions * k_iterations + outside_instructions)
                + busiest_copy * outside_instructions)
    resident = max(1, min(ctas, busiest_gemm + cdiv(copy_programs, sms)))
    per_scheduler = warps_per_scheduler(resident, warps)
    # Each scheduler takes warps/4 of every CTA's warps: per_warp x warps / 4 issue slots.
    issue = per_warp * warps / SCHEDULERS / (CLOCK_HZ * issue_efficiency(per_scheduler))
    tensor = busiest_gemm * k_iterations * loop_macs * 2 / (tensor_flops / SMS)
    bounds = dict(dram=dram_bytes / DRAM_BANDWIDTH, l2=l2_bytes / L2_BANDWIDTH, issue=issue, tensor=tensor)
    bound = max(bounds, key=bounds.get)
    launch = DEPENDENT_LAUNCH_S if dependent else LAUNCH_S
    return dict(bounds, bound=bound, warps_per_scheduler=per_scheduler, seconds=bounds[bound] + launch)


def pass_time(nbytes: float, flops: float = 0.0, tensor_flops: float = TENSOR_FLOPS["bf16"]) -> float:
    """One library kernel (cuDNN convolution or elementwise pass): max(bytes, FLOPs) + launch."""
    return max(nbytes / DRAM_BANDWIDTH, flops / tensor_flops) + LAUNCH_S


def _sizes(step, elem: int):
    x = elem * step.m * step.cin
    w = elem * step.cin * step.cout * step.taps
    up = elem * step.mout * step.cout      # the transposed convolution's output / its gradient
    sk = elem * step.mout * step.cs        # the skip channels
    flops = 2 * step.m * step.cin * step.cout * step.taps  # one convolution, forward or either gradient
    return x, w, up, sk, flops


def eager_passes(step, direction: str, elem: int = 2, relu=None, has_bias: bool = True) -> list:
    """[(pass, bytes, flops)] of the eager step (unet_fast.reference.up_concat under autograd)."""
    relu = step.relu if relu is None else relu
    x, w, up, sk, flops = _sizes(step, elem)
    bias = elem * step.cout if has_bias else 0
    if direction == "forward":
        passes = [("conv_transpose", x + w + bias + up, flops),   # cuDNN: x, w in; y out (bias in its epilogue)
                  ("cat", 2 * (up + sk), 0)]                        # reads y and skip, writes out
        if relu:
            passes.append(("relu", 2 * (up + sk), 0))               # reads out, writes a new tensor
        return passes
    passes = []
    if relu:
        passes.append(("threshold_backward", 3 * (up + sk), 0))   # reads grad and out, writes grad_in
    # cat's backward gives views: dskip stays one, cuDNN takes a dense copy of the upsampled slice.
    passes += [("split_copy", 2 * up, 0),
               ("conv_data_grad", up + w + x, flops),             # dx = conv(grad_up, w)
               ("conv_weight_grad", up + x + w, flops)]           # dW = x^T grad_up (written once)
    if has_bias:
        passes.append(("bias_sum", up + bias, 0))                   # reads grad_up, writes dbias
    return passes


def compile_passes(step, direction: str, elem: int = 2, relu=None, has_bias: bool = True) -> list:
    """[(pass, bytes, flops)] of torch.compile's step: Inductor fuses cat and ReLU into one copy and
    ReLU's backward with the slicing; the convolutions stay cuDNN's."""
    relu = step.relu if relu is None else relu
    x, w, up, sk, flops = _sizes(step, elem)
    bias = elem * step.cout if has_bias else 0
    if direction == "forward":
        return [("conv_transpose", x + w + bias + up, flops),
                ("cat_relu", 2 * (up + sk), 0)]                     # reads y and skip, writes out once
    if relu:
        passes = [("threshold_backward_split", 3 * (up + sk), 0)]  # reads grad and out, writes dup and dskip
    else:
        passes = [("split_copy", 2 * up, 0)]                        # dskip stays a view; cuDNN takes dup dense
    passes += [("conv_data_grad", up + w + x, flops), ("conv_weight_grad", up + x + w, flops)]
    if has_bias:
        passes.append(("bias_sum", up + bias, 0))
    return passes


def passes_seconds(passes, tensor_flops: float = TENSOR_FLOPS["bf16"]) -> float:
    return sum(pass_time(nbytes, flops, tensor_flops) for _, nbytes, flops in passes)


def floor_seconds(step, direction: str, elem: int = 2, relu=None, has_bias: bool = True) -> float:
    """The step's DRAM floor (byte_model.step_floor) at DRAM_BANDWIDTH; 'full' is both directions."""
    if direction == "full":
        return sum(floor_seconds(step, d, elem, relu, has_bias) for d in ("forward", "backward"))
    return step_floor(step, direction, elem, relu, has_bias) / DRAM_BANDWIDTH


def percent_shown(pct: float) -> str:
    """A step's percentage of its floor to one decimal, rounded down: a figure shown as 60.0% is
    60% or more (59.9987% shows as 59.9%)."""
    return f"{math.floor(pct * 10) / 10:.1f}%"


def step_table_row(step, direction: str, fused_seconds: float, elem: int = 2, dtype: str = "bf16",
                   has_bias: bool = True) -> dict:
    """One row of the per-step table (direction 'forward', 'backward' or 'full'), times in
    microseconds, all modelled: the floor, the fused op (fused_seconds: the sum of its kernels'
    modelled times), the fused time as a percentage of the floor's speed, eager and torch.compile."""
    tflops = TENSOR_FLOPS.get(dtype, TENSOR_FLOPS["bf16"])
    directions = ("forward", "backward") if direction == "full" else (direction,)
    floor = floor_seconds(step, direction, elem, has_bias=has_bias)
    eager = sum(passes_seconds(eager_passes(step, d, elem, has_bias=has_bias), tflops) for d in directions)
    compiled = sum(passes_seconds(compile_passes(step, d, elem, has_bias=has_bias), tflops) for d in directions)
    return dict(step=step.name, direction=direction, floor_us=floor * 1e6, fused_us=fused_seconds * 1e6,
                pct_of_floor=100 * floor / fused_seconds, eager_us=eager * 1e6, compile_us=compiled * 1e6)

"""Compile the up_concat kernels for a GPU this machine does not have, and read what the GPU
would get: registers, spills, shared memory, tensor-core and async-copy instructions, scalar
16-bit global loads and atomics; beside each row, the kernel's byte model (kernels/byte_model.py)
and time model (kernels/time_model.py, with the K loop read from the SASS by gpu/sass.py):
modelled, not measured.

Static analysis, not a timing. The real launchers (kernels/up_concat_launch.py) run on empty CPU
tensors of each case's shapes, so every specialization (divisible strides, stride-1 dimensions,
dtypes) and every config the autotuner keeps after pruning is what a launch on the GPU would
compile. Kernels are compiled into a fresh cache so that ptxas runs and reports on each.
"""
import concurrent.futures
import contextlib
import io
import os
import re
import subprocess
import tempfile
import time

import torch

from unet_fast import names
from unet_fast.gpu.kernel_report import KERNEL_CHOICES

# The report's name of each Triton kernel (its function is up_concat_<name>_kernel).
KERNEL_NAMES = {f"up_concat_{name}_kernel": name for name in KERNEL_CHOICES}
# The constexpr variants each decoder step is compiled in: (ReLU, bias), with a bias as the
# lesson's UNet, nnU-Net and MONAI decoders have one (a kernel's no-bias variant is its code
# without the bias loop; tests/test_kernel_compile.py compiles those). Together with IDX64 forced on
# and off (compile_report) and the step's own specializations.
VARIANTS = ((True, True), (False, True))


def ptxas_resources(log: str) -> dict:
    """Registers and spill bytes from `ptxas -v` output (Triton prints it with dump_ptxas_log)."""
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return dict(registers=int(regs.group(1)) if regs else None,
                spill_stores=int(spills.group(1)) if spills else None,
                spill_loads=int(spills.group(2)) if spills else None)


def _access_bytes(ptx: str, op: str) -> int:
    """Widest global load ('ld') or store ('st') in the PTX, in bytes (v4.b32 is 16)."""
    widest = 0
    for m in re.finditer(rf"\b{op}\.global[.\w]*?(?:\.v(\d))?\.[bfsu](\d+)\b", ptx):
        widest = max(widest, int(m.group(1) or 1) * int(m.group(2)) // 8)
    return widest


def scalar_16bit_loads(ptx: str) -> int:
    """Global loads of one 16-bit element (ld.global[.nc...].b16, not .v2/.v4): what a 16-bit
    tile the compiler could not vectorize costs (cp.async and vector loads are not counted)."""
    return len(re.findall(r"\bld\.global(?:\.(?!v\d)[\w:]+)*?\.[bfsu]16\b", ptx))


def atomics(ptx: str) -> int:
    """atom.* and red.* instructions: none is allowed (the kernels are deterministic)."""
    return len(re.findall(r"\b(?:atom|red)\.", ptx))


def ptx_features(ptx: str) -> dict:
    if "wgmma.mma_async" in ptx:
        tensor_cores = "wgmma"
    elif re.search(r"\bmma\.sync", ptx):
        tensor_cores = "mma"
    else:
        tensor_cores = "-"
    return dict(tensor_cores=tensor_cores, cp_async=len(re.findall(r"\bcp\.async\.(?:ca|cg|bulk)", ptx)),
                widest_load=_access_bytes(ptx, "ld"), widest_store=_access_bytes(ptx, "st"),
                scalar_16bit_loads=scalar_16bit_loads(ptx), atomics=atomics(ptx))


def _config_label(kwargs: dict) -> str:
    if "BLOCK_M" not in kwargs:  # the dW reduction: BLOCK elements per program
        return f"{kwargs['BLOCK']} w{kwargs.get('num_warps', 4)}"
    return (f"{kwargs['BLOCK_M']}x{kwargs['BLOCK_N']}x{kwargs['BLOCK_K']} "
            f"w{kwargs.get('num_warps', 4)} s{kwargs.get('num_stages', 3)}")


def configs_of(kernel, args, kwargs):
    """(the JIT function, the config kwargs it compiles with) of a launch: an autotuned kernel's
    configs after its own pruning, exactly as Triton's autotuner would choose them, else one."""
    import triton
    if not isinstance(kernel, triton.runtime.Autotuner):
        return kernel, [{}]
    kernel.nargs = dict(zip(kernel.arg_names, args))
    configs = [c.all_kwargs() for c in kernel.prune_configs(kwargs)]
    kernel.nargs = None
    return kernel.fn, configs


def compile_launch(kernel, grid, args, kwargs):
    """A launch recorder that compiles what the launch would, for each config, and nothing more."""
    fn, configs = configs_of(kernel, args, kwargs)
    for config in configs:
        fn.warmup(*args, grid=grid, **kwargs, **config)


# Compiled kernel hash -> (ptxas resources, compile seconds). Process-wide, as Triton's own
# in-memory kernel cache is: a kernel compiled earlier in the process is not compiled (nor logged)
# again.
_COMPILED = {}


class _Compiler:
    """The launch recorder: compiles each launch's kernel for every config it may run with."""

    def __init__(self, capability: int, kernels=None):
        from unet_fast.kernels.offline_target import SHARED_MEMORY_LIMIT
        self.capability = capability
        self.kernels = set(kernels or KERNEL_CHOICES)  # the report's names of what to compile
        self.shared_limit = SHARED_MEMORY_LIMIT[capability]
        self.context = {}
        self.rows = []
        self.pending = []
        # Compile the int64-offset variant of every launch that has one (IDX64 forced on): the
        # variant a launch takes when a tensor spans 2**31 elements, which the report's shapes
        # do not reach.
        self.force_idx64 = False

    def __call__(self, kernel, grid, args, kwargs):
        if "IDX64" in kwargs:
            kwargs = dict(kwargs, IDX64=kwargs["IDX64"] or self.force_idx64)
        elif self.force_idx64:
            return  # a kernel without int64 offsets (the dW reduction) is in the int32 rows
        fn, configs = configs_of(kernel, args, kwargs)
        for config in configs:
            self._compile(fn, grid, args, {**kwargs, **config})

    def _compile(self, fn, grid, args, kwargs):
        name = KERNEL_NAMES.get(fn.__name__, fn.__name__)
        if name in KERNEL_CHOICES and name not in self.kernels:  # a kernel the report cannot name keeps its row
            return
        row = dict(self.context, kernel=name,
                   config=_config_label(kwargs), shared_limit=self.shared_limit, error=None,
                   idx64=bool(kwargs.get("IDX64")), relu=bool(kwargs.get("RELU")),
                   has_bias=bool(kwargs.get("HAS_BIAS")))
        row.update(byte_model_columns(row, kwargs))
        log = io.StringIO()
        start = time.perf_counter()
        try:
            with contextlib.redirect_stdout(log):
                compiled = fn.warmup(*args, grid=grid, **kwargs)
        except Exception as e:  # a compile error is a row of the report, not the end of it
            row["error"] = " ".join(f"{type(e).__name__}: {e}".split())[:300]
            self.rows.append(row)
            return
        if compiled.hash not in _COMPILED:
            _COMPILED[compiled.hash] = (ptxas_resources(log.getvalue()), round(time.perf_counter() - start, 2))
        resources, seconds = _COMPILED[compiled.hash]
        row.update(resources, shared=compiled.metadata.shared, compile_s=seconds,
                   **ptx_features(compiled.asm["ptx"]))
        row["write_bits"] = bool(kwargs.get("WRITE_BITS"))
        row["dependent_launch"] = bool(compiled.metadata.launch_pdl)  # programmatic dependent launch
        row["programs"] = (grid(kwargs) if callable(grid) else grid)[0]
        sass = None
        if (self.capability == TIME_MODEL_CAPABILITY and row["tensor_cores"] != "-" and not self.force_idx64
                and compiled.asm.get("cubin")):
            # The K loop of what the report's shapes launch: int64 offsets forced on (a compile check)
            # would double cuobjdump's share of the report's time (0.4 s of CPU per kernel).
            sass = disassemble(compiled)
        # The time-model columns wait for the disassembly (finish_time_model), which runs meanwhile.
        launch_args = {k: v for k, v in {**dict(zip(fn.arg_names, args)), **kwargs}.items() if isinstance(v, int)}
        self.pending.append((row, _current_step, dict(kwargs, num_warps=compiled.metadata.num_warps), sass,
                             launch_args))
        self.rows.append(row)

    def finish_time_model(self):
        for row, step, kwargs, sass, launch_args in self.pending:
            summary = None
            if sass is not None:
                try:
                    summary = sass.result()
                except (OSError, subprocess.CalledProcessError) as e:  # no K-loop columns, the row says why
                    row["sass_error"] = " ".join(f"{type(e).__name__}: {e}".split())[:300]
            row.update(time_model_columns(row, step, kwargs, summary, launch_args, self.capability))
        self.pending = []


def _empty(shape, dtype, fmt):
    return torch.empty(shape, dtype=dtype).contiguous(memory_format=fmt)


# The step each row is compiled for (set by compile_report), for the byte-model columns.
_current_step = None


def _modelled_relu(row) -> bool:
    """The ReLU the byte model takes for a row: the kernel's own, but for the dW reduction (which
    has none) the step's, which decides whose partials it sums."""
    return bool(row.get("step_relu")) if row["kernel"] == "weight_reduce" else row["relu"]


def _tile(kwargs):
    return (kwargs["BLOCK_M"], kwargs["BLOCK_N"], kwargs["BLOCK_K"]) if "BLOCK_M" in kwargs else None


def modelled_bytes(row, step, kwargs) -> dict:
    """byte_model.kernel_bytes of a compiled row: its kernel, dtype, ReLU, bias and tile, and
    whether its launch sums the weight gradient's partials (backward_input's SUM_PARTIALS)."""
    from unet_fast.kernels import byte_model
    elem = names.DTYPES[row["dtype"]][0].itemsize if row.get("dtype") in names.DTYPES else 2
    return byte_model.kernel_bytes(row["kernel"], step, elem, relu=_modelled_relu(row), has_bias=row["has_bias"],
                                   tile=_tile(kwargs), sums_partials=bool(kwargs.get("SUM_PARTIALS", True)))


def byte_model_columns(row, kwargs) -> dict:
    """moved / floor bytes of the row's kernel for its step and tile (MODELLED, NOT MEASURED)."""
    from unet_fast.kernels import byte_model
    if _current_step is None or row["kernel"] not in byte_model.KERNELS:
        return {}
    m = modelled_bytes(row, _current_step, kwargs)
    return dict(moved_mb=m["moved"] / 1e6, floor_mb=m["floor"] / 1e6, x_floor=m["ratio"] if m["floor"] else None,
                h100_us="{:.1f}-{:.1f}".format(*m["h100_us"]), h200_us="{:.1f}-{:.1f}".format(*m["h200_us"]))


# Compiled kernel hash -> the future of its (SASS instructions, k_loop): cuobjdump runs once per
# kernel binary, in threads beside the compiles (it takes about a third of a second per kernel).
_SASS = {}
_DISASSEMBLERS = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="cuobjdump")
# The time model is of an H100 (sm_90): other architectures' rows get occupancy alone.
TIME_MODEL_CAPABILITY = 90


def _sass_summary(cubin: bytes, warps: int) -> tuple:
    from unet_fast.gpu import sass
    text = sass.sass_of(cubin)
    return len(sass.instructions(text)), sass.k_loop(text, warps)


def disassemble(compiled):
    """A future of (instructions in the SASS, sass.k_loop of it) of a compiled kernel."""
    if compiled.hash not in _SASS:
        _SASS[compiled.hash] = _DISASSEMBLERS.submit(_sass_summary, compiled.asm["cubin"], compiled.metadata.num_warps)
    return _SASS[compiled.hash]


def time_model_columns(row, step, kwargs, sass, launch_args, capability) -> dict:
    """The time model's columns of a compiled row (kernels/time_model.py: MODELLED, NOT MEASURED):
    CTAs per SM and waves on 132 / 114 SMs; on sm_90 the K loop's SASS per warp and per 64^3
    multiply-adds, L2 bytes, the four bounds, the binding one and the modelled time in microseconds.
    sass: (SASS instructions, sass.k_loop) or None (not disassembled: no tensor-core instruction,
    or not sm_90); launch_args: the launch's integer arguments by name (the K loop's bounds)."""
    from unet_fast.kernels import byte_model, time_model
    warps = kwargs["num_warps"]
    if row.get("registers") is None:
        return {}
    ctas = time_model.ctas_per_sm(row["registers"], warps, row["shared"], capability)
    cols = dict(ctas_per_sm=ctas, waves="{:.2f}/{:.2f}".format(
        time_model.waves(row["programs"], ctas), time_model.waves(row["programs"], ctas, time_model.SMS_PCIE)))
    if capability != TIME_MODEL_CAPABILITY or step is None or row["kernel"] not in byte_model.KERNELS:
        return cols
    total, loop = sass or (0, None)
    if loop:
        cols.update(k_loop=loop["instructions"], per_64cube=loop["per_64cube"])
    tile = _tile(kwargs)
    m = modelled_bytes(row, step, kwargs)
    cols["l2_mb"] = m["l2_bytes"] / 1e6
    gemm = dict(gemm_programs=0)
    if tile is not None:  # a GEMM kernel without a tensor-core loop (fp32 without TF32) is not modelled
        if not loop or row.get("dtype") not in time_model.TENSOR_FLOPS:
            return cols
        k_iterations = time_model.k_iterations(row["kernel"], step, tile, launch_args)
        gemm = dict(gemm_programs=time_model.gemm_programs(row["kernel"], step, tile, row["programs"]),
                    k_iterations=k_iterations, loop_instructions=loop["instructions"], loop_macs=loop["macs"],
                    tensor_flops=time_model.TENSOR_FLOPS[row["dtype"]])
        cols["k_iterations"] = k_iterations
    # A kernel with no tensor-core instruction (the dW reduction) is not disassembled: its issue
    # bound is left at zero, and DRAM or L2 binds.
    outside = (total - (loop["instructions"] if loop else 0)) * time_model.OUTSIDE_LOOP_SHARE
    t = time_model.kernel_time(dram_bytes=m["moved"], l2_bytes=m["l2_bytes"], programs=row["programs"],
                               outside_instructions=outside, warps=warps, ctas=ctas,
                               dependent=row["dependent_launch"], **gemm)
    cols.update(warps_per_scheduler=t["warps_per_scheduler"], bound=t["bound"], modelled_us=t["seconds"] * 1e6,
                **{f"{k}_us": t[k] * 1e6 for k in ("dram", "l2", "issue", "tensor")})
    return cols


def launch_decoder_step(case, dtype, fmt, relu: bool = True, has_bias: bool = True):
    """The forward and the backward launches of one decoder step (a cases.StepCase, 2-D or 3-D),
    on empty tensors. `fmt`: a layout name or a torch memory format (channels_last means
    channels_last_3d for a 3-D step)."""
    from unet_fast.kernels.up_concat_launch import launch_backward, launch_forward
    from unet_fast.ops.relu_mask import new_mask_buffer
    ndim = 2 + len(case.spatial)
    if isinstance(fmt, str):
        fmt = names.memory_format(fmt, ndim)
    elif ndim == 5 and fmt == torch.channels_last:
        fmt = torch.channels_last_3d
    x = _empty([case.n, case.cin, *case.spatial], dtype, fmt)
    skip = _empty([case.n, case.cs, *case.up_spatial], dtype, fmt)
    weight = torch.empty(case.cin, case.cout, *case.kernel, dtype=dtype)
    bias = torch.empty(case.cout, dtype=dtype) if has_bias else None
    out = launch_forward(x, skip, weight, bias, relu=relu, skip_first=False)
    bits = None
    if relu:  # a training step's forward also writes the ReLU mask as bits, which the backward reads
        bits = new_mask_buffer(x, weight, case.cs)
        launch_forward(x, skip, weight, bias, relu=True, skip_first=False, out=out, bits=bits)
    grad = torch.empty_like(out)
    if not relu:  # as the op's autograd runs it: the upsampled channels' gradient alone (the skip's is a view)
        grad = grad[:, :case.cout]
    launch_backward(grad, None, x, weight, skip_first=False, has_bias=has_bias, bits=bits)


@contextlib.contextmanager
def _fresh_compile_settings(tf32: bool):
    """A throwaway Triton cache (so ptxas runs and logs for every kernel), ptxas logs printed,
    and cudnn's TF32 flag as the row asks."""
    from triton import knobs
    saved = (os.environ.get("TRITON_CACHE_DIR"), knobs.nvidia.dump_ptxas_log, torch.backends.cudnn.allow_tf32)
    with tempfile.TemporaryDirectory(prefix="unet-fast-static-") as cache:
        os.environ["TRITON_CACHE_DIR"] = cache
        knobs.nvidia.dump_ptxas_log = True
        torch.backends.cudnn.allow_tf32 = tf32
        try:
            yield
        finally:
            if saved[0] is None:
                os.environ.pop("TRITON_CACHE_DIR", None)
            else:
                os.environ["TRITON_CACHE_DIR"] = saved[0]
            knobs.nvidia.dump_ptxas_log, torch.backends.cudnn.allow_tf32 = saved[1], saved[2]


def compile_report(capability: int, cases, dtypes, layouts, progress=None, int64=True, kernels=None) -> list:
    """One row per (kernel, case, dtype, layout, config) compiled for sm_<capability>.
    int64: also compile every launch with int64 offsets forced on; kernels: the report's names of
    the kernels to compile (KERNEL_CHOICES; None: all)."""
    from unet_fast.kernels.common import interpreting
    from unet_fast.kernels.offline_target import offline_target
    from unet_fast.kernels.up_concat_launch import recording_launches
    if interpreting():
        raise RuntimeError("TRITON_INTERPRET=1 is set: Triton would interpret the kernels instead of "
                           "compiling them; unset it to compile for a GPU")
    global _current_step
    compiler = _Compiler(capability, kernels)
    for dtype_name in dtypes:
        dtype, tf32 = names.DTYPES[dtype_name]
        with _fresh_compile_settings(tf32), offline_target(capability), recording_launches(compiler):
            for layout in layouts:
                for case in cases:
                    _current_step = case
                    for relu, has_bias in VARIANTS:
                        for idx64 in (False, True) if int64 else (False,):
                            compiler.context = dict(case=case.name, dtype=dtype_name, layout=layout,
                                                    step_relu=relu, step_bias=has_bias)
                            compiler.force_idx64 = idx64
                            launch_decoder_step(case, dtype, layout, relu, has_bias)
                    if progress:
                        progress(f"sm_{capability} {dtype_name} {layout} {case.name}")
    _current_step = None
    compiler.finish_time_model()
    return compiler.rows


def record_specializations(capability: int, cases, dtypes, layouts) -> list:
    """What compile_report would compile, as Triton's own serialized specializations (the JSON
    `JITFunction.preload` takes), without compiling anything. benchmarks/build_triton_cache.py
    compiles them under the GPU machines' Python and Triton, whose cache keys differ from ours."""
    from triton import knobs
    from unet_fast.kernels.offline_target import offline_target
    from unet_fast.kernels.up_concat_launch import recording_launches

    specs = []

    def record(*, key, repr, fn, compile, is_manual_warmup, already_compiled, **_):
        specs.append(dict(kernel=fn.name, specialization=compile["specialization_data"]))
        return True  # Triton skips the compile

    saved_hook, saved_tf32 = knobs.runtime.jit_cache_hook, torch.backends.cudnn.allow_tf32
    knobs.runtime.jit_cache_hook = record
    try:
        for dtype_name in dtypes:
            dtype, torch.backends.cudnn.allow_tf32 = names.DTYPES[dtype_name]
            # Each warmup stops at the hook, which records the specialization and skips the compile.
            with offline_target(capability), recording_launches(compile_launch):
                for layout in layouts:
                    for case in cases:
                        for relu, has_bias in VARIANTS:
                            launch_decoder_step(case, dtype, layout, relu, has_bias)
    finally:
        knobs.runtime.jit_cache_hook, torch.backends.cudnn.allow_tf32 = saved_hook, saved_tf32
    unique = {s["specialization"]: s for s in specs}
    return list(unique.values())

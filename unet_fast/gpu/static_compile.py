"""Compile the up_concat kernels for a GPU this machine does not have, and read what the GPU
would get: registers, spills, shared memory, tensor-core and async-copy instructions.

Static analysis, not a timing. The real launchers (kernels/up_concat_launch.py) run on empty CPU
tensors of each case's shapes, so every specialization (divisible strides, stride-1 dimensions,
dtypes) and every config the autotuner keeps after pruning is what a launch on the GPU would
compile. Kernels are compiled into a fresh cache so that ptxas runs and reports on each.
"""
import contextlib
import io
import os
import re
import tempfile
import time

import torch

from unet_fast import names

KERNEL_NAMES = {"up_concat_forward_kernel": "forward", "up_concat_backward_input_kernel": "backward_input",
                "up_concat_backward_weight_kernel": "backward_weight"}


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


def ptx_features(ptx: str) -> dict:
    if "wgmma.mma_async" in ptx:
        tensor_cores = "wgmma"
    elif re.search(r"\bmma\.sync", ptx):
        tensor_cores = "mma"
    else:
        tensor_cores = "-"
    return dict(tensor_cores=tensor_cores, cp_async=len(re.findall(r"\bcp\.async\.(?:ca|cg|bulk)", ptx)),
                widest_load=_access_bytes(ptx, "ld"), widest_store=_access_bytes(ptx, "st"))


def _config_label(kwargs: dict) -> str:
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

    def __init__(self, capability: int):
        from unet_fast.kernels.offline_target import SHARED_MEMORY_LIMIT
        self.shared_limit = SHARED_MEMORY_LIMIT[capability]
        self.context = {}
        self.rows = []

    def __call__(self, kernel, grid, args, kwargs):
        fn, configs = configs_of(kernel, args, kwargs)
        for config in configs:
            self._compile(fn, grid, args, {**kwargs, **config})

    def _compile(self, fn, grid, args, kwargs):
        row = dict(self.context, kernel=KERNEL_NAMES.get(fn.__name__, fn.__name__),
                   config=_config_label(kwargs), shared_limit=self.shared_limit, error=None)
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
        self.rows.append(row)


def _empty(shape, dtype, fmt):
    return torch.empty(shape, dtype=dtype).contiguous(memory_format=fmt)


def launch_decoder_step(case, dtype, fmt):
    """The forward and the backward launches of one decoder step, on empty tensors."""
    from unet_fast.kernels.up_concat_launch import up_concat_backward, up_concat_forward
    x = _empty([case.n, case.cin, case.h, case.w], dtype, fmt)
    skip = _empty([case.n, case.cs, 2 * case.h, 2 * case.w], dtype, fmt)
    weight = torch.empty(case.cin, case.cout, 2, 2, dtype=dtype)
    bias = torch.empty(case.cout, dtype=dtype)
    out = up_concat_forward(x, skip, weight, bias, True)
    up_concat_backward(torch.empty_like(out), out, x, weight, relu=True, has_bias=True)


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


def compile_report(capability: int, cases, dtypes, layouts, progress=None) -> list:
    """One row per (kernel, case, dtype, layout, config) compiled for sm_<capability>."""
    from unet_fast.kernels.common import interpreting
    from unet_fast.kernels.offline_target import offline_target
    from unet_fast.kernels.up_concat_launch import recording_launches
    if interpreting():
        raise RuntimeError("TRITON_INTERPRET=1 is set: Triton would interpret the kernels instead of "
                           "compiling them; unset it to compile for a GPU")
    compiler = _Compiler(capability)
    for dtype_name in dtypes:
        dtype, tf32 = names.DTYPES[dtype_name]
        with _fresh_compile_settings(tf32), offline_target(capability), recording_launches(compiler):
            for layout in layouts:
                for case in cases:
                    compiler.context = dict(case=case.name, dtype=dtype_name, layout=layout)
                    launch_decoder_step(case, dtype, names.memory_format(layout))
                    if progress:
                        progress(f"sm_{capability} {dtype_name} {layout} {case.name}")
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
                        launch_decoder_step(case, dtype, names.memory_format(layout))
    finally:
        knobs.runtime.jit_cache_hook, torch.backends.cudnn.allow_tf32 = saved_hook, saved_tf32
    unique = {s["specialization"]: s for s in specs}
    return list(unique.values())

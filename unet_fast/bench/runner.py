"""One benchmark row per (case, dtype, layout, mode, provider): set up, time, measure, record.

Modes (Liger-Kernel's):
    forward   inference: the op (or model) under torch.no_grad
    backward  the backward alone: a forward with the autograd graph kept is built once per
              input set, then each timed call is torch.autograd.grad(out, inputs, dy,
              retain_graph=True) on the next set (gradients returned, never accumulated)
    full      forward + backward in one timed call (for a model: one training step, forward,
              cross-entropy loss, backward)
A row's error (rel_err) compares its forward output on the first input set with the float64
reference computed from the same (already rounded) inputs and weights: what a waterfall needs to
show that a faster row did not get less accurate.
"""
import contextlib
import functools
import gc
import itertools
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from unet_fast import reference
from unet_fast.ops.up_concat_op import uses_triton
from unet_fast import cases as C
from unet_fast import names
from unet_fast.bench import providers as P
from unet_fast.bench import roofline
from unet_fast.bench.timing import peak_memory_mb, time_fn, time_interleaved_cpu


@dataclass
class RunConfig:
    device: torch.device
    n_sets: int = 3              # input sets timed calls rotate among
    cpu_warmup: int = 2
    cpu_repeats: int = 5
    gpu_warmup_ms: int = 25
    gpu_rep_ms: int = 100
    ceiling_gbps: Optional[float] = None
    allow_compile_on_cpu: bool = False
    compile_mode: str = P.DEFAULT_COMPILE_MODE  # torch.compile mode of the compiled providers


def plan(cases, dtypes, layouts, modes, providers):
    """Every job the filters allow, in table order (case, dtype, layout, mode, provider)."""
    jobs = []
    for case in cases:
        for dtype in dtypes:
            for layout in layouts:
                for mode in modes:
                    if mode not in case.modes:
                        continue
                    for provider in P.providers_for(case):
                        if provider in providers:
                            jobs.append((case, dtype, layout, mode, provider))
    return jobs


@contextlib.contextmanager
def cpu_fast_path(device: torch.device):
    """On the CPU, run up_concat's PyTorch path even if TRITON_INTERPRET=1 is set (as the test
    suite's conftest does): the interpreter is ~1000x slower and is no one's production path."""
    if device.type != "cpu":
        yield
        return
    old = os.environ.get("UNET_FAST_DISABLE_TRITON")
    os.environ["UNET_FAST_DISABLE_TRITON"] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ["UNET_FAST_DISABLE_TRITON"]
        else:
            os.environ["UNET_FAST_DISABLE_TRITON"] = old


def fused_path_name(device: torch.device) -> str:
    """Which implementation the fused provider runs on `device`: "Triton compiled" (a GPU),
    "Triton interpreter" (the CPU under TRITON_INTERPRET=1) or "PyTorch path"."""
    probe = torch.empty(0, device=device)
    if not uses_triton(probe):
        return "PyTorch path"
    return "Triton compiled" if device.type == "cuda" else "Triton interpreter"


class _StepBench:
    """A decoder-step provider and its weights; `calls(seeds)` builds one callable per input set."""

    def __init__(self, case, dtype, layout, mode, provider, device, compile_mode):
        self.case, self.dtype, self.layout, self.mode, self.device = case, dtype, layout, mode, device
        self.fn = functools.partial(P.step_impl(provider, compile_mode), relu=case.relu,
                                    skip_first=case.skip_first)  # compiled once per row; every input set reuses it
        self.weight, self.bias = C.step_weights(case, dtype, device, requires_grad=mode != "forward")
        self.rel_err = None

    def calls(self, seeds):
        return [self._call(i) for i in seeds]

    def _call(self, i):
        fn, weight, bias, mode = self.fn, self.weight, self.bias, self.mode
        x, skip = C.step_inputs(self.case, self.dtype, self.layout, self.device,
                                requires_grad=mode != "forward", seed=i)
        leaves = (x, skip, weight, bias)
        if mode == "forward":
            def call():
                with torch.no_grad():
                    return fn(x, skip, weight, bias)
            out = call()
        else:
            out = fn(*leaves)
            dy = torch.randn_like(out)  # keeps out's memory format, as autograd's would
            if mode == "backward":
                def call():
                    return torch.autograd.grad(out, leaves, dy, retain_graph=True)
            else:
                def call():
                    return torch.autograd.grad(fn(*leaves), leaves, dy)
        if i == 0:
            with torch.no_grad():
                want = reference.up_concat(x.double(), skip.double(), weight.double(), bias.double(),
                                           relu=self.case.relu, skip_first=self.case.skip_first)
            self.rel_err = reference.relative_error(out, want)
            del want
        if mode != "backward":
            del out  # only the backward mode's closure needs its graph kept alive
        return call


class _ModelBench:
    """A model provider; `calls(seeds)` builds one callable per input set (image, target)."""

    def __init__(self, case, dtype, layout, mode, provider, device, compile_mode):
        self.case, self.dtype, self.layout, self.mode, self.device = case, dtype, layout, mode, device
        self.raw, self.model = P.provider_model(provider, case, dtype, names.memory_format(layout, 4), device,
                                                compile_mode=compile_mode)
        self.raw.train(mode == "full")
        self.rel_err = None

    def calls(self, seeds):
        return [self._call(i) for i in seeds]

    def _call(self, i):
        raw, model = self.raw, self.model
        image, target = C.model_inputs(self.case, self.dtype, self.layout, self.device, seed=i)
        if self.mode == "forward":
            def call():
                with torch.no_grad():
                    return model(image)
        else:
            def call():
                raw.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(image), target)
                loss.backward()
                return loss
        if i == 0:
            # The forward as the row runs it (a training graph in 'full' mode: a compiled model
            # would otherwise compile a second, inference graph just for this check).
            with torch.set_grad_enabled(self.mode == "full"):
                out = model(image).detach()
            oracle = P.reference_model_fp64(self.case, raw.state_dict(), self.device)
            with torch.no_grad():
                self.rel_err = reference.relative_error(out, oracle(image.double()))
            del oracle, out
        return call


def prepare(case, dtype_name, layout, mode, provider, device, compile_mode=P.DEFAULT_COMPILE_MODE):
    """The provider set up for a job; `.calls(seeds)` gives one timed callable per input set,
    `.rel_err` the error of the first set's output (pytest-benchmark uses this too)."""
    cls = _StepBench if case.kind == "step" else _ModelBench
    return cls(case, names.torch_dtype(dtype_name), layout, mode, provider, device, compile_mode)


def _new_row(job, cfg: RunConfig) -> dict:
    case, dtype_name, layout, mode, provider = job
    impl = P.describe(provider, case)
    if provider == "fused" or provider == "fused-compiled":
        impl += f" [{fused_path_name(cfg.device)}]"
    return dict(case=case.name, case_label=case.label, kind=case.kind, shapes=case.shapes(),
                dtype=dtype_name, layout=layout, mode=mode, provider=provider, impl=impl,
                status="ok", note="", median_ms=None, q20_ms=None, q80_ms=None, min_ms=None, timer=None,
                speedup_vs_eager=None, bytes=case.nbytes(mode, names.torch_dtype(dtype_name)), gbps=None,
                pct_of_floor=None, peak_mb=None, rel_err=None, n_sets=cfg.n_sets)


def _record_error(row: dict, e: Exception) -> None:
    # An OOM or an unsupported dtype becomes the row's status rather than ending the run.
    first_line = (str(e).strip().splitlines() or [""])[0]
    row.update(status="error", note=f"{type(e).__name__}: {first_line[:200]}")


def _set_up(row: dict, job, cfg: RunConfig):
    """Prepare the job's provider, fill in the row's rel_err and peak_mb, and return the callable
    to time (each call runs the next input set), or None when the row is skipped or failed."""
    case, dtype_name, layout, mode, provider = job
    device = cfg.device
    if provider in P.COMPILED and device.type == "cpu" and not cfg.allow_compile_on_cpu:
        row.update(status="skipped", note="torch.compile on the CPU is opt-in (--compile): "
                                          "max-autotune compiles take minutes on 2 cores")
        return None
    try:
        bench = prepare(case, dtype_name, layout, mode, provider, device, cfg.compile_mode)
        # Set 0 alone first, so the peak-memory figure counts one set's inputs, not all of them.
        calls = bench.calls([0])
        row["rel_err"] = bench.rel_err
        calls[0]()  # compiles / autotunes outside of any measurement
        row["peak_mb"] = peak_memory_mb(calls[0], device)
        calls += bench.calls(range(1, cfg.n_sets))
    except Exception as e:  # noqa: BLE001
        _record_error(row, e)
        return None
    rotation = itertools.cycle(calls)
    return lambda: next(rotation)()


def _run_group(jobs, cfg: RunConfig) -> list:
    """Rows for jobs that differ only in their provider. On a GPU the group is one job, timed
    alone by do_bench; on the CPU the group's providers are timed in turns (timing.py says why)."""
    rows = [_new_row(job, cfg) for job in jobs]
    timed = []
    try:
        for row, job in zip(rows, jobs):
            fn = _set_up(row, job, cfg)
            if fn is not None:
                timed.append((row, fn))
        if not timed:
            return rows
        try:
            if len(timed) == 1:
                results = [time_fn(timed[0][1], cfg.device, cfg.gpu_warmup_ms, cfg.gpu_rep_ms,
                                   cfg.cpu_warmup, cfg.cpu_repeats)]
            else:
                results = time_interleaved_cpu([fn for _, fn in timed], cfg.cpu_warmup, cfg.cpu_repeats)
        except Exception as e:  # noqa: BLE001
            for row, _ in timed:
                _record_error(row, e)
            return rows
        for (row, _), t in zip(timed, results):
            row.update(t)
            row["gbps"], row["pct_of_floor"] = roofline.achieved(row["bytes"], t["median_ms"],
                                                                 cfg.ceiling_gbps)
        return rows
    finally:
        del timed
        gc.collect()
        if cfg.device.type == "cuda":
            torch.cuda.empty_cache()


def add_speedups(rows) -> None:
    """speedup_vs_eager = eager's median / the row's median, for the same case/dtype/layout/mode."""
    key = lambda r: (r["case_label"], r["dtype"], r["layout"], r["mode"])  # noqa: E731
    eager = {key(r): r["median_ms"] for r in rows if r["provider"] == P.BASELINE and r["status"] == "ok"}
    for r in rows:
        base = eager.get(key(r))
        if r["status"] == "ok" and base:
            r["speedup_vs_eager"] = base / r["median_ms"]


def run_all(jobs, cfg: RunConfig, progress=None) -> list:
    """Rows for all jobs, speedups filled in. `progress` is a tqdm-like bar (or None)."""
    if cfg.device.type == "cuda":
        groups = [[job] for job in jobs]
    else:  # plan() lists the providers of one (case, dtype, layout, mode) next to each other
        groups = [list(g) for _, g in itertools.groupby(jobs, key=lambda job: job[:4])]
    rows = []
    with cpu_fast_path(cfg.device):
        for group in groups:
            case, dtype, layout, mode, _ = group[0]
            if progress is not None:
                providers = ",".join(job[4] for job in group)
                progress.set_postfix_str(f"{case.name} {dtype} {layout} {mode} {providers}")
            rows.extend(_run_group(group, cfg))
            if progress is not None:
                progress.update(len(group))
    add_speedups(rows)
    return rows

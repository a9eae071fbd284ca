"""The `unet-fast bench` cases under pytest-benchmark (see conftest.py for how to run them).

Same cases, providers and input construction as the command line (unet_fast.bench); this file
only hands them to pytest-benchmark's timer. On a GPU each call synchronizes, so the timer sees
the kernels, not just their launch. extra_info carries what the table shows: shapes, bytes,
GB/s, the error against float64, and the device.
"""
import itertools

import torch

from unet_fast import names
from unet_fast.bench import runner
from unet_fast.bench.environment import device_name
from unet_fast.reference import TOLERANCES


def test_bench(benchmark, bench_job, device):
    case, dtype, layout, mode, provider = bench_job
    # Never Triton's interpreter: on the CPU the fused op must be timed on its PyTorch path.
    assert device.type == "cuda" or runner.fused_path_name(device) == "PyTorch path"
    bench = runner.prepare(case, dtype, layout, mode, provider, device)
    calls = bench.calls(range(3 if device.type == "cuda" else 2))
    rotation = itertools.cycle(calls)

    def call():
        next(rotation)()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    # A fast wrong answer is no result: the row's forward output (first input set) must be as
    # close to the float64 reference as the tests require of its dtype, in relative norm.
    rtol = TOLERANCES[names.torch_dtype(dtype)][0]
    assert bench.rel_err is not None, "the row measured no error"
    assert bench.rel_err <= rtol, (
        f"{provider} on {case.label} {dtype} {layout} {mode}: relative error {bench.rel_err:.2e} "
        f"against the float64 reference, over {dtype}'s tolerance {rtol:.0e}")
    call()  # compile / autotune before pytest-benchmark's calibration
    nbytes = case.nbytes(mode, names.torch_dtype(dtype))
    benchmark.group = f"{case.label} {dtype} {layout} {mode}"
    benchmark.extra_info.update(shapes=case.shapes(), provider=provider, bytes=nbytes,
                                rel_err=bench.rel_err, device=device_name(device),
                                fused_path=runner.fused_path_name(device))
    benchmark.pedantic(call, rounds=5 if device.type == "cpu" else 20, warmup_rounds=1)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and nbytes:  # None under --benchmark-disable
        benchmark.extra_info["gbps"] = nbytes / stats.stats.median / 1e9

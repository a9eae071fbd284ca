"""How long a call takes, and how much memory it peaks at.

GPU: triton.testing.do_bench, the timer Liger-Kernel and FlagGems use. It flushes L2 between
calls and times each call with CUDA events; we report its median and 20%/80% quantiles.
CPU: wall clock (time.perf_counter) around each call after a warm-up, median and quantiles of
the repeats, the providers of one row group timed in turns (`time_interleaved_cpu`). There is
no asynchronous queue to drain on the CPU, so wall clock is exact.

The callers rotate inputs among several sets inside `fn` (runner.py), so no call finds its
inputs already in a cache the previous call warmed.
"""
import statistics
import time

import torch

QUANTILES = [0.5, 0.2, 0.8]


def _quantile(sorted_values, q):
    # Linear interpolation between order statistics, as numpy's default (and do_bench) do.
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def time_fn(fn, device: torch.device, gpu_warmup_ms=25, gpu_rep_ms=100,
            cpu_warmup=2, cpu_repeats=5) -> dict:
    """{'median_ms', 'q20_ms', 'q80_ms', 'min_ms', 'timer'} for calls of `fn` on `device`."""
    if device.type == "cuda":
        import triton.testing
        med, q20, q80 = triton.testing.do_bench(fn, warmup=gpu_warmup_ms, rep=gpu_rep_ms,
                                                quantiles=QUANTILES)
        return dict(median_ms=med, q20_ms=q20, q80_ms=q80, min_ms=None, timer="triton.testing.do_bench")
    return time_interleaved_cpu([fn], cpu_warmup, cpu_repeats)[0]


def time_interleaved_cpu(fns, warmup=2, repeats=5) -> list:
    """time_fn's CPU statistics for each of `fns`, timed in turns: round r calls fns[0], fns[1],
    ... once each. A shared CPU drifts between fast and slow phases that last seconds (NOTES.md,
    v0.2): timed one after the other, two providers can land in different phases and their ratio
    is off by 1.5x; in turns, every phase is shared by all of them. Returns one dict per fn."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(max(1, repeats)):
        for fn, spent in zip(fns, times):
            start = time.perf_counter()
            fn()
            spent.append((time.perf_counter() - start) * 1e3)
    return [_summary(sorted(spent), len(fns)) for spent in times]


def _summary(times, interleaved_with: int) -> dict:
    # min_ms too: on a shared CPU other processes only ever add time, so the fastest repeat is
    # the best estimate of the uncontended cost; the median stays the headline figure.
    turns = f", in turns with {interleaved_with - 1} other provider(s)" if interleaved_with > 1 else ""
    return dict(median_ms=statistics.median(times), q20_ms=_quantile(times, 0.2),
                q80_ms=_quantile(times, 0.8), min_ms=times[0],
                timer=f"perf_counter, median of {len(times)}{turns}")


def peak_memory_mb(fn, device: torch.device):
    """Peak allocated MiB during one call of `fn`, counting what is already allocated (inputs,
    saved activations): what a user must have free. None on the CPU, where PyTorch keeps no such
    counter (process RSS would count the allocator's cache and everything else)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20
